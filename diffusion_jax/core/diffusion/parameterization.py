"""What the denoising network predicts: the noise eps, the clean sample x_0, or the velocity v.

With x_t = a x_0 + b eps, a = sqrt(abar_t), b = sqrt(1 - abar_t) (so a^2 + b^2 = 1), the three
prediction types are interchangeable given x_t:

    "eps": eps,                  x_0 = (x_t - b eps) / a
    "x0":  x_0,                  eps = (x_t - a x_0) / b
    "v":   v = a eps - b x_0     (Salimans & Ho 2022),   x_0 = a x_t - b v,   eps = b x_t + a v
"""

import jax

from diffusion_jax.core.diffusion.gaussian import predict_eps_from_x0, predict_x0_from_eps
from diffusion_jax.core.diffusion.schedules import DiffusionSchedule, at_timesteps

PREDICTION_TYPES = ("eps", "x0", "v")


def check_prediction_type(prediction_type: str) -> None:
    """Raises ValueError unless `prediction_type` is one of `PREDICTION_TYPES`."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"Unknown prediction_type={prediction_type!r}; expected one of {PREDICTION_TYPES}."
        )


def v_from_eps_x0(
    schedule: DiffusionSchedule, x0: jax.Array, t: jax.Array, eps: jax.Array
) -> jax.Array:
    """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0."""
    return (
        at_timesteps(schedule.sqrt_alphas_cumprod, t, x0.ndim) * eps
        - at_timesteps(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * x0
    )


def eps_x0_from_v(
    schedule: DiffusionSchedule, x_t: jax.Array, t: jax.Array, v: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(eps, x_0) given v: eps = b x_t + a v and x_0 = a x_t - b v (a, b as in the module doc)."""
    a = at_timesteps(schedule.sqrt_alphas_cumprod, t, x_t.ndim)
    b = at_timesteps(schedule.sqrt_one_minus_alphas_cumprod, t, x_t.ndim)
    return b * x_t + a * v, a * x_t - b * v


def training_target(
    schedule: DiffusionSchedule,
    x0: jax.Array,
    noise: jax.Array,
    t: jax.Array,
    prediction_type: str,
) -> jax.Array:
    """The regression target for x_t = q_sample(schedule, x0, t, noise): eps, x_0 or v."""
    check_prediction_type(prediction_type)
    if prediction_type == "eps":
        return noise
    if prediction_type == "x0":
        return x0
    return v_from_eps_x0(schedule, x0, t, noise)


def model_output_to_eps_x0(
    schedule: DiffusionSchedule,
    x_t: jax.Array,
    t: jax.Array,
    model_output: jax.Array,
    prediction_type: str,
) -> tuple[jax.Array, jax.Array]:
    """(eps_hat, x0_hat) implied by a model's prediction of type `prediction_type` at x_t."""
    check_prediction_type(prediction_type)
    if prediction_type == "eps":
        return model_output, predict_x0_from_eps(schedule, x_t, t, model_output)
    if prediction_type == "x0":
        return predict_eps_from_x0(schedule, x_t, t, model_output), model_output
    return eps_x0_from_v(schedule, x_t, t, model_output)
