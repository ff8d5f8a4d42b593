"""Stopping on SIGTERM (preemption, `scancel`, a spot VM reclaimed): the signal sets a flag, the
work in progress saves at its next safe point and raises `Preempted`, and `main` exits cleanly.
A rerun of the same command resumes from what was saved."""

import contextlib
import signal
from collections.abc import Iterator


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
