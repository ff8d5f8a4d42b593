"""Training the conditional diffusion model: `train_and_evaluate(config, workdir)`.

With `config.condition.source == "encoder"` and no `config.encoder.checkpoint`, the identity
encoder is trained first into WORKDIR/encoder (skipped when already complete). In latent space
(`config.diffusion.space == "latent"`) without `config.autoencoder.checkpoint`, the autoencoder is
trained next into WORKDIR/autoencoder (likewise). The diffusion model then trains (or resumes) in
WORKDIR with the shared loop of `train.loop`, on x_0 = each batch's images or their latents
(`latent.diffusion_space`), and writes the four figures of `evaluate.diffusion_figures` to
WORKDIR/figures periodically and at the end.
"""

import os

import jax
import ml_collections
import numpy as np
from absl import logging

from diffusion_jax.core import parallel
from diffusion_jax.tasks.data.sources import input_pipeline
from diffusion_jax.core.diffusion.schedules import schedule_from_config
from diffusion_jax.tasks.conditional_diffusion.diffusion_figures import DiffusionFigureWriter
from diffusion_jax.tasks.latent.autoencoder_training import train_autoencoder
from diffusion_jax.tasks.latent.diffusion_space import DiffusionSpace, diffusion_space
from diffusion_jax.tasks.recognition.encoder_training import train_encoder
from diffusion_jax.core.training import state as state_lib
from diffusion_jax.tasks.conditional_diffusion.denoiser import make_diffusion_loss, unet_builder, unet_graphdef
from diffusion_jax.tasks.conditional_diffusion.identity_conditions import IdentityConditions, identity_conditions
from diffusion_jax.core.training.loop import TrainingTask, run_training


def figure_inputs(
    config: ml_collections.ConfigDict, conditions: IdentityConditions
) -> dict[str, np.ndarray | list[int]]:
    """The first real image of each sample identity (forward-figure rows) and its condition,
    which is also the condition the identity figure samples from."""
    labels = [int(label) for label in config.sample.identities]
    images, image_labels = input_pipeline.first_images_of_labels(config.data, labels)
    conds = conditions.of_images(images, image_labels)
    return {
        "real_images": images,
        "real_conds": conds,
        "identity_conds": conds,
        "identity_labels": labels,
    }


def to_diffusion_batch(batch: dict, space: DiffusionSpace) -> dict:
    """{"image", "cond"} -> the diffusion loss's {"x0", "cond"}."""
    return {"x0": space.encode(batch["image"]), "cond": batch["cond"]}


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str
) -> state_lib.TrainState | None:
    """Trains (or resumes) the model of `config` in `workdir`, then writes the figures. Returns
    the final train state, or None when SIGTERM stopped the encoder's or the autoencoder's
    training first."""
    workdir = os.path.abspath(os.path.expanduser(workdir))
    mesh = parallel.make_mesh(config.mesh)
    input_pipeline.ensure_prepared(config.data)
    if config.condition.source == "encoder" and not config.encoder.checkpoint:
        if train_encoder(config, workdir) is None:
            logging.warning("Stopped while training the identity encoder; run again to resume.")
            return None
    if config.diffusion.space == "latent" and not config.autoencoder.checkpoint:
        if train_autoencoder(config, workdir) is None:
            logging.warning("Stopped while training the autoencoder; run again to resume.")
            return None
    conditions = identity_conditions(config, workdir, mesh)
    space = diffusion_space(config, workdir, mesh)
    train_rng, figure_rng = jax.random.split(jax.random.key(config.seed))

    schedule = schedule_from_config(config.diffusion.beta_schedule, config.diffusion.num_timesteps)
    figure_data = figure_inputs(config, conditions)
    figure_writer = DiffusionFigureWriter(unet_graphdef(config), schedule, config, space)

    def figures(step: int, state: state_lib.TrainState, writer) -> None:
        figure_writer.write(
            params=state.ema_params if config.sample.use_ema else state.params,
            **figure_data,
            rng=jax.random.fold_in(figure_rng, step),
            out_dir=os.path.join(workdir, "figures"),
            writer=writer,
            step=step,
        )

    task = TrainingTask(
        name="diffusion",
        config=config,
        train_config=config.train,
        build_model=unet_builder(config),
        loss_fn=make_diffusion_loss(schedule, config),
        data_iterator=input_pipeline.make_train_iterator(
            config.data, global_batch_size=config.train.batch_size, seed=config.seed
        ),
        prepare_batch=lambda batch: to_diffusion_batch(conditions.prepare_batch(batch), space),
        on_step=figures,
        every_steps=config.train.figures_every_steps,
    )
    result = run_training(task, workdir, mesh, train_rng)

    step, periodic = int(result.state.step), config.train.figures_every_steps
    already_drawn = periodic and step % periodic == 0 and step > result.first_step
    if result.completed and not already_drawn:
        figures(step, result.state, result.writer)
    result.writer.flush()
    return result.state
