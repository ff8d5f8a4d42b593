"""Conversions between the eps, x0 and v prediction types."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.core.diffusion import gaussian, parameterization, schedules

NUM_TIMESTEPS = 100


@pytest.fixture(scope="module")
def sample():
    """A schedule, timesteps and (x0, noise, x_t) with x_t = q_sample(x0, t, noise)."""
    schedule = schedules.schedule_from_config("linear", NUM_TIMESTEPS)
    keys = jax.random.split(jax.random.key(0), 2)
    x0 = jax.random.uniform(keys[0], (4, 2, 3), minval=-1.0, maxval=1.0)
    noise = jax.random.normal(keys[1], x0.shape)
    t = jnp.array([0, 5, 50, NUM_TIMESTEPS - 1])
    return schedule, t, x0, noise, gaussian.q_sample(schedule, x0, t, noise)


def test_v_is_the_closed_form(sample):
    schedule, t, x0, noise, _ = sample
    alphas_cumprod = np.cumprod(1.0 - schedules.beta_schedule("linear", NUM_TIMESTEPS))
    a = alphas_cumprod[np.asarray(t)][:, None, None]
    expected = np.sqrt(a) * np.asarray(noise) - np.sqrt(1.0 - a) * np.asarray(x0)
    np.testing.assert_allclose(
        parameterization.v_from_eps_x0(schedule, x0, t, noise), expected, rtol=1e-5, atol=1e-6
    )


def test_eps_x0_from_v_round_trips(sample):
    schedule, t, x0, noise, x_t = sample
    v = parameterization.v_from_eps_x0(schedule, x0, t, noise)
    eps, x0_back = parameterization.eps_x0_from_v(schedule, x_t, t, v)
    np.testing.assert_allclose(eps, noise, atol=1e-5)
    np.testing.assert_allclose(x0_back, x0, atol=1e-5)


@pytest.mark.parametrize("prediction_type", parameterization.PREDICTION_TYPES)
def test_perfect_prediction_recovers_eps_and_x0(sample, prediction_type):
    schedule, t, x0, noise, x_t = sample
    target = parameterization.training_target(schedule, x0, noise, t, prediction_type)
    eps, x0_hat = parameterization.model_output_to_eps_x0(schedule, x_t, t, target, prediction_type)
    # Inverting through 1/sqrt(abar) (eps) or 1/sqrt(1 - abar) (x0) amplifies float32 rounding
    # at the extreme timesteps by up to ~1/sqrt(1 - abar_0) = 100, hence atol 1e-4.
    np.testing.assert_allclose(eps, noise, atol=1e-4)
    np.testing.assert_allclose(x0_hat, x0, atol=1e-4)


def test_training_targets_are_eps_x0_and_v(sample):
    schedule, t, x0, noise, _ = sample
    np.testing.assert_array_equal(
        parameterization.training_target(schedule, x0, noise, t, "eps"), noise
    )
    np.testing.assert_array_equal(
        parameterization.training_target(schedule, x0, noise, t, "x0"), x0
    )


def test_unknown_prediction_type_is_rejected(sample):
    schedule, t, x0, noise, x_t = sample
    with pytest.raises(ValueError, match=r"prediction_type='score'.*\('eps', 'x0', 'v'\)"):
        parameterization.training_target(schedule, x0, noise, t, "score")
    with pytest.raises(ValueError, match="prediction_type='score'"):
        parameterization.model_output_to_eps_x0(schedule, x_t, t, x0, "score")
