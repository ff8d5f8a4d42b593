"""The forward process q(x_t | x_0) and the posterior q(x_{t-1} | x_t, x_0)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.core.diffusion import gaussian, schedules

NUM_TIMESTEPS = 100


@pytest.fixture(scope="module")
def schedule():
    return schedules.schedule_from_config("cosine", NUM_TIMESTEPS)


@pytest.fixture(scope="module")
def alphas_cumprod():
    """abar_t in float64, recomputed from the betas."""
    return np.cumprod(1.0 - schedules.beta_schedule("cosine", NUM_TIMESTEPS))


def test_predict_x0_from_eps_inverts_q_sample(schedule):
    keys = jax.random.split(jax.random.key(0), 2)
    x0 = jax.random.uniform(keys[0], (4, 3, 5), minval=-1.0, maxval=1.0)
    noise = jax.random.normal(keys[1], x0.shape)
    t = jnp.array([0, 10, 60, NUM_TIMESTEPS - 2])
    x_t = gaussian.q_sample(schedule, x0, t, noise)
    np.testing.assert_allclose(gaussian.predict_x0_from_eps(schedule, x_t, t, noise), x0, atol=2e-4)
    np.testing.assert_allclose(gaussian.predict_eps_from_x0(schedule, x_t, t, x0), noise, atol=2e-4)


def test_q_sample_is_the_closed_form(schedule, alphas_cumprod):
    x0 = np.linspace(-1.0, 1.0, 6).reshape(2, 3)
    noise = np.linspace(2.0, -0.5, 6).reshape(2, 3)
    t = np.array([3, 71])
    a = alphas_cumprod[t][:, None]
    expected = np.sqrt(a) * x0 + np.sqrt(1.0 - a) * noise
    x_t = gaussian.q_sample(schedule, jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise))
    np.testing.assert_allclose(x_t, expected, rtol=1e-5, atol=1e-6)


def test_monte_carlo_moments_of_q_sample_match_q_mean_variance(schedule, alphas_cumprod):
    num_samples = 20_000
    x0_values = jnp.array([0.9, -0.4, 0.1])
    t_values = jnp.array([2, 40, NUM_TIMESTEPS - 1])
    x0 = jnp.broadcast_to(x0_values, (num_samples, 3)).T  # [3, N]: 3 examples of N "pixels"
    noise = jax.random.normal(jax.random.key(1), x0.shape)
    x_t = np.asarray(gaussian.q_sample(schedule, x0, t_values, noise), np.float64)

    mean, variance = gaussian.q_mean_variance(schedule, x0, t_values)
    a = alphas_cumprod[np.asarray(t_values)]
    np.testing.assert_allclose(mean[:, 0], np.sqrt(a) * np.asarray(x0_values), rtol=1e-6)
    np.testing.assert_allclose(variance[:, 0], 1.0 - a, rtol=1e-6)
    assert variance.shape == (3, 1)

    # Standard errors of the sample mean and variance of N Gaussian draws: sqrt(v / N) and
    # v sqrt(2 / (N - 1)); 5 of them leaves a false-failure rate below 1e-6.
    standard_error_mean = np.sqrt((1.0 - a) / num_samples)
    standard_error_variance = (1.0 - a) * np.sqrt(2.0 / (num_samples - 1))
    np.testing.assert_array_less(
        np.abs(x_t.mean(axis=1) - np.sqrt(a) * np.asarray(x0_values)), 5 * standard_error_mean
    )
    np.testing.assert_array_less(
        np.abs(x_t.var(axis=1, ddof=1) - (1.0 - a)), 5 * standard_error_variance
    )


def _bayes_posterior(alphas_cumprod, t, x0, x_t):
    """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0), a product of scalar Gaussians.

    q(x_{t-1} | x_0) = N(sqrt(abar_{t-1}) x_0, 1 - abar_{t-1}) and, as a function of x_{t-1},
    q(x_t | x_{t-1}) = N(x_t; sqrt(alpha_t) x_{t-1}, beta_t); precisions add and the mean is the
    precision-weighted average.
    """
    alpha = alphas_cumprod[t] / alphas_cumprod[t - 1]
    prior_mean, prior_var = np.sqrt(alphas_cumprod[t - 1]) * x0, 1.0 - alphas_cumprod[t - 1]
    precision = 1.0 / prior_var + alpha / (1.0 - alpha)
    mean = (prior_mean / prior_var + np.sqrt(alpha) * x_t / (1.0 - alpha)) / precision
    return mean, 1.0 / precision


def test_posterior_is_bayes_rule(schedule, alphas_cumprod):
    t = np.array([1, 2, 30, 75, NUM_TIMESTEPS - 1])
    x0 = np.array([0.7, -1.0, 0.2, 0.5, -0.3])
    x_t = np.array([0.4, -0.8, 1.5, -2.0, 0.9])
    expected_mean, expected_var = _bayes_posterior(alphas_cumprod, t, x0, x_t)

    mean, variance, log_variance = gaussian.q_posterior_mean_variance(
        schedule, jnp.asarray(x0)[:, None], jnp.asarray(x_t)[:, None], jnp.asarray(t)
    )
    np.testing.assert_allclose(mean[:, 0], expected_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(variance[:, 0], expected_var, rtol=1e-5)
    np.testing.assert_allclose(log_variance[:, 0], np.log(expected_var), rtol=1e-5)


def test_posterior_at_t0_is_the_clean_sample_with_clipped_log_variance(schedule, alphas_cumprod):
    x0 = jnp.array([[0.3, -0.6]])
    x_t = jnp.array([[1.0, 2.0]])
    mean, variance, log_variance = gaussian.q_posterior_mean_variance(
        schedule, x0, x_t, jnp.array([0])
    )
    np.testing.assert_allclose(mean, x0, atol=1e-7)
    assert variance[0, 0] == 0.0
    _, variance_at_1 = _bayes_posterior(alphas_cumprod, np.array([1]), 0.0, 0.0)
    np.testing.assert_allclose(log_variance[0, 0], np.log(variance_at_1[0]), rtol=1e-5)
