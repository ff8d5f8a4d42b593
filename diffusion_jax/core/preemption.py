"""Stopping on SIGTERM (preemption, `scancel`, a spot VM reclaimed): the signal sets a flag, the
work in progress saves at its next safe point and raises `Preempted`, and `main` exits cleanly.
A rerun of the same command resumes from what was saved.

With several JAX processes the decision to stop is collective (`stop_check`): SIGTERM to any one
of them makes every process stop after the same step, so that they save one consistent
checkpoint and none waits forever in a collective the others left.
"""

import contextlib
import signal
from collections.abc import Callable, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils


class Preempted(Exception):
    """SIGTERM stopped `what` after saving its progress (`saved`); rerun the command to resume."""

    def __init__(self, what: str, saved: str):
        super().__init__(f"SIGTERM stopped {what} after saving {saved}; run again to resume.")
        self.what = what
        self.saved = saved


class SigtermFlag:
    """`bool(flag)` is True once SIGTERM has arrived while the flag was installed."""

    def __init__(self) -> None:
        self.raised = False

    def __bool__(self) -> bool:
        return self.raised


@contextlib.contextmanager
def sigterm_flag() -> Iterator[SigtermFlag]:
    """Within the block, SIGTERM sets the yielded flag instead of ending the process; the
    previous handler comes back afterwards."""
    flag = SigtermFlag()

    def handler(signum, frame):
        flag.raised = True

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def stop_check(first_step: int) -> Iterator[Callable[[int], bool]]:
    """Within the block, `should_stop(step)` says whether to save and stop after `step`. Every
    process must call it once per step with that step, first_step + 1, first_step + 2, ...

    One process: True once SIGTERM has arrived (`sigterm_flag`). Several JAX processes: True, in
    every process at the same step, once any process has received SIGTERM. This is JAX's
    preemption sync point (`multihost_utils.reached_preemption_sync_point`, which Orbax's
    CheckpointManager also consults with the step it saves): the handler that
    `jax.distributed.initialize()` installs catches SIGTERM, the coordination service tells
    every process, and they agree on the step after the furthest one's. This process installs no
    handler of its own then, which would replace JAX's. Entering the block reports `first_step`,
    so that a notice that arrives between then and the first step (while it compiles) stops
    after it; one that arrives earlier in a resumed run is missed (JAX agreed on a step already
    passed). Without JAX's preemption service (`jax_enable_preemption_service=False`), each call
    gathers every process's SIGTERM flag instead, which waits for the device work in flight.
    """
    if jax.process_count() == 1:
        with sigterm_flag() as flag:
            yield lambda step: bool(flag)
    elif jax.distributed.is_initialized() and jax.config.jax_enable_preemption_service:
        # What `jax.distributed.initialize()` needs to set up JAX's preemption sync manager.
        reached_before = multihost_utils.reached_preemption_sync_point(first_step)
        yield lambda step: reached_before or multihost_utils.reached_preemption_sync_point(step)
    else:
        with sigterm_flag() as flag:
            yield lambda step: bool(np.any(multihost_utils.process_allgather(np.array(bool(flag)))))
