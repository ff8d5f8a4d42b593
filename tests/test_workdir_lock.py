"""The workdir lock (`core.workdir_lock`): a second run is refused while a first holds the lock,
the lock goes with a SIGKILLed holder, the main job refuses a held workdir (but not generation
workers), and the Cloud Storage lease (created, renewed, taken over, lost), against the local
emulator (`tests/gcs_emulator.py`). Holders are tiny helper processes that take the lock and
sleep, not training runs."""

import contextlib
import dataclasses
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from unittest import mock

import pytest

from diffusion_jax.core import paths, workdir_lock
from diffusion_jax.core.run_layout import RunLayout
from tests import gcs_emulator
from tests.helpers import (
    REPO_ROOT,
    config_argument,
    launch_main_job_in_processes,
    main_job_environment,
)

# Takes the lock at argv[1] as `main` does, says so, and sleeps until killed. SIGINT raises
# KeyboardInterrupt even where the parent ignores SIGINT (the child would inherit that, and Python
# then installs no handler of its own).
HOLDER = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    "from diffusion_jax.core import workdir_lock\n"
    "workdir_lock.hold(sys.argv[1], 'the test holder')\n"
    "print('HELD', flush=True)\n"
    "time.sleep(600)\n"
)


@contextlib.contextmanager
def holder_process(path: str, environment: dict[str, str] | None = None):
    """A helper process holding the lock at `path`; yields it once it holds it, SIGKILLs it
    after the block if it still runs."""
    process = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-c", HOLDER, path],
        cwd=REPO_ROOT,
        env={**os.environ, **(environment or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([process.stdout], [], [], 120)
        line = process.stdout.readline() if ready else ""
        assert line == "HELD\n", f"the holder did not take the lock: {line!r} " + (
            process.stderr.read()[-3000:] if process.poll() is not None else ""
        )
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdout.close()
        process.stderr.close()


def sigkill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()


# --------------------------------------------------------------------------- local workdirs


@pytest.mark.slow  # a helper process
def test_a_second_run_is_refused_until_the_holder_is_sigkilled(tmp_path):
    lock_path = str(RunLayout(paths.resolve(tmp_path / "run")).lock)
    with holder_process(lock_path) as holder:
        with pytest.raises(workdir_lock.WorkdirLocked) as refused:
            workdir_lock.acquire(lock_path, "the second run")
        message = str(refused.value)
        for part in (str(tmp_path / "run"), socket.gethostname(), f"pid {holder.pid}", "since"):
            assert part in message
        assert "the test holder" in message and "another --workdir" in message
        sigkill(holder)
        lock = workdir_lock.acquire(lock_path, "the second run")  # the OS released it at once
        assert isinstance(lock, workdir_lock.FileLock)
        lock.release()


def test_a_released_lock_can_be_taken_again_in_the_same_process(tmp_path):
    path = tmp_path / "workdir.lock"
    first = workdir_lock.acquire(path, "first")
    with pytest.raises(workdir_lock.WorkdirLocked, match="running `first`"):
        workdir_lock.acquire(path, "second")
    first.release()
    second = workdir_lock.acquire(path, "second")
    second.release()


def main_job(workdir: str, mode: str, *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "diffusion_jax.main", f"--config={config_argument('test')}"]
    command += [f"--workdir={workdir}", f"--mode={mode}", *overrides]
    return subprocess.run(
        command,
        cwd=REPO_ROOT,
        env=main_job_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow  # main-job subprocesses
def test_the_main_job_refuses_a_held_workdir_but_generation_workers_are_not_locked(tmp_path):
    workdir = str(tmp_path / "run")
    with holder_process(str(RunLayout(paths.resolve(workdir)).lock)) as holder:
        refused = main_job(workdir, "train_encoder")
        assert refused.returncode != 0
        assert f"Another run holds the workdir {workdir}: host " in refused.stderr
        assert f"pid {holder.pid}" in refused.stderr
        assert not os.path.exists(os.path.join(workdir, "encoder")), "it trained anyway"

        # Generation workers pass the lock and stop at what is missing: the models, the dataset.
        generate = main_job(workdir, "generate", "--config.condition.source=encoder")
        assert "needs the encoder stage's outputs" in generate.stderr, generate.stderr[-3000:]
        validate = main_job(workdir, "validate_dataset")
        assert validate.returncode != 0
        for result in (generate, validate):
            assert "holds the workdir" not in result.stderr
        assert holder.poll() is None


@pytest.mark.slow  # a jax.distributed job of two processes, twice
def test_a_distributed_job_stops_in_every_process_on_a_held_workdir_and_passes_once_free(
    tmp_path, prepared_data_dir
):
    workdir = str(tmp_path / "run")
    lock_path = RunLayout(paths.resolve(workdir)).lock

    def job(mode: str) -> tuple[subprocess.CompletedProcess, list[str]]:
        log_dir = str(tmp_path / f"logs_{mode}")
        return launch_main_job_in_processes(
            2, "test", workdir, prepared_data_dir, mode=mode, log_dir=log_dir, timeout=600
        )

    with holder_process(str(lock_path)) as holder:
        refused, logs = job("train_encoder")
        assert refused.returncode != 0
        assert f"pid {holder.pid}" in logs[0], logs[0][-3000:]
        assert "Process 0 of this job could not take the lock" in logs[1], logs[1][-3000:]
        assert not os.path.exists(os.path.join(workdir, "encoder")), "it trained anyway"
        sigkill(holder)
    # Free, both processes pass the lock and reach the mode, which finds nothing to evaluate.
    _, logs = job("evaluate")
    for log in logs:
        assert "no recogniser to evaluate" in log and "the lock" not in log, log[-3000:]
    assert "--mode=evaluate" in workdir_lock.Holder.from_bytes(lock_path.read_bytes()).command


# --------------------------------------------------------------------------- Cloud Storage

BUCKET = "workdir-lock-test"


@pytest.fixture(scope="module")
def emulator_environment():
    """The Cloud Storage emulator's client environment, set in this process for the module."""
    pytest.importorskip("gcp_storage_emulator")
    with gcs_emulator.running_emulator(BUCKET) as endpoint:
        environment = gcs_emulator.client_environment(endpoint)
        with mock.patch.dict(os.environ, environment):
            yield environment


@pytest.fixture
def lease_url(emulator_environment, request) -> str:
    return f"gs://{BUCKET}/{request.node.name}/workdir.lock"


def holder_of(url: str) -> workdir_lock.Holder | None:
    current = paths.read_with_generation(url)
    return None if current is None else workdir_lock.Holder.from_bytes(current[0])


def lease(url: str, command: str, **options) -> workdir_lock.Lease:
    options = {"lease_seconds": 3.0, "renew_seconds": 0.5, **options}
    return workdir_lock.Lease(url, command, **options)


@pytest.mark.slow  # the emulator
def test_a_lease_is_refused_while_renewed_and_gone_once_released(lease_url):
    first = workdir_lock.acquire(lease_url, "first", lease_seconds=2.0, renew_seconds=0.4)
    assert isinstance(first, workdir_lock.Lease)
    written = holder_of(lease_url)
    assert (written.pid, written.command) == (os.getpid(), "first")
    time.sleep(3.0)  # longer than the lease: only renewals keep it
    with pytest.raises(workdir_lock.WorkdirLocked) as refused:
        lease(lease_url, "second")
    message = str(refused.value)
    assert f"Another run holds the workdir gs://{BUCKET}/" in message
    assert f"pid {os.getpid()}" in message and "running `first`" in message
    assert f"delete {lease_url}" in message and "expires at" in message
    assert holder_of(lease_url).expires > time.time()
    first.release()
    assert paths.read_with_generation(lease_url) is None
    lease(lease_url, "second").release()


@pytest.mark.slow  # the emulator
def test_an_expired_lease_is_taken_over(lease_url):
    stale = workdir_lock.Holder("elsewhere", 1, "then", "a dead run", "t0k3n", time.time() - 1)
    assert paths.write_if_generation(lease_url, stale.to_bytes(), 0) is not None
    taken = lease(lease_url, "the next run")
    assert holder_of(lease_url).command == "the next run"
    taken.release()


@pytest.mark.slow  # the emulator
def test_an_unexpired_lease_of_another_host_is_refused(lease_url):
    alive = workdir_lock.Holder("elsewhere", 1, "now", "a live run", "t0k3n", time.time() + 60)
    assert paths.write_if_generation(lease_url, alive.to_bytes(), 0) is not None
    with pytest.raises(workdir_lock.WorkdirLocked, match="host elsewhere, pid 1"):
        lease(lease_url, "the next run")


@pytest.mark.slow  # the emulator and a helper process
def test_the_lease_of_a_sigkilled_holder_on_this_host_is_taken_over_at_once(
    lease_url, emulator_environment
):
    with holder_process(lease_url, emulator_environment) as holder:
        with pytest.raises(workdir_lock.WorkdirLocked, match=f"pid {holder.pid}"):
            lease(lease_url, "the next run")
        sigkill(holder)
        assert holder_of(lease_url).pid == holder.pid  # left behind, unexpired
        taken = lease(lease_url, "the next run")  # its process is gone: no need to wait
        taken.release()


@pytest.mark.slow  # the emulator and a helper process
def test_a_run_that_exits_deletes_its_lease(lease_url, emulator_environment):
    with holder_process(lease_url, emulator_environment) as holder:
        holder.send_signal(signal.SIGINT)  # KeyboardInterrupt: the process exits through atexit
        try:
            holder.wait(timeout=240)  # a liveness bound (1 s alone)
        except subprocess.TimeoutExpired:
            holder.send_signal(signal.SIGABRT)  # -X faulthandler: every thread's stack
            holder.wait()
            pytest.fail("the holder did not exit:\n" + holder.stderr.read()[-6000:])
    assert paths.read_with_generation(lease_url) is None


@pytest.mark.slow  # the emulator
def test_a_holder_whose_lease_was_taken_over_learns_it_at_its_next_renewal(lease_url):
    lost = threading.Event()
    holder = lease(lease_url, "the stalled run", on_lost=lost.set)
    for _ in range(10):  # another run's takeover, retried if a renewal came in between
        data, generation = paths.read_with_generation(lease_url)
        other = dataclasses.replace(
            workdir_lock.Holder.from_bytes(data), command="the next run", token="other"
        )
        if paths.write_if_generation(lease_url, other.to_bytes(), generation) is not None:
            break
    assert lost.wait(timeout=10) and holder.lost
    holder.release()
    assert holder_of(lease_url).command == "the next run"  # not deleted: it is not ours
