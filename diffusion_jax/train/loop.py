"""Training the conditional diffusion model: `train_and_evaluate(config, workdir)`.

Resumes from the latest checkpoint in `workdir/checkpoints` when there is one. Leaves in
`workdir`: config.json (the resolved config), checkpoints/ (Orbax), TensorBoard events and
figures/ (the four figures of `evaluate.diffusion_figures`).
"""

import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from diffusion_jax import parallel
from diffusion_jax.data import pipeline
from diffusion_jax.diffusion.schedules import schedule_from_config
from diffusion_jax.evaluate.diffusion_figures import DiffusionFigureWriter
from diffusion_jax.models.conditioning import random_identity_embeddings
from diffusion_jax.train import state as state_lib
from diffusion_jax.train.checkpointing import Checkpointer
from diffusion_jax.train.step import jit_train_step, make_train_step


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last checkpoint is left untouched."""


def identity_condition_table(config: ml_collections.ConfigDict) -> np.ndarray:
    """[num_train_identities, condition.dim]: the condition of each training label.

    The only `config.condition.source` so far is "random_identity_table": a frozen random unit
    vector per training identity, standing in for an identity encoder's embedding.
    """
    return np.asarray(
        random_identity_embeddings(
            pipeline.num_train_identities(config.data), config.condition.dim, seed=config.seed
        )
    )


def write_resolved_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def figure_inputs(
    config: ml_collections.ConfigDict, condition_table: np.ndarray
) -> dict[str, np.ndarray | list[int]]:
    """Real images of the sample identities (forward-figure rows) and the identity conditions."""
    labels = [int(label) for label in config.sample.identities]
    images, image_labels = pipeline.first_images_of_labels(config.data, labels)
    return {
        "real_images": images,
        "real_conds": condition_table[image_labels],
        "identity_conds": condition_table[labels],
        "identity_labels": labels,
    }


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> state_lib.TrainState:
    """Trains (or resumes) the model of `config` in `workdir`, then writes the figures."""
    # ------------------------------------------------------------------ Setup
    workdir = os.path.abspath(os.path.expanduser(workdir))
    os.makedirs(workdir, exist_ok=True)
    write_resolved_config(config, workdir)
    writer = metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0, asynchronous=True
    )
    mesh = parallel.make_mesh(config.mesh)
    init_rng, train_rng, figure_rng = jax.random.split(jax.random.key(config.seed), 3)

    # ------------------------------------------------------------------ Data
    pipeline.ensure_prepared(config.data)
    data_iterator = pipeline.make_train_iterator(
        config.data,
        global_batch_size=config.train.batch_size,
        seed=config.seed,
    )
    condition_table = identity_condition_table(config)

    # ------------------------------------------------------------------ Model and state
    optimizer, learning_rate = state_lib.make_optimizer(config.train)
    graphdef = state_lib.model_graphdef(config)
    abstract_state = state_lib.abstract_train_state(config, optimizer)
    shardings = parallel.state_shardings(mesh, abstract_state)
    checkpointer = Checkpointer(
        os.path.join(workdir, "checkpoints"), max_to_keep=config.train.keep_checkpoints
    )
    if checkpointer.latest_step() is not None:
        logging.info("Resuming from step %d in %s.", checkpointer.latest_step(), workdir)
        state = checkpointer.restore(abstract_state, shardings, data_iterator=data_iterator)
    else:
        state = state_lib.init_train_state(config, optimizer, mesh, init_rng)
    logging.info("Model parameters: %d.", state_lib.count_params(state.params))
    schedule = schedule_from_config(config.diffusion.beta_schedule, config.diffusion.num_timesteps)
    train_step = jit_train_step(
        make_train_step(graphdef, optimizer, learning_rate, schedule, config), mesh, shardings
    )

    figure_data = figure_inputs(config, condition_table)
    figure_writer = DiffusionFigureWriter(graphdef, schedule, config)

    def figures(step: int, state: state_lib.TrainState) -> None:
        figure_writer.write(
            params=state.ema_params if config.sample.use_ema else state.params,
            **figure_data,
            rng=jax.random.fold_in(figure_rng, step),
            out_dir=os.path.join(workdir, "figures"),
            writer=writer,
            step=step,
        )

    # ------------------------------------------------------------------ Training loop
    preempted = _install_sigterm_flag()
    first_step, num_steps = int(state.step), config.train.num_steps
    progress = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
    all_finite = jnp.array(True)
    last_log_time, last_log_step = time.perf_counter(), first_step
    try:
        for step in range(first_step + 1, num_steps + 1):
            local = next(data_iterator)
            batch = {"image": local["image"], "cond": condition_table[local["label"]]}
            state, metrics = train_step(state, parallel.global_batch(batch, mesh), train_rng)
            all_finite = jnp.logical_and(all_finite, jnp.isfinite(metrics["loss"]))
            progress(step)

            is_last = step == num_steps or preempted["flag"]
            if step % config.train.log_every_steps == 0 or is_last:
                _check_finite(all_finite, step, checkpointer)
                now = time.perf_counter()
                scalars = {name: float(value) for name, value in jax.device_get(metrics).items()}
                scalars["images_per_second"] = (
                    (step - last_log_step) * config.train.batch_size / (now - last_log_time)
                )
                writer.write_scalars(step, scalars)
                last_log_time, last_log_step = now, step
            if step % config.train.checkpoint_every_steps == 0 or is_last:
                _check_finite(all_finite, step, checkpointer)
                checkpointer.save(step, state, config, data_iterator)
            if config.train.figures_every_steps and step % config.train.figures_every_steps == 0:
                figures(step, state)
            if preempted["flag"]:
                logging.warning("SIGTERM received: saved step %d and stopping.", step)
                break
    finally:
        checkpointer.close()  # waits for any save in flight, also when the loop raised

    # ------------------------------------------------------------------ Figures
    periodic = config.train.figures_every_steps
    already_drawn = periodic and int(state.step) % periodic == 0 and int(state.step) > first_step
    if not preempted["flag"] and not already_drawn:
        figures(int(state.step), state)
    writer.flush()
    return state


def _check_finite(all_finite: jax.Array, step: int, checkpointer: Checkpointer) -> None:
    if not bool(all_finite):
        checkpointer.wait_until_finished()
        raise NonFiniteLossError(
            f"The loss became NaN or infinite at or before step {step}; stopping without saving. "
            f"The last good checkpoint is step {checkpointer.latest_step()} in "
            f"{checkpointer.directory}. Lower config.train.learning_rate or check the data."
        )


def _install_sigterm_flag() -> dict[str, bool]:
    """Turns SIGTERM (preemption) into a flag the loop checks: save, then exit cleanly."""
    preempted = {"flag": False}

    def handler(signum, frame):
        preempted["flag"] = True

    signal.signal(signal.SIGTERM, handler)
    return preempted
