"""TensorBoard event files of a training run, wherever the run lives.

TensorFlow's summary writer (behind clu's metric writers) writes local directories itself. For a
run on an object store it writes to a local staging directory instead, and `sync()` uploads the
files that grew through the path layer, so every byte of a run reaches storage through one
client (`core.paths`). Only process 0 writes events; `sync()` is called at each checkpoint and at
the end, so a preempted run's events reach storage up to its last save.
"""

import tempfile

import jax
from clu import metric_writers

from diffusion_jax.core import paths


class EventLog:
    """`writer`: the run's metric writer; `sync()`: upload what it wrote (object stores only)."""

    def __init__(self, run_dir: paths.PathLike):
        self.run_dir = paths.Path(run_dir)
        remote = paths.is_url(self.run_dir)
        self._staging = tempfile.mkdtemp(prefix="events-") if remote else None
        self._uploaded: dict[str, int] = {}
        self.writer = metric_writers.create_default_writer(
            self._staging or str(self.run_dir),
            just_logging=jax.process_index() > 0,
            asynchronous=True,
        )

    def sync(self) -> None:
        self.writer.flush()
        if self._staging is None or jax.process_index() > 0:
            return
        for name in paths.relative_files(self._staging):
            data = (paths.Path(self._staging) / name).read_bytes()
            if self._uploaded.get(name) != len(data):
                (self.run_dir / name).write_bytes(data)
                self._uploaded[name] = len(data)
