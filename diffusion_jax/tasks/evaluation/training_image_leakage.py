"""The report's image-level leakage section: how near the generated images come to real training
photos, beside how near real photos of other people come.

The generation job records for every judged image x its judge cosine to the nearest real training
image, t(x) = max_j cos(J(x), J(y_j)) (`generation.training_images`). This section gives the
distribution of t over the kept images, the dataset, next to two references computed here with
the same judge and the same cached training embeddings:

    real_other_identity  each real training image (at most `MAX_QUERIES`, evenly spaced) against
                         the nearest training image of another identity: how near a real photo of
                         someone else comes to a training photo
    heldout_validation   each held-out real image of the validation identities (the procedural
                         data's; `verification_sets.heldout_identity_parts`, so that a threshold
                         chosen from this section never looked at the test identities; at most
                         `MAX_QUERIES`) against the nearest training image: a real face of a new
                         identity, the generated images' situation exactly

each as {"images", "mean", "p50", "p90", "p99", "max"} (`similarity_summary`), with the check's
threshold (`generate.max_training_image_similarity`; "check_on" when below 1), the images it
rejected (the manifest's "near_training_image" count), and "kept_above_real_p99", the fraction of
kept images above the real_other_identity p99. A generated distribution to the right of the
references means generated images sit nearer training photos than other people's photos do.
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from diffusion_jax.core import paths  # noqa: E402
from diffusion_jax.tasks.data.sources import input_pipeline  # noqa: E402
from diffusion_jax.tasks.evaluation.verification_sets import heldout_identity_parts  # noqa: E402
from diffusion_jax.tasks.generation import manifest  # noqa: E402
from diffusion_jax.tasks.generation.image_filter import CHECK_OFF  # noqa: E402
from diffusion_jax.tasks.generation.training_images import (  # noqa: E402
    NearestTrainingImages,
    cached_training_images,
    similarity_summary,
)
from diffusion_jax.tasks.recognition.embeddings import EmbeddingExtractor  # noqa: E402

FIGURE = "nearest_training_image.png"
MAX_QUERIES = 20_000  # real images of each reference
_FIELD = "nearest_training_image_similarity"
_LABELS = {
    "generated": "generated, kept",
    "real_other_identity": "real training, nearest of another identity",
    "heldout_validation": "real held-out (validation identities)",
}


def evenly_spaced(count: int, maximum: int) -> np.ndarray:
    """min(count, maximum) distinct indices spread evenly over range(count), in order."""
    chosen = min(count, maximum)
    return np.arange(chosen, dtype=np.int64) * count // max(chosen, 1)


def kept_similarities(generated_dir: paths.PathLike) -> tuple[np.ndarray | None, dict]:
    """(t of every kept image in shard order, None for a dataset generated before it was
    recorded; the manifest)."""
    generated_dir = paths.Path(generated_dir)
    contents = paths.read_json(generated_dir / manifest.MANIFEST_FILE)
    kept = [
        image
        for path in contents["shards"]
        for image in paths.read_json(generated_dir / path)["images"]
        if image["decision"] == "kept"
    ]
    if not kept or any(_FIELD not in image for image in kept):
        return None, contents
    return np.asarray([image[_FIELD] for image in kept], np.float64), contents


def reference_similarities(
    config: ml_collections.ConfigDict,
    judge: EmbeddingExtractor,
    judge_weights_sha256: str,
    cache_dir: paths.PathLike,
    mesh: Mesh,
) -> dict[str, np.ndarray]:
    """{"real_other_identity", and "heldout_validation" for the procedural data: t of each real
    image}."""
    training = cached_training_images(config, judge, judge_weights_sha256, cache_dir)
    nearest = NearestTrainingImages(training, mesh)
    queries = evenly_spaced(len(training), MAX_QUERIES)
    references = {
        "real_other_identity": nearest.search(
            training.embeddings[queries], training.labels[queries]
        )[0]
    }
    if config.data.source == "procedural":
        heldout = input_pipeline.load_split_arrays(config.data, "heldout")
        validation = heldout_identity_parts(
            heldout["label"],
            data_seed=config.data.seed,
            validation_fraction=config.evaluate.validation_fraction,
        )["validation"]
        images = heldout["image"][np.isin(heldout["label"], validation)]
        embeddings = judge.embed_arrays(
            images[evenly_spaced(len(images), MAX_QUERIES)],
            batch_size=config.evaluate.batch_size,
            description="Held-out validation images",
        )
        references["heldout_validation"] = nearest.search(embeddings)[0]
    return {name: np.asarray(values, np.float64) for name, values in references.items()}


def section(generated: np.ndarray, references: dict[str, np.ndarray], contents: dict) -> dict:
    """The report's JSON of the module docstring from t of the kept images, the references' and
    the dataset's manifest."""
    threshold = contents["plan"]["generate"].get("max_training_image_similarity", CHECK_OFF)
    summaries = {
        "generated": similarity_summary(generated),
        **{name: similarity_summary(values) for name, values in references.items()},
    }
    real_p99 = summaries["real_other_identity"].get("p99")
    return {
        "threshold": threshold,
        "check_on": threshold < CHECK_OFF,
        "rejected": contents["counts"]["decisions"].get("near_training_image", 0),
        "judged_images": contents["counts"]["judged_images"],
        **summaries,
        "kept_above_real_p99": None if real_p99 is None else float(np.mean(generated > real_p99)),
    }


def measure(
    config: ml_collections.ConfigDict,
    generated_dir: paths.PathLike,
    judge: EmbeddingExtractor,
    judge_weights_sha256: str,
    cache_dir: paths.PathLike,
    mesh: Mesh,
) -> tuple[dict | None, dict[str, np.ndarray] | None]:
    """(the section's JSON, {name: t values} for `figure`), or (None, None) for a dataset that
    does not record t. Every process of a job must call it (it embeds on `mesh`)."""
    generated, contents = kept_similarities(generated_dir)
    if generated is None:
        return None, None
    references = reference_similarities(config, judge, judge_weights_sha256, cache_dir, mesh)
    return section(generated, references, contents), {"generated": generated, **references}


def figure(distributions: dict[str, np.ndarray], threshold: float) -> plt.Figure:
    """Densities of t: the kept generated images against the references, with the check's
    threshold when it is on."""
    figure_, axis = plt.subplots(figsize=(5.5, 3.4))
    finite = {name: values[np.isfinite(values)] for name, values in distributions.items()}
    lowest = min((values.min() for values in finite.values() if len(values)), default=-1.0)
    bins = np.linspace(max(-1.0, np.floor(lowest / 0.05) * 0.05), 1.0, 81)
    for name, values in finite.items():
        if len(values):
            axis.hist(
                np.clip(values, -1.0, 1.0),
                bins=bins,
                density=True,
                alpha=0.5,
                label=f"{_LABELS.get(name, name)} ({len(values):,})",
            )
    if threshold < CHECK_OFF:
        axis.axvline(
            threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold}"
        )
    axis.set_xlabel("judge cosine to the nearest real training image")
    axis.set_ylabel("density")
    axis.legend(fontsize=7)
    figure_.tight_layout()
    return figure_


def markdown_lines(leakage: dict | None) -> list[str]:
    """The section's table for report.md (nothing for a dataset that does not record t)."""
    if leakage is None:
        return []
    check = (
        f"on: images above {leakage['threshold']} were rejected and redrawn"
        if leakage["check_on"]
        else "off"
    )
    lines = [
        "",
        "## Nearest real training image (judge cosine)",
        "",
        "Each kept generated image against its nearest real training image, beside real images "
        "against the nearest training image of another identity (and held-out real images of the "
        "validation identities against the nearest training image). The check "
        f"(`generate.max_training_image_similarity` = {leakage['threshold']}) is {check}; "
        f"{leakage['rejected']} of {leakage['judged_images']} judged images were rejected as "
        "`near_training_image`.",
        "",
        "| | images | mean | p50 | p90 | p99 | max |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("generated", "real_other_identity", "heldout_validation"):
        summary = leakage.get(name)
        if summary is None or not summary["images"]:
            continue
        lines.append(
            f"| {_LABELS[name]} | {summary['images']} | "
            + " | ".join(f"{summary[key]:.3f}" for key in ("mean", "p50", "p90", "p99", "max"))
            + " |"
        )
    if leakage["kept_above_real_p99"] is not None:
        lines += [
            "",
            "Kept generated images above the p99 of real training images against another "
            f"identity: {100 * leakage['kept_above_real_p99']:.2f}% (1% of those real images).",
        ]
    lines += ["", f"![Nearest training image]({FIGURE})", ""]
    return lines
