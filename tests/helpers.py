"""Helpers shared by the tests: the repo root, the configs (the presets of configs/faces.py, and
the unit tests' own config tests/configs/unit.py, called the `test` preset here), and running the
main job through its command line."""

import importlib.util
import os
import subprocess
import sys

import jax
import ml_collections

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIT_CONFIG = os.path.join("tests", "configs", "unit.py")


def config_argument(preset: str) -> str:
    """The --config value of `preset`: "test[,SPACE]" is tests/configs/unit.py[:SPACE], any other
    preset configs/faces.py:<preset>."""
    name, _, space = preset.partition(",")
    if name == "test":
        return UNIT_CONFIG + (f":{space}" if space else "")
    return f"configs/faces.py:{preset}"


def load_config(preset: str) -> ml_collections.ConfigDict:
    """The config of `config_argument(preset)`, loaded the way `config_flags` loads it."""
    path, colon, argument = config_argument(preset).partition(":")
    spec = importlib.util.spec_from_file_location(
        f"{os.path.splitext(os.path.basename(path))[0]}_config", os.path.join(REPO_ROOT, path)
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(argument) if colon else module.get_config()


def tiny_config(data_dir: str | None = None) -> ml_collections.ConfigDict:
    config = load_config("test")
    if data_dir is not None:
        config.data.data_dir = data_dir
    return config


def xla_flags_with(*flags: str) -> str:
    """This process's XLA_FLAGS (the tests' own, tests/conftest.py) with `flags` added."""
    return " ".join([os.environ.get("XLA_FLAGS", ""), *flags]).strip()


def main_job_environment(environment: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment (with the tests' XLA flags, tests/conftest.py) with the tests'
    persistent compilation cache and `environment` added."""
    return {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
        **(environment or {}),
    }


def main_job_flags(
    preset: str, workdir: str, data_dir: str, mode: str, overrides: dict | None
) -> list[str]:
    """The main job's flags for `preset` (`mode` may hold several words, e.g. "pipeline
    --stages=generate")."""
    return [
        f"--config={config_argument(preset)}",
        f"--workdir={workdir}",
        *f"--mode={mode}".split(),
        f"--config.data.data_dir={data_dir}",
    ] + [f"--config.{field}={value}" for field, value in (overrides or {}).items()]


def run_main_job(
    preset: str,
    workdir: str,
    data_dir: str,
    overrides: dict | None = None,
    timeout: int = 600,
    mode: str = "train",
    stages: str = "",
    environment: dict[str, str] | None = None,
) -> None:
    """Runs `python -m diffusion_jax.main --config=<config_argument(preset)> --mode=<mode>` (with
    `stages`: `--mode=pipeline --stages=<stages>`) in a subprocess that shares the tests'
    persistent compilation cache, with `environment` added to the process's; fails the test with
    its stderr if it fails."""
    if stages:
        mode = f"pipeline --stages={stages}"
    command = [sys.executable, "-m", "diffusion_jax.main"]
    command += main_job_flags(preset, workdir, data_dir, mode, overrides)
    result = subprocess.run(
        command,
        cwd=REPO_ROOT,
        env=main_job_environment(environment),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-4000:]


def launch_main_job_in_processes(
    num_processes: int,
    preset: str,
    workdir: str,
    data_dir: str,
    overrides: dict | None = None,
    mode: str = "pipeline",
    log_dir: str = "",
    timeout: int = 1200,
    devices_per_process: int = 1,
) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Runs the main job as `launch/local.sh NUM_PROCESSES` starts it (one jax.distributed job of
    processes with `devices_per_process` CPU devices each, --distributed); returns the launcher's
    result and each process's log, whether it succeeded or not."""
    log_dir = log_dir or os.path.join(workdir, "..", os.path.basename(workdir) + "_logs")
    command = [
        os.path.join(REPO_ROOT, "launch", "local.sh"),
        f"--python={sys.executable}",
        f"--log-dir={log_dir}",
        f"--devices-per-process={devices_per_process}",
        str(num_processes),
        "--",
        *main_job_flags(preset, workdir, data_dir, mode, overrides),
    ]
    result = subprocess.run(
        command,
        cwd=REPO_ROOT,
        env=main_job_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    logs = []
    for index in range(num_processes):
        with open(os.path.join(log_dir, f"process_{index}.log")) as file:
            logs.append(file.read())
    return result, logs


def run_main_job_in_processes(num_processes: int, *args, **kwargs) -> list[str]:
    """`launch_main_job_in_processes`, failing the test with the logs' tails if any process
    fails; returns each process's log."""
    result, logs = launch_main_job_in_processes(num_processes, *args, **kwargs)
    tails = "\n".join(f"--- process {i}:\n{log[-3000:]}" for i, log in enumerate(logs))
    assert result.returncode == 0, result.stderr[-2000:] + tails
    return logs
