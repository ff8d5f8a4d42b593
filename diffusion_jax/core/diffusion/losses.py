"""The denoising training loss and its timestep weightings.

    loss_i = w(t_i) * mean_{non-batch axes} (model_output_i - target_i)^2

where target is eps, x_0 or v (`parameterization.training_target`). Weightings:

- "uniform": w = 1. With eps prediction this is DDPM's L_simple.
- "min_snr": Min-SNR-gamma (Hang et al. 2023). The effective loss is min(SNR_t, gamma) times the
  x_0-space error |x0_hat - x_0|^2, whatever the network predicts. Because
  |eps_hat - eps|^2 = SNR |x0_hat - x_0|^2 and |v_hat - v|^2 = (SNR + 1) |x0_hat - x_0|^2,
  the weight on the squared error of the network's own output is

      eps: min(SNR, gamma) / SNR,   x0: min(SNR, gamma),   v: min(SNR, gamma) / (SNR + 1).
"""

import jax
import jax.numpy as jnp

from diffusion_jax.core.diffusion.parameterization import check_prediction_type, training_target
from diffusion_jax.core.diffusion.schedules import DiffusionSchedule, snr

LOSS_WEIGHTINGS = ("uniform", "min_snr")


def loss_weight(
    schedule: DiffusionSchedule,
    t: jax.Array,
    *,
    prediction_type: str,
    weighting: str,
    min_snr_gamma: float = 5.0,
) -> jax.Array:
    """The per-example weight w(t) [B] of the squared error (see the module docstring)."""
    check_prediction_type(prediction_type)
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"Unknown weighting={weighting!r}; expected one of {LOSS_WEIGHTINGS}.")
    if weighting == "uniform":
        return jnp.ones(t.shape, jnp.float32)
    if not min_snr_gamma > 0:
        raise ValueError(f"min_snr_gamma must be positive, got {min_snr_gamma!r}.")
    signal_to_noise = snr(schedule, t)
    clipped = jnp.minimum(signal_to_noise, min_snr_gamma)
    if prediction_type == "eps":
        return clipped / signal_to_noise
    if prediction_type == "x0":
        return clipped
    return clipped / (signal_to_noise + 1.0)


def diffusion_loss(
    schedule: DiffusionSchedule,
    model_output: jax.Array,
    x0: jax.Array,
    noise: jax.Array,
    t: jax.Array,
    *,
    prediction_type: str = "eps",
    weighting: str = "uniform",
    min_snr_gamma: float = 5.0,
) -> jax.Array:
    """Per-example loss [B] = w(t) * mean over non-batch axes of (model_output - target)^2.

    `model_output` is the network's prediction at x_t = q_sample(schedule, x0, t, noise); the
    squared error is taken in float32 whatever the output's dtype. Average over the batch (or
    weight examples) outside.
    """
    weight = loss_weight(
        schedule,
        t,
        prediction_type=prediction_type,
        weighting=weighting,
        min_snr_gamma=min_snr_gamma,
    )
    target = training_target(schedule, x0, noise, t, prediction_type)
    squared_error = jnp.square(model_output.astype(jnp.float32) - target.astype(jnp.float32))
    return weight * jnp.mean(squared_error, axis=tuple(range(1, squared_error.ndim)))
