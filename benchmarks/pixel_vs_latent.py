"""Pixel-space against latent-space diffusion for the demo, at an equal wall-clock budget.

Both arms condition on the same identity encoder (trained once, `--mode=train_encoder`) and are
graded by the same judge, an encoder of the same recipe with another seed. Each arm is the main
job, `python -m diffusion_jax.main --config=configs/faces.py:demo,<space> --mode=pipeline
--stages=diffusion` (in latent space the autoencoder stage, then the UNet's; `--mode=train` does
not train a missing autoencoder), given an unreachable step count and stopped with SIGTERM when
its budget is spent (the loop saves the step it reached and exits). The budget runs from the
process's start, so it covers start-up, compilation and, in latent space, training the
autoencoder (`config.autoencoder.train.num_steps`) and estimating its latent scale before the
UNet trains on the rest.

Each arm is then graded by `--mode=evaluate_samples` with the judge: the judge's cosine similarity
between samples and their identity's source image, rank-1 identification among the sources, and
the Frechet distance between the judge's embeddings of the samples and of real images of the same
identities. Writes a `diffusion_jax.benchmark_record` (commit, machine, command line, settings;
results: the numbers and steps reached per arm) and a PNG with both arms' grids.

    python benchmarks/pixel_vs_latent.py --budget_minutes=12
    python benchmarks/pixel_vs_latent.py --budget_minutes=1 --workdir=/tmp/pvl   # a smoke run
    python benchmarks/pixel_vs_latent.py --spaces=latent   # re-run one arm, keep the other's
    python benchmarks/pixel_vs_latent.py --quick --output=/tmp/pvl.json   # a check that it runs

Re-running an arm starts it from scratch (its workdir is removed first); the encoders are kept.

`--quick` runs the same jobs at the tiny sizes of benchmarks/presets.py shrink_for_quick, given
to each job as `--config.` flags (`presets.quick_overrides`): 2 steps of each encoder, of the
autoencoder and of each arm's UNet (each arm runs to its end, within the budget, 5 minutes unless
given), 2 samples per identity, in a temporary workdir (unless --workdir is given); it writes its
record (and PNG) only where --output says. Its numbers grade networks trained for 2 steps.
"""

import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image
from presets import quick_overrides

from diffusion_jax.benchmark_record import write_benchmark_json

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "pixel_vs_latent_cpu2.json"
SPACES = ("pixel", "latent")
UNREACHABLE_STEPS = 10_000_000


def main_job(
    preset: str, workdir: str, mode: str, overrides: dict, quick: bool = False
) -> list[str]:
    """The main job's command; `quick`: the preset at tiny sizes (module docstring), `overrides`
    after those."""
    return [
        sys.executable,
        "-m",
        "diffusion_jax.main",
        f"--config=configs/faces.py:{preset}",
        f"--workdir={workdir}",
        *f"--mode={mode}".split(),
        *(quick_overrides(preset) if quick else []),
        *(f"--config.{key}={value}" for key, value in overrides.items()),
    ]


def run(command: list[str], log_path: str) -> None:
    with open(log_path, "w") as log:
        subprocess.run(command, cwd=REPO_ROOT, stdout=log, stderr=log, check=True)


def train_for(command: list[str], budget_seconds: float, log_path: str) -> float:
    """Runs `command`, sends SIGTERM after `budget_seconds`, waits; returns the wall seconds."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=log)
        try:
            process.wait(timeout=budget_seconds)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGTERM)
            process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"{command} failed with exit code {process.returncode}; see {log_path}")
    return time.perf_counter() - start


def last_checkpoint_step(workdir: str) -> int:
    names = os.listdir(os.path.join(workdir, "checkpoints"))
    steps = [int(name) for name in names if name.isdigit()]
    if not steps:
        raise RuntimeError(f"no checkpoint in {workdir}: the budget ended before training began")
    return max(steps)


def side_by_side(paths: list[str], out_path: str) -> None:
    """The arms' consistency grids, one above the other."""
    images = [np.asarray(Image.open(path).convert("RGB")) for path in paths]
    width = max(image.shape[1] for image in images)
    padded = [
        np.pad(image, ((0, 0), (0, width - image.shape[1]), (0, 0)), constant_values=255)
        for image in images
    ]
    Image.fromarray(np.concatenate(padded, axis=0)).save(out_path)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget_minutes", type=float, default=None, help="12; --quick: 5")
    parser.add_argument("--preset", default="demo", help="the configs/faces.py preset of both arms")
    parser.add_argument(
        "--workdir", default=None, help="default runs/pixel_vs_latent; --quick: a temporary one"
    )
    parser.add_argument("--samples_per_identity", type=int, default=None, help="8; --quick: 2")
    parser.add_argument(
        "--output", default=None, help=f"default {DEFAULT_OUTPUT}; --quick: none ('' for none)"
    )
    parser.add_argument(
        "--spaces",
        default=",".join(SPACES),
        help="the arms to run; the others are taken from an existing --output",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a check that it runs, at tiny sizes (docstring)"
    )
    args = parser.parse_args(argv)
    defaults = {
        "budget_minutes": (12.0, 5.0),
        "workdir": (str(REPO_ROOT / "runs" / "pixel_vs_latent"), ""),
        "samples_per_identity": (8, 2),
        "output": (str(DEFAULT_OUTPUT), ""),
    }
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.workdir:
        run_arms(args, os.path.abspath(args.workdir))
        return
    with tempfile.TemporaryDirectory() as workdir:
        run_arms(args, workdir)


def run_arms(args: argparse.Namespace, workdir: str) -> None:
    os.makedirs(workdir, exist_ok=True)
    encoder_workdir, judge_workdir = os.path.join(workdir, "shared"), os.path.join(workdir, "judge")
    quick = args.quick
    run(
        main_job(args.preset, encoder_workdir, "train_encoder", {}, quick),
        f"{encoder_workdir}.log",
    )
    run(
        main_job(args.preset, judge_workdir, "train_encoder", {"encoder.seed": 1}, quick),
        f"{judge_workdir}.log",
    )
    encoder = os.path.join(encoder_workdir, "encoder", "model")
    judge = os.path.join(judge_workdir, "encoder", "model")

    spaces = args.spaces.split(",")
    arms = {}
    if set(spaces) != set(SPACES):
        with open(args.output) as f:
            previous = json.load(f)
        # A benchmark record keeps the arms under "results"; files older than the format, on top.
        arms = previous.get("results", previous)["arms"]
    for space in spaces:
        preset = f"{args.preset},{space}"
        arm_workdir = os.path.join(workdir, space)
        shutil.rmtree(arm_workdir, ignore_errors=True)
        common = {"encoder.checkpoint": encoder, "seed": 0}
        # --quick: its 2 steps, to the end (within the budget); else until the budget is spent.
        train = common if quick else {**common, "train.num_steps": UNREACHABLE_STEPS}
        seconds = train_for(
            main_job(preset, arm_workdir, "pipeline --stages=diffusion", train, quick),
            args.budget_minutes * 60,
            f"{arm_workdir}.log",
        )
        step = last_checkpoint_step(arm_workdir)
        evaluate = {
            **common,
            "evaluate.judge_encoder": judge,
            "evaluate.consistency_samples_per_identity": args.samples_per_identity,
        }
        run(
            main_job(preset, arm_workdir, "evaluate_samples", evaluate, quick),
            f"{arm_workdir}_eval.log",
        )
        with open(os.path.join(arm_workdir, "sample_report", "identity_consistency.json")) as f:
            report = json.load(f)
        with open(os.path.join(arm_workdir, "config.json")) as f:
            config = json.load(f)
        autoencoder_steps = config["autoencoder"]["train"]["num_steps"] if space == "latent" else 0
        arms[space] = {
            "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "wall_seconds": seconds,
            "unet_steps": step,
            "unet_images_seen": step * config["train"]["batch_size"],
            "autoencoder_steps": autoencoder_steps,
            "judge_similarity_mean": report["judge_similarity_mean"],
            "judge_similarity_std": report["judge_similarity_std"],
            "judge_rank1": report["judge_rank1"],
            "judge_frechet_distance": report["judge_frechet_distance"],
            "judge_real_genuine_mean": report["judge_real_genuine_mean"],
            "judge_impostor_mean": report["judge_impostor_mean"],
            "frechet_samples": report["frechet_samples"],
            "frechet_real_images": report["frechet_real_images"],
        }

    results = {
        "arms": arms,
        "latent_over_pixel": {
            key: arms["latent"][key] / arms["pixel"][key]
            for key in ("judge_similarity_mean", "judge_rank1", "judge_frechet_distance")
            if arms["pixel"][key]
        },
    }
    settings = {
        "budget_minutes": args.budget_minutes,
        "preset": args.preset,
        "samples_per_identity": args.samples_per_identity,
        "spaces": spaces,
        "workdir": workdir,
        "quick": quick,
    }
    write_benchmark_json(args.output, "pixel_vs_latent", results, settings)
    if args.output:
        grid = "sample_report/consistency_grid.png"
        grids = [os.path.join(workdir, space, grid) for space in SPACES]
        side_by_side(grids, os.path.splitext(args.output)[0] + ".png")


if __name__ == "__main__":
    main(sys.argv[1:])
