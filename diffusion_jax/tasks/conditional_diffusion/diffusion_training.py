"""Training the conditional diffusion model: `train_and_evaluate(config, workdir)`.

It needs the outputs of the stages before it (`core.stages`): the identity encoder when
`config.condition.source == "encoder"`, and the autoencoder in latent space; a missing one is
reported with the command that makes it. The diffusion model trains (or resumes) in WORKDIR with
the shared loop of `core.training.loop`, on x_0 = each batch's images or their latents
(`latent.diffusion_space`), and writes the four figures of `diffusion_figures` to WORKDIR/figures
periodically and at the end.
"""

import jax
import ml_collections
import numpy as np

from diffusion_jax.core import parallel, stages
from diffusion_jax.core.diffusion.schedules import schedule_from_config
from diffusion_jax.core.run_layout import RunLayout
from diffusion_jax.core.training import state as state_lib
from diffusion_jax.core.training.loop import TrainingTask, run_training
from diffusion_jax.tasks.conditional_diffusion.denoiser import (
    make_diffusion_loss,
    unet_builder,
    unet_graphdef,
)
from diffusion_jax.tasks.conditional_diffusion.diffusion_figures import DiffusionFigureWriter
from diffusion_jax.tasks.conditional_diffusion.identity_conditions import (
    IdentityConditions,
    identity_conditions,
)
from diffusion_jax.tasks.data.sources import input_pipeline
from diffusion_jax.tasks.latent.diffusion_space import DiffusionSpace, diffusion_space


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> state_lib.TrainState:
    """Trains (or resumes) the model of `config` in `workdir`, then writes the figures; returns
    the final train state. Raises `stages.MissingStageOutput` when the encoder or autoencoder it
    needs does not exist, and `preemption.Preempted` when SIGTERM stopped training."""
    layout = RunLayout.from_config(workdir, config)
    if config.condition.source == "encoder":
        stages.require(layout, config, "encoder")
    stages.require(layout, config, "autoencoder")
    mesh = parallel.make_mesh(config.mesh)
    input_pipeline.ensure_prepared(config.data)
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
            out_dir=layout.figures,
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
    result = run_training(task, layout.diffusion.run_dir, mesh, train_rng)

    step, periodic = int(result.state.step), config.train.figures_every_steps
    already_drawn = periodic and step % periodic == 0 and step > result.first_step
    if not already_drawn:
        figures(step, result.state, result.event_log.writer)
    result.event_log.sync()
    return result.state
