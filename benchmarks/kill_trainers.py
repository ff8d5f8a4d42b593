"""SIGKILL each trainer at random moments, let it finish, and compare its final weights with those
of an uninterrupted run: a SIGKILL (a lost host, the OOM killer) must cost only the steps since
the last checkpoint, never the result.

Trainers, each the main job on the unit tests' config (`tests/configs/unit.py`, the `test`
preset), with its step count and checkpoint interval overridden so that kills land at different
steps, between checkpoints as well as during saves:

    encoder      --mode=train_encoder       exports WORKDIR/encoder/model
    autoencoder  --mode=train_autoencoder   on tests/configs/unit.py:latent; its perceptual loss
                                            reads an encoder trained once beforehand
                                            (--config.encoder.checkpoint); exports
                                            WORKDIR/autoencoder/model
    diffusion    --mode=train               the UNet, then its figures

For each trainer, in fresh workdirs under --root:

1. reference: one uninterrupted run; then repeat: a second one, which finds every executable in
   the compilation cache, as the killed attempts do, and times them. Its training window runs
   from the loop's "N parameters." log line (the state is built or restored; imports, data
   preparation and model loading come before it and are excluded) to its last line of output
   (so it includes loading the first step's executable, every step, the saves, the export and
   the figures, and leaves out the interpreter's exit).
2. --kills times: start the trainer in a third workdir, `killed` (it resumes from its latest
   checkpoint); once it logs "N parameters.", wait u x R seconds and SIGKILL its process group.
   u is drawn uniformly in [0, 1) from --seed (the same draws for every run of the script: the
   plan, `--dry-run`), R is what remains of the repeat's training window after the checkpoint
   the attempt resumed from: the repeat's first step, its steps at their rate for the steps
   left, and its tail after the last step (the last save, the export, the figures). So the kills
   fall within what remains of the run.
   Each kill is recorded with the last step the trainer logged as done (every step is logged:
   `log_every_steps=1`), the checkpoints on disk afterwards (committed, and any partial save
   Orbax left in a temporary directory) and the step the next attempt resumes from.
3. final: the trainer runs to the end in the killed workdir.

Then the final train states of the repeat and of the killed run (the last checkpoint's `state`
item: parameters, EMA, optimiser state, step, batch-norm statistics) and, for the encoder and
autoencoder, their exports (`weights_sha256` of the description, which hashes every exported
array, and the latent scale) are compared with the reference's: bit-identical, or else the
largest absolute difference per array is reported. Each kill's record also has the phase it hit
("first step": before the attempt's first step was done, i.e. while its executable loaded or it
ran; "steps"; "after the last step": its save, the export, the figures) and the steps it cost
(the last step done less the step the next attempt resumed from; 0 when the next attempt found
the run complete, and there is nothing left to kill). All runs share one
persistent XLA compilation cache (--cache_dir, default under --root), so a resumed run loads the
executables the reference compiled.

    python benchmarks/kill_trainers.py --output=benchmarks/results/kill_trainers_cpu2.json
    python benchmarks/kill_trainers.py --quick     # 1 kill per trainer, 8 steps: minutes
    python benchmarks/kill_trainers.py --quick --trainers=encoder   # what run_quick.py runs
    python benchmarks/kill_trainers.py --dry-run   # the plan: commands and kill fractions

Prints the JSON record of `diffusion_jax.benchmark_record` (`--output`: also written there); the
trainers' logs stay under --root.
"""

import argparse
import dataclasses
import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from diffusion_jax.benchmark_record import write_benchmark_json

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
UNIT_CONFIG = "tests/configs/unit.py"  # the `test` preset (tests/helpers.py), relative to the repo


@dataclasses.dataclass(frozen=True)
class Trainer:
    """One trainer of the main job: its mode, config, step settings and where it writes."""

    name: str
    mode: str
    config: str  # the --config value
    section: str  # the config section of its train settings
    run_dir: str  # its training run under the workdir ("" : the workdir itself)
    export: str  # its export under the workdir ("" : none)
    steps: int
    checkpoint_every: int

    def overrides(self) -> dict[str, Any]:
        return {
            f"{self.section}.num_steps": self.steps,
            f"{self.section}.checkpoint_every_steps": self.checkpoint_every,
            f"{self.section}.log_every_steps": 1,
        }


# (steps, checkpoint interval) of each trainer: (full, --quick). A step takes 0.05-0.15 s on 2
# CPU cores and a save 0.1-0.5 s, so the full runs spend most of their time stepping.
STEPS = {
    "encoder": ((300, 25), (8, 3)),
    "autoencoder": ((150, 12), (8, 3)),
    "diffusion": ((300, 25), (8, 3)),
}


def trainers(quick: bool) -> dict[str, Trainer]:
    def settings(name: str) -> dict[str, int]:
        steps, every = STEPS[name][1 if quick else 0]
        return {"steps": steps, "checkpoint_every": every}

    return {
        "encoder": Trainer(
            name="encoder",
            mode="train_encoder",
            config=UNIT_CONFIG,
            section="encoder.train",
            run_dir="encoder",
            export="encoder/model",
            **settings("encoder"),
        ),
        "autoencoder": Trainer(
            name="autoencoder",
            mode="train_autoencoder",
            config=f"{UNIT_CONFIG}:latent",
            section="autoencoder.train",
            run_dir="autoencoder",
            export="autoencoder/model",
            **settings("autoencoder"),
        ),
        "diffusion": Trainer(
            name="diffusion",
            mode="train",
            config=UNIT_CONFIG,
            section="train",
            run_dir="",
            export="",
            **settings("diffusion"),
        ),
    }


def kill_fractions(seed: int, trainer: str, kills: int) -> list[float]:
    """The u of each kill of `trainer` (module docstring), the same for every run with `seed`."""
    draws = random.Random(f"{seed}/{trainer}")
    return [draws.random() for _ in range(kills)]


def main_command(
    trainer: Trainer, workdir: pathlib.Path, data_dir: pathlib.Path, extra: dict[str, Any]
) -> list[str]:
    overrides = {"data.data_dir": data_dir, **trainer.overrides(), **extra}
    return [
        sys.executable,
        "-m",
        "diffusion_jax.main",
        f"--config={trainer.config}",
        f"--workdir={workdir}",
        f"--mode={trainer.mode}",
        *(f"--config.{key}={value}" for key, value in overrides.items()),
    ]


def prerequisite_encoder(root: pathlib.Path) -> pathlib.Path:
    """Where the autoencoder's perceptual encoder is trained (the `test` preset's 4 steps)."""
    return root / "prerequisites" / "encoder" / "model"


def trainer_extra(trainer: Trainer, root: pathlib.Path) -> dict[str, Any]:
    if trainer.name == "autoencoder":
        return {"encoder.checkpoint": prerequisite_encoder(root)}
    return {}


RUNS = ("reference", "repeat", "killed")


def workdir(root: pathlib.Path, trainer: str, run: str) -> pathlib.Path:
    """The workdir of `trainer`'s `run` (one of RUNS)."""
    return root / trainer / run / "run"


def plan(args: argparse.Namespace) -> dict[str, Any]:
    """What the script will run: each trainer's settings, command (in the reference workdir)
    and kill fractions."""
    root, data_dir = pathlib.Path(args.root), pathlib.Path(args.root) / "tfds"
    chosen = trainers(args.quick)
    return {
        name: {
            "steps": chosen[name].steps,
            "checkpoint_every_steps": chosen[name].checkpoint_every,
            "command": main_command(
                chosen[name],
                workdir(root, name, "reference"),
                data_dir,
                trainer_extra(chosen[name], root),
            ),
            "kill_fractions": kill_fractions(args.seed, name, args.kills),
        }
        for name in args.trainers
    }


# ----------------------------------------------------------------------------- running trainers

_PARAMETERS = re.compile(r"\] .+: \d+ parameters\.$")
_RESUMING = re.compile(r"\] .+: resuming from step (\d+)\.$")
_STEP = re.compile(r"\] \[(\d+)\] .*\bloss=")


class Attempt:
    """One run of a trainer in its own process group, its merged output written to `log_path`
    and watched for the loop's log lines (when training starts, the step resumed from, each
    step logged as done)."""

    def __init__(self, command: list[str], environment: dict[str, str], log_path: pathlib.Path):
        self.started = time.monotonic()
        self.training = threading.Event()
        self.training_started: float | None = None
        self.last_output = self.started
        self.first_step_done: float | None = None  # when the attempt's first step was logged
        self.last_step_done: float | None = None
        self.resumed_from = 0
        self.last_step = 0
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            with open(self.log_path, "w") as log:
                for line in self.process.stdout:
                    self.last_output = time.monotonic()
                    log.write(line)
                    line = line.rstrip("\n")
                    if match := _RESUMING.search(line):
                        self.resumed_from = self.last_step = int(match.group(1))
                    elif match := _STEP.search(line):
                        self.last_step = int(match.group(1))
                        self.first_step_done = self.first_step_done or self.last_output
                        self.last_step_done = self.last_output
                    elif _PARAMETERS.search(line) and self.training_started is None:
                        self.training_started = time.monotonic()
                        self.training.set()
        finally:
            self.training.set()  # it exited before training (failed, or nothing left to train)

    def wait_for_training(self) -> bool:
        """Waits until training starts; False when the process exited first."""
        self.training.wait()
        return self.training_started is not None

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)

    def wait(self) -> int:
        code = self.process.wait()
        self._reader.join()
        self.process.stdout.close()
        return code

    def log_tail(self, characters: int = 3000) -> str:
        return self.log_path.read_text()[-characters:]


def checkpoints_on_disk(directory: pathlib.Path) -> tuple[list[int], list[str]]:
    """(committed checkpoint steps, other entries such as partial saves) in `directory`."""
    if not directory.is_dir():
        return [], []
    names = sorted(path.name for path in directory.iterdir())
    committed = sorted(int(name) for name in names if name.isdigit())
    return committed, [name for name in names if not name.isdigit()]


def run_to_end(
    command: list[str], environment: dict[str, str], log_path: pathlib.Path
) -> dict[str, Any]:
    """Runs `command` to its end: its times (startup: up to the "N parameters." line; training:
    from there to its last line of output, which leaves out the interpreter's exit), the step it
    resumed from (None when it found nothing left to train), and its exit status, with its log's
    tail when it failed."""
    attempt = Attempt(command, environment, log_path)
    trained = attempt.wait_for_training()
    code = attempt.wait()
    ended = time.monotonic()
    training_started = attempt.training_started or attempt.last_output
    result = {
        "seconds": round(ended - attempt.started, 2),
        "startup_seconds": round(training_started - attempt.started, 2),
        "training_seconds": round(attempt.last_output - training_started, 2),
        **window_parts(attempt),
        "resumed_from": attempt.resumed_from if trained else None,
        "exit_status": code,
    }
    if code != 0:
        result["log_tail"] = attempt.log_tail()
    return result


def window_parts(attempt: Attempt) -> dict[str, float]:
    """An attempt's training window in three parts (none if it took no step): up to its first
    step's log line (loading or compiling that step, and running it), from there to the last
    step's, and from there to its last line of output (the last save, the export, the
    figures)."""
    if attempt.first_step_done is None:
        return {}
    return {
        "first_step_seconds": round(attempt.first_step_done - attempt.training_started, 2),
        "steps_seconds": round(attempt.last_step_done - attempt.first_step_done, 2),
        "tail_seconds": round(attempt.last_output - attempt.last_step_done, 2),
    }


def remaining_seconds(run: dict[str, Any], steps: int, resumed_from: int) -> float:
    """What is left of the uninterrupted `run`'s training window after step `resumed_from`: its
    first step, the steps still to take at its rate, and its tail."""
    rate = run["steps_seconds"] / (steps - 1)
    return run["first_step_seconds"] + rate * max(0, steps - resumed_from - 1) + run["tail_seconds"]


def run_or_raise(
    command: list[str], environment: dict[str, str], log_path: pathlib.Path
) -> dict[str, Any]:
    """`run_to_end`, raising when the command fails (a run that must succeed for the rest)."""
    result = run_to_end(command, environment, log_path)
    if result["exit_status"] != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result['log_tail']}")
    return result


def kill_and_resume(
    trainer: Trainer,
    workdir: pathlib.Path,
    command: list[str],
    environment: dict[str, str],
    repeat: dict[str, Any],
    fractions: list[float],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The kills of step 2 of the module docstring, then the final run: (kills, final)."""
    checkpoints = workdir / trainer.run_dir / "checkpoints"
    kills = []
    for number, fraction in enumerate(fractions):
        attempt = Attempt(command, environment, workdir.parent / f"killed_{number}.log")
        delay = 0.0
        trained = attempt.wait_for_training()
        if trained:
            delay = fraction * remaining_seconds(repeat, trainer.steps, attempt.resumed_from)
            time.sleep(max(0.0, delay - (time.monotonic() - attempt.training_started)))
        finished = attempt.process.poll() is not None
        if not finished:
            attempt.kill()
        code = attempt.wait()
        committed, other = checkpoints_on_disk(checkpoints)
        kill = {
            "fraction": round(fraction, 4),
            "delay_s": round(delay, 2),
            "resumed_from": attempt.resumed_from if trained else None,
            "landed": not finished,
            "exit_status": code,
            "last_step_done": attempt.last_step,
            "checkpoints_after": committed,
            "partial_saves_after": other,
        }
        if finished and code != 0:
            kill["log_tail"] = attempt.log_tail()
        kills.append(kill)
        if finished:
            break  # it ended (done, or failed) before its kill: the final run says how it ends
    final = run_to_end(command, environment, workdir.parent / "final.log")
    return kills, final


# ----------------------------------------------------------------------------- comparing results


def final_state(run_dir: pathlib.Path, step: int) -> dict[str, Any]:
    """{path: array} of the train state saved at `step` in `run_dir/checkpoints`."""
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        state = checkpointer.restore(run_dir / "checkpoints" / str(step) / "state")
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def compare_states(reference: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Whether two {path: array} trees are bit-identical; else the largest absolute difference
    and the arrays that differ."""
    import numpy as np

    if reference.keys() != other.keys():
        return {"bit_identical": False, "different_keys": sorted(reference.keys() ^ other.keys())}
    differing = {}
    for key, array in reference.items():
        if array.dtype != other[key].dtype or array.tobytes() != other[key].tobytes():
            difference = np.abs(array.astype(np.float64) - other[key].astype(np.float64))
            differing[key] = float(difference.max())
    result = {"bit_identical": not differing, "arrays": len(reference)}
    if differing:
        result["max_abs_difference"] = max(differing.values())
        result["differing_arrays"] = differing
    return result


def compare_exports(reference: pathlib.Path, other: pathlib.Path) -> dict[str, Any]:
    """The exports' weights hashes (and latent scales) side by side."""
    (description,) = reference.glob("*.json")
    first, second = (
        json.loads((path / description.name).read_text()) for path in (reference, other)
    )
    result = {
        "weights_sha256": [first["weights_sha256"], second["weights_sha256"]],
        "bit_identical": first["weights_sha256"] == second["weights_sha256"],
    }
    if "latent_scale" in first:
        result["latent_scale"] = [first["latent_scale"], second["latent_scale"]]
        result["bit_identical"] &= first["latent_scale"] == second["latent_scale"]
    return result


# ----------------------------------------------------------------------------- the benchmark


def run_trainer(
    trainer: Trainer, root: pathlib.Path, environment: dict[str, str], fractions: list[float]
) -> dict[str, Any]:
    """Steps 1 to 3 of the module docstring for `trainer` (the reference runs twice: the repeat,
    with every executable in the compilation cache as for the killed attempts, times the
    kills); returns their record."""
    shutil.rmtree(root / trainer.name, ignore_errors=True)
    extra = trainer_extra(trainer, root)
    data_dir = root / "tfds"

    def command(run: str) -> list[str]:
        return main_command(trainer, workdir(root, trainer.name, run), data_dir, extra)

    uninterrupted = {}
    for run in ("reference", "repeat"):
        print(f"{trainer.name}: the uninterrupted run ({run})", file=sys.stderr, flush=True)
        log = workdir(root, trainer.name, run).parent / "run.log"
        uninterrupted[run] = run_or_raise(command(run), environment, log)
    print(f"{trainer.name}: {len(fractions)} kills, then the end", file=sys.stderr, flush=True)
    kills, final = kill_and_resume(
        trainer,
        workdir(root, trainer.name, "killed"),
        command("killed"),
        environment,
        uninterrupted["repeat"],
        fractions,
    )
    resumed = [kill["resumed_from"] for kill in kills[1:]] + [final["resumed_from"]]
    for kill, next_start in zip(kills, resumed):
        if not kill["landed"]:
            continue
        # The next attempt resumed from its latest checkpoint, or found nothing left to train.
        kill["steps_lost"] = 0 if next_start is None else kill["last_step_done"] - next_start
        if kill["last_step_done"] == kill["resumed_from"]:
            kill["phase"] = "first step"  # loading or compiling it, or running it
        elif kill["last_step_done"] == trainer.steps:
            kill["phase"] = "after the last step"  # its save, the export, the figures
        else:
            kill["phase"] = "steps"
    return {
        "steps": trainer.steps,
        "checkpoint_every_steps": trainer.checkpoint_every,
        **uninterrupted,
        "kills": kills,
        "kills_landed": sum(kill["landed"] for kill in kills),
        "final": final,
    }


def compare(trainer: Trainer, root: pathlib.Path, run: str) -> dict[str, Any]:
    """`run`'s final state and export against the reference's. (Called once every trainer has
    run, so that this process initialises JAX only once its children are done.)"""
    reference, other = workdir(root, trainer.name, "reference"), workdir(root, trainer.name, run)
    compared = {
        "state": compare_states(
            final_state(reference / trainer.run_dir, trainer.steps),
            final_state(other / trainer.run_dir, trainer.steps),
        )
    }
    if trainer.export:
        compared["export"] = compare_exports(reference / trainer.export, other / trainer.export)
    return {"bit_identical": all(part["bit_identical"] for part in compared.values()), **compared}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=None, help="kills per trainer (5; --quick 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--quick", action="store_true", help="1 kill each, fewest steps")
    parser.add_argument("--trainers", default="encoder,autoencoder,diffusion")
    parser.add_argument("--root", default="/tmp/diffusion_jax_kill_trainers")
    parser.add_argument(
        "--cache_dir",
        default="",
        help="the runs' persistent XLA compilation cache (default: ROOT/jax_cache)",
    )
    parser.add_argument("--output", default="", help="also write the JSON record here")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    args = parser.parse_args()
    args.root = os.path.abspath(args.root)
    args.kills = args.kills if args.kills is not None else (1 if args.quick else 5)
    args.trainers = args.trainers.split(",")
    if unknown := set(args.trainers) - set(STEPS):
        parser.error(f"unknown trainers {sorted(unknown)}; choose from {list(STEPS)}")
    the_plan = plan(args)
    if args.dry_run:
        print(json.dumps(the_plan, indent=1, default=str))
        return

    root = pathlib.Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    environment = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": os.path.abspath(args.cache_dir or root / "jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    started = time.monotonic()
    chosen = trainers(args.quick)
    if "autoencoder" in args.trainers:
        encoder = prerequisite_encoder(root)
        shutil.rmtree(encoder.parent, ignore_errors=True)
        print("The autoencoder's perceptual encoder", file=sys.stderr, flush=True)
        run_or_raise(
            main_command(
                dataclasses.replace(chosen["encoder"], steps=4, checkpoint_every=2),
                encoder.parent.parent,
                root / "tfds",
                {},
            ),
            environment,
            root / "prerequisites" / "encoder.log",
        )
    results = {
        name: run_trainer(chosen[name], root, environment, the_plan[name]["kill_fractions"])
        for name in args.trainers
    }
    results["total_seconds"] = round(time.monotonic() - started, 1)
    for name in args.trainers:
        results[name]["repeat_vs_reference"] = compare(chosen[name], root, "repeat")
        if results[name]["final"]["exit_status"] == 0:
            results[name]["killed_vs_reference"] = compare(chosen[name], root, "killed")

    settings = {
        "kills": args.kills,
        "seed": args.seed,
        "quick": args.quick,
        "trainers": args.trainers,
        "root": str(root),
        "cache_dir": environment["JAX_COMPILATION_CACHE_DIR"],
        "plan": the_plan,
    }
    write_benchmark_json(args.output, "kill_trainers", results, settings)


if __name__ == "__main__":
    main()
