"""Which share of a generation job this worker does: (task index, task count) and its shards.

Many independent workers (VMs, array-job tasks, pods) may write to one output location; each
needs its index and the number of workers. They are taken from the first of:

    1. the config: `task_index` and `task_count` (both >= 0 / >= 1; -1 means "not given");
    2. the scheduler's variables:
         SLURM array jobs            SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN,
                                     SLURM_ARRAY_TASK_COUNT
         Kubernetes indexed Jobs     JOB_COMPLETION_INDEX, and the count from the config
         Google Cloud Batch          BATCH_TASK_INDEX, BATCH_TASK_COUNT
         Cloud Run jobs              CLOUD_RUN_TASK_INDEX, CLOUD_RUN_TASK_COUNT
         AWS Batch array jobs        AWS_BATCH_JOB_ARRAY_INDEX, and the count from the config
    3. JAX: `jax.process_index()` and `jax.process_count()` (one worker per process under
       `jax.distributed`; a single process is worker 0 of 1).

Shard s belongs to worker s mod task_count, so workers own disjoint shard sets whose union is
every shard, whatever the count.
"""

import dataclasses
import os
from collections.abc import Mapping

import jax


@dataclasses.dataclass(frozen=True)
class Worker:
    index: int
    count: int
    source: str  # where index and count came from, for the log and the manifest

    def owns(self, shard: int) -> bool:
        return shard % self.count == self.index

    def shards(self, num_shards: int) -> list[int]:
        """The shards of 0..num_shards-1 this worker writes, in order."""
        return list(range(self.index, num_shards, self.count))


def _integer(environ: Mapping[str, str], name: str) -> int:
    value = environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def find_worker(
    task_index: int = -1, task_count: int = -1, environ: Mapping[str, str] | None = None
) -> Worker:
    """This worker's (index, count) from the sources of the module docstring, in that order for
    each of the two numbers; JAX's process index and count when neither is given anywhere."""
    environ = os.environ if environ is None else environ
    index = task_index if task_index >= 0 else _index_from_environ(environ)
    count = task_count if task_count >= 1 else _count_from_environ(environ)
    if index is None and count is None:
        return Worker(index=jax.process_index(), count=jax.process_count(), source="jax")
    if index is None or count is None:
        missing = "index" if index is None else "count"
        raise ValueError(
            f"The task {missing} of this worker is not known (index {index}, count {count}); "
            f"set it in the config (task_{missing})."
        )
    if not 0 <= index < count:
        raise ValueError(f"task index {index} must lie in [0, task count {count})")
    given = "config" if task_index >= 0 and task_count >= 1 else "environment"
    return Worker(index=index, count=count, source=given)


def _index_from_environ(environ: Mapping[str, str]) -> int | None:
    if "SLURM_ARRAY_TASK_ID" in environ:
        offset = 0
        if "SLURM_ARRAY_TASK_MIN" in environ:
            offset = _integer(environ, "SLURM_ARRAY_TASK_MIN")
        return _integer(environ, "SLURM_ARRAY_TASK_ID") - offset
    for name in (
        "JOB_COMPLETION_INDEX",
        "BATCH_TASK_INDEX",
        "CLOUD_RUN_TASK_INDEX",
        "AWS_BATCH_JOB_ARRAY_INDEX",
    ):
        if name in environ:
            return _integer(environ, name)
    return None


def _count_from_environ(environ: Mapping[str, str]) -> int | None:
    for name in ("SLURM_ARRAY_TASK_COUNT", "BATCH_TASK_COUNT", "CLOUD_RUN_TASK_COUNT"):
        if name in environ:
            return _integer(environ, name)
    return None
