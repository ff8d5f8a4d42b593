"""Noise schedules of the discrete-time forward process (DDPM, Ho et al. 2020).

A schedule is the sequence beta_t, t = 0 .. T-1 (index 0 adds the least noise), of the Markov
chain q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I). Everything the forward process,
the posterior and the samplers need follows from it:

    alpha_t = 1 - beta_t,   abar_t = prod_{s <= t} alpha_s,   abar_{-1} = 1,
    beta-tilde_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)                    (posterior variance)
    mu-tilde_t(x_t, x_0) = coef1_t x_0 + coef2_t x_t,
        coef1_t = beta_t sqrt(abar_{t-1}) / (1 - abar_t),
        coef2_t = (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t).

The coefficients are computed once in float64 NumPy and stored as float32 arrays in a
`DiffusionSchedule` pytree, which jitted functions take as an ordinary argument.
"""

from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

# DDPM's linear schedule for T = 1000; improved DDPM scales both ends by 1000 / T so that the
# total noise added, sum_t beta_t, stays the same for other T.
_LINEAR_BETA_START = 1e-4
_LINEAR_BETA_END = 0.02
_REFERENCE_NUM_TIMESTEPS = 1000
# Stable Diffusion's "scaled_linear" end points (linear in sqrt(beta)).
_SCALED_LINEAR_BETA_START = 0.00085
_SCALED_LINEAR_BETA_END = 0.012
# Schedules defined through abar(tau) on continuous time tau in [0, 1] cap beta here, because
# abar(1) = 0 would make the last beta 1 (improved DDPM, Section 3.2).
_MAX_BETA = 0.999
_COSINE_OFFSET = 0.008


def _linear_betas(num_timesteps: int) -> np.ndarray:
    """DDPM: beta_t linear from 1e-4 to 0.02 at T = 1000, both ends scaled by 1000 / T."""
    scale = _REFERENCE_NUM_TIMESTEPS / num_timesteps
    return np.linspace(
        scale * _LINEAR_BETA_START, scale * _LINEAR_BETA_END, num_timesteps, dtype=np.float64
    )


def _scaled_linear_betas(num_timesteps: int) -> np.ndarray:
    """Stable Diffusion: sqrt(beta_t) linear from sqrt(0.00085) to sqrt(0.012) at T = 1000.

    Both ends are scaled by 1000 / T, as for "linear"; at T = 1000 this is exactly Stable
    Diffusion's schedule.
    """
    scale = _REFERENCE_NUM_TIMESTEPS / num_timesteps
    sqrt_betas = np.linspace(
        np.sqrt(scale * _SCALED_LINEAR_BETA_START),
        np.sqrt(scale * _SCALED_LINEAR_BETA_END),
        num_timesteps,
        dtype=np.float64,
    )
    return sqrt_betas**2


def _betas_from_alphas_cumprod(
    alphas_cumprod_fn: Callable[[np.ndarray], np.ndarray], num_timesteps: int
) -> np.ndarray:
    """beta_t = min(1 - abar((t + 1) / T) / abar(t / T), 0.999) for a continuous abar(tau)."""
    tau = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    alphas_cumprod = alphas_cumprod_fn(tau)
    return np.minimum(1.0 - alphas_cumprod[1:] / alphas_cumprod[:-1], _MAX_BETA)


def _cosine_betas(num_timesteps: int) -> np.ndarray:
    """Improved DDPM (Nichol & Dhariwal 2021, eq. 17), s = 0.008.

    abar(tau) = f(tau) / f(0),  f(tau) = cos^2(pi/2 (tau + s) / (1 + s)).
    """

    def alphas_cumprod(tau: np.ndarray) -> np.ndarray:
        f = np.cos((tau + _COSINE_OFFSET) / (1.0 + _COSINE_OFFSET) * np.pi / 2) ** 2
        return f / f[0]

    return _betas_from_alphas_cumprod(alphas_cumprod, num_timesteps)


def _sigmoid_betas(num_timesteps: int) -> np.ndarray:
    """Sigmoid schedule of Jabri et al. 2022 (also Chen 2023), start -3, end 3, tau 1.

    abar(tau) = (sigmoid(3) - sigmoid(6 tau - 3)) / (sigmoid(3) - sigmoid(-3)).
    """

    def sigmoid(z: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-z))

    start, end = -3.0, 3.0

    def alphas_cumprod(tau: np.ndarray) -> np.ndarray:
        return (sigmoid(end) - sigmoid(start + tau * (end - start))) / (
            sigmoid(end) - sigmoid(start)
        )

    return _betas_from_alphas_cumprod(alphas_cumprod, num_timesteps)


BETA_SCHEDULES: dict[str, Callable[[int], np.ndarray]] = {
    "linear": _linear_betas,
    "scaled_linear": _scaled_linear_betas,
    "cosine": _cosine_betas,
    "sigmoid": _sigmoid_betas,
}


def beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    """The float64 betas [T] of the schedule registered as `name` (see `BETA_SCHEDULES`)."""
    if name not in BETA_SCHEDULES:
        raise ValueError(
            f"Unknown beta schedule name={name!r}; expected one of {sorted(BETA_SCHEDULES)}."
        )
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive int, got {num_timesteps!r}.")
    return BETA_SCHEDULES[name](num_timesteps)


@flax.struct.dataclass
class DiffusionSchedule:
    """Per-timestep coefficients of the forward process and its posterior, float32 arrays [T].

    Index t holds the coefficient of step t (t = 0 is the least noisy); see the module docstring
    for the equations. `posterior_log_variance_clipped` is log(beta-tilde_t) with the t = 0 entry,
    log(0), replaced by the t = 1 entry (improved DDPM).
    """

    betas: jax.Array
    alphas_cumprod: jax.Array
    alphas_cumprod_prev: jax.Array
    sqrt_alphas_cumprod: jax.Array
    sqrt_one_minus_alphas_cumprod: jax.Array
    sqrt_recip_alphas_cumprod: jax.Array
    sqrt_recipm1_alphas_cumprod: jax.Array
    posterior_variance: jax.Array
    posterior_log_variance_clipped: jax.Array
    posterior_mean_coef1: jax.Array
    posterior_mean_coef2: jax.Array
    num_timesteps: int = flax.struct.field(pytree_node=False)


def make_schedule(betas: np.ndarray) -> DiffusionSchedule:
    """Builds a `DiffusionSchedule` from betas [T], each in (0, 1), computing in float64."""
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.size < 2:
        raise ValueError(f"betas must be a 1-D array of length >= 2, got shape {betas.shape}.")
    if not np.all((betas > 0.0) & (betas < 1.0)):
        bad = betas[~((betas > 0.0) & (betas < 1.0))]
        raise ValueError(f"betas must lie in the open interval (0, 1); got values {bad[:5]}.")
    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas)
    alphas_cumprod_prev = np.concatenate([[1.0], alphas_cumprod[:-1]])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    coefficients = dict(
        betas=betas,
        alphas_cumprod=alphas_cumprod,
        alphas_cumprod_prev=alphas_cumprod_prev,
        sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod - 1.0),
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=np.log(
            np.concatenate([posterior_variance[1:2], posterior_variance[1:]])
        ),
        posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
    )
    return DiffusionSchedule(
        **{name: jnp.asarray(value, dtype=jnp.float32) for name, value in coefficients.items()},
        num_timesteps=len(betas),
    )


def schedule_from_config(name: str, num_timesteps: int) -> DiffusionSchedule:
    """`make_schedule(beta_schedule(name, num_timesteps))`, for configs that name a schedule."""
    return make_schedule(beta_schedule(name, num_timesteps))


def at_timesteps(values: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
    """values[t] for integer timesteps t [B], shaped [B, 1, ..., 1] with `ndim` axes.

    The result broadcasts against an x of shape [B, ...] with x.ndim == ndim. Inside jit an
    out-of-range t is clamped by the gather, not reported.
    """
    if t.ndim != 1:
        raise ValueError(f"t must have shape [batch], got shape {t.shape}.")
    if ndim < 1:
        raise ValueError(f"ndim must be >= 1 (the batch axis), got {ndim}.")
    return values[t].reshape(t.shape + (1,) * (ndim - 1))


def snr(schedule: DiffusionSchedule, t: jax.Array) -> jax.Array:
    """Signal-to-noise ratio SNR(t) = abar_t / (1 - abar_t) at timesteps t [B], shape [B]."""
    # The ratio of the square roots keeps float32 precision where 1 - abar_t is tiny.
    ratio = at_timesteps(schedule.sqrt_alphas_cumprod, t, 1) / at_timesteps(
        schedule.sqrt_one_minus_alphas_cumprod, t, 1
    )
    return jnp.square(ratio)
