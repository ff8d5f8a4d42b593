"""Training the KL autoencoder of latent diffusion: `train_autoencoder(config, workdir)`.

Trains in WORKDIR/autoencoder with the loop, train step and Orbax checkpoints every model of this
project shares (`core.training.loop`), on the training images of `config.data`, and resumes there
after an interruption. The loss is `autoencoder_losses.autoencoder_loss`:

    L1 + perceptual_weight * P + kl_weight * KL  [+ discriminator_weight * G from the start step]

P is the identity perceptual distance on the stages of the frozen identity encoder (the
conditioning encoder of `config.encoder`, trained first when it is not given), because no
pretrained VGG/LPIPS can be downloaded here and faces call for features that know identity. Its
weights reach the jitted step as `LossContext.frozen`, never as compiled-in constants.

With `discriminator_weight > 0` a PatchGAN discriminator trains in the same step: the objective is
L_AE + L_D, where L_AE sees the discriminator's parameters behind stop_gradient and L_D sees the
reconstructions behind stop_gradient, so each network receives the gradient of its own loss only
(simultaneous updates; taming-transformers alternates them). The two networks share the AdamW
settings of `config.autoencoder.train`, each with its own gradient clipping and moments.

When training completes, the latent scale s = 1 / std of the posterior means of
`config.autoencoder.scale_batches` training batches is estimated (`latent.latent_scale`), and the
autoencoder is exported with it to WORKDIR/autoencoder/model (`latent.autoencoder_store`), the
directory latent diffusion reads. WORKDIR/autoencoder/reconstructions.png shows the first image
of each of `config.sample.identities` above its decoded posterior mean, with their mean absolute
error (also in the export's provenance). A complete export is not trained again.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from absl import logging
from flax import nnx

from diffusion_jax.core import parallel, stages
from diffusion_jax.core.figures import image_grid, save_figure
from diffusion_jax.core.models.autoencoder import AutoencoderKL
from diffusion_jax.core.models.patch_discriminator import PatchDiscriminator
from diffusion_jax.core.run_layout import RunLayout
from diffusion_jax.core.training import state as state_lib
from diffusion_jax.core.training.loop import TrainingTask, run_training
from diffusion_jax.core.training.step import Batch, LossContext, LossFn, Metrics
from diffusion_jax.tasks.data.sources import input_pipeline
from diffusion_jax.tasks.latent import autoencoder_store
from diffusion_jax.tasks.latent.autoencoder_losses import (
    autoencoder_loss,
    discriminator_loss,
    frozen_identity_features,
)
from diffusion_jax.tasks.latent.diffusion_space import (
    IMAGE_CHANNELS,
    configured_autoencoder_architecture,
)
from diffusion_jax.tasks.latent.latent_scale import LatentMoments
from diffusion_jax.tasks.recognition.encoder_store import load_encoder

PERCEPTUAL_ENCODER = "perceptual_encoder"  # its key in LossContext.frozen


class AutoencoderWithDiscriminator(nnx.Module):
    """The networks trained: `autoencoder` (the exported one) and an optional `discriminator`."""

    def __init__(
        self,
        architecture: dict[str, Any],
        discriminator: dict[str, int] | None,
        rngs: nnx.Rngs,
    ):
        self.autoencoder = AutoencoderKL(**architecture, rngs=rngs)
        self.discriminator = (
            None if discriminator is None else PatchDiscriminator(**discriminator, rngs=rngs)
        )


def discriminator_arguments(config: ml_collections.ConfigDict) -> dict[str, int] | None:
    """PatchDiscriminator's keyword arguments, or None when `discriminator_weight` is 0."""
    autoencoder_config = config.autoencoder
    if autoencoder_config.discriminator_weight == 0:
        return None
    return {
        "in_channels": IMAGE_CHANNELS,
        "base_channels": autoencoder_config.discriminator_channels,
        "num_layers": autoencoder_config.discriminator_layers,
        "num_groups": autoencoder_config.norm_num_groups,
    }


def autoencoder_builder(config: ml_collections.ConfigDict) -> state_lib.BuildModel:
    architecture = configured_autoencoder_architecture(config)
    discriminator = discriminator_arguments(config)
    return lambda rngs: AutoencoderWithDiscriminator(architecture, discriminator, rngs)


def make_autoencoder_loss(
    config: ml_collections.ConfigDict, perceptual_graphdef: nnx.GraphDef | None
) -> LossFn:
    """L_AE (+ L_D) of the module docstring for batches {"image"}; the perceptual encoder's state
    is `context.frozen[PERCEPTUAL_ENCODER]` when `perceptual_graphdef` is given."""
    autoencoder_config = config.autoencoder
    start_step = autoencoder_config.discriminator_start_step

    def loss_fn(
        model: AutoencoderWithDiscriminator, batch: Batch, context: LossContext
    ) -> tuple[jax.Array, Metrics]:
        images = batch["image"]
        reconstruction, mean, logvar = model.autoencoder(images, context.rng)
        perceptual = {}
        if perceptual_graphdef is not None:
            encoder = nnx.merge(perceptual_graphdef, context.frozen[PERCEPTUAL_ENCODER])
            perceptual = {
                "feature_fn": frozen_identity_features(encoder),
                "perceptual_weight": autoencoder_config.perceptual_weight,
            }
        adversarial = {}
        if model.discriminator is not None:
            graphdef, params = nnx.split(model.discriminator)
            critic = nnx.merge(graphdef, jax.lax.stop_gradient(params))
            adversarial = {
                "logits_fake": critic(reconstruction),
                "adversarial_weight": autoencoder_config.discriminator_weight,
                "step": context.step,
                "discriminator_start_step": start_step,
            }
        loss, metrics = autoencoder_loss(
            reconstruction,
            images,
            mean,
            logvar,
            kl_weight=autoencoder_config.kl_weight,
            **perceptual,
            **adversarial,
        )
        metrics["autoencoder_loss"] = metrics.pop("loss")
        metrics["posterior_std"] = jnp.mean(jnp.exp(0.5 * logvar))
        metrics["latent_mean_std"] = jnp.std(mean)
        if model.discriminator is not None:
            critic_loss, critic_metrics = discriminator_loss(
                model.discriminator(images),
                model.discriminator(jax.lax.stop_gradient(reconstruction)),
                step=context.step,
                discriminator_start_step=start_step,
            )
            loss = loss + critic_loss
            metrics.update(critic_metrics)
        return loss, metrics

    return loss_fn


def per_network_optimizer(
    train_config: ml_collections.ConfigDict,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """`state.make_optimizer`'s AdamW and clipping, applied to each top-level network separately."""
    optimizer, learning_rate = state_lib.make_optimizer(train_config)

    def network_of(params: nnx.State) -> nnx.State:
        """Each parameter's label: the name of its top-level network."""
        return jax.tree_util.tree_map_with_path(lambda path, _: path[0].key, params)

    networks = ("autoencoder", "discriminator")
    return optax.multi_transform({name: optimizer for name in networks}, network_of), learning_rate


def estimate_posterior_scale(
    autoencoder: AutoencoderKL, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
) -> float:
    """1 / std of the posterior means of `config.autoencoder.scale_batches` training batches."""
    graphdef, weights = nnx.split(autoencoder)
    weights = parallel.replicate(weights, mesh)
    posterior_mean = jax.jit(
        lambda weights, images: nnx.merge(graphdef, weights).encode(images)[0],
        out_shardings=parallel.replicated(mesh),
    )
    iterator = input_pipeline.make_train_iterator(
        config.data, global_batch_size=config.autoencoder.train.batch_size, seed=config.seed + 1
    )
    moments = LatentMoments()
    for _ in tqdm.trange(
        config.autoencoder.scale_batches,
        desc="Latent scale",
        unit="batch",
        disable=jax.process_index() > 0,
    ):
        batch = parallel.global_batch(next(iterator), mesh)
        moments = moments.update(posterior_mean(weights, batch["image"]))
    return moments.scale()


def write_reconstructions(
    autoencoder: AutoencoderKL, config: ml_collections.ConfigDict, out_path: str
) -> float:
    """Draws real images above their reconstructions D(mu(x)); returns the mean |x - D(mu(x))|."""
    images, _ = input_pipeline.first_images_of_labels(config.data, config.sample.identities)
    reconstruct = nnx.jit(lambda model, x: model.decode(model.encode(x)[0]))
    reconstructions = np.clip(np.asarray(reconstruct(autoencoder, jnp.asarray(images))), -1, 1)
    error = float(np.mean(np.abs(reconstructions - images)))
    if jax.process_index() == 0:
        figure = image_grid(
            np.stack([images, reconstructions]),
            title=f"Autoencoder reconstructions (mean absolute error {error:.4f})",
            row_labels=["image", "D(mu(x))"],
        )
        save_figure(figure, out_path)
    return error


def train_autoencoder(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Trains (or resumes, or finds complete) the autoencoder of `config` in
    WORKDIR/autoencoder; returns its export directory. With a perceptual loss it needs the
    identity encoder (`stages.require`); SIGTERM raises `preemption.Preempted` (a rerun
    resumes)."""
    layout = RunLayout.from_config(workdir, config)
    run = RunLayout(layout.root).autoencoder  # WORKDIR/autoencoder even if a checkpoint is set
    export_directory = run.export_dir
    architecture = configured_autoencoder_architecture(config)
    if autoencoder_store.is_complete(export_directory):
        saved = autoencoder_store.read_description(export_directory)["architecture"]
        if saved != architecture:
            raise ValueError(
                f"The autoencoder already trained in {export_directory} has architecture "
                f"{saved}, but config.autoencoder asks for {architecture}. Remove "
                f"{run.run_dir} to train a new one, or restore the config."
            )
        logging.info("Autoencoder already trained: %s.", export_directory)
        return str(export_directory)

    mesh = parallel.make_mesh(config.mesh)
    input_pipeline.ensure_prepared(config.data)
    frozen, perceptual_graphdef = {}, None
    if config.autoencoder.perceptual_weight > 0:
        stages.require(layout, config, "encoder")
        encoder = load_encoder(layout.encoder.export_dir).model
        perceptual_graphdef, encoder_state = nnx.split(encoder)
        frozen = {PERCEPTUAL_ENCODER: encoder_state}
    build_model = autoencoder_builder(config)
    task = TrainingTask(
        name="autoencoder",
        config=config,
        train_config=config.autoencoder.train,
        build_model=build_model,
        loss_fn=make_autoencoder_loss(config, perceptual_graphdef),
        data_iterator=input_pipeline.make_train_iterator(
            config.data, global_batch_size=config.autoencoder.train.batch_size, seed=config.seed
        ),
        frozen=frozen,
        make_optimizer=per_network_optimizer,
    )
    result = run_training(task, run.run_dir, mesh, jax.random.key(config.seed))
    model = nnx.merge(state_lib.model_graphdef(build_model), result.state.params).autoencoder
    latent_scale = estimate_posterior_scale(model, config, mesh)
    reconstruction_error = write_reconstructions(model, config, run.run_dir / "reconstructions.png")
    logging.info(
        "Latent scale: %.5f; reconstruction error %.4f.", latent_scale, reconstruction_error
    )
    autoencoder_store.save_autoencoder(
        export_directory,
        model,
        architecture,
        latent_scale=latent_scale,
        provenance={
            "trained_in": str(run.run_dir),
            "step": int(result.state.step),
            "reconstruction_mean_absolute_error": reconstruction_error,
            "perceptual_encoder": str(layout.encoder.export_dir)
            if perceptual_graphdef is not None
            else None,
            "seed": config.seed,
            "data": config.data.to_dict(),
        },
    )
    logging.info("Exported the autoencoder to %s.", export_directory)
    return str(export_directory)
