"""Drawing images from a trained denoiser: jitted sampling and x_0 estimates.

The sampler (DDPM, DDIM, DPM-Solver++(2M) or (3M), chosen by `config.sample.sampler`) runs the whole
reverse process inside one jitted `lax.scan`; classifier-free guidance evaluates the conditional
and unconditional branches in one batched forward pass per step.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from diffusion_jax.core.diffusion.guidance import guided_model_output
from diffusion_jax.core.diffusion.parameterization import model_output_to_eps_x0
from diffusion_jax.core.diffusion.samplers import (
    Trajectory,
    check_strength,
    get_sampler,
    make_eps_fn,
)
from diffusion_jax.core.diffusion.schedules import DiffusionSchedule
from diffusion_jax.tasks.latent.diffusion_space import diffusion_shape

ModelOutputFn = Callable[[jax.Array, jax.Array], jax.Array]


def guided_denoiser(
    graphdef: nnx.GraphDef, params: nnx.State, cond: jax.Array, guidance_scale: float
) -> ModelOutputFn:
    """`(x_t, t) -> model output` of the model in eval mode, guided towards `cond`."""
    model = nnx.merge(graphdef, params)
    model.eval()
    return lambda x_t, t: guided_model_output(model, x_t, t, cond, guidance_scale)


def sampler_options(sample_config: ml_collections.ConfigDict, num_timesteps: int) -> dict:
    """Keyword arguments of the configured sampler (DDPM always takes all T steps)."""
    if sample_config.sampler == "ddpm":
        return {"num_steps": num_timesteps}
    options = {"num_steps": sample_config.num_steps}
    if sample_config.sampler == "ddim":
        options["eta"] = sample_config.eta
    return options


def make_sample_fn(
    graphdef: nnx.GraphDef,
    schedule: DiffusionSchedule,
    config: ml_collections.ConfigDict,
    *,
    return_trajectory: bool = False,
    guidance_scale: float | None = None,
    strength: float | None = None,
) -> Callable[..., jax.Array | tuple[jax.Array, Trajectory]]:
    """A jitted `(params, cond, rng) -> x_0` (and the trajectory when asked).

    One sample is drawn per row of `cond` [B, D]. `rng` is one key, from which x_T ~ N(0, I) and
    the sampler's noise are drawn for the whole batch, or a batch of keys [B]: example b then
    depends on rng[b] alone (x_T from split(rng[b])[0], its sampler noise from split(rng[b])[1]),
    whatever else is in its batch. Samples are in the diffusion space: images, or latents for
    `DiffusionSpace.decode`. `guidance_scale` overrides `config.sample.guidance_scale` (0:
    unconditional samples).

    Given `start_x0` [B, ...], clean diffusion-space inputs (images, or encoded latents), it
    starts part-way (SDEdit; `core.diffusion.samplers`, "Starting part-way") with `strength` s
    (None: 1): the same x_T is drawn as above and serves as their noise, x_{t_k} =
    sqrt(abar_{t_k}) start_x0 + sqrt(1 - abar_{t_k}) x_T, and the sampler runs its steps
    t < s T from there. s = 0 returns start_x0; s = 1 runs every step, from
    sqrt(abar_{t_0}) start_x0 + sqrt(1 - abar_{t_0}) x_T instead of x_T.
    """
    sample_config = config.sample
    sampler = get_sampler(sample_config.sampler)
    options = sampler_options(sample_config, schedule.num_timesteps)
    side, channels = diffusion_shape(config)
    if guidance_scale is None:
        guidance_scale = sample_config.guidance_scale
    if strength is not None:
        options["strength"] = check_strength(strength)

    def sample(
        params: nnx.State, cond: jax.Array, rng: jax.Array, start_x0: jax.Array | None = None
    ):
        shape = (side, side, channels)
        if rng.ndim == 0:
            noise_rng, sampler_rng = jax.random.split(rng)
            x_T = jax.random.normal(noise_rng, (cond.shape[0],) + shape, jnp.float32)
        else:
            noise_rng, sampler_rng = jax.vmap(jax.random.split)(rng).T
            x_T = jax.vmap(lambda key: jax.random.normal(key, shape, jnp.float32))(noise_rng)
        denoiser = guided_denoiser(graphdef, params, cond, guidance_scale)
        eps_fn = make_eps_fn(denoiser, schedule, config.diffusion.prediction_type)
        return sampler(
            eps_fn,
            schedule,
            x_T,
            sampler_rng,
            clip_x0=sample_config.clip_x0,
            return_trajectory=return_trajectory,
            **options,
            **({} if start_x0 is None else {"start_x0": start_x0}),
        )

    return jax.jit(sample)


def make_x0_estimate_fn(
    graphdef: nnx.GraphDef, schedule: DiffusionSchedule, prediction_type: str
) -> Callable[[nnx.State, jax.Array, jax.Array, jax.Array], jax.Array]:
    """A jitted `(params, x_t, t, cond) -> x0_hat`: the conditional model's estimate of x_0."""

    def estimate(params: nnx.State, x_t: jax.Array, t: jax.Array, cond: jax.Array) -> jax.Array:
        model = nnx.merge(graphdef, params)
        model.eval()
        output = model(x_t, t, cond).astype(jnp.float32)
        _, x0 = model_output_to_eps_x0(schedule, x_t, t, output, prediction_type)
        return x0

    return jax.jit(estimate)
