"""Workers of one generation job waiting for each other: a worker other than 0 waits for worker 0's
identities, and a process of a jax.distributed job waits for the other processes' shards (a
shard completing restarts the timeout), then finalizes; each wait ends in an error naming what it
waited for and whose output is missing."""

import threading
import types

import pytest

from diffusion_jax.core import paths
from diffusion_jax.tasks.generation import generation_job, manifest
from diffusion_jax.tasks.generation.worker_index import Worker
from tests.helpers import tiny_config


@pytest.fixture
def fast_polls(monkeypatch):
    monkeypatch.setattr(generation_job, "_POLL_SECONDS", 0.05)


def six_shard_config(out_dir: str):
    config = tiny_config()
    config.generate.update(num_identities=6, identities_per_shard=1, output_dir=out_dir)
    return config


def write_record(out_dir: str, shard: int) -> None:
    paths.write_json_atomically(manifest.shard_record_path(out_dir, shard), {"shard": shard})


def test_a_worker_waiting_for_worker_0s_identities_names_the_file_and_the_setting(
    tmp_path, fast_polls
):
    config = six_shard_config(str(tmp_path))
    config.generate.identities_timeout_minutes = 0.005
    models = types.SimpleNamespace(identity={"diffusion_step": 1})
    with pytest.raises(TimeoutError) as error:
        generation_job.load_identities(
            config, str(tmp_path), str(tmp_path), models, Worker(1, 3, "jax")
        )
    message = str(error.value)
    assert "Worker 1 of 3 waited 0.005 minutes" in message
    assert "config.generate.identities_timeout_minutes" in message
    assert str(tmp_path / manifest.PLAN_FILE) in message


def test_a_process_waits_for_the_others_shards_while_they_progress(
    tmp_path, fast_polls, monkeypatch
):
    out_dir = str(tmp_path)
    config = six_shard_config(out_dir)
    config.generate.dataset_timeout_minutes = 0.02  # 1.2 s without a new shard
    for shard in (0, 2, 4):  # worker 0's
        write_record(out_dir, shard)
    finalized = []

    def finalize(config, out_dir, plan):
        finalized.append(sorted(path.name for path in paths.Path(out_dir, "shards").iterdir()))
        return {"manifest": plan}

    monkeypatch.setattr(generation_job, "finalize_dataset", finalize)
    # Worker 1 completes a shard every 0.6 s: 1.8 s in all, longer than the timeout.
    timers = [
        threading.Timer(0.6 * (k + 1), write_record, (out_dir, shard))
        for k, shard in enumerate((1, 3, 5))
    ]
    for timer in timers:
        timer.start()
    try:
        result = generation_job.wait_for_dataset(config, out_dir, "plan", Worker(0, 2, "jax"))
    finally:
        for timer in timers:
            timer.cancel()
    assert result == {"manifest": "plan"}
    assert finalized == [[f"shard_{s:05d}.json" for s in range(6)]]  # once, with every shard


def test_a_process_waiting_in_vain_names_the_missing_shards_and_their_workers(tmp_path, fast_polls):
    out_dir = str(tmp_path)
    config = six_shard_config(out_dir)
    config.generate.dataset_timeout_minutes = 0.005
    for shard in (0, 1, 3, 4):
        write_record(out_dir, shard)
    with pytest.raises(TimeoutError) as error:
        generation_job.wait_for_dataset(config, out_dir, {}, Worker(0, 3, "jax"))
    message = str(error.value)
    assert "Worker 0 of 3 waited 0.005 minutes (config.generate.dataset_timeout_minutes)" in message
    assert "shards [2, 5] of workers [2] are missing" in message
    assert out_dir in message
