"""Stopping on SIGTERM (preemption, `scancel`, a spot VM reclaimed): the signal sets a flag, the
work in progress saves at its next safe point and raises `Preempted`, and `main` exits cleanly.
A rerun of the same command resumes from what was saved.

With several JAX processes the decision to stop is collective (`stop_check`): SIGTERM to any one
of them makes every process stop after the same step, so that they save one consistent
checkpoint and none waits forever in a collective the others left.
"""

import contextlib
import itertools
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


# Every call of a `stop_check` in this process, across blocks: JAX's sync point is a call count
# that must grow in the same way in every process, also when a notice arrives between two loops.
_sync_point_calls = itertools.count(1)


@contextlib.contextmanager
def stop_check() -> Iterator[Callable[[], bool]]:
    """Within the block, `should_stop()` says whether to save and stop now. Every process must
    call it once per step, at the same steps (a training loop's iterations).

    One process: True once SIGTERM has arrived (`sigterm_flag`). Several JAX processes: True, in
    every process at the same call, once any process has received SIGTERM. This is JAX's
    preemption sync point (`multihost_utils.reached_preemption_sync_point`): the handler that
    `jax.distributed.initialize()` installs catches SIGTERM, the coordination service tells
    every process, and they agree on the next call of the fastest one; this process installs no
    handler of its own then, which would replace JAX's. Without JAX's preemption service
    (`jax_enable_preemption_service=False`), each call gathers every process's SIGTERM flag
    instead, which waits for the device work in flight.
    """
    if jax.process_count() == 1:
        with sigterm_flag() as flag:
            yield lambda: bool(flag)
    elif jax.distributed.is_initialized() and jax.config.jax_enable_preemption_service:
        # What `jax.distributed.initialize()` needs to set up JAX's preemption sync manager.
        yield lambda: multihost_utils.reached_preemption_sync_point(next(_sync_point_calls))
    else:
        with sigterm_flag() as flag:
            yield lambda: bool(np.any(multihost_utils.process_allgather(np.array(bool(flag)))))
