"""Helpers shared by the tests: the repo root, the `test` preset of configs/faces.py, and running
the main job through its command line."""

import importlib.util
import os
import subprocess
import sys

import jax
import ml_collections

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(preset: str) -> ml_collections.ConfigDict:
    """`configs/faces.py:<preset>`, loaded the way `config_flags` loads it."""
    spec = importlib.util.spec_from_file_location("faces_config", os.path.join(REPO_ROOT, "configs", "faces.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


def tiny_config(data_dir: str | None = None) -> ml_collections.ConfigDict:
    config = load_config("test")
    if data_dir is not None:
        config.data.data_dir = data_dir
    return config


def run_main_job(
    preset: str,
    workdir: str,
    data_dir: str,
    overrides: dict | None = None,
    timeout: int = 600,
    mode: str = "train",
) -> None:
    """Runs `python -m diffusion_jax.main --config=configs/faces.py:<preset> --mode=<mode>` in a
    subprocess that shares the tests' persistent compilation cache; fails the test with its
    stderr if it fails."""
    command = [
        sys.executable, "-m", "diffusion_jax.main",
        f"--config=configs/faces.py:{preset}",
        f"--workdir={workdir}",
        f"--mode={mode}",
        f"--config.data.data_dir={data_dir}",
    ] + [f"--config.{field}={value}" for field, value in (overrides or {}).items()]
    environment = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
    }
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-4000:]
