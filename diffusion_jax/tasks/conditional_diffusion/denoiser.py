"""The conditional diffusion model: its UNet, built from the config, and its training loss.

For a batch of clean images x_0 with conditions c, the loss draws t ~ U{0..T-1} and
eps ~ N(0, I), forms x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, drops the condition for
classifier-free guidance, and returns the (optionally min-SNR weighted) L_simple loss of the
model's eps / x_0 / v prediction.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from diffusion_jax.core.diffusion.gaussian import q_sample
from diffusion_jax.core.diffusion.losses import diffusion_loss
from diffusion_jax.core.diffusion.schedules import DiffusionSchedule
from diffusion_jax.core.models.conditioning import condition_dropout
from diffusion_jax.core.models.unet import UNet
from diffusion_jax.core.training import state as state_lib
from diffusion_jax.core.training.step import Batch, LossContext, LossFn, Metrics
from diffusion_jax.tasks.latent.diffusion_space import diffusion_shape


def unet_architecture(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The UNet's architecture arguments for `config` (no dtypes, no RNGs).

    Shared with the PyTorch twin in benchmarks/, so both build the same network. Its input is
    x_0's shape in `config.diffusion.space`: images, or an autoencoder's latents.
    """
    model_config = config.model
    side, channels = diffusion_shape(config)
    return dict(
        image_size=side,
        in_channels=channels,
        out_channels=channels,
        base_channels=model_config.base_channels,
        channel_mults=tuple(model_config.channel_mults),
        num_res_blocks=model_config.num_res_blocks,
        attention_resolutions=tuple(model_config.attention_resolutions),
        head_channels=model_config.head_channels,
        dropout=model_config.dropout,
        cond_dim=config.condition.dim,
        cross_attention=model_config.cross_attention,
        num_cond_tokens=model_config.num_cond_tokens,
        stem=model_config.stem,
        num_groups=model_config.num_groups,
    )


def unet_builder(config: ml_collections.ConfigDict) -> state_lib.BuildModel:
    """`rngs -> UNet`: the denoiser of `config.model` for x_0 of `diffusion_shape(config)`."""

    def build(rngs: nnx.Rngs) -> UNet:
        return UNet(
            **unet_architecture(config),
            dtype=state_lib.COMPUTE_DTYPES[config.model.dtype],
            param_dtype=jnp.float32,
            rngs=rngs,
        )

    return build


def unet_graphdef(config: ml_collections.ConfigDict) -> nnx.GraphDef:
    return state_lib.model_graphdef(unet_builder(config))


def make_diffusion_loss(schedule: DiffusionSchedule, config: ml_collections.ConfigDict) -> LossFn:
    """The loss of the module docstring for batches {"x0": [B, H, W, C], "cond": [B, D] unit
    vectors}, x0 in the diffusion space: images in [-1, 1], or scaled latents."""
    diffusion_config = config.diffusion

    def loss_fn(model: UNet, batch: Batch, context: LossContext) -> tuple[jax.Array, Metrics]:
        x0 = batch["x0"]
        t_rng, noise_rng, cond_rng, dropout_rng = jax.random.split(context.rng, 4)
        t = jax.random.randint(t_rng, (x0.shape[0],), 0, schedule.num_timesteps)
        noise = jax.random.normal(noise_rng, x0.shape, x0.dtype)
        x_t = q_sample(schedule, x0, t, noise)
        cond, cond_mask = condition_dropout(
            cond_rng,
            batch["cond"],
            p_uncond=config.condition.p_uncond,
            partial_dropout=config.condition.partial_dropout,
        )
        output = model(x_t, t, cond, cond_mask, rngs=nnx.Rngs(dropout=dropout_rng))
        per_example = diffusion_loss(
            schedule,
            output.astype(jnp.float32),
            x0,
            noise,
            t,
            prediction_type=diffusion_config.prediction_type,
            weighting=diffusion_config.loss_weighting,
            min_snr_gamma=diffusion_config.min_snr_gamma,
        )
        return per_example.mean(), {}

    return loss_fn
