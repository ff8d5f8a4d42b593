"""The one JSON format that every script in benchmarks/ writes, and its writer.

`write_benchmark_json(path, name, results, settings)` prints, and writes to `path` unless it is
None or "", this record:

    {
      "format": 1,
      "benchmark": "unet_throughput",            # the script's name
      "date": "2025-01-31T12:00:00+00:00",       # when the record was made, UTC
      "commit": "<40 hex digits>[-dirty]",       # HEAD of this package's checkout; "-dirty" when
                                                 # tracked files differ from it; "unknown" outside
                                                 # a git checkout
      "command": "benchmarks/unet_throughput.py --sizes=demo",   # sys.argv, shell-quoted
      "machine": {
        "cpu_model": "AMD EPYC 7B13",            # /proc/cpuinfo's model name, else
                                                 # platform.processor() or platform.machine()
        "cpu_cores": 2,                          # os.cpu_count()
        "cpu_cores_allowed": 2,                  # cores this process may run on (affinity)
        "platform": "Linux-6.8.0-x86_64-with-glibc2.39",
        "python": "3.12.3",
        "jax": "0.10.2",
        "jaxlib": "0.10.2",
        "device_kind": "cpu",                    # jax.devices()[0].device_kind
        "device_count": 1,                       # jax.device_count()
        "backend": "cpu"                         # jax.default_backend()
      },
      "settings": {...},                         # what the run was asked to do (its flags)
      "results": {...}                           # what it measured
    }

The machine is read when the record is made, at the end of a run, so a benchmark whose
measurements run in child processes (and whose parent must not take the accelerator while they
do) initialises JAX in the parent only after they are done. Values that JSON cannot hold natively
(NumPy scalars and arrays) are written as Python numbers and lists.
"""

import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

FORMAT_VERSION = 1
PACKAGE_DIR = pathlib.Path(__file__).resolve().parent


def _git(*args: str) -> str:
    """stdout of `git args` run in this package's directory; raises when git fails."""
    # --no-optional-locks: `status` may otherwise refresh the index, taking its lock.
    return subprocess.run(
        ["git", "--no-optional-locks", *args],
        cwd=PACKAGE_DIR,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()


def git_commit() -> str:
    """HEAD of the checkout this package is imported from, with "-dirty" when tracked files differ
    from it (as `git describe --dirty`; untracked files do not count), or "unknown" when the
    package is not in a git checkout or git is missing."""
    try:
        commit = _git("rev-parse", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def cpu_model() -> str:
    """The first 'model name' of /proc/cpuinfo; elsewhere platform.processor() or .machine()."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def machine_info() -> dict[str, Any]:
    """The CPU, Python, JAX and the device JAX runs on. Initialises JAX's backend."""
    import jax

    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_allowed": allowed,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "backend": jax.default_backend(),
        # The XLA options this run compiled with (docs/benchmarks.md, "XLA's CPU options").
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def benchmark_record(
    name: str,
    results: dict[str, Any],
    settings: dict[str, Any],
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The record of the module docstring; `argv` defaults to sys.argv."""
    return {
        "format": FORMAT_VERSION,
        "benchmark": name,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "command": shlex.join(sys.argv if argv is None else argv),
        "machine": machine_info(),
        "settings": settings,
        "results": results,
    }


def _plain(value: Any) -> Any:
    """NumPy scalars and arrays (anything with .tolist()) as Python numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable: {value!r}")


def write_benchmark_json(
    path: str | os.PathLike | None,
    name: str,
    results: dict[str, Any],
    settings: dict[str, Any],
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Builds the record, prints it as indented JSON and, when `path` is given, writes it there
    (parent directories created). Returns the record."""
    record = benchmark_record(name, results, settings, argv)
    text = json.dumps(record, indent=2, default=_plain)
    print(text)
    if path:
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return record
