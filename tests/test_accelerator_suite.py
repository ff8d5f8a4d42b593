"""benchmarks/accelerator_suite.py --quick runs end to end on the CPU and writes the benchmark JSON
with every section measured."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMED_SECTIONS = ("diffusion_train_step", "sampler", "generation", "encoder_train_step")


@pytest.mark.slow  # a subprocess that compiles five programs: minutes on a 2-core CPU
def test_quick_suite_writes_every_section(tmp_path):
    output = tmp_path / "suite.json"
    env = dict(os.environ)
    # The suite's compiles land in the test suite's persistent cache (tests/conftest.py).
    env.setdefault(
        "JAX_COMPILATION_CACHE_DIR",
        os.environ.get("DIFFUSION_JAX_TEST_CACHE", str(REPO_ROOT / ".jax_cache")),
    )
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    completed = subprocess.run(
        [sys.executable, "benchmarks/accelerator_suite.py", "--quick", f"--output={output}"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    record = json.loads(output.read_text())
    assert record["benchmark"] == "accelerator_suite"
    assert record["settings"]["quick"] is True
    results = record["results"]
    assert set(results["sections"]) == set(TIMED_SECTIONS) | {"memory"}
    for name in TIMED_SECTIONS:
        section = results["sections"][name]
        assert "skipped" not in section, (name, section)
        assert section["images_per_s"] > 0, name
    for name in ("diffusion_train_step", "sampler", "encoder_train_step"):
        assert results["sections"][name]["gflop_per_image"] > 0, name
    generation = results["sections"]["generation"]
    assert generation["images_drawn"] > 0 and generation["batches"] > 0
    assert generation["share_outside_denoiser"] < 1
    # On a CPU: no cited peak, so no MFU, and no device memory statistics.
    if record["machine"]["backend"] == "cpu":
        assert results["peak_bf16_tflops"] is None
        assert results["sections"]["diffusion_train_step"]["mfu"] is None
        assert results["sections"]["memory"]["peak_bytes_in_use"] is None


def test_device_kinds_map_to_cited_peaks():
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        from device_specs import peak_for_device_kind, spec_key_for_device_kind
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    assert spec_key_for_device_kind("NVIDIA H100 80GB HBM3") == "h100"
    assert spec_key_for_device_kind("NVIDIA H100 PCIe") == "h100_pcie"
    assert spec_key_for_device_kind("NVIDIA H200") == "h200"
    assert spec_key_for_device_kind("NVIDIA A100-SXM4-80GB") == "a100"
    assert spec_key_for_device_kind("TPU v4") == "tpu_v4"
    assert spec_key_for_device_kind("TPU v5 lite") == "tpu_v5e"
    assert spec_key_for_device_kind("TPU v5p") == "tpu_v5p"
    assert spec_key_for_device_kind("TPU v6 lite") == "tpu_v6e"
    assert peak_for_device_kind("cpu") is None
    assert peak_for_device_kind("NVIDIA H100 80GB HBM3").peak_bf16_flops == pytest.approx(989.4e12)
