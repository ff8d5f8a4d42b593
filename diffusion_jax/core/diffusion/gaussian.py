"""The Gaussian forward process q(x_t | x_0) and its posterior q(x_{t-1} | x_t, x_0) (DDPM).

All functions take integer timesteps t of shape [B] and arrays x of shape [B, ...]; the
schedule's coefficients are gathered at t and broadcast over the non-batch axes. Variances are
returned with shape [B, 1, ..., 1].
"""

import jax
import jax.numpy as jnp

from diffusion_jax.core.diffusion.schedules import DiffusionSchedule, at_timesteps


def q_sample(
    schedule: DiffusionSchedule, x0: jax.Array, t: jax.Array, noise: jax.Array
) -> jax.Array:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, a draw of q(x_t | x_0) given eps = noise."""
    return (
        at_timesteps(schedule.sqrt_alphas_cumprod, t, x0.ndim) * x0
        + at_timesteps(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise
    )


def q_mean_variance(
    schedule: DiffusionSchedule, x0: jax.Array, t: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Mean sqrt(abar_t) x_0 and variance 1 - abar_t of q(x_t | x_0)."""
    mean = at_timesteps(schedule.sqrt_alphas_cumprod, t, x0.ndim) * x0
    variance = jnp.square(at_timesteps(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim))
    return mean, variance


def q_posterior_mean_variance(
    schedule: DiffusionSchedule, x0: jax.Array, x_t: jax.Array, t: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0) = N(mu-tilde, beta-tilde).

    mu-tilde_t = beta_t sqrt(abar_{t-1}) / (1 - abar_t) x_0 + (1 - abar_{t-1}) sqrt(alpha_t) /
    (1 - abar_t) x_t and beta-tilde_t = beta_t (1 - abar_{t-1}) / (1 - abar_t) (DDPM eq. 6-7).
    The log variance at t = 0 is log(beta-tilde_1) instead of log(0).
    """
    mean = (
        at_timesteps(schedule.posterior_mean_coef1, t, x_t.ndim) * x0
        + at_timesteps(schedule.posterior_mean_coef2, t, x_t.ndim) * x_t
    )
    variance = at_timesteps(schedule.posterior_variance, t, x_t.ndim)
    log_variance_clipped = at_timesteps(schedule.posterior_log_variance_clipped, t, x_t.ndim)
    return mean, variance, log_variance_clipped


def predict_x0_from_eps(
    schedule: DiffusionSchedule, x_t: jax.Array, t: jax.Array, eps: jax.Array
) -> jax.Array:
    """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), the inverse of `q_sample` in x_0."""
    return (
        at_timesteps(schedule.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t
        - at_timesteps(schedule.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * eps
    )


def predict_eps_from_x0(
    schedule: DiffusionSchedule, x_t: jax.Array, t: jax.Array, x0: jax.Array
) -> jax.Array:
    """eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t), the inverse of `q_sample` in eps."""
    return (x_t - at_timesteps(schedule.sqrt_alphas_cumprod, t, x_t.ndim) * x0) / at_timesteps(
        schedule.sqrt_one_minus_alphas_cumprod, t, x_t.ndim
    )
