"""The training loop shared by every model: `run_training(task, run_dir, mesh)`.

Resumes from the latest checkpoint in `run_dir/checkpoints` when there is one. Leaves in
`run_dir` (a local path or gs://): config.json (the resolved config), checkpoints/ (Orbax: train
state, data-iterator position, config) and TensorBoard events. What differs between models (the
network, its loss, how a batch of images and labels becomes its input, periodic pictures) is a
`TrainingTask`. SIGTERM saves the step in progress and raises `preemption.Preempted`; with
several JAX processes, SIGTERM to any one of them stops every process after the same step, which
they save together (`preemption.stop_check`).
"""

import contextlib
import dataclasses
import itertools
import time
from collections.abc import Callable
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import optax
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers, periodic_actions

from diffusion_jax.core import parallel, paths
from diffusion_jax.core.preemption import Preempted, stop_check
from diffusion_jax.core.training import state as state_lib
from diffusion_jax.core.training.checkpointing import Checkpointer
from diffusion_jax.core.training.event_logs import EventLog
from diffusion_jax.core.training.step import Batch, LossFn, training_program

StepHook = Callable[[int, state_lib.TrainState, metric_writers.MetricWriter], None]


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last checkpoint is left untouched."""


@dataclasses.dataclass(frozen=True)
class TrainingTask:
    """What the loop needs to know about the model it trains.

    `train_config` is a section like `config.train` (batch_size, num_steps, optimiser, EMA and
    logging fields); `config` is the whole resolved config, saved with every checkpoint.
    `data_iterator` yields host-local {"image", "label"} batches; `prepare_batch` maps the global
    device batch to the loss function's input (e.g. adds identity conditions). `frozen` is the
    pytree of frozen networks the loss reads (`LossContext.frozen`). `make_optimizer` builds the
    optimiser and its learning-rate schedule from `train_config`. `every_steps` calls `on_step`
    periodically (figures).
    """

    name: str
    config: ml_collections.ConfigDict
    train_config: ml_collections.ConfigDict
    build_model: state_lib.BuildModel
    loss_fn: LossFn
    data_iterator: grain.DataLoaderIterator
    prepare_batch: Callable[[Batch], Batch] = lambda batch: batch
    frozen: Any = dataclasses.field(default_factory=dict)
    make_optimizer: Callable[
        [ml_collections.ConfigDict], tuple[optax.GradientTransformation, optax.Schedule]
    ] = state_lib.make_optimizer
    on_step: StepHook | None = None
    every_steps: int = 0


@dataclasses.dataclass(frozen=True)
class TrainingResult:
    state: state_lib.TrainState
    first_step: int  # the step training (re)started from
    event_log: EventLog  # its `writer` takes more events; `sync()` stores them


def write_resolved_config(config: ml_collections.ConfigDict, run_dir: paths.Path) -> None:
    if jax.process_index() == 0:
        (run_dir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))


def run_training(
    task: TrainingTask, run_dir: paths.PathLike, mesh: jax.sharding.Mesh, rng: jax.Array
) -> TrainingResult:
    """Trains (or resumes) `task` in `run_dir` up to `task.train_config.num_steps`; raises
    `Preempted` when SIGTERM stopped it first (after saving that step; with several processes,
    SIGTERM to any one stops all of them at the same step)."""
    # ------------------------------------------------------------------ Setup
    train_config = task.train_config
    run_dir = paths.resolve(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_resolved_config(task.config, run_dir)
    event_log = EventLog(run_dir)
    writer = event_log.writer
    init_rng, train_rng = jax.random.split(rng)

    # ------------------------------------------------------------------ Model and state
    program = training_program(
        task.build_model, task.loss_fn, train_config, mesh, task.make_optimizer
    )
    checkpointer = Checkpointer(run_dir / "checkpoints", max_to_keep=train_config.keep_checkpoints)
    if checkpointer.latest_step() is not None:
        logging.info("%s: resuming from step %d.", task.name, checkpointer.latest_step())
        state = checkpointer.restore(
            program.abstract_state, program.state_shardings, data_iterator=task.data_iterator
        )
    else:
        state = state_lib.init_train_state(task.build_model, program.optimizer, mesh, init_rng)
    logging.info("%s: %d parameters.", task.name, state_lib.count_params(state.params))
    train_step = program.step
    frozen = parallel.replicate(task.frozen, mesh)

    # ------------------------------------------------------------------ Loop
    first_step, num_steps = int(state.step), train_config.num_steps
    progress = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
    all_finite = jnp.array(True)
    last_log_time, last_log_step = time.perf_counter(), first_step
    with stop_check(first_step) as should_stop, contextlib.closing(checkpointer):
        # Closing the checkpointer waits for any save in flight, also when the loop raised.
        for step in range(first_step + 1, num_steps + 1):
            batch = task.prepare_batch(parallel.global_batch(next(task.data_iterator), mesh))
            if step == first_step + 1 and jax.process_count() > 1:
                _compile_in_every_process(train_step, (state, batch, train_rng, frozen))
            state, metrics = train_step(state, batch, train_rng, frozen)
            all_finite = jnp.logical_and(all_finite, jnp.isfinite(metrics["loss"]))
            progress(step)

            # Decide once per step, in every process: a SIGTERM arriving later in this iteration
            # is handled after the next step, which is then saved before stopping.
            stop = should_stop(step)
            is_last = step == num_steps or stop
            if step % train_config.log_every_steps == 0 or is_last:
                _check_finite(all_finite, step, checkpointer)
                now = time.perf_counter()
                scalars = {name: float(value) for name, value in jax.device_get(metrics).items()}
                scalars["images_per_second"] = (
                    (step - last_log_step) * train_config.batch_size / (now - last_log_time)
                )
                writer.write_scalars(step, scalars)
                last_log_time, last_log_step = now, step
            if step % train_config.checkpoint_every_steps == 0 or is_last:
                _check_finite(all_finite, step, checkpointer)
                checkpointer.save(step, state, task.config, task.data_iterator)
                event_log.sync()
            if task.on_step is not None and task.every_steps and step % task.every_steps == 0:
                task.on_step(step, state, writer)
            if stop:
                break
    event_log.sync()
    if int(state.step) < num_steps:
        logging.warning(
            "SIGTERM received%s: saved step %d of %s and stopping.",
            " by a process" if jax.process_count() > 1 else "",
            int(state.step),
            task.name,
        )
        raise Preempted(task.name, f"step {int(state.step)} in {checkpointer.directory}")
    return TrainingResult(state=state, first_step=first_step, event_log=event_log)


_barriers = itertools.count()


def _compile_in_every_process(train_step, args: tuple) -> None:
    """Compiles `train_step` for `args`, then waits until every process has (at a barrier of
    JAX's coordination service, not a collective). Otherwise a process that finds the step in
    the persistent compilation cache (on CPU only process 0 does: the cache key holds the process
    index, and only process 0 writes) would start the step's collectives while another still
    compiles, and CPU (gloo) collectives give up after 30 seconds."""
    train_step.lower(*args).compile()  # the jitted function then runs this executable
    key = f"diffusion_jax_train_step_compiled_{next(_barriers)}"  # the same in every process
    ocp.multihost.get_barrier_sync_fn()(key=key, timeout_ms=_COMPILE_BARRIER_TIMEOUT_MS)


_COMPILE_BARRIER_TIMEOUT_MS = 3_600_000  # an hour: the slowest process's compilation


def _check_finite(all_finite: jax.Array, step: int, checkpointer: Checkpointer) -> None:
    if not bool(all_finite):
        checkpointer.wait_until_finished()
        raise NonFiniteLossError(
            f"The loss became NaN or infinite at or before step {step}; stopping without saving. "
            f"The last good checkpoint is step {checkpointer.latest_step()} in "
            f"{checkpointer.directory}. Lower the learning rate or check the data."
        )
