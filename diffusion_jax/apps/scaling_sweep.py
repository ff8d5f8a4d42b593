"""`--mode=scaling_sweep`: the scaling curve. Does a recogniser trained on more generated faces
reach the one trained on the real faces, and at what size?

From a workdir whose pipeline has run up to its recognisers (the encoder, the judge, the
autoencoder in latent space, the diffusion model and the `real` recogniser; a missing one stops
the sweep, naming the command that makes it), with the config that workdir was run with (another
is refused, naming the changed keys, as `--mode=pipeline` refuses it):

    1. generation   one dataset of the largest point, max(sweep.identity_multiples) x the real
                    training set's identities x max(sweep.images_per_identity) images, into
                    WORKDIR/sweep/generated: the workdir's generation with only
                    generate.num_identities, images_per_identity, output_dir and (when
                    sweep.candidates_per_identity is set) candidates_per_identity changed, so
                    the same seed, identity source, sampler and filter. Resumable like any
                    generation; skipped once its manifest is written.
    2. points       for each multiple x images per identity, a `synthetic` recogniser on the
                    dataset's prefix: its first identities and the first kept images of each
                    (recognizer.num_identities / images_per_identity, cut by
                    `input_pipeline.subset_indices`: labels below N, and of each label its first
                    records in stored order, which for a generated dataset is image order). The
                    recipe is the recognisers stage's: `recognizer_training.train_recognizer`
                    with the same config.recognizer (seed, steps, augmentation), into
                    WORKDIR/sweep/recognizers/<point>; resumable, and a complete one is not
                    retrained. The workdir's `real` recogniser is verified as it is, never
                    retrained.
    3. results      every recogniser on config.evaluate.verification_sets and sweep.report_set;
                    per point and set both accuracies, the gap and the ratio above chance
                    (acc_syn - 50) / (acc_real - 50) (`claim_report.claim_of`, as the report
                    computes them), and the point's cost: its recogniser's wall seconds, its
                    share of the generation (its images / the images generated x the generation's
                    wall seconds), its recogniser's steps and its images. Written to
                    sweep.out_dir (default WORKDIR/sweep) by process 0: scaling.json (with the
                    commit, machine, command and config overrides) and scaling.png (the ratio on
                    the report set against the synthetic identities, log2 axis, one line per
                    images per identity, ratio 1.0 marked), and logged as a table.

Why prefixes stand for separately generated sets. Every point reads the same dataset, made by one
sampler, one filter and one seed, so the points differ in size only, and a prefix is what a
smaller generation would draw. Its N identities are exactly those an N-identity generation
would choose: identities are accepted greedily, in candidate order, from a candidate stream that
does not depend on how many are asked for (`identity_sources`; tests/test_claim_pipeline.py checks
the sweep's first identities and images against the pipeline's own). Image k of identity i at
attempt a draws its noise from its own key whatever the dataset's size (`image_seeds`). What
differs is the filter: it judges each image against the identity's other first-round images
(`image_filter`), all max(images per identity) of them rather than K, a steadier reference; and a
K-image point takes the first K kept images of each identity, which may include images past the
K-th where earlier ones were dropped, so it can hold more images than a K-image generation would
have kept (the point's `images` counts them). Separate generations would cost the sum of all
points' images; the prefixes cost the largest point's.

What a point costs on the sweep's machine (`cost` in scaling.json) adds the share of the
generation to its recogniser's training; the seconds of work interrupted and resumed are summed
over the runs (WORKDIR/sweep/costs/). Every recogniser trains for recognizer.num_steps, the
budget of the workdir's recognisers, so larger sets are seen fewer times each.
"""

import dataclasses
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
from diffusion_jax.core import parallel, paths, stages
from diffusion_jax.core.bad_input import BadInputError
from diffusion_jax.core.figures import save_figure
from diffusion_jax.core.run_layout import RunLayout
from diffusion_jax.tasks.data.sources import input_pipeline
from diffusion_jax.tasks.evaluation.claim_report import claim_of
from diffusion_jax.tasks.evaluation.recognizer_evaluation import verify_recognizers
from diffusion_jax.tasks.evaluation.recognizer_training import (
    check_same_identities,
    generated_data_config,
    real_data_config,
    train_recognizer,
)
from diffusion_jax.tasks.generation import manifest
from diffusion_jax.tasks.generation.generation_job import generate_dataset
from diffusion_jax.tasks.recognition import encoder_store

# The stages whose outputs the sweep reads (the autoencoder's through the diffusion model).
REQUIRED_STAGES = ("encoder", "judge", "autoencoder", "diffusion", "recognizers")
RESULTS_FILE, FIGURE_FILE = "scaling.json", "scaling.png"
REAL = "real"  # the workdir's real-trained recogniser (WORKDIR/recognizers/real)
# The config.generate fields the sweep's generation sets (`generation_config`), besides output_dir.
SWEEP_GENERATE_FIELDS = ("num_identities", "images_per_identity", "candidates_per_identity")


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One synthetic training set: the first `identities` of the sweep's dataset and the first
    `images_per_identity` kept images of each."""

    identity_multiple: float
    identities: int
    images_per_identity: int

    @property
    def name(self) -> str:
        return f"ids{self.identities}_img{self.images_per_identity}"


def sweep_points(sweep: ml_collections.ConfigDict, real_identities: int) -> list[SweepPoint]:
    """The points of `config.sweep` for a real training set of `real_identities` identities,
    ordered by images per identity, then identities; refuses values that make no training set
    (naming the key)."""
    multiples, per_identity = tuple(sweep.identity_multiples), tuple(sweep.images_per_identity)
    if not multiples or any(m <= 0 for m in multiples) or len(set(multiples)) < len(multiples):
        raise BadInputError(
            "config.sweep.identity_multiples", f"{multiples}: distinct positive numbers, please"
        )
    if (
        not per_identity
        or any(int(n) != n or n < 1 for n in per_identity)
        or len(set(per_identity)) < len(per_identity)
        or max(per_identity) < 2
    ):
        raise BadInputError(
            "config.sweep.images_per_identity",
            f"{per_identity}: distinct positive integers, the largest at least 2 (the filter "
            "judges an image against its identity's others)",
        )
    points = []
    for multiple in multiples:
        identities = round(multiple * real_identities)
        if identities < 2:
            raise BadInputError(
                "config.sweep.identity_multiples",
                f"{multiple:g} x {real_identities} real identities leaves {identities} synthetic "
                "identities; a recogniser needs at least 2",
            )
        points += [SweepPoint(multiple, identities, int(n)) for n in per_identity]
    if len({point.name for point in points}) < len(points):
        raise BadInputError(
            "config.sweep.identity_multiples",
            f"{multiples} x {real_identities} real identities round to the same number twice",
        )
    return sorted(points, key=lambda p: (p.images_per_identity, p.identities))


def verification_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` verifying on config.evaluate.verification_sets and, after them, the report set."""
    verified = ml_collections.ConfigDict(config.to_dict())
    sets = tuple(config.evaluate.verification_sets)
    if config.sweep.report_set not in sets:
        sets += (config.sweep.report_set,)
    verified.evaluate.verification_sets = sets
    return verified


def generation_config(
    config: ml_collections.ConfigDict, layout: RunLayout, points: list[SweepPoint]
) -> ml_collections.ConfigDict:
    """The workdir's generation with the largest point's sizes, into WORKDIR/sweep/generated."""
    generation = ml_collections.ConfigDict(config.to_dict())
    generation.generate.num_identities = max(point.identities for point in points)
    generation.generate.images_per_identity = max(point.images_per_identity for point in points)
    generation.generate.output_dir = str(layout.sweep.generated)
    if config.sweep.candidates_per_identity > 0:
        generation.generate.candidates_per_identity = config.sweep.candidates_per_identity
    return generation


def point_config(config: ml_collections.ConfigDict, point: SweepPoint) -> ml_collections.ConfigDict:
    """`config` with the recognisers' training sets cut to the point's sizes."""
    cut = ml_collections.ConfigDict(config.to_dict())
    cut.recognizer.num_identities = point.identities
    cut.recognizer.images_per_identity = point.images_per_identity
    return cut


def _timed(cost_path: paths.Path, work: Callable[[], Any]) -> tuple[Any, float]:
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


def _recorded_seconds(cost_path: paths.Path) -> float | None:
    return (paths.read_json_if_exists(cost_path) or {}).get("seconds")


def _generate(
    config: ml_collections.ConfigDict, workdir: str, layout: RunLayout, points: list[SweepPoint]
) -> dict:
    """Generates the sweep's dataset unless it is complete; returns its size and cost."""
    generation = generation_config(config, layout, points)
    manifest_path = layout.sweep.generated / manifest.MANIFEST_FILE
    existing = paths.read_json_if_exists(manifest_path)
    if existing is None:
        logging.info(
            "Scaling sweep: generating %d identities x %d images into %s.",
            generation.generate.num_identities,
            generation.generate.images_per_identity,
            layout.sweep.generated,
        )
        summary, seconds = _timed(
            layout.sweep_cost("generation"), lambda: generate_dataset(generation, workdir)
        )
        if not summary["dataset_complete"]:
            raise RuntimeError(
                f"The sweep's dataset in {layout.sweep.generated} is not complete yet (other "
                "workers' shards are missing); run the sweep again once they are written."
            )
        existing = paths.read_json(manifest_path)
    else:
        # The rest of config.generate is the workdir's generate stage's (check_stage_configs).
        planned = existing["plan"]["generate"]
        differing = [
            f"generate.{key}: {planned.get(key)!r} there, {generation.generate[key]!r} here"
            for key in SWEEP_GENERATE_FIELDS
            if planned.get(key) != generation.generate[key]
        ]
        if differing:
            raise ValueError(
                f"{layout.sweep.generated} holds a dataset of other sizes ({'; '.join(differing)})"
                f"; delete {layout.sweep.root} to sweep anew, or restore the config.sweep values "
                "it was made with."
            )
        seconds = _recorded_seconds(layout.sweep_cost("generation"))
        logging.info("Scaling sweep: the dataset in %s is complete.", layout.sweep.generated)
    counts = existing["counts"]
    return {
        "out_dir": str(layout.sweep.generated),
        "identities": generation.generate.num_identities,
        "images_per_identity": generation.generate.images_per_identity,
        "candidates_per_identity": generation.generate.candidates_per_identity,
        "images": counts["images"],  # kept: what the recognisers can train on
        "judged_images": counts["judged_images"],  # drawn, redraws included
        "seconds": seconds,
    }


def _train_points(
    config: ml_collections.ConfigDict, layout: RunLayout, points: list[SweepPoint]
) -> dict[str, dict]:
    """{point: {"recognizer", "images", "seconds", "trained_now"}}: each point's synthetic
    recogniser, trained unless complete."""
    # Decided for every point before any is written, so that all processes agree.
    complete = {
        point.name: encoder_store.is_complete(layout.sweep.recognizer(point.name).export_dir)
        for point in points
    }
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("scaling_sweep: points read")
    trained = {}
    for point in points:
        cut = point_config(config, point)
        data = generated_data_config(cut, str(layout.sweep.generated))
        check_same_identities(cut, {"synthetic": data})
        cost_path = layout.sweep_cost(point.name)
        if complete[point.name]:
            export, seconds = (
                str(layout.sweep.recognizer(point.name).export_dir),
                _recorded_seconds(cost_path),
            )
            logging.info("Scaling sweep: point %s is complete, not retrained.", point.name)
        else:
            logging.info("Scaling sweep: training the recogniser of point %s.", point.name)
            export, seconds = _timed(
                cost_path,
                lambda cut=cut, data=data, point=point: train_recognizer(
                    cut, str(layout.sweep.root), point.name, data
                ),
            )
        trained[point.name] = {
            "recognizer": export,
            "images": len(input_pipeline.training_records(data)),
            "seconds": seconds,
            "trained_now": not complete[point.name],
        }
    return trained


def _steps(export_dir: str) -> int:
    return int(encoder_store.read_description(export_dir)["provenance"]["step"])


def _point_result(
    point: SweepPoint,
    trained: dict,
    claim: dict[str, dict],
    verification: dict,
    generation: dict,
) -> dict:
    share = (
        trained["images"] / generation["images"] * generation["seconds"]
        if generation["seconds"] is not None and generation["images"]
        else None
    )
    per_set = {}
    for set_name, result in verification[point.name].items():
        real = verification[REAL][set_name]
        per_set[set_name] = {
            "real_accuracy": real.accuracy_mean,
            "real_accuracy_std": real.accuracy_std,
            "synthetic_accuracy": result.accuracy_mean,
            "synthetic_accuracy_std": result.accuracy_std,
            **claim[set_name],
        }
    seconds = trained["seconds"]
    return {
        "name": point.name,
        "identity_multiple": point.identity_multiple,
        "identities": point.identities,
        "images_per_identity": point.images_per_identity,
        "images": trained["images"],
        "recognizer": trained["recognizer"],
        "trained_in_this_run": trained["trained_now"],
        "sets": per_set,
        "cost": {
            "recognizer_seconds": seconds,
            "generation_share_seconds": share,
            "seconds": None if seconds is None or share is None else seconds + share,
            "recognizer_steps": _steps(trained["recognizer"]),
            "images": trained["images"],
        },
    }


def headline(points: list[dict], report_set: str) -> dict:
    """The sweep's answer on `report_set`: the points whose ratio reaches 1.0, the smallest of
    them (fewest images, then fewest identities), and the best ratio."""
    rated = [p for p in points if p["sets"][report_set]["ratio_above_chance"] is not None]
    reaching = sorted(
        (p for p in rated if p["sets"][report_set]["ratio_above_chance"] >= 1.0),
        key=lambda p: (p["images"], p["identities"]),
    )
    best = max(rated, key=lambda p: p["sets"][report_set]["ratio_above_chance"], default=None)
    if reaching:
        first = reaching[0]
        answer = (
            f"{first['name']} ({first['identities']} identities x {first['images_per_identity']} "
            f"images) is the smallest point whose synthetic recogniser reaches the real one on "
            f"{report_set}: ratio {first['sets'][report_set]['ratio_above_chance']:.3f}."
        )
    elif best is not None:
        answer = (
            f"No point reaches ratio 1.0 on {report_set}; the highest is "
            f"{best['sets'][report_set]['ratio_above_chance']:.3f}, at {best['name']}."
        )
    else:
        answer = f"The real recogniser is at chance on {report_set}: no ratio is defined."
    return {
        "report_set": report_set,
        "points_reaching_ratio_1": [p["name"] for p in reaching],
        "smallest_point_reaching_ratio_1": reaching[0]["name"] if reaching else None,
        "best_point": best["name"] if best else None,
        "best_ratio": best["sets"][report_set]["ratio_above_chance"] if best else None,
        "answer": answer,
    }


def scaling_figure(results: dict) -> plt.Figure:
    """The ratio on the report set against the synthetic identities (log2 axis labelled with the
    multiples of the real identities), one line per images per identity; bars: the spread of the
    per-fold ratio; the dashed line at 1.0 is the real recogniser."""
    report_set = results["report_set"]
    figure, axis = plt.subplots(figsize=(6.0, 4.2))
    for per_identity in sorted({p["images_per_identity"] for p in results["points"]}):
        line = [
            p
            for p in results["points"]
            if p["images_per_identity"] == per_identity
            and p["sets"][report_set]["ratio_above_chance"] is not None
        ]
        if not line:
            continue
        spread = [(p["sets"][report_set].get("ratio_over_folds") or {}).get("std") for p in line]
        axis.errorbar(
            [p["identities"] for p in line],
            [p["sets"][report_set]["ratio_above_chance"] for p in line],
            yerr=[s or 0.0 for s in spread] if any(spread) else None,
            marker="o",
            capsize=3,
            linewidth=1.4,
            label=f"{per_identity} images per identity",
        )
    axis.axhline(1.0, color="0.3", linestyle="--", linewidth=1, label="the real recogniser")
    ticks = sorted({(p["identities"], p["identity_multiple"]) for p in results["points"]})
    axis.set_xscale("log", base=2)
    axis.set_xticks([identities for identities, _ in ticks])
    axis.set_xticklabels([f"{multiple:g}x\n{identities}" for identities, multiple in ticks])
    axis.minorticks_off()
    axis.set_xlabel(f"synthetic identities (x {results['real']['identities']} real identities)")
    axis.set_ylabel("(acc_syn - 50) / (acc_real - 50)")
    axis.set_title(f"Synthetic against real training data on {report_set}", fontsize=10)
    axis.grid(True, linestyle="--", linewidth=0.5)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    return figure


def table(results: dict) -> str:
    """The points on the report set as a plain-text table (for the log)."""
    report_set = results["report_set"]
    rows = [
        (
            "point",
            "ids",
            "img/id",
            "images",
            "real acc",
            "syn acc",
            "gap",
            "ratio",
            "cost (s)",
        )
    ]
    for p in results["points"]:
        result, cost = p["sets"][report_set], p["cost"]
        ratio = result["ratio_above_chance"]
        rows.append(
            (
                p["name"],
                str(p["identities"]),
                str(p["images_per_identity"]),
                str(p["images"]),
                f"{100 * result['real_accuracy']:.2f}",
                f"{100 * result['synthetic_accuracy']:.2f}",
                f"{100 * result['gap']:.2f}",
                "n/a" if ratio is None else f"{ratio:.3f}",
                "n/a" if cost["seconds"] is None else f"{cost['seconds']:.0f}",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows)


def _command_line() -> dict:
    """The command, and its config file and overrides as typed."""
    arguments = sys.argv[1:]
    return {
        "command": shlex.join(sys.argv),
        "config_file": next(
            (a.split("=", 1)[1] for a in arguments if a.startswith("--config=")), None
        ),
        "config_overrides": [a for a in arguments if a.startswith(("--config.", "--noconfig."))],
    }


def run_sweep(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """--mode=scaling_sweep (module docstring); returns the results written to scaling.json."""
    layout = RunLayout.from_config(workdir, config)
    workdir = str(layout.root)
    for stage in REQUIRED_STAGES:
        stages.require(layout, config, stage)
    # The workdir's stages must have been run with this config: the recipe and the real
    # recogniser the sweep compares against are theirs.
    configs = stage_configs(config)
    check_stage_configs(
        workdir, {name: configs[name] for name in stages.requirements("recognizers")}
    )
    verified = verification_config(config)
    input_pipeline.ensure_prepared(config.data)
    real_data = real_data_config(config)
    real_identities = input_pipeline.num_train_identities(real_data)
    points = sweep_points(config.sweep, real_identities)
    logging.info(
        "Scaling sweep in %s: %d real identities; points %s.",
        layout.sweep.root,
        real_identities,
        [point.name for point in points],
    )

    generation = _generate(config, workdir, layout, points)
    trained = _train_points(config, layout, points)
    real_export = str(layout.recognizer(REAL).export_dir)
    recognizers = {REAL: real_export} | {name: t["recognizer"] for name, t in trained.items()}
    verification = verify_recognizers(verified, recognizers, parallel.make_mesh(config.mesh))

    seed = config.recognizer.seed
    results_points = [
        _point_result(
            point,
            trained[point.name],
            claim_of(
                {REAL: verification[REAL], point.name: verification[point.name]},
                {seed: (REAL, point.name)},
            ),
            verification,
            generation,
        )
        for point in points
    ]
    report_set = config.sweep.report_set
    real_images_per_identity = real_data.max_images_per_identity
    results = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": benchmark_record.git_commit(),
        "machine": benchmark_record.machine_info(),
        **_command_line(),
        "workdir": workdir,
        "report_set": report_set,
        "headline": headline(results_points, report_set),
        "real": {
            "recognizer": real_export,
            "identities": real_identities,
            "images_per_identity": real_images_per_identity
            if real_images_per_identity > 0
            else None,
            "images": len(input_pipeline.training_records(real_data)),
            "steps": _steps(real_export),
        },
        "generation": generation,
        "points": results_points,
        "verification": {
            name: {set_name: result.to_json() for set_name, result in per_set.items()}
            for name, per_set in verification.items()
        },
        "config": {
            "sweep": config.sweep.to_dict(),
            "recognizer": config.recognizer.to_dict(),
            "verification_sets": list(verified.evaluate.verification_sets),
            "generate_seed": config.generate.seed,
        },
    }
    results = manifest.as_json(results)
    out_dir = paths.resolve(config.sweep.out_dir) if config.sweep.out_dir else layout.sweep.root
    logging.info("Scaling sweep on %s:\n%s", report_set, table(results))
    logging.info("Scaling sweep: %s", results["headline"]["answer"])
    if jax.process_index() == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        paths.write_json_atomically(out_dir / RESULTS_FILE, results)
    save_figure(scaling_figure(results), out_dir / FIGURE_FILE)  # written by process 0
    logging.info("Scaling sweep written to %s.", out_dir)
    return results


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    return run_sweep(config, workdir)
