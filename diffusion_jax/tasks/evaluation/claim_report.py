"""The claim's report: a recogniser trained on generated faces against one trained on real faces.

Written by `--mode=pipeline` to WORKDIR/report/:

    report.json   per recogniser and verification set the 10-fold accuracy, TAR@FAR, EER, AUC;
                  the gap real - synthetic and the ratio above chance
                  (acc_syn - 50) / (acc_real - 50) with its spread (`claim_of`): over the 10
                  identity-disjoint folds, and over recogniser seeds when
                  `evaluate.spread_seeds` names more; the generated dataset's measures
                  (`dataset_metrics`) beside the real training data's, all under the judge
    report.md     the same as tables, with the plots
    roc.png                    ROC curves of both recognisers on every set
    similarity_histograms.png  genuine and impostor judge similarities, generated and real
    generated_vs_real.png      generated identities (left) beside real ones (right)
    nearest_training_image.png the kept generated images' judge cosine to the nearest real
                               training image beside real references (`training_image_leakage`;
                               report.json's dataset.nearest_training_image)

and links the diffusion model's four figures (WORKDIR/figures). The generated images are read
back from the dataset's files (at most `MAX_IMAGES`, identity by identity), the real ones from
the training data (the same number of identities).
"""

import io
import json

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from diffusion_jax.core import parallel, paths
from diffusion_jax.core.figures import image_grid, save_figure
from diffusion_jax.core.run_layout import RunLayout
from diffusion_jax.tasks.data.sources import input_pipeline
from diffusion_jax.tasks.data.sources.image_decoding import to_model_range
from diffusion_jax.tasks.data.sources.recordio import RecordIOReader
from diffusion_jax.tasks.evaluation import dataset_metrics, training_image_leakage
from diffusion_jax.tasks.evaluation.frechet_distance import frechet_distance
from diffusion_jax.tasks.evaluation.identity_report import (
    identity_report,
    similarity_histogram_figure,
)
from diffusion_jax.tasks.evaluation.recognizer_evaluation import (
    roc_of_all,
    verification_json,
    verify_recognizers,
)
from diffusion_jax.tasks.evaluation.recognizer_training import (
    claim_recognizer_name,
    real_data_config,
    train_claim_recognizers,
)
from diffusion_jax.tasks.evaluation.verification import VerificationResult
from diffusion_jax.tasks.generation import dataset_writers, manifest
from diffusion_jax.tasks.recognition import encoder_store
from diffusion_jax.tasks.recognition.embeddings import EmbeddingExtractor

MAX_IMAGES = 20_000
GRID_IDENTITIES, GRID_IMAGES = 6, 5
DIFFUSION_FIGURES = ("forward_process", "x0_estimates", "reverse_process", "identities")


def load_generated(out_dir: str, max_images: int) -> dict[str, np.ndarray]:
    """The kept images of a generated dataset, identity by identity, at most `max_images`:
    {"image": uint8 [N, R, R, 3], "label": [N], "condition_similarity": [N]}."""
    out_dir = paths.Path(out_dir)
    contents = paths.read_json(out_dir / manifest.MANIFEST_FILE)
    kept = sorted(
        (
            image
            for path in contents["shards"]
            for image in paths.read_json(out_dir / path)["images"]
            if image["decision"] == "kept"
        ),
        key=lambda image: (image["identity"], image["image_index"]),
    )[:max_images]
    formats = contents["plan"]["generate"]["formats"]
    if "folders" in formats:
        images = [
            np.asarray(Image.open(io.BytesIO((out_dir / image["path"]).read_bytes())))
            for image in kept
        ]
    elif "recordio" in formats:
        reader = RecordIOReader(str(out_dir / dataset_writers.RECORDIO_REC))
        images = [
            np.asarray(Image.open(io.BytesIO(reader[p]["image_bytes"]))) for p in range(len(kept))
        ]
    else:  # the TFDS dataset, stored in the same (identity, image index) order
        records = tfds.builder_from_directory(out_dir / dataset_writers.TFDS_DIR).as_data_source(
            dataset_writers.TFDS_SPLIT
        )
        images = [np.asarray(records[p]["image"]) for p in range(len(kept))]
    return {
        "image": np.stack(images),
        "label": np.asarray([image["identity"] for image in kept]),
        "condition_similarity": np.asarray([image["condition_similarity"] for image in kept]),
    }


def load_real(data_config: ml_collections.ConfigDict, num_identities: int) -> dict:
    """The training images (at most `MAX_IMAGES`) of the first `num_identities` labels:
    {"image", "label"}."""
    records = input_pipeline.training_records(data_config)
    items = [records[index] for index in range(min(len(records), MAX_IMAGES))]
    arrays = {
        "image": np.stack([np.asarray(item["image"]) for item in items]),
        "label": np.asarray([int(item["label"]) for item in items]),
    }
    keep = arrays["label"] < num_identities
    return {"image": arrays["image"][keep], "label": arrays["label"][keep]}


def measure(arrays: dict, judge: EmbeddingExtractor, config) -> tuple[dict, np.ndarray, object]:
    """(the dataset measures as JSON, judge embeddings, identity report) of a labelled set."""
    embeddings = judge.embed_arrays(arrays["image"], batch_size=config.evaluate.batch_size)
    report = identity_report(embeddings, arrays["label"], seed=config.seed)
    measures = {
        "images": int(len(arrays["label"])),
        "identities": int(len(np.unique(arrays["label"]))),
        "separation": report.to_json(),
        "embedding_diversity": dataset_metrics.embedding_diversity(embeddings, arrays["label"]),
        "pixel_diversity": dataset_metrics.pixel_diversity(arrays["image"], arrays["label"]),
        "photometry": dataset_metrics.photometry(arrays["image"]),
    }
    return measures, embeddings, report


def ratio_above_chance(synthetic: float, real: float) -> float | None:
    """(acc_syn - 1/2) / (acc_real - 1/2), accuracies as fractions; None when the real
    recogniser is at chance."""
    return (synthetic - 0.5) / (real - 0.5) if real != 0.5 else None


def _mean_std(values: list[float]) -> dict:
    """{"mean", "std", "n"}: the sample standard deviation (ddof=1), None for one value."""
    values = np.asarray(values, np.float64)
    std = float(values.std(ddof=1)) if len(values) > 1 else None
    return {"mean": float(values.mean()), "std": std, "n": int(len(values))}


def claim_of(
    verification: dict[str, dict[str, VerificationResult]], seeds: dict[int, tuple[str, str]]
) -> dict[str, dict]:
    """Per verification set, the claim of the first seed's pair and its spread.

    `seeds` maps each recogniser seed to its (real, synthetic) recogniser names, the
    recognizers stage's seed first. For the first pair: "gap" = acc_real - acc_syn and
    "ratio_above_chance" (`ratio_above_chance`); "ratio_over_folds": mean and std of the ratio of
    each of the 10 folds, whose identities are disjoint, so its spread is the part that comes from
    which identities are held out. With several seeds, "over_seeds": the seeds, each seed's ratio,
    and the mean and std (ddof=1) over seeds of the ratio and of both accuracies."""
    (first_real, first_synthetic), *_ = seeds.values()
    claim = {}
    for set_name in verification[first_real]:
        real, synthetic = (
            verification[first_real][set_name],
            verification[first_synthetic][set_name],
        )
        per_fold = [
            ratio_above_chance(s, r)
            for s, r in zip(synthetic.fold_accuracies, real.fold_accuracies, strict=True)
        ]
        claim[set_name] = {
            "gap": real.accuracy_mean - synthetic.accuracy_mean,
            "ratio_above_chance": ratio_above_chance(synthetic.accuracy_mean, real.accuracy_mean),
            "ratio_over_folds": _mean_std([r for r in per_fold if r is not None]),
        }
        if len(seeds) > 1:
            accuracies = {
                seed: (
                    verification[real_name][set_name].accuracy_mean,
                    verification[synthetic_name][set_name].accuracy_mean,
                )
                for seed, (real_name, synthetic_name) in seeds.items()
            }
            ratios = [ratio_above_chance(s, r) for r, s in accuracies.values()]
            claim[set_name]["over_seeds"] = {
                "seeds": list(seeds),
                "ratio_per_seed": ratios,
                "ratio": _mean_std([r for r in ratios if r is not None]),
                "real_accuracy": _mean_std([r for r, _ in accuracies.values()]),
                "synthetic_accuracy": _mean_std([s for _, s in accuracies.values()]),
            }
    return claim


def _grid(generated: dict, real: dict) -> np.ndarray:
    """[rows, 2 * GRID_IMAGES + 1, H, W, 3] in [-1, 1]: generated | gap | real identities."""
    side = generated["image"].shape[1]
    rows = []
    for row in range(GRID_IDENTITIES):
        cells = []
        for arrays in (generated, real):
            labels = np.unique(arrays["label"])
            images = arrays["image"][arrays["label"] == labels[row]] if row < len(labels) else []
            padded = np.full((GRID_IMAGES, side, side, 3), -1.0, np.float32)
            for column, image in enumerate(images[:GRID_IMAGES]):
                padded[column] = to_model_range(image)
            cells.append(padded)
        rows.append(np.concatenate([cells[0], np.ones((1, side, side, 3), np.float32), cells[1]]))
    return np.stack(rows)


def _ratio(value: float | None) -> str:
    return "n/a (real at chance)" if value is None else f"{value:.3f}"


def _spread(summary: dict | None) -> str:
    if summary is None:
        return ""
    std = "n/a" if summary["std"] is None else f"{summary['std']:.3f}"
    return f"{summary['mean']:.3f} ± {std} (n={summary['n']})"


def _set_role(name: str) -> str:
    """What a verification set is for: settings are chosen on validation, test is reported."""
    part = name.partition("@")[0]
    return {"validation": "choose settings here", "test": "the result: never tuned on"}.get(
        part, ""
    )


def _markdown(report: dict) -> str:
    lines = [
        "# Synthetic versus real training data",
        "",
        f"Generated dataset: `{report['generated_dataset']}`",
        "",
        "| verification set | real-trained acc (%) | synthetic-trained acc (%) | gap (points) "
        "| (syn - 50) / (real - 50) | over the 10 folds | over seeds | real AUC | synthetic AUC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, claim in report["claim"].items():
        real, synthetic = (
            report["verification"]["real"][name],
            report["verification"]["synthetic"][name],
        )
        over_seeds = claim.get("over_seeds")
        role = _set_role(name)
        lines.append(
            f"| {name}{f' ({role})' if role else ''} "
            f"| {100 * real['accuracy_mean']:.2f} ± {100 * real['accuracy_std']:.2f} "
            f"| {100 * synthetic['accuracy_mean']:.2f} ± {100 * synthetic['accuracy_std']:.2f} "
            f"| {100 * claim['gap']:.2f} | {_ratio(claim['ratio_above_chance'])} "
            f"| {_spread(claim['ratio_over_folds'])} "
            f"| {_spread(over_seeds['ratio']) if over_seeds else 'one seed'} "
            f"| {real['auc']:.4f} | {synthetic['auc']:.4f} |"
        )
    lines += [
        "",
        "Accuracies: mean ± std over the 10 folds of the first recogniser seed. The ratio over the "
        "folds is the ratio of each fold (identity-disjoint: the spread from which identities are "
        "held out); over seeds, the ratio of each recogniser seed (`evaluate.spread_seeds`), "
        "mean ± sample std.",
    ]
    generated, real = report["dataset"]["generated"], report["dataset"]["real"]
    lines += [
        "",
        "## The datasets, under the judge encoder",
        "",
        "| | generated | real |",
        "|---|---|---|",
    ]
    rows = [
        ("images / identities", lambda d: f"{d['images']} / {d['identities']}"),
        ("genuine similarity", lambda d: f"{d['separation']['genuine_mean']:.3f}"),
        ("impostor similarity", lambda d: f"{d['separation']['impostor_mean']:.3f}"),
        ("d'", lambda d: f"{d['separation']['d_prime']:.2f}"),
        ("EER (%)", lambda d: f"{100 * d['separation']['eer']:.2f}"),
        ("embedding diversity (1 - cos)", lambda d: f"{d['embedding_diversity']:.3f}"),
        ("pixel diversity (RMS)", lambda d: f"{d['pixel_diversity']:.3f}"),
    ] + [
        (
            f"{name} (mean ± std over images)",
            lambda d, name=name: (
                f"{d['photometry'][name]['mean']:.3f} ± {d['photometry'][name]['std']:.3f}"
            ),
        )
        for name in ("brightness", "contrast", "saturation")
    ]
    lines += [f"| {name} | {value(generated)} | {value(real)} |" for name, value in rows]
    lines += [
        f"| nearest real identity (mean / max) | {generated['nearest_real_identity']['mean']:.3f}"
        f" / {generated['nearest_real_identity']['max']:.3f} | "
        f"{real['nearest_other_identity_mean']:.3f} (nearest other real identity) |",
        f"| conditioning encoder cos(E(x), c) | {generated['condition_similarity_mean']:.3f} | |",
        "",
        f"Judge-feature Frechet distance, generated to real: "
        f"{report['dataset']['judge_frechet_distance']:.4f}",
        "",
        "![ROC](roc.png)",
        "",
        "![Similarities](similarity_histograms.png)",
        "",
        "![Generated (left) and real (right) identities](generated_vs_real.png)",
        "",
    ]
    lines += training_image_leakage.markdown_lines(report["dataset"].get("nearest_training_image"))
    lines += [f"![{name}](../figures/{name}.png)" for name in DIFFUSION_FIGURES]
    return "\n".join(lines) + "\n"


def write_claim_report(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Writes the report of the module docstring from the outputs of the run in `workdir`: the
    generated dataset, the recognisers "real" and "synthetic", and the judge."""
    layout = RunLayout.from_config(workdir, config)
    generated_dir, judge_dir = str(layout.generated), str(layout.judge.export_dir)
    for seed in config.evaluate.spread_seeds:
        train_claim_recognizers(config, workdir, seed)
    seeds = {
        seed: tuple(claim_recognizer_name(config, kind, seed) for kind in ("real", "synthetic"))
        for seed in (config.recognizer.seed, *config.evaluate.spread_seeds)
    }
    recognizers = {
        name: str(layout.recognizer(name).export_dir) for pair in seeds.values() for name in pair
    }
    mesh = parallel.make_mesh(config.mesh)
    verification = verify_recognizers(config, recognizers, mesh)
    claim = claim_of(verification, seeds)

    judge = EmbeddingExtractor(encoder_store.load_encoder(judge_dir).model, mesh, flip=False)
    generated = load_generated(generated_dir, MAX_IMAGES)
    real = load_real(real_data_config(config), int(generated["label"].max()) + 1)
    generated_measures, generated_embeddings, generated_report = measure(generated, judge, config)
    real_measures, real_embeddings, real_report = measure(real, judge, config)
    _, generated_centres = dataset_metrics.identity_centres(
        generated_embeddings, generated["label"]
    )
    _, real_centres = dataset_metrics.identity_centres(real_embeddings, real["label"])
    generated_measures["nearest_real_identity"] = dataset_metrics.nearest_reference(
        generated_centres, real_centres, config.evaluate.nearest_identity_thresholds
    )
    generated_measures["condition_similarity_mean"] = float(
        generated["condition_similarity"].mean()
    )
    real_measures["nearest_other_identity_mean"] = real_report.nearest_identity_mean
    leakage, leakage_values = training_image_leakage.measure(
        config,
        generated_dir,
        judge,
        encoder_store.read_description(judge_dir)["weights_sha256"],
        layout.cache,
        mesh,
    )
    report = {
        "generated_dataset": generated_dir,
        "recognizers": recognizers,
        "judge_encoder": judge_dir,
        "claim": claim,
        "verification": verification_json(verification),
        "dataset": {
            "generated": generated_measures,
            "real": real_measures,
            "judge_frechet_distance": frechet_distance(generated_embeddings, real_embeddings),
            "nearest_training_image": leakage,
        },
    }
    if jax.process_index() == 0:
        out_dir = layout.report
        out_dir.mkdir(parents=True, exist_ok=True)
        first_pair = {name: verification[name] for name in ("real", "synthetic")}
        save_figure(roc_of_all(first_pair), out_dir / "roc.png")
        save_figure(
            similarity_histogram_figure({"generated": generated_report, "real": real_report}),
            out_dir / "similarity_histograms.png",
        )
        save_figure(
            image_grid(_grid(generated, real), title="Generated identities (left), real (right)"),
            out_dir / "generated_vs_real.png",
        )
        if leakage is not None:
            save_figure(
                training_image_leakage.figure(leakage_values, leakage["threshold"]),
                out_dir / training_image_leakage.FIGURE,
            )
        (out_dir / "report.json").write_text(json.dumps(report, indent=2))
        (out_dir / "report.md").write_text(_markdown(report))
        logging.info("Claim report written to %s: %s", out_dir, json.dumps(claim))
    return report
