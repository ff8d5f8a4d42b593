"""The denoising loss and its min-SNR weighting."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.core.diffusion import gaussian, losses, parameterization, schedules

NUM_TIMESTEPS = 100
GAMMA = 5.0


@pytest.fixture(scope="module")
def batch():
    """A schedule, timesteps on both sides of SNR = gamma, x0, noise and x_t."""
    schedule = schedules.schedule_from_config("cosine", NUM_TIMESTEPS)
    keys = jax.random.split(jax.random.key(0), 2)
    x0 = jax.random.uniform(keys[0], (5, 4, 4, 2), minval=-1.0, maxval=1.0)
    noise = jax.random.normal(keys[1], x0.shape)
    t = jnp.array([1, 10, 30, 60, 90])
    snr = np.asarray(schedules.snr(schedule, t))
    assert snr.max() > GAMMA > snr.min()  # the test exercises both branches of the min
    return schedule, t, x0, noise, gaussian.q_sample(schedule, x0, t, noise)


def _float64_alphas_cumprod(t):
    return np.cumprod(1.0 - schedules.beta_schedule("cosine", NUM_TIMESTEPS))[np.asarray(t)]


def _float64_x0_hat(model_output, x_t, t, prediction_type):
    """x_0 implied by the prediction, in float64: x0 = (x_t - b eps) / a, x0, or a x_t - b v."""
    a = np.sqrt(_float64_alphas_cumprod(t))[:, None, None, None]
    b = np.sqrt(1.0 - a**2)
    model_output, x_t = np.asarray(model_output, np.float64), np.asarray(x_t, np.float64)
    if prediction_type == "eps":
        return (x_t - b * model_output) / a
    if prediction_type == "x0":
        return model_output
    return a * x_t - b * model_output


def test_uniform_eps_loss_is_l_simple(batch):
    schedule, t, x0, noise, _ = batch
    model_output = noise + 0.1 * jnp.cos(x0)
    loss = losses.diffusion_loss(schedule, model_output, x0, noise, t)
    expected = np.mean((0.1 * np.cos(np.asarray(x0, np.float64))) ** 2, axis=(1, 2, 3))
    assert loss.shape == (5,)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


@pytest.mark.parametrize("prediction_type", parameterization.PREDICTION_TYPES)
def test_min_snr_loss_is_clipped_snr_times_x0_error(batch, prediction_type):
    """w(t) |out - target|^2 = min(SNR_t, gamma) |x0_hat - x0|^2 for every prediction type."""
    schedule, t, x0, noise, x_t = batch
    target = parameterization.training_target(schedule, x0, noise, t, prediction_type)
    model_output = target + 0.05 * jax.random.normal(jax.random.key(2), target.shape)
    x0_hat = _float64_x0_hat(model_output, x_t, t, prediction_type)
    x0_error = np.mean(np.square(x0_hat - np.asarray(x0)), axis=(1, 2, 3))
    snr = _float64_alphas_cumprod(t) / (1.0 - _float64_alphas_cumprod(t))
    expected = np.minimum(snr, GAMMA) * x0_error

    loss = losses.diffusion_loss(
        schedule,
        model_output,
        x0,
        noise,
        t,
        prediction_type=prediction_type,
        weighting="min_snr",
        min_snr_gamma=GAMMA,
    )
    np.testing.assert_allclose(loss, expected, rtol=1e-4)


def test_loss_is_float32_for_bfloat16_outputs(batch):
    schedule, t, x0, noise, _ = batch
    loss = losses.diffusion_loss(schedule, (noise + 0.5).astype(jnp.bfloat16), x0, noise, t)
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, 0.25, rtol=2e-2)


def test_bad_weighting_and_gamma_are_rejected(batch):
    schedule, t, x0, noise, _ = batch
    with pytest.raises(ValueError, match=r"weighting='snr'.*'uniform', 'min_snr'"):
        losses.diffusion_loss(schedule, noise, x0, noise, t, weighting="snr")
    with pytest.raises(ValueError, match=r"min_snr_gamma must be positive, got 0\.0"):
        losses.diffusion_loss(schedule, noise, x0, noise, t, weighting="min_snr", min_snr_gamma=0.0)
    with pytest.raises(ValueError, match="prediction_type='epsilon'"):
        losses.diffusion_loss(schedule, noise, x0, noise, t, prediction_type="epsilon")
