"""benchmarks/memory_table.py: the exact per-device state bytes, the meshes of the presets on each
target, the line fit and the largest batch; and, slow, an end-to-end run on the demo preset."""

import importlib
import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def memory_table():
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        yield importlib.import_module("memory_table")
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))


def test_meshes_follow_the_presets(memory_table):
    base, large = memory_table.load_preset("base"), memory_table.load_preset("large")
    assert memory_table.target_mesh(base, 8, None) == (8, 1, "")
    assert memory_table.target_mesh(large, 8, None) == (2, 4, "")
    assert memory_table.target_mesh(large, 16, None) == (4, 4, "")
    data, fsdp, note = memory_table.target_mesh(large, 1, None)
    assert (data, fsdp) == (1, 1) and "fsdp=4" in note
    assert memory_table.target_mesh(base, 16, -1) == (1, 16, "")


def test_line_fit(memory_table):
    intercept, slope, residual = memory_table.fit_line([(1, 7.0), (2, 9.0), (4, 13.0)])
    assert intercept == pytest.approx(5.0) and slope == pytest.approx(2.0)
    assert residual == pytest.approx(0.0, abs=1e-9)


def test_state_bytes_divide_over_fsdp(memory_table):
    config = memory_table.load_preset("demo")
    abstract_state = memory_table.abstract_train_state(config)
    leaves = jax.tree.leaves(abstract_state.params)
    param_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in leaves)
    whole = memory_table.state_bytes_per_device(abstract_state, 1, 1)
    # float32 parameters, their EMA, and AdamW's two moments.
    assert whole["params"] == whole["ema_params"] == param_bytes
    assert whole["opt_state"] >= 2 * param_bytes
    assert whole["total"] == sum(v for k, v in whole.items() if k != "total")
    sharded = memory_table.state_bytes_per_device(abstract_state, 2, 4)
    assert param_bytes / 4 <= sharded["params"] < param_bytes
    # The data axis replicates: data=8 costs each device what one device holds alone.
    assert memory_table.state_bytes_per_device(abstract_state, 8, 1) == whole


def test_largest_batch_fits_and_one_more_does_not(memory_table):
    config = memory_table.load_preset("base")
    target = memory_table.Target("tpu_v5e", 16)
    calibration = {
        "temp_fixed_bytes": 1e9,
        "temp_per_image_bytes": 0.2e9,
        "train_flops_per_image": 1.8e11,
        "unaliased_output_bytes": 100,
    }
    state = {
        "params": 4e8,
        "ema_params": 4e8,
        "opt_state": 8e8,
        "step_and_model_state": 4,
        "total": 1.6e9 + 4,
    }

    class Args:
        memory_fraction, mfu, dataset_images = 1.0, 0.4, 500_000

    forward = {"flops_per_image": 6e10}
    passes = {"passes_per_image": 100}
    row = memory_table.table_row(
        config, target, (16, 1, ""), calibration, state, 1.7e8, 50_000, forward, passes, Args
    )
    assert row["per_device_batch"] == 8 and row["fits"]
    per_device = row["max_batch_per_device"]
    usable = row["usable_memory_bytes"]
    fixed = state["total"] + 1.7e8 + 1e9 + 100
    assert (
        fixed + per_device * (0.2e9 + 50_000)
        <= usable
        < fixed + (per_device + 1) * (0.2e9 + 50_000)
    )
    assert row["max_global_batch"] == 16 * per_device
    estimates = row["estimates"]
    assert estimates["generate_images_per_s"] == pytest.approx(16 * 197e12 * 0.4 / 6e12)
    assert estimates["generate_dataset_hours"] == pytest.approx(
        500_000 / estimates["generate_images_per_s"] / 3600
    )


@pytest.mark.slow  # compiles the demo's train step twice and its forward: minutes on 2 cores
def test_demo_table_end_to_end(tmp_path):
    output = tmp_path / "table.json"
    env = dict(os.environ)
    env.setdefault(
        "JAX_COMPILATION_CACHE_DIR",
        os.environ.get("DIFFUSION_JAX_TEST_CACHE", str(REPO_ROOT / ".jax_cache")),
    )
    completed = subprocess.run(
        [
            sys.executable,
            "benchmarks/memory_table.py",
            "--presets=demo",
            "--device_kind=h100",
            "--device_count=1,8",
            f"--output={output}",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "| target |" in completed.stdout
    record = json.loads(output.read_text())
    assert record["benchmark"] == "memory_table"
    entry = record["results"]["presets"]["demo"]
    assert entry["train_flops_per_image"] > 0 and entry["forward_flops_per_image"] > 0
    one, eight = entry["targets"]
    assert one["device_count"] == 1 and eight["device_count"] == 8
    assert one["fits"] and one["max_batch_per_device"] >= one["per_device_batch"]
    # Data parallel: the same state per device, an eighth of the batch.
    assert one["per_device_bytes"]["state_total"] == eight["per_device_bytes"]["state_total"]
    assert eight["per_device_batch"] == one["per_device_batch"] / 8
    assert entry["calibrations"]["data1_fsdp1"]["temp_per_image_bytes"] > 0
