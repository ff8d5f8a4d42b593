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

import matplotlib.pyplot as plt
import ml_collections
from absl import logging

from diffusion_jax.apps.sweeps import (
    REAL,
    against_real,
    check_workdir,
    generate_once,
    recognizer_steps,
    run_record,
    text_table,
    train_synthetic_recognizers,
    write_results,
)
from diffusion_jax.core import parallel
from diffusion_jax.core.bad_input import BadInputError
from diffusion_jax.core.run_layout import RunLayout
from diffusion_jax.tasks.data.sources import input_pipeline
from diffusion_jax.tasks.evaluation.recognizer_evaluation import (
    verification_json,
    verify_recognizers,
)
from diffusion_jax.tasks.evaluation.recognizer_training import (
    check_same_identities,
    generated_data_config,
    real_data_config,
)

RESULTS_FILE, FIGURE_FILE = "scaling.json", "scaling.png"
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


def _generate(
    config: ml_collections.ConfigDict, workdir: str, layout: RunLayout, points: list[SweepPoint]
) -> dict:
    """Generates the sweep's dataset unless it is complete; returns its size and cost."""
    generation = generation_config(config, layout, points)
    logging.info(
        "Scaling sweep: the dataset of %d identities x %d images in %s.",
        generation.generate.num_identities,
        generation.generate.images_per_identity,
        layout.sweep.generated,
    )
    generated = generate_once(
        generation,
        workdir,
        layout.sweep.cost("generation"),
        tuple(f"generate.{key}" for key in SWEEP_GENERATE_FIELDS),
        f"delete {layout.sweep.root} to sweep anew, or restore the config.sweep values it was "
        "made with.",
        differing_in="sizes",
    )
    return {
        "identities": generation.generate.num_identities,
        "images_per_identity": generation.generate.images_per_identity,
        "candidates_per_identity": generation.generate.candidates_per_identity,
        **generated,  # out_dir, kept and judged images, seconds
    }


def _train_points(
    config: ml_collections.ConfigDict, layout: RunLayout, points: list[SweepPoint]
) -> dict[str, dict]:
    """{point: {"recognizer", "images", "seconds", "trained_now"}}: each point's synthetic
    recogniser, trained unless complete."""
    runs = {}
    for point in points:
        cut = point_config(config, point)
        data = generated_data_config(cut, str(layout.sweep.generated))
        check_same_identities(cut, {"synthetic": data})
        runs[point.name] = (cut, data)
    return train_synthetic_recognizers(layout.sweep, runs)


def _point_result(
    point: SweepPoint,
    trained: dict,
    per_set: dict[str, dict],
    generation: dict,
) -> dict:
    share = (
        trained["images"] / generation["images"] * generation["seconds"]
        if generation["seconds"] is not None and generation["images"]
        else None
    )
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
            "recognizer_steps": recognizer_steps(trained["recognizer"]),
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
    return text_table(rows)


def run_sweep(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """--mode=scaling_sweep (module docstring); returns the results written to scaling.json."""
    layout = check_workdir(config, workdir)
    workdir = str(layout.root)
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

    results_points = [
        _point_result(
            point,
            trained[point.name],
            against_real(verification, point.name, config.recognizer.seed),
            generation,
        )
        for point in points
    ]
    report_set = config.sweep.report_set
    real_images_per_identity = real_data.max_images_per_identity
    results = {
        **run_record(),
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
            "steps": recognizer_steps(real_export),
        },
        "generation": generation,
        "points": results_points,
        "verification": verification_json(verification),
        "config": {
            "sweep": config.sweep.to_dict(),
            "recognizer": config.recognizer.to_dict(),
            "verification_sets": list(verified.evaluate.verification_sets),
            "generate_seed": config.generate.seed,
        },
    }
    logging.info("Scaling sweep on %s:\n%s", report_set, table(results))
    logging.info("Scaling sweep: %s", results["headline"]["answer"])
    return write_results(
        results,
        config.sweep.out_dir,
        layout.sweep.root,
        (RESULTS_FILE, FIGURE_FILE),
        scaling_figure,
    )


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    return run_sweep(config, workdir)
