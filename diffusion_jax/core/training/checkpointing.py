"""Orbax checkpoints of a training run: train state, data-iterator state and resolved config.

Each checkpoint step directory holds three items:
  state          the TrainState pytree (sharded arrays, written by every process)
  data_iterator  the grain iterator's position, so a resumed run sees the same batches
  config         the resolved config as JSON, for provenance and for `--mode=sample`
Saves are asynchronous; `close()` waits for the last one. Restores go straight into the
shardings of an abstract state built with `jax.eval_shape`.
"""

from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from diffusion_jax.core import paths
from diffusion_jax.core.training.state import TrainState


class Checkpointer:
    """A thin, typed wrapper over `ocp.CheckpointManager` with the three items above."""

    def __init__(self, directory: paths.PathLike, *, max_to_keep: int = 3, read_only: bool = False):
        self.directory = paths.resolve(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                create=not read_only,
                read_only=read_only,
                enable_async_checkpointing=True,
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(
        self,
        step: int,
        state: TrainState,
        config: ml_collections.ConfigDict,
        data_iterator: grain.DataLoaderIterator | None = None,
    ) -> None:
        """Starts an asynchronous save of `state` (and the iterator position) at `step`."""
        items = {
            "state": ocp.args.StandardSave(state),
            "config": ocp.args.JsonSave(config.to_dict()),
        }
        if data_iterator is not None:
            items["data_iterator"] = grain.checkpoint.CheckpointSave(data_iterator)
        self._manager.save(step, args=ocp.args.Composite(**items))

    def restore(
        self,
        abstract_state: TrainState,
        state_shardings: Any,
        *,
        step: int | None = None,
        data_iterator: grain.DataLoaderIterator | None = None,
    ) -> TrainState:
        """Restores `step` (default: the latest) into the given shardings.

        When `data_iterator` is given, its position is restored in place too.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"No checkpoint in {self.directory}.")
        if step not in self.all_steps():
            raise FileNotFoundError(
                f"No checkpoint at step {step} in {self.directory}; have {self.all_steps()}."
            )
        target = jax.tree.map(
            lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
            abstract_state,
            state_shardings,
        )
        items = {"state": ocp.args.StandardRestore(target)}
        if data_iterator is not None:
            items["data_iterator"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored.state

    def restore_config(self, step: int | None = None) -> dict[str, Any]:
        """The JSON config saved with `step` (default: the latest)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"No checkpoint in {self.directory}.")
        restored = self._manager.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
        )
        return restored.config

    def wait_until_finished(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
