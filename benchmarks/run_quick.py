"""Runs every benchmark script's quick mode and checks what it wrote: benchmarks that cannot rot.

Each script in benchmarks/ is either registered in QUICK_MODES, with the command line of its
quick mode (seconds to a few minutes on a 2-core CPU, tiny sizes, the same code paths as its full
run, its JSON written to a scratch directory, never over benchmarks/results/), or in HELPERS,
with why it has no run of its own. A file in benchmarks/ that is in neither (a new script), or a
registered one that is gone, fails the run before anything starts, naming it.

For each quick mode the runner checks that the script exits 0 and that it wrote one JSON file, a
`diffusion_jax.benchmark_record` of format FORMAT_VERSION: its fields, `benchmark` named after the
script, `settings.quick` true, non-empty `results`, and the script's own check (e.g. that the
PyTorch twin timed the preset's sampler). It prints one line per script, as each finishes:

    PASS  unet_throughput.py           41.3 s  /tmp/.../unet_throughput.json
    FAIL  memory_table.py              12.0 s  exit status 1: <the last line of its output>

then the failures' output tails, and a total; it exits 1 when any failed, naming them. Scripts run
--jobs at a time (default 2: much of a quick run is single-threaded start-up and tracing), each
with a persistent XLA compilation cache shared with the test suite (tests/conftest.py), so a
second run skips most compiles. CI (.ci/run) runs it after the tests.

    python benchmarks/run_quick.py                       # all, JSONs in a temporary directory
    python benchmarks/run_quick.py --only=unet_throughput.py,memory_table.py --out_dir=/tmp/q
    python benchmarks/run_quick.py --list                # the registry, nothing run
"""

import argparse
import concurrent.futures
import dataclasses
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

BENCHMARKS = pathlib.Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS.parent
FORMAT_VERSION = 1  # diffusion_jax.benchmark_record.FORMAT_VERSION (not imported: no JAX here)
RECORD_FIELDS = ("format", "benchmark", "date", "commit", "command", "machine", "settings")
SCRIPT_SUFFIXES = (".py", ".sh")
TAIL_LINES = 30


def _twin_timed_the_preset_sampler(record: dict) -> None:
    """unet_throughput: both sides' sample phase ran the demo preset's DPM-Solver++(2M)."""
    sampler = record["results"]["sizes"]["demo"]["sampler"]
    assert sampler["jax"] == "dpm_solver_pp_2m", sampler
    if record["settings"]["with_torch"]:
        assert sampler["torch"] == sampler["jax"], sampler


def _every_section_ran(record: dict) -> None:
    sections = record["results"]["sections"]
    skipped = [name for name, section in sections.items() if "skipped" in section]
    assert not skipped, f"sections skipped: {skipped}"


def _every_stage_ran(record: dict) -> None:
    results = record["results"]
    assert results["returncode"] == 0 and results["report_written"], results


def _resumed_bit_identical(record: dict) -> None:
    results = record["results"]
    for name in record["settings"]["trainers"]:
        assert results[name]["killed_vs_reference"]["bit_identical"], (name, results[name])


def _every_sampler_drew(record: dict) -> None:
    samplers = record["results"]["samplers"]
    assert samplers and all(entry["images_drawn"] > 0 for entry in samplers), samplers


def _both_arms_graded(record: dict) -> None:
    assert set(record["results"]["arms"]) == {"pixel", "latent"}, record["results"]


@dataclasses.dataclass(frozen=True)
class Quick:
    """A script's quick mode: its arguments ({json}: the JSON to write, {scratch}: a directory
    of its own to work in, {cache}: the compilation cache), the interpreter, a check of the
    record it writes, its typical seconds (the runner starts the longest first), and a test of
    the suite that runs this same quick mode (`--skip_covered` leaves it to that test)."""

    args: tuple[str, ...]
    typical_s: float
    interpreter: str = "python"
    check: Callable[[dict], None] | None = None
    covered_by: str = ""

    def command(
        self, script: str, json_path: pathlib.Path, scratch: pathlib.Path, cache: str
    ) -> list[str]:
        program = [sys.executable] if self.interpreter == "python" else [self.interpreter]
        words = [arg.format(json=json_path, scratch=scratch, cache=cache) for arg in self.args]
        return [*program, str(BENCHMARKS / script), *words]

    def covering_test(self, script: str) -> str:
        """`covered_by` if that test file exists and runs `script` with --quick, else ""."""
        if not self.covered_by:
            return ""
        path = REPO_ROOT / self.covered_by
        text = path.read_text() if path.is_file() else ""
        return self.covered_by if script in text and "--quick" in text else ""


# typical_s: seconds on a busy 2-core CPU, two scripts at a time, compilation cache warm.
QUICK_MODES: dict[str, Quick] = {
    "accelerator_suite.py": Quick(
        ("--quick", "--output={json}"),
        typical_s=28,
        check=_every_section_ran,
        covered_by="tests/test_accelerator_suite.py",
    ),
    "base_smoke.sh": Quick(
        ("--quick", "--output={json}", "--workdir={scratch}/run", "--data_dir={scratch}/tfds"),
        typical_s=71,
        interpreter="bash",
        check=_every_stage_ran,
    ),
    "encoder_throughput.py": Quick(("--quick", "--sizes=demo", "--output={json}"), typical_s=49),
    "generation_throughput.py": Quick(
        ("--quick", "--workdir={scratch}", "--output={json}"),
        typical_s=52,
        check=_every_sampler_drew,
    ),
    # One trainer: the kill, resume and compare machinery is the same for the three (all three:
    # `kill_trainers.py --quick`, about 4 minutes on 2 cores).
    "kill_trainers.py": Quick(
        (
            "--quick",
            "--trainers=encoder",
            "--root={scratch}",
            "--cache_dir={cache}",
            "--output={json}",
        ),
        typical_s=89,
        check=_resumed_bit_identical,
    ),
    "memory_table.py": Quick(("--quick", "--output={json}"), typical_s=21),
    "pixel_vs_latent.py": Quick(
        ("--quick", "--workdir={scratch}", "--output={json}"),
        typical_s=151,
        check=_both_arms_graded,
    ),
    "render_throughput.py": Quick(("--quick", "--output={json}"), typical_s=5),
    "source_throughput.py": Quick(("--quick", "--output={json}"), typical_s=12),
    "unet_throughput.py": Quick(
        ("--quick", "--sizes=demo", "--output={json}"),
        typical_s=40,
        check=_twin_timed_the_preset_sampler,
    ),
}

# Files of benchmarks/ with no quick mode, and why.
HELPERS: dict[str, str] = {
    "device_specs.py": "cited accelerator peaks, imported by accelerator_suite.py and "
    "memory_table.py (their quick modes run it)",
    "presets.py": "the preset loader and the quick modes' sizes, imported by the scripts",
    "run_quick.py": "this runner",
}


def unregistered() -> tuple[list[str], list[str]]:
    """(scripts in benchmarks/ registered nowhere, registered names that are not there)."""
    present = {
        path.name
        for path in BENCHMARKS.iterdir()
        if path.is_file() and (path.suffix in SCRIPT_SUFFIXES or os.access(path, os.X_OK))
    }
    registered = set(QUICK_MODES) | set(HELPERS)
    return sorted(present - registered), sorted(registered - present)


def check_record(script: str, json_path: pathlib.Path, quick: Quick) -> None:
    """Raises AssertionError (or a JSON or key error) unless `json_path` is a well-formed quick
    record of `script`."""
    record = json.loads(json_path.read_text())
    missing = [field for field in RECORD_FIELDS if field not in record]
    assert not missing, f"fields missing: {missing}"
    assert record["format"] == FORMAT_VERSION, f"format {record['format']}"
    name = pathlib.Path(script).stem
    assert record["benchmark"] == name, f"benchmark {record['benchmark']!r}, expected {name!r}"
    assert record["settings"].get("quick") is True, "settings.quick is not true"
    assert isinstance(record.get("results"), dict) and record["results"], "no results"
    if quick.check is not None:
        quick.check(record)


@dataclasses.dataclass
class Outcome:
    script: str
    seconds: float
    json_path: pathlib.Path
    log_path: pathlib.Path
    error: str = ""  # empty: passed


def run_one(
    script: str, quick: Quick, out_dir: pathlib.Path, env: dict[str, str], timeout_s: float
) -> Outcome:
    """Runs `script`'s quick mode with its output in `out_dir`, and checks its record."""
    name = pathlib.Path(script).stem
    json_path, log_path = out_dir / f"{name}.json", out_dir / f"{name}.log"
    scratch = out_dir / f"{name}_scratch"
    shutil.rmtree(scratch, ignore_errors=True)  # a fresh one: e.g. stores refuse to overwrite
    scratch.mkdir(parents=True)
    json_path.unlink(missing_ok=True)
    command = quick.command(script, json_path, scratch, env["JAX_COMPILATION_CACHE_DIR"])
    start = time.perf_counter()
    error = ""
    with open(log_path, "w") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        try:
            completed = subprocess.run(
                command,
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
                start_new_session=True,
            )
            if completed.returncode != 0:
                error = f"exit status {completed.returncode}"
        except subprocess.TimeoutExpired:
            error = f"no exit within {timeout_s:g} s (--timeout_s)"
    seconds = time.perf_counter() - start
    if not error:
        if not json_path.is_file():
            error = f"wrote no JSON at {json_path}"
        else:
            try:
                check_record(script, json_path, quick)
            except (AssertionError, KeyError, TypeError, ValueError) as failure:
                error = f"bad record: {type(failure).__name__}: {failure}"
    return Outcome(script, seconds, json_path, log_path, error)


def tail(path: pathlib.Path, lines: int = TAIL_LINES) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def environment() -> dict[str, str]:
    """This process's environment with the test suite's persistent compilation cache, and this
    Python's directory first on PATH (base_smoke.sh runs `python`)."""
    cache = os.environ.get("DIFFUSION_JAX_TEST_CACHE", str(REPO_ROOT / ".jax_cache"))
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.abspath(cache))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    return env


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated scripts (default: all)")
    parser.add_argument("--skip", default="", help="comma-separated scripts not to run")
    parser.add_argument(
        "--out_dir", default="", help="where the JSONs and logs go (default: a temporary one)"
    )
    parser.add_argument("--jobs", type=int, default=2, help="scripts run at once")
    parser.add_argument(
        "--timeout_s", type=float, default=900.0, help="seconds one script may take"
    )
    parser.add_argument(
        "--skip_covered",
        action="store_true",
        help="leave a quick mode that a test of the suite runs (Quick.covered_by) to that test",
    )
    parser.add_argument("--list", action="store_true", help="print the registry and exit")
    args = parser.parse_args(argv)
    for flag in ("only", "skip"):
        names = [name for name in getattr(args, flag).split(",") if name]
        unknown = sorted(set(names) - set(QUICK_MODES))
        if unknown:
            parser.error(f"--{flag}: {unknown} are not among {sorted(QUICK_MODES)}")
        setattr(args, flag, names)
    if args.jobs < 1:
        parser.error("--jobs must be positive")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.list:
        for script, quick in QUICK_MODES.items():
            covered = f"; also run by {quick.covered_by}" if quick.covered_by else ""
            print(
                f"{script}: {quick.interpreter} {script} {shlex.join(quick.args)} "
                f"(~{quick.typical_s:g} s{covered})"
            )
        for script, why in HELPERS.items():
            print(f"{script}: no quick mode ({why})")
        return 0
    new, gone = unregistered()
    if new or gone:
        for script in new:
            print(
                f"FAIL  {script}: a file of benchmarks/ with no quick mode registered; add it "
                "to QUICK_MODES (or, if it is not a script, HELPERS) in benchmarks/run_quick.py",
                flush=True,
            )
        for script in gone:
            print(f"FAIL  {script}: registered in benchmarks/run_quick.py but missing", flush=True)
        return 1
    chosen = [s for s in QUICK_MODES if (not args.only or s in args.only) and s not in args.skip]
    if args.skip_covered:
        for script in list(chosen):
            test = QUICK_MODES[script].covering_test(script)
            if test:
                print(f"SKIP  {script}: its quick mode is run by {test}", flush=True)
                chosen.remove(script)
    chosen.sort(key=lambda script: -QUICK_MODES[script].typical_s)  # the longest first
    with tempfile.TemporaryDirectory(prefix="benchmarks_quick_") as temporary:
        out_dir = pathlib.Path(args.out_dir or temporary).resolve()
        out_dir.mkdir(parents=True, exist_ok=True)
        return run_all(chosen, out_dir, args)


def run_all(chosen: list[str], out_dir: pathlib.Path, args: argparse.Namespace) -> int:
    env = environment()
    width = max(map(len, chosen), default=0)
    print(
        f"Quick modes of {len(chosen)} benchmark scripts, {args.jobs} at a time, into {out_dir} "
        f"(compilation cache {env['JAX_COMPILATION_CACHE_DIR']})",
        flush=True,
    )
    start = time.perf_counter()
    lock = threading.Lock()
    outcomes: list[Outcome] = []

    def run_and_report(script: str) -> None:
        outcome = run_one(script, QUICK_MODES[script], out_dir, env, args.timeout_s)
        with lock:
            outcomes.append(outcome)
            status = "FAIL" if outcome.error else "PASS"
            detail = outcome.error or str(outcome.json_path)
            print(f"{status}  {script:<{width}}  {outcome.seconds:6.1f} s  {detail}", flush=True)

    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        for future in [pool.submit(run_and_report, script) for script in chosen]:
            future.result()
    total = time.perf_counter() - start
    failed = sorted(outcome.script for outcome in outcomes if outcome.error)
    for outcome in sorted(outcomes, key=lambda outcome: outcome.script):
        if outcome.error:
            print(f"\n--- {outcome.script}: {outcome.error}; the end of {outcome.log_path}:")
            print(tail(outcome.log_path), flush=True)
    summary: dict[str, Any] = {"passed": len(outcomes) - len(failed), "failed": failed}
    print(
        f"\n{summary['passed']} of {len(outcomes)} quick modes passed in {total:.1f} s wall"
        + (f"; FAILED: {', '.join(failed)}" if failed else ""),
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
