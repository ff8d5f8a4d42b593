"""The claim's report: a recogniser trained on generated faces against one trained on real faces.

Written by `--mode=pipeline` to WORKDIR/report/:

    report.json   per recogniser and verification set the 10-fold accuracy, TAR@FAR, EER, AUC;
                  the gap real - synthetic and the ratio above chance
                  (acc_syn - 50) / (acc_real - 50); the generated dataset's measures
                  (`dataset_metrics`) beside the real training data's, all under the judge
    report.md     the same as tables, with the plots
    roc.png                    ROC curves of both recognisers on every set
    similarity_histograms.png  genuine and impostor judge similarities, generated and real
    generated_vs_real.png      generated identities (left) beside real ones (right)

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
from diffusion_jax.tasks.evaluation import dataset_metrics
from diffusion_jax.tasks.evaluation.frechet_distance import frechet_distance
from diffusion_jax.tasks.evaluation.identity_report import (
    identity_report,
    similarity_histogram_figure,
)
from diffusion_jax.tasks.evaluation.recognizer_evaluation import roc_of_all, verify_recognizers
from diffusion_jax.tasks.evaluation.recognizer_training import real_data_config
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


def _markdown(report: dict) -> str:
    lines = [
        "# Synthetic versus real training data",
        "",
        f"Generated dataset: `{report['generated_dataset']}`",
        "",
        "| verification set | real-trained acc (%) | synthetic-trained acc (%) | gap (points) "
        "| (syn - 50) / (real - 50) | real AUC | synthetic AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, claim in report["claim"].items():
        real, synthetic = (
            report["verification"]["real"][name],
            report["verification"]["synthetic"][name],
        )
        lines.append(
            f"| {name} | {100 * real['accuracy_mean']:.2f} ± {100 * real['accuracy_std']:.2f} "
            f"| {100 * synthetic['accuracy_mean']:.2f} ± {100 * synthetic['accuracy_std']:.2f} "
            f"| {100 * claim['gap']:.2f} | {_ratio(claim['ratio_above_chance'])} "
            f"| {real['auc']:.4f} | {synthetic['auc']:.4f} |"
        )
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
    lines += [f"![{name}](../figures/{name}.png)" for name in DIFFUSION_FIGURES]
    return "\n".join(lines) + "\n"


def write_claim_report(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Writes the report of the module docstring from the outputs of the run in `workdir`: the
    generated dataset, the recognisers "real" and "synthetic", and the judge."""
    layout = RunLayout.from_config(workdir, config)
    generated_dir, judge_dir = str(layout.generated), str(layout.judge.export_dir)
    recognizers = {name: str(layout.recognizer(name).export_dir) for name in ("real", "synthetic")}
    mesh = parallel.make_mesh(config.mesh)
    verification = verify_recognizers(config, recognizers, mesh)
    claim = {}
    for name in verification["real"]:
        real = verification["real"][name].accuracy_mean
        synthetic = verification["synthetic"][name].accuracy_mean
        claim[name] = {
            "gap": real - synthetic,
            "ratio_above_chance": (synthetic - 0.5) / (real - 0.5) if real != 0.5 else None,
        }

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
    report = {
        "generated_dataset": generated_dir,
        "recognizers": recognizers,
        "judge_encoder": judge_dir,
        "claim": claim,
        "verification": {
            name: {set_name: result.to_json() for set_name, result in per_set.items()}
            for name, per_set in verification.items()
        },
        "dataset": {
            "generated": generated_measures,
            "real": real_measures,
            "judge_frechet_distance": frechet_distance(generated_embeddings, real_embeddings),
        },
    }
    if jax.process_index() == 0:
        out_dir = layout.report
        out_dir.mkdir(parents=True, exist_ok=True)
        save_figure(roc_of_all(verification), out_dir / "roc.png")
        save_figure(
            similarity_histogram_figure({"generated": generated_report, "real": real_report}),
            out_dir / "similarity_histograms.png",
        )
        save_figure(
            image_grid(_grid(generated, real), title="Generated identities (left), real (right)"),
            out_dir / "generated_vs_real.png",
        )
        (out_dir / "report.json").write_text(json.dumps(report, indent=2))
        (out_dir / "report.md").write_text(_markdown(report))
        logging.info("Claim report written to %s: %s", out_dir, json.dumps(claim))
    return report
