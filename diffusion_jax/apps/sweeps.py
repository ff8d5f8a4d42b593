"""What the sweeps over a trained workdir share (`--mode=scaling_sweep`, `--mode=sampler_sweep`).

Each reads a workdir whose pipeline has run up to its recognisers, with the config it was run
with (`check_workdir`); generates datasets with the workdir's generation, a few fields changed,
once (`generate_once`: skipped when its manifest is written); trains synthetic recognisers with
the recognisers stage's recipe, once (`train_synthetic_recognizers`: a complete one is not
retrained); verifies them against the workdir's `real` recogniser, never retrained; counts the
wall seconds of each piece of work over the runs that worked on it (`timed`: work interrupted
and resumed counts whole); and records the run (`run_record`: date, commit, machine, command)
beside its results, so that it can be written up in docs/experiments/.
"""

import datetime
import shlex
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import matplotlib.pyplot as plt
import ml_collections
from absl import logging
from jax.experimental import multihost_utils

from diffusion_jax import benchmark_record
from diffusion_jax.apps.pipeline import check_stage_configs, stage_configs
from diffusion_jax.core import paths, stages
from diffusion_jax.core.figures import save_figure
from diffusion_jax.core.run_layout import RunLayout
from diffusion_jax.tasks.data.sources import input_pipeline
from diffusion_jax.tasks.evaluation.claim_report import claim_of
from diffusion_jax.tasks.evaluation.recognizer_training import train_recognizer
from diffusion_jax.tasks.generation import manifest
from diffusion_jax.tasks.generation.generation_job import generate_dataset
from diffusion_jax.tasks.recognition import encoder_store

# The stages whose outputs a sweep reads (the autoencoder's in latent space only).
REQUIRED_STAGES = ("encoder", "judge", "autoencoder", "diffusion", "recognizers")
REAL = "real"  # the workdir's real-trained recogniser (WORKDIR/recognizers/real)


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> RunLayout:
    """The workdir's layout, once every stage a sweep reads has its outputs (else
    `stages.MissingStageOutput`, naming the command that makes them) and was run with this
    config (else ValueError naming the changed keys, as `--mode=pipeline` refuses it): the
    recipe and the real recogniser a sweep compares against are theirs."""
    layout = RunLayout.from_config(workdir, config)
    for stage in REQUIRED_STAGES:
        stages.require(layout, config, stage)
    configs = stage_configs(config)
    check_stage_configs(
        str(layout.root), {name: configs[name] for name in stages.requirements("recognizers")}
    )
    return layout


def timed(cost_path: paths.Path, work: Callable[[], Any]) -> tuple[Any, float]:
    """(what `work` returns, its wall seconds added to those already in `cost_path`); the sum is
    written back even when `work` is interrupted (a preemption), so resumed work is counted
    whole. Process 0 writes it."""
    before = (paths.read_json_if_exists(cost_path) or {}).get("seconds", 0.0)
    started = time.perf_counter()
    try:
        result = work()
    finally:
        total = before + time.perf_counter() - started
        if jax.process_index() == 0:
            paths.write_json_atomically(cost_path, {"seconds": total})
    return result, total


def recorded_seconds(cost_path: paths.Path) -> float | None:
    return (paths.read_json_if_exists(cost_path) or {}).get("seconds")


def generate_once(
    generation: ml_collections.ConfigDict,
    workdir: str,
    cost_path: paths.Path,
    compared: tuple[str, ...],
    remedy: str,
    differing_in: str = "settings",
) -> dict:
    """Generates the dataset of `generation` (the workdir's config with a few fields changed)
    into its generate.output_dir unless its manifest is written; returns its out_dir, kept and
    judged images and wall seconds (`timed` into `cost_path`). A complete dataset whose plan
    differs from `generation` in one of the `compared` keys ("generate.num_identities",
    "sample.sampler"...) is refused as one of other `differing_in`, naming the keys, with
    `remedy` (the rest is the workdir's generation: `check_workdir`)."""
    out_dir = paths.resolve(generation.generate.output_dir)
    manifest_path = out_dir / manifest.MANIFEST_FILE
    existing = paths.read_json_if_exists(manifest_path)
    if existing is None:
        logging.info("Generating into %s.", out_dir)
        summary, seconds = timed(cost_path, lambda: generate_dataset(generation, workdir))
        if not summary["dataset_complete"]:
            raise RuntimeError(
                f"The dataset in {out_dir} is not complete yet (other workers' shards are "
                "missing); run the sweep again once they are written."
            )
        existing = paths.read_json(manifest_path)
    else:
        differing = []
        for key in compared:
            section, field = key.split(".")
            there, here = existing["plan"][section].get(field), generation[section][field]
            if there != here:
                differing.append(f"{key}: {there!r} there, {here!r} here")
        if differing:
            raise ValueError(
                f"{out_dir} holds a dataset of other {differing_in} ({'; '.join(differing)}); "
                + remedy
            )
        seconds = recorded_seconds(cost_path)
        logging.info("The dataset in %s is complete.", out_dir)
    counts = existing["counts"]
    return {
        "out_dir": str(out_dir),
        "images": counts["images"],  # kept: what the recognisers can train on
        "judged_images": counts["judged_images"],  # drawn, redraws included
        "seconds": seconds,
    }


def train_synthetic_recognizers(
    layout: RunLayout,
    runs: dict[str, tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]],
) -> dict[str, dict]:
    """{name: {"recognizer", "images", "seconds", "trained_now"}}: for each of `runs`, {name:
    (config, training set's data config)}, a recogniser trained with the recognisers stage's
    recipe (`recognizer_training.train_recognizer`) into the sweep's `layout.recognizer(name)`
    unless it is complete, its wall seconds `timed` into `layout.cost(name)`."""
    # Decided for every run before any is written, so that all processes agree.
    complete = {
        name: encoder_store.is_complete(layout.recognizer(name).export_dir) for name in runs
    }
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"{layout.root}: recognisers read")
    trained = {}
    for name, (config, data) in runs.items():
        if complete[name]:
            export, seconds = (
                str(layout.recognizer(name).export_dir),
                recorded_seconds(layout.cost(name)),
            )
            logging.info("Recogniser %s is complete, not retrained.", name)
        else:
            logging.info("Training the recogniser %s.", name)
            export, seconds = timed(
                layout.cost(name),
                lambda config=config, data=data, name=name: train_recognizer(
                    config, str(layout.root), name, data
                ),
            )
        trained[name] = {
            "recognizer": export,
            "images": len(input_pipeline.training_records(data)),
            "seconds": seconds,
            "trained_now": not complete[name],
        }
    return trained


def recognizer_steps(export_dir: str) -> int:
    return int(encoder_store.read_description(export_dir)["provenance"]["step"])


def run_record() -> dict:
    """The date, commit and machine of this run, its command, and its config file and overrides
    as typed."""
    arguments = sys.argv[1:]
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": benchmark_record.git_commit(),
        "machine": benchmark_record.machine_info(),
        "command": shlex.join(sys.argv),
        "config_file": next(
            (a.split("=", 1)[1] for a in arguments if a.startswith("--config=")), None
        ),
        "config_overrides": [a for a in arguments if a.startswith(("--config.", "--noconfig."))],
    }


def against_real(verification: dict, name: str, seed: int) -> dict[str, dict]:
    """Per verification set, the synthetic recogniser `name` against the workdir's `real` one
    (both in `verification`, {recogniser: {set: result}}, from `verify_recognizers`): both
    accuracies and their standard deviations over the folds, the gap, the ratio above chance and
    its spread over the folds (`claim_report.claim_of`, as the report computes them); `seed` is
    their recognizer.seed."""
    claim = claim_of({REAL: verification[REAL], name: verification[name]}, {seed: (REAL, name)})
    return {
        set_name: {
            "real_accuracy": verification[REAL][set_name].accuracy_mean,
            "real_accuracy_std": verification[REAL][set_name].accuracy_std,
            "synthetic_accuracy": verification[name][set_name].accuracy_mean,
            "synthetic_accuracy_std": verification[name][set_name].accuracy_std,
            **claim[set_name],
        }
        for set_name in claim
    }


def write_results(
    results: dict,
    out_dir: str,
    default_dir: paths.Path,
    files: tuple[str, str],
    figure: Callable[[dict], plt.Figure],
) -> dict:
    """Writes `results` as JSON and `figure(results)` as PNG, `files` (json, png), into `out_dir`
    (a path as typed; empty: `default_dir`), by process 0; returns `results` as JSON types."""
    results = manifest.as_json(results)
    out = paths.resolve(out_dir) if out_dir else default_dir
    results_file, figure_file = files
    if jax.process_index() == 0:
        out.mkdir(parents=True, exist_ok=True)
        paths.write_json_atomically(out / results_file, results)
    save_figure(figure(results), out / figure_file)  # written by process 0
    logging.info("Written %s and %s to %s.", results_file, figure_file, out)
    return results


def text_table(rows: list[tuple[str, ...]]) -> str:
    """Rows of strings, the first a header, as right-aligned columns (for the log)."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows)
