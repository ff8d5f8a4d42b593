"""Reverse-process samplers: DDPM ancestral sampling, DDIM, DPM-Solver++(2M) and (3M).

Every sampler drives a denoiser `eps_fn(x_t, t) -> eps_hat` (t int32 [B]) from x_T ~ N(0, I)
to a sample x_0 with one `lax.scan` over its steps, and shares one signature:

    sampler(eps_fn, schedule, x_T, rng, *, num_steps=None, clip_x0=False,
            return_trajectory=False, **options) -> x_0  or  (x_0, Trajectory)

Samplers are pure; callers jit them with `eps_fn` closed over, for example
`jax.jit(functools.partial(ddim_sample, eps_fn, num_steps=50))(schedule, x_T, rng)`.
`make_eps_fn` adapts a network that predicts x_0 or v. Step i draws its noise from
`jax.random.fold_in(rng, i)`; `rng` is one key, or a batch of keys [B], one per example, so
that an example's noise does not depend on the other examples of its batch (see `step_noise`).
With `clip_x0`, the x_0 estimate is clipped to [-1, 1] and eps is recomputed from it, as is usual
for pixel-space models in [-1, 1].

DDIM and DPM-Solver++ run on S <= T respaced timesteps t_0 > ... > t_{S-1} (see
`sampling_timesteps`) and end with a step to abar = 1, so their last step returns the x_0
estimate at t_{S-1} without added noise.

Starting part-way (SDEdit, Meng et al. 2022): every sampler also takes `strength` s in [0, 1]
(default 1) and an optional clean `start_x0` [B, ...]. Of its timesteps t_0 > ... > t_{S-1}
(DDPM: T-1 .. 0) it runs only those with t_i < s T, which are the last ones, from index
k = `start_index(...)`, the number of t_i >= s T (s T rounded to 9 decimals, so that 0.07 x 100
is 7). s = 1 runs every step (t_0 <= T - 1 < T); s = 0 runs none. The state at step k is x_T
itself (then "x_T" means x_{t_k}), or, given `start_x0`, x_T's noise added to it:

    x_{t_k} = sqrt(abar_{t_k}) start_x0 + sqrt(1 - abar_{t_k}) x_T,

a draw of q(x_{t_k} | start_x0) whose eps is x_T. When no step runs, the sampler returns
start_x0 (else x_T) unchanged. Step i keeps its index in the full sequence (its noise is
fold_in(rng, i) whatever k), and DPM-Solver++'s first step run is first order (3M's second one
second order). With s = 1 and no `start_x0` a sampler computes exactly what it computes without
these options.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.core.diffusion.gaussian import (
    predict_eps_from_x0,
    predict_x0_from_eps,
    q_posterior_mean_variance,
    q_sample,
)
from diffusion_jax.core.diffusion.parameterization import (
    check_prediction_type,
    model_output_to_eps_x0,
)
from diffusion_jax.core.diffusion.schedules import DiffusionSchedule

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]

TIMESTEP_SPACINGS = ("trailing", "leading", "linspace")
DDPM_VARIANCES = ("posterior", "beta")


class Trajectory(NamedTuple):
    """The states of one reverse run, stacked along a leading step axis.

    x_t: [S + 1, B, ...], x_T (the starting state) first and the returned sample last. x0_pred:
    [S, B, ...], the (clipped, if asked) x_0 estimate at each step. t: [S] int32, the timestep
    of each step. S counts the steps run (fewer than the sequence's at strength < 1).
    """

    x_t: jax.Array
    x0_pred: jax.Array
    t: jax.Array


# A sample x_0, or (x_0, Trajectory) with return_trajectory=True.
SamplerOutput = jax.Array | tuple[jax.Array, Trajectory]


def make_eps_fn(
    apply_fn: Callable[[jax.Array, jax.Array], jax.Array],
    schedule: DiffusionSchedule,
    prediction_type: str,
) -> EpsFn:
    """Wraps `apply_fn(x_t, t) -> model_output` of type "eps", "x0" or "v" as an eps denoiser."""
    check_prediction_type(prediction_type)

    def eps_fn(x_t: jax.Array, t: jax.Array) -> jax.Array:
        eps, _ = model_output_to_eps_x0(schedule, x_t, t, apply_fn(x_t, t), prediction_type)
        return eps

    return eps_fn


def sampling_timesteps(num_timesteps: int, num_steps: int, spacing: str = "trailing") -> np.ndarray:
    """S = num_steps distinct timesteps of [0, T-1] in decreasing order, int32 [S].

    "trailing" (Lin et al. 2024): round(T - k T / S) - 1, k = 0 .. S-1; starts at T - 1, where
        x_T ~ N(0, I) is (nearly) exact, so it is the default.
    "leading" (DDIM, Stable Diffusion): k * (T // S), k = S-1 .. 0; starts below T - 1.
    "linspace": round(linspace(0, T - 1, S)) reversed; starts at T - 1 and ends at 0.
    """
    if spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"Unknown spacing={spacing!r}; expected one of {TIMESTEP_SPACINGS}.")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int):
        raise ValueError(f"num_steps must be an int, got {num_steps!r}.")
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(
            f"num_steps must be in [1, num_timesteps={num_timesteps}], got {num_steps}."
        )
    if spacing == "trailing":
        timesteps = np.round(np.arange(num_timesteps, 0, -num_timesteps / num_steps)) - 1
    elif spacing == "leading":
        timesteps = np.arange(num_steps)[::-1] * (num_timesteps // num_steps)
    else:
        timesteps = np.round(np.linspace(0, num_timesteps - 1, num_steps))[::-1]
    return timesteps.astype(np.int32)


def check_strength(strength: float) -> float:
    """`strength` as a float, refused unless it is a number in [0, 1]."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float, np.floating)):
        raise ValueError(f"strength must be a number in [0, 1], got {strength!r}.")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must lie in [0, 1], got {strength}.")
    return float(strength)


def start_index(timesteps: np.ndarray, num_timesteps: int, strength: float) -> int:
    """k, the first step a sampler runs at `strength` s (module docstring): the number of its
    decreasing `timesteps` t_i with t_i >= s T, T = num_timesteps. 0 (every step) for s = 1,
    len(timesteps) (none) for s = 0."""
    threshold = round(check_strength(strength) * num_timesteps, 9)
    return int(np.count_nonzero(np.asarray(timesteps) >= threshold))


def _starting_point(
    schedule: DiffusionSchedule,
    timesteps: np.ndarray,
    x_T: jax.Array,
    strength: float,
    start_x0: jax.Array | None,
) -> tuple[int, np.ndarray, jax.Array]:
    """(k, the timesteps run t_k..t_{S-1}, the state at step k) of the module docstring."""
    first = start_index(timesteps, schedule.num_timesteps, strength)
    if start_x0 is None:
        return first, timesteps[first:], x_T
    if start_x0.shape != x_T.shape:
        raise ValueError(f"start_x0 has shape {start_x0.shape}, x_T has shape {x_T.shape}.")
    start_x0 = start_x0.astype(jnp.float32)
    if first == len(timesteps):  # no step: the clean input itself
        return first, timesteps[first:], start_x0
    t = jnp.full((x_T.shape[0],), timesteps[first], jnp.int32)
    return first, timesteps[first:], q_sample(schedule, start_x0, t, x_T.astype(jnp.float32))


def _no_step(x: jax.Array, return_trajectory: bool) -> SamplerOutput:
    """What a sampler returns when strength leaves it no step: its starting state."""
    x = x.astype(jnp.float32)
    if not return_trajectory:
        return x
    empty = jnp.zeros((0,) + x.shape, jnp.float32)
    return x, Trajectory(x_t=x[None], x0_pred=empty, t=jnp.zeros((0,), jnp.int32))


def _denoise(
    eps_fn: EpsFn, schedule: DiffusionSchedule, x_t: jax.Array, t: jax.Array, clip_x0: bool
) -> tuple[jax.Array, jax.Array]:
    """(eps_hat, x0_hat) at the scalar timestep t, x0_hat clipped to [-1, 1] if `clip_x0`."""
    t_batch = jnp.full((x_t.shape[0],), t, jnp.int32)
    eps = eps_fn(x_t, t_batch)
    x0 = predict_x0_from_eps(schedule, x_t, t_batch, eps)
    if clip_x0:
        x0 = jnp.clip(x0, -1.0, 1.0)
        eps = predict_eps_from_x0(schedule, x_t, t_batch, x0)
    return eps, x0


def _run(
    step_fn: Callable,
    init_carry: tuple[jax.Array, ...],
    per_step_inputs: dict[str, jax.Array],
    timesteps: np.ndarray,
    return_trajectory: bool,
    first_step: int = 0,
) -> SamplerOutput:
    """Scans `step_fn(carry, inputs) -> (carry, (x_next, x0_hat))` and assembles the result.

    The carry, whose first element is the state x, is kept in float32 whatever x_T's dtype.
    `inputs` holds "step" (the index in the full sequence: first_step, first_step + 1, ...) and
    "t" besides `per_step_inputs`.
    """
    init_carry = tuple(leaf.astype(jnp.float32) for leaf in init_carry)
    x_T = init_carry[0]
    inputs = dict(
        per_step_inputs,
        step=jnp.arange(first_step, first_step + len(timesteps)),
        t=jnp.asarray(timesteps, jnp.int32),
    )

    def body(carry, step_inputs):
        carry, (x_next, x0) = step_fn(carry, step_inputs)
        return carry, (x_next, x0) if return_trajectory else None

    final_carry, outputs = jax.lax.scan(body, init_carry, inputs)
    x_0 = final_carry[0]
    if not return_trajectory:
        return x_0
    x_path, x0_path = outputs
    trajectory = Trajectory(
        x_t=jnp.concatenate([x_T[None], x_path]),
        x0_pred=x0_path,
        t=inputs["t"],
    )
    return x_0, trajectory


def step_noise(rng: jax.Array, step: jax.Array, like: jax.Array) -> jax.Array:
    """z ~ N(0, I) shaped like `like` [B, ...] for sampler step `step`: from fold_in(rng, step)
    for one key, or, for a batch of keys rng [B], example b's from fold_in(rng[b], step)."""
    if rng.ndim == 0:
        return jax.random.normal(jax.random.fold_in(rng, step), like.shape, like.dtype)
    if rng.shape != like.shape[:1]:
        raise ValueError(f"expected one key or {like.shape[0]} keys, got keys of shape {rng.shape}")
    return jax.vmap(
        lambda key: jax.random.normal(jax.random.fold_in(key, step), like.shape[1:], like.dtype)
    )(rng)


def _resolve_num_steps(num_steps: int | None, schedule: DiffusionSchedule) -> int:
    return schedule.num_timesteps if num_steps is None else num_steps


def ddpm_sample(
    eps_fn: EpsFn,
    schedule: DiffusionSchedule,
    x_T: jax.Array,
    rng: jax.Array,
    *,
    num_steps: int | None = None,
    clip_x0: bool = False,
    return_trajectory: bool = False,
    variance: str = "posterior",
    strength: float = 1.0,
    start_x0: jax.Array | None = None,
) -> SamplerOutput:
    """Ancestral sampling (Ho et al. 2020, Algorithm 2) over all T steps t = T-1 .. 0.

        x_{t-1} = mu-tilde_t(x_t, x0_hat) + sigma_t z,   z ~ N(0, I), no noise at t = 0,

    with sigma_t^2 = beta-tilde_t (variance="posterior") or beta_t (variance="beta"). z is scaled
    by the standard deviation sigma_t, the square root of the variance. `strength` < 1 runs the
    steps t < strength T only, from x_T or from `start_x0` noised (module docstring).
    """
    num_timesteps = schedule.num_timesteps
    if _resolve_num_steps(num_steps, schedule) != num_timesteps:
        raise ValueError(
            f"DDPM samples with all num_timesteps={num_timesteps} steps; got num_steps={num_steps}."
        )
    if variance not in DDPM_VARIANCES:
        raise ValueError(f"Unknown variance={variance!r}; expected one of {DDPM_VARIANCES}.")
    if variance == "posterior":
        stddevs = jnp.sqrt(schedule.posterior_variance)
    else:
        stddevs = jnp.sqrt(schedule.betas)
    timesteps = np.arange(num_timesteps - 1, -1, -1, dtype=np.int32)
    first_step, timesteps, x_T = _starting_point(schedule, timesteps, x_T, strength, start_x0)
    if not len(timesteps):
        return _no_step(x_T, return_trajectory)
    noise_scale = stddevs[timesteps] * (timesteps > 0)

    def step(carry, inputs):
        (x,) = carry
        _, x0 = _denoise(eps_fn, schedule, x, inputs["t"], clip_x0)
        t_batch = jnp.full((x.shape[0],), inputs["t"], jnp.int32)
        mean, _, _ = q_posterior_mean_variance(schedule, x0, x, t_batch)
        z = step_noise(rng, inputs["step"], mean)
        x_next = mean + inputs["noise_scale"] * z
        return (x_next,), (x_next, x0)

    return _run(
        step, (x_T,), {"noise_scale": noise_scale}, timesteps, return_trajectory, first_step
    )


def _signal_and_noise_scales(
    schedule: DiffusionSchedule, timesteps: np.ndarray
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """alpha = sqrt(abar) and sigma = sqrt(1 - abar) at each respaced step and at the step after
    it, where (alpha, sigma) = (1, 0) after the last step. Each is [S]."""
    alphas = schedule.sqrt_alphas_cumprod[timesteps]
    sigmas = schedule.sqrt_one_minus_alphas_cumprod[timesteps]
    alphas_next = jnp.concatenate([alphas[1:], jnp.ones((1,), jnp.float32)])
    sigmas_next = jnp.concatenate([sigmas[1:], jnp.zeros((1,), jnp.float32)])
    return alphas, sigmas, alphas_next, sigmas_next


def ddim_sample(
    eps_fn: EpsFn,
    schedule: DiffusionSchedule,
    x_T: jax.Array,
    rng: jax.Array,
    *,
    num_steps: int | None = None,
    clip_x0: bool = False,
    return_trajectory: bool = False,
    eta: float | jax.Array = 0.0,
    timestep_spacing: str = "trailing",
    strength: float = 1.0,
    start_x0: jax.Array | None = None,
) -> SamplerOutput:
    """DDIM (Song et al. 2021, eq. 12) on respaced timesteps; eta = 0 is deterministic.

    From step t to the next respaced step s (abar_s = 1 after the last step):

        sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s)
        x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_hat + sigma z.

    eta = 1 with all T steps is DDPM ancestral sampling with the posterior variance.
    `strength` < 1 runs the last steps only, from x_T or from `start_x0` noised (module
    docstring).
    """
    if isinstance(eta, (int, float)) and eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}.")
    timesteps = sampling_timesteps(
        schedule.num_timesteps, _resolve_num_steps(num_steps, schedule), timestep_spacing
    )
    first_step, timesteps, x_T = _starting_point(schedule, timesteps, x_T, strength, start_x0)
    if not len(timesteps):
        return _no_step(x_T, return_trajectory)
    alphas, sigmas, alphas_next, sigmas_next = _signal_and_noise_scales(schedule, timesteps)
    noise_scales = eta * (sigmas_next / sigmas) * jnp.sqrt(1.0 - jnp.square(alphas / alphas_next))
    per_step_inputs = {
        "x0_scale": alphas_next,
        # max(., 0) guards float32 rounding where eta = 1 makes the difference exactly zero.
        "eps_scale": jnp.sqrt(jnp.maximum(jnp.square(sigmas_next) - jnp.square(noise_scales), 0.0)),
        "noise_scale": noise_scales,
    }

    def step(carry, inputs):
        (x,) = carry
        eps, x0 = _denoise(eps_fn, schedule, x, inputs["t"], clip_x0)
        z = step_noise(rng, inputs["step"], x0)
        x_next = inputs["x0_scale"] * x0 + inputs["eps_scale"] * eps + inputs["noise_scale"] * z
        return (x_next,), (x_next, x0)

    return _run(step, (x_T,), per_step_inputs, timesteps, return_trajectory, first_step)


def dpm_solver_pp_2m_sample(
    eps_fn: EpsFn,
    schedule: DiffusionSchedule,
    x_T: jax.Array,
    rng: jax.Array,
    *,
    num_steps: int | None = None,
    clip_x0: bool = False,
    return_trajectory: bool = False,
    timestep_spacing: str = "trailing",
    strength: float = 1.0,
    start_x0: jax.Array | None = None,
) -> SamplerOutput:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): a multistep solver of the probability-flow
    ODE in the data prediction x0_hat, on respaced timesteps. `rng` is unused (the solver is
    deterministic); it is accepted so that all samplers share one signature.

    With alpha = sqrt(abar), sigma = sqrt(1 - abar), lambda = log(alpha / sigma), a step from t_i
    to t_{i+1} of length h_i = lambda_{i+1} - lambda_i and the data predictions D_i at t_i is

        x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (e^{-h_i} - 1)
                  ((1 + 1 / (2 r_i)) D_i - 1 / (2 r_i) D_{i-1}),     r_i = h_{i-1} / h_i.

    The first step and the last one, to abar = 1 (sigma = 0, h = inf), are first order
    (the D_{i-1} term dropped), as in the reference implementation and diffusers'
    DPMSolverMultistepScheduler with final_sigmas_type="zero". `strength` < 1 runs the last
    steps only, the first of them first order, from x_T or from `start_x0` noised (module
    docstring).
    """
    del rng
    return _dpm_solver_pp_multistep(
        2,
        eps_fn,
        schedule,
        x_T,
        num_steps,
        clip_x0,
        return_trajectory,
        timestep_spacing,
        strength,
        start_x0,
    )


# diffusers' lower_order_final: with fewer steps than this, the step before the last one is at
# most second order (the last one is always first order: it steps to sigma = 0).
LOWER_ORDER_FINAL_STEPS = 15


def dpm_solver_pp_3m_sample(
    eps_fn: EpsFn,
    schedule: DiffusionSchedule,
    x_T: jax.Array,
    rng: jax.Array,
    *,
    num_steps: int | None = None,
    clip_x0: bool = False,
    return_trajectory: bool = False,
    timestep_spacing: str = "trailing",
    strength: float = 1.0,
    start_x0: jax.Array | None = None,
) -> SamplerOutput:
    """DPM-Solver++(3M) (Lu et al. 2022, the multistep third-order solver in the data prediction
    x0_hat; diffusers' `multistep_dpm_solver_third_order_update`) of the probability-flow ODE, on
    respaced timesteps. `rng` is unused (the solver is deterministic).

    With alpha, sigma, lambda, h_i and D_i as in `dpm_solver_pp_2m_sample`, a third-order step
    from t_i to t_{i+1} uses D_i, D_{i-1}, D_{i-2}:

        r0 = h_{i-1} / h_i,  r1 = h_{i-2} / h_i,
        D1_0 = (D_i - D_{i-1}) / r0,  D1_1 = (D_{i-1} - D_{i-2}) / r1,
        D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1),  D2 = (D1_0 - D1_1) / (r0 + r1),
        x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (e^{-h_i} - 1) D_i
                  + alpha_{i+1} ((e^{-h_i} - 1) / h_i + 1) D1
                  - alpha_{i+1} ((e^{-h_i} - 1 + h_i) / h_i^2 - 1/2) D2.

    It is computed as 2M's step, x_{i+1} = x_scale x_i + data_scale data with x_scale =
    sigma_{i+1} / sigma_i, data_scale = -alpha_{i+1} (e^{-h_i} - 1) and, with E = e^{-h_i} - 1,

        data = (1 + w1) D_i - w1 D_{i-1} + w2 (D_{i-1} - D_{i-2}),
        b1 = -(E / h_i + 1) / E,  b2 = ((E + h_i) / h_i^2 - 1/2) / E,
        g = (b1 r0 + b2) / (r0 + r1),  w1 = (b1 + g) / r0,  w2 = -g / r1

    (data = D_i + b1 D1 + b2 D2 rearranged; b1 -> 1/2 and b2 -> 1/6 as h -> 0). A second-order
    step is 2M's: w1 = 1 / (2 r0), w2 = 0; a first-order step has w1 = w2 = 0.

    Orders, as diffusers' DPMSolverMultistepScheduler with solver_order=3, lower_order_final=True
    and final_sigmas_type="zero": the first step run is first order, the second one second order,
    the later ones third order, except that the last step (to abar = 1: sigma = 0, h = inf) is
    first order and, when the sequence has fewer than `LOWER_ORDER_FINAL_STEPS` = 15 steps, the
    one before it is at most second order. Hence with 4 steps or fewer it computes what
    `dpm_solver_pp_2m_sample` computes. `strength` < 1 runs the last steps only, the first of
    them first order and the second second order, from x_T or from `start_x0` noised (module
    docstring); the 15-step rule counts the whole sequence (`num_steps`), as diffusers does.
    """
    del rng
    return _dpm_solver_pp_multistep(
        3,
        eps_fn,
        schedule,
        x_T,
        num_steps,
        clip_x0,
        return_trajectory,
        timestep_spacing,
        strength,
        start_x0,
    )


def _dpm_solver_pp_multistep(
    max_order: int,
    eps_fn: EpsFn,
    schedule: DiffusionSchedule,
    x_T: jax.Array,
    num_steps: int | None,
    clip_x0: bool,
    return_trajectory: bool,
    timestep_spacing: str,
    strength: float,
    start_x0: jax.Array | None,
) -> SamplerOutput:
    """DPM-Solver++(2M) (`max_order` 2) or (3M) (3): the steps and orders of their docstrings.
    The third-order term's weight is 0 on the steps of lower order, so 2M's arithmetic is its
    own docstring's."""
    num_steps = _resolve_num_steps(num_steps, schedule)
    timesteps = sampling_timesteps(schedule.num_timesteps, num_steps, timestep_spacing)
    first_step, timesteps, x_T = _starting_point(schedule, timesteps, x_T, strength, start_x0)
    if not len(timesteps):
        return _no_step(x_T, return_trajectory)
    num_run = len(timesteps)
    alphas, sigmas, alphas_next, sigmas_next = _signal_and_noise_scales(schedule, timesteps)
    # lambda_next = log(1 / 0) = +inf after the last step, where e^{-h} = 0 keeps x finite.
    step_sizes = (jnp.log(alphas_next) - jnp.log(sigmas_next)) - (jnp.log(alphas) - jnp.log(sigmas))
    ones = jnp.ones((1,), jnp.float32)
    previous_step_sizes = jnp.concatenate([ones, step_sizes[:-1]])
    second_previous_step_sizes = jnp.concatenate([ones, ones, step_sizes[:-2]])[:num_run]
    order = np.minimum(np.arange(num_run) + 1, max_order)  # 1, 2, 3, 3, ... from the first step
    if max_order == 3 and num_run >= 2 and num_steps < LOWER_ORDER_FINAL_STEPS:
        order[-2] = min(order[-2], 2)
    order[-1] = 1  # the step to sigma = 0 (h = inf)
    is_second_order, is_third_order = jnp.asarray(order == 2), jnp.asarray(order == 3)
    # Where a coefficient is not used, h may be infinite or h_{i-1}, h_{i-2} undefined: divide by
    # dummies, so that no NaN or inf arises.
    second_order_weight = jnp.where(
        is_second_order,
        0.5 * step_sizes / jnp.where(is_second_order, previous_step_sizes, 1.0),
        0.0,
    )
    h = jnp.where(is_third_order, step_sizes, 1.0)
    r0 = jnp.where(is_third_order, previous_step_sizes, 1.0) / h
    r1 = jnp.where(is_third_order, second_previous_step_sizes, 1.0) / h
    expm1_h = jnp.expm1(-h)
    b1 = -(expm1_h / h + 1.0) / expm1_h
    b2 = ((expm1_h + h) / jnp.square(h) - 0.5) / expm1_h
    g = (b1 * r0 + b2) / (r0 + r1)
    per_step_inputs = {
        "x_scale": sigmas_next / sigmas,
        "data_scale": -alphas_next * jnp.expm1(-step_sizes),
        "previous_weight": jnp.where(is_third_order, (b1 + g) / r0, second_order_weight),
        "second_previous_weight": jnp.where(is_third_order, -g / r1, 0.0),
    }

    def step(carry, inputs):
        x, previous_x0, second_previous_x0 = carry
        _, x0 = _denoise(eps_fn, schedule, x, inputs["t"], clip_x0)
        weight = inputs["previous_weight"]
        data = (1.0 + weight) * x0 - weight * previous_x0
        data = data + inputs["second_previous_weight"] * (previous_x0 - second_previous_x0)
        x_next = inputs["x_scale"] * x + inputs["data_scale"] * data
        return (x_next, x0, previous_x0), (x_next, x0)

    return _run(
        step,
        (x_T, jnp.zeros_like(x_T), jnp.zeros_like(x_T)),
        per_step_inputs,
        timesteps,
        return_trajectory,
        first_step,
    )


SAMPLERS: dict[str, Callable] = {
    "ddpm": ddpm_sample,
    "ddim": ddim_sample,
    "dpm_solver_pp_2m": dpm_solver_pp_2m_sample,
    "dpm_solver_pp_3m": dpm_solver_pp_3m_sample,
}


def get_sampler(name: str) -> Callable:
    """The sampler registered as `name` in `SAMPLERS`."""
    if name not in SAMPLERS:
        raise ValueError(f"Unknown sampler name={name!r}; expected one of {sorted(SAMPLERS)}.")
    return SAMPLERS[name]
