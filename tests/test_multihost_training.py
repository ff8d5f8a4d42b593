"""Multi-host training with real processes: 2 JAX processes x 2 CPU devices (launch/local.sh, under
jax.distributed) train the `test` preset's diffusion model like 1 process x 4 devices.

The data pipeline's global batches do not depend on the number of processes (each process reads
and decodes only its rows of each), and with one process they are the batches of the pipeline
before that change. SIGTERM to one of the two processes stops both after the same step, saved
once; the two processes then resume and end with the parameters of one process with four
devices that trained as many steps (to float32 rounding: `PARAMETER_TOLERANCE`).
"""

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time

import grain
import jax
import numpy as np
import pytest

from diffusion_jax.core import parallel
from diffusion_jax.core.training import state as state_lib
from diffusion_jax.core.training.checkpointing import Checkpointer
from diffusion_jax.tasks.conditional_diffusion.denoiser import unet_builder
from diffusion_jax.tasks.data.sources import input_pipeline
from tests.helpers import REPO_ROOT, UNIT_CONFIG, tiny_config, xla_flags_with

pytestmark = [pytest.mark.slow]

LOCAL_SH = os.path.join(REPO_ROOT, "launch", "local.sh")
# Largest |difference| of any parameter (and EMA parameter) between the two runs. Measured:
# 1.8e-7 (params) and 3.0e-8 (EMA) after 5 and 6 steps, float32 rounding of a different
# reduction order; other batches would differ far more (an Adam step moves a parameter by up
# to the learning rate, 1e-3).
PARAMETER_TOLERANCE = 1e-5
# The preempted run's length: it is stopped long before.
LONG_RUN_STEPS = 1000


# ------------------------------------------------------------------------------ the data pipeline


def _augmenting(data_dir: str):
    data = tiny_config(data_dir).data
    data.horizontal_flip, data.max_shift, data.color_jitter = True, 2, 0.2
    return data


def _legacy_train_iterator(data_config, *, global_batch_size: int, seed: int):
    """make_train_iterator as it was before its global batches: each process shuffles its own
    contiguous shard of the records (ShardByJaxProcess). Kept to prove that one process still
    reads exactly these batches."""
    source = input_pipeline.training_records(data_config)
    sampler = grain.samplers.IndexSampler(
        num_records=len(source),
        shard_options=grain.sharding.ShardByJaxProcess(drop_remainder=True),
        shuffle=True,
        num_epochs=None,
        seed=seed,
    )
    operations = [input_pipeline._RandomHorizontalFlip()] if data_config.horizontal_flip else []
    if data_config.get("max_shift", 0):
        operations.append(input_pipeline._RandomShift(data_config.max_shift))
    if data_config.get("color_jitter", 0.0):
        operations.append(input_pipeline._RandomColorJitter(data_config.color_jitter))
    operations += [
        input_pipeline._ToModelInputs(),
        grain.transforms.Batch(global_batch_size // jax.process_count(), drop_remainder=True),
    ]
    loader = grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=operations,
        worker_count=data_config.worker_count,
    )
    return iter(loader)


def _assert_same_batches(expected, actual):
    for a, b in zip(expected, actual, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_one_process_reads_the_batches_and_checkpoints_of_the_pipeline_before(prepared_data_dir):
    """Bit for bit the same records, order and augmentations (flip, shift, colour jitter) over
    10 batches (2.5 epochs), and an iterator state saved by the old pipeline resumes."""
    data = _augmenting(prepared_data_dir)
    legacy = _legacy_train_iterator(data, global_batch_size=8, seed=7)
    new = input_pipeline.make_train_iterator(data, global_batch_size=8, seed=7)
    _assert_same_batches(itertools.islice(legacy, 10), itertools.islice(new, 10))

    resumed = input_pipeline.make_train_iterator(data, global_batch_size=8, seed=7)
    resumed.set_state(legacy.get_state())  # grain checks the sampler's repr
    _assert_same_batches(itertools.islice(legacy, 3), itertools.islice(resumed, 3))


@pytest.mark.parametrize("process_count", [2, 4])
def test_each_process_yields_its_rows_of_the_same_global_batches(prepared_data_dir, process_count):
    """Process p of P yields rows [p B/P, (p+1) B/P) of each global batch of one process, with
    the same augmentations."""
    data = _augmenting(prepared_data_dir)
    batches, rows = 6, 8 // process_count
    whole = list(
        itertools.islice(
            input_pipeline.make_train_iterator(data, global_batch_size=8, seed=3), batches
        )
    )
    for process in range(process_count):
        iterator = input_pipeline._train_iterator(
            data, global_batch_size=8, seed=3, process_index=process, process_count=process_count
        )
        mine = [
            {key: value[process * rows : (process + 1) * rows] for key, value in batch.items()}
            for batch in whole
        ]
        _assert_same_batches(mine, itertools.islice(iterator, batches))


@pytest.mark.parametrize("worker_count", [0, 3])
def test_the_processes_samplers_share_out_the_global_positions(worker_count):
    """What each process reads (its sampler's records: grain decodes nothing else) is its share
    of the global positions: together every position once, each process its own rows of each
    global batch (with workers: of the global batch its worker builds), and one process all of
    them in order, with the global sampler's records and random streams."""
    num_records, batch, length = 20, 8, 96
    reference = grain.samplers.IndexSampler(num_records=num_records, shuffle=True, seed=5)

    def sampler(process_index, process_count):
        return input_pipeline._GlobalBatchRows(
            num_records=num_records,
            seed=5,
            global_batch_size=batch,
            process_index=process_index,
            process_count=process_count,
            worker_count=worker_count,
        )

    one = sampler(0, 1)
    for index in range(length):
        expected, actual = reference[index], one[index]
        assert (actual.index, actual.record_key) == (expected.index, expected.record_key)
        assert actual.rng.random() == expected.rng.random()
    workers = max(worker_count, 1)
    for process_count in (2, 4):
        rows = batch // process_count
        positions = []
        for process in range(process_count):
            mine = [
                sampler(process, process_count)[index].index
                for index in range(length // process_count)
            ]
            for index in mine:  # position in the global batches of its worker
                assert (index // workers) % batch // rows == process
            positions += mine
        assert sorted(positions) == list(range(length))


# ----------------------------------------------------------------------- runs of the main job


def _environment(**extra: str) -> dict[str, str]:
    """This environment without a SLURM step's or a launcher's variables, sharing the tests'
    persistent compilation cache and XLA flags, on the CPU."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("SLURM_", "SLURMD_"))
        and name not in ("JAX_COORDINATOR_PORT", "JAX_PLATFORMS")
    }
    environment.update(
        {
            "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": xla_flags_with(),
            **extra,
        }
    )
    return environment


def _main_flags(workdir, data_dir: str, **overrides) -> list[str]:
    return [
        f"--config={UNIT_CONFIG}",
        f"--workdir={workdir}",
        "--mode=train",
        f"--config.data.data_dir={data_dir}",
    ] + [f"--config.{field}={value}" for field, value in overrides.items()]


def _local_sh(num_processes: int, log_dir, flags: list[str]) -> list[str]:
    return [
        "bash",
        LOCAL_SH,
        f"--python={sys.executable}",
        "--devices-per-process=2",
        f"--log-dir={log_dir}",
        str(num_processes),
        "--",
        *flags,
    ]


def _logs(log_dir) -> list[str]:
    """The logs of processes 0 and 1 ("" before one exists)."""
    paths = [log_dir / f"process_{i}.log" for i in (0, 1)]
    return [path.read_text() if path.exists() else "" for path in paths]


def _logged_steps(log: str) -> list[int]:
    return [int(step) for step in re.findall(r"\] \[(\d+)\] grad_norm=", log)]


def _children_by_rank(pid: int) -> dict[int, int]:
    """{SLURM_PROCID: pid} of the processes that local.sh (`pid`) started (Linux /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                parent = int(file.read().rpartition(")")[2].split()[1])
            if parent != pid:
                continue
            with open(f"/proc/{entry}/environ", "rb") as file:
                environ = dict(
                    item.split(b"=", 1) for item in file.read().split(b"\0") if b"=" in item
                )
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if b"SLURM_PROCID" in environ:
            children[int(environ[b"SLURM_PROCID"])] = int(entry)
    return children


def _restore(workdir, step: int) -> state_lib.TrainState:
    config = tiny_config()
    optimizer, _ = state_lib.make_optimizer(config.train)
    abstract = state_lib.abstract_train_state(unet_builder(config), optimizer)
    mesh = parallel.make_mesh(config.mesh)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    state = checkpointer.restore(abstract, parallel.state_shardings(mesh, abstract), step=step)
    checkpointer.close()
    return state


def _max_difference(a, b) -> float:
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


@pytest.fixture(scope="module")
def preempted_run(tmp_path_factory, prepared_data_dir):
    """2 processes x 2 devices training `LONG_RUN_STEPS` steps (checkpoints only at the end),
    and SIGTERM to process 1 alone once both have logged a step."""
    root = tmp_path_factory.mktemp("two_processes")
    workdir, log_dir = root / "run", root / "logs_preempted"
    flags = _main_flags(
        workdir,
        prepared_data_dir,
        **{
            "train.num_steps": LONG_RUN_STEPS,
            "train.checkpoint_every_steps": LONG_RUN_STEPS,
            "train.log_every_steps": 1,
        },
    )
    started = time.monotonic()
    launcher = subprocess.Popen(
        _local_sh(2, log_dir, flags),
        cwd=REPO_ROOT,
        env=_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 420
        while not all(_logged_steps(log) for log in _logs(log_dir)):
            assert launcher.poll() is None, launcher.communicate()[1] + "".join(_logs(log_dir))
            assert time.monotonic() < deadline, "".join(_logs(log_dir))
            time.sleep(0.5)
        children = _children_by_rank(launcher.pid)
        assert sorted(children) == [0, 1], children
        os.kill(children[1], signal.SIGTERM)
        _, stderr = launcher.communicate(timeout=300)
    finally:
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGTERM)  # local.sh forwards it to both processes
            launcher.communicate(timeout=120)
    print(f"preempted 2-process run: {time.monotonic() - started:.0f} s")
    return workdir, log_dir, launcher.returncode, stderr


def _stopped_at(log: str) -> list[int]:
    pattern = r"SIGTERM stopped diffusion after saving step (\d+)"
    return [int(step) for step in re.findall(pattern, log)]


@pytest.mark.e2e
def test_sigterm_to_one_process_stops_both_at_one_saved_step(preempted_run):
    workdir, log_dir, returncode, stderr = preempted_run
    logs = _logs(log_dir)
    assert returncode == 0, stderr + "".join(log[-3000:] for log in logs)  # main: Preempted is 0
    assert "SIGTERM caught" in logs[1] and "SIGTERM caught" not in logs[0]  # JAX's notifier
    stops = [_stopped_at(log) for log in logs]
    assert len(stops[0]) == 1 and stops[0] == stops[1], stops
    step = stops[0][0]
    assert 1 <= step < LONG_RUN_STEPS
    assert [max(_logged_steps(log)) for log in logs] == [step, step]  # no process went further
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    assert checkpointer.all_steps() == [step]
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints", str(step), "data_iterator"))) == [
        "commit_success.txt",
        "process_0-of-2.json",
        "process_1-of-2.json",
    ]


@pytest.fixture(scope="module")
def resumed_runs(preempted_run, tmp_path_factory, prepared_data_dir):
    """The preempted run resumed by 2 processes to 2 steps past its stop, and 1 process x 4
    devices training as many steps from scratch: (steps, two-process workdir, one-process
    workdir)."""
    workdir, _, returncode, stderr = preempted_run
    assert returncode == 0, stderr
    stop = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True).latest_step()
    steps = stop + 2
    overrides = {
        "train.num_steps": steps,
        "train.checkpoint_every_steps": LONG_RUN_STEPS,
        "train.log_every_steps": 1,
    }
    log_dir = workdir.parent / "logs_resumed"
    started = time.monotonic()
    resumed = subprocess.run(
        _local_sh(2, log_dir, _main_flags(workdir, prepared_data_dir, **overrides)),
        cwd=REPO_ROOT,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    print(f"resumed 2-process run: {time.monotonic() - started:.0f} s")
    assert all(f"resuming from step {stop}." in log for log in _logs(log_dir))

    single = tmp_path_factory.mktemp("one_process")
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffusion_jax.main",
            *_main_flags(single, prepared_data_dir, **overrides),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=_environment(XLA_FLAGS=xla_flags_with("--xla_force_host_platform_device_count=4")),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "JAX process 0/1, devices: [CpuDevice(id=0), CpuDevice(id=1), CpuDevice(id=2)" in (
        result.stderr
    )
    print(f"1-process run: {time.monotonic() - started:.0f} s")
    return steps, workdir, single


@pytest.mark.e2e
def test_two_processes_resume_to_the_parameters_of_one_process_with_four_devices(resumed_runs):
    steps, two_processes, one_process = resumed_runs
    assert Checkpointer(os.path.join(two_processes, "checkpoints"), read_only=True).all_steps() == [
        steps - 2,
        steps,
    ]
    for name in ("process_0-of-2.json", "process_1-of-2.json"):
        with open(
            os.path.join(two_processes, "checkpoints", str(steps), "data_iterator", name)
        ) as f:
            assert "process_count=2" in json.load(f)["sampler"]
    a, b = _restore(two_processes, steps), _restore(one_process, steps)
    params, ema = _max_difference(a.params, b.params), _max_difference(a.ema_params, b.ema_params)
    print(f"max |difference| after {steps} steps: params {params:.3g}, EMA {ema:.3g}")
    assert params <= PARAMETER_TOLERANCE and ema <= PARAMETER_TOLERANCE, (params, ema)
