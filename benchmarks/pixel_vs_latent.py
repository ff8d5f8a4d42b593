"""Pixel-space against latent-space diffusion for the demo, at an equal wall-clock budget.

Both arms condition on the same identity encoder (trained once, `--mode=train_encoder`) and are
graded by the same judge, an encoder of the same recipe with another seed. Each arm is the main
job, `python -m diffusion_jax.main --config=configs/faces.py:demo,<space>`, given an unreachable
step count and stopped with SIGTERM when its budget is spent (the loop saves the step it reached
and exits). The budget runs from the process's start, so it covers start-up, compilation and, in
latent space, training the autoencoder (`config.autoencoder.train.num_steps`) and estimating its
latent scale before the UNet trains on the rest.

Each arm is then graded by `--mode=evaluate_samples` with the judge: the judge's cosine similarity
between samples and their identity's source image, rank-1 identification among the sources, and
the Frechet distance between the judge's embeddings of the samples and of real images of the same
identities. Writes a `diffusion_jax.benchmark_record` (commit, machine, command line, settings;
results: the numbers and steps reached per arm) and a PNG with both arms' grids.

    python benchmarks/pixel_vs_latent.py --budget_minutes=12
    python benchmarks/pixel_vs_latent.py --budget_minutes=1 --workdir=/tmp/pvl   # a smoke run
    python benchmarks/pixel_vs_latent.py --spaces=latent   # re-run one arm, keep the other's

Re-running an arm starts it from scratch (its workdir is removed first); the encoders are kept.
"""

import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from diffusion_jax.benchmark_record import write_benchmark_json

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "pixel_vs_latent_cpu2.json"
SPACES = ("pixel", "latent")
UNREACHABLE_STEPS = 10_000_000


def main_job(preset: str, workdir: str, mode: str, overrides: dict) -> list[str]:
    return [
        sys.executable,
        "-m",
        "diffusion_jax.main",
        f"--config=configs/faces.py:{preset}",
        f"--workdir={workdir}",
        f"--mode={mode}",
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
    parser.add_argument("--budget_minutes", type=float, default=12.0)
    parser.add_argument("--preset", default="demo", help="the configs/faces.py preset of both arms")
    parser.add_argument("--workdir", default=str(REPO_ROOT / "runs" / "pixel_vs_latent"))
    parser.add_argument("--samples_per_identity", type=int, default=8)
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT))
    parser.add_argument(
        "--spaces",
        default=",".join(SPACES),
        help="the arms to run; the others are taken from an existing --output",
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    encoder_workdir, judge_workdir = os.path.join(workdir, "shared"), os.path.join(workdir, "judge")
    run(main_job(args.preset, encoder_workdir, "train_encoder", {}), f"{encoder_workdir}.log")
    run(
        main_job(args.preset, judge_workdir, "train_encoder", {"encoder.seed": 1}),
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
        train = {**common, "train.num_steps": UNREACHABLE_STEPS}
        seconds = train_for(
            main_job(preset, arm_workdir, "train", train),
            args.budget_minutes * 60,
            f"{arm_workdir}.log",
        )
        step = last_checkpoint_step(arm_workdir)
        evaluate = {
            **common,
            "evaluate.judge_encoder": judge,
            "evaluate.consistency_samples_per_identity": args.samples_per_identity,
        }
        run(main_job(preset, arm_workdir, "evaluate_samples", evaluate), f"{arm_workdir}_eval.log")
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
    }
    write_benchmark_json(args.output, "pixel_vs_latent", results, settings)
    grid = "sample_report/consistency_grid.png"
    grids = [os.path.join(workdir, space, grid) for space in SPACES]
    side_by_side(grids, os.path.splitext(args.output)[0] + ".png")


if __name__ == "__main__":
    main(sys.argv[1:])
