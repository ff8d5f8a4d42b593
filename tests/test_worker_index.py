"""A generation worker's index and count: from the config, the scheduler's variables or JAX, and
the shard sets that follow."""

import pytest

from diffusion_jax.tasks.generation.worker_index import Worker, find_worker


@pytest.mark.parametrize(
    "environ, expected",
    [
        (
            {
                "SLURM_ARRAY_TASK_ID": "7",
                "SLURM_ARRAY_TASK_MIN": "5",
                "SLURM_ARRAY_TASK_COUNT": "4",
            },
            (2, 4),
        ),
        ({"BATCH_TASK_INDEX": "3", "BATCH_TASK_COUNT": "10"}, (3, 10)),
        ({"CLOUD_RUN_TASK_INDEX": "0", "CLOUD_RUN_TASK_COUNT": "2"}, (0, 2)),
    ],
)
def test_schedulers_variables_give_index_and_count(environ, expected):
    worker = find_worker(environ=environ)
    assert (worker.index, worker.count, worker.source) == (*expected, "environment")


def test_the_config_overrides_the_environment_and_completes_it():
    environ = {"BATCH_TASK_INDEX": "3", "BATCH_TASK_COUNT": "10"}
    assert find_worker(1, 2, environ=environ) == Worker(1, 2, "config")
    # Kubernetes indexed Jobs give the index only; the count comes from the config.
    assert find_worker(task_count=6, environ={"JOB_COMPLETION_INDEX": "5"}) == Worker(
        5, 6, "environment"
    )


def test_without_config_or_scheduler_the_jax_process_is_the_worker():
    assert find_worker(environ={}) == Worker(0, 1, "jax")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"environ": {"JOB_COMPLETION_INDEX": "2"}}, "task count of this worker is not known"),
        (
            {"task_index": 4, "task_count": 4, "environ": {}},
            r"task index 4 must lie in \[0, task count 4\)",
        ),
        (
            {"environ": {"BATCH_TASK_INDEX": "x", "BATCH_TASK_COUNT": "2"}},
            "BATCH_TASK_INDEX='x' is not an integer",
        ),
    ],
)
def test_missing_or_bad_values_are_refused_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        find_worker(**kwargs)


@pytest.mark.parametrize("count", [1, 3, 7])
def test_workers_own_disjoint_shards_that_cover_every_shard(count):
    shard_sets = [set(Worker(index, count, "config").shards(20)) for index in range(count)]
    assert set().union(*shard_sets) == set(range(20))
    assert sum(len(shards) for shards in shard_sets) == 20
    assert all(
        Worker(i, count, "config").owns(s) for i, shards in enumerate(shard_sets) for s in shards
    )
