"""Pictures of a generated dataset, drawn once it is complete (listed in its manifest).

    figures/identities.png        the first identities, one row each, with their kept images
                                  (read back from the dataset's files)
    figures/judge_similarity.png  the judge similarity of every judged image by decision, with
                                  the filter's threshold
    figures/training_image_similarity.png
                                  the judge cosine of every judged image to its nearest real
                                  training image by decision, with the leakage check's threshold
                                  when it is on

Both are functions of the dataset's records and files, so a rerun draws the same bytes. The
dataset may be local or on an object store (`gs://`, `core.paths`).
"""

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from diffusion_jax.core import paths  # noqa: E402
from diffusion_jax.core.figures import image_grid  # noqa: E402
from diffusion_jax.tasks.data.sources.image_decoding import to_model_range  # noqa: E402
from diffusion_jax.tasks.data.sources.recordio import RecordIOReader  # noqa: E402
from diffusion_jax.tasks.generation import dataset_writers  # noqa: E402
from diffusion_jax.tasks.generation.image_filter import CHECK_OFF, DECISIONS  # noqa: E402

FIGURES_DIR = "figures"
GRID_IDENTITIES = 8
GRID_IMAGES = 8


def _kept_image_reader(out_dir: str, formats: list[str]):
    """`read(record, position) -> uint8 image` of the kept image at `position` in the dataset's
    (identity, image index) order, from the identity folders or else the RecordIO file."""
    if "folders" in formats:
        return lambda record, _: np.asarray(
            Image.open(io.BytesIO((paths.Path(out_dir) / record["path"]).read_bytes()))
        )
    if "recordio" in formats:
        reader = RecordIOReader(str(paths.Path(out_dir) / dataset_writers.RECORDIO_REC))
        return lambda _, position: np.asarray(
            Image.open(io.BytesIO(reader[position]["image_bytes"]))
        )
    return None


def identities_figure(out_dir: str, formats: list[str], kept: list[dict]) -> plt.Figure | None:
    """Rows: the first identities with kept images; columns: their first kept images, each
    titled with its judge similarity. `kept`: the kept images' records in dataset order."""
    read = _kept_image_reader(out_dir, formats)
    if read is None or not kept:
        return None
    rows: dict[int, list[tuple[int, dict]]] = {}
    for position, record in enumerate(kept):
        if record["identity"] in rows or len(rows) < GRID_IDENTITIES:
            rows.setdefault(record["identity"], []).append((position, record))
    side = read(kept[0], 0).shape[0]
    columns = min(GRID_IMAGES, max(len(images) for images in rows.values()))
    grid = np.full((len(rows), columns, side, side, 3), -1.0, np.float32)  # black: no image
    for row, images in enumerate(rows.values()):
        for column, (position, record) in enumerate(images[:columns]):
            grid[row, column] = to_model_range(read(record, position))
    counts = {identity: len(images) for identity, images in rows.items()}
    return image_grid(
        grid,
        title="Generated identities: kept images, first ones of each identity",
        row_labels=[f"id {identity} ({count} kept)" for identity, count in counts.items()],
    )


def judge_similarity_figure(images: list[dict], min_similarity: float) -> plt.Figure:
    """Histogram of the judge similarity of every judged image, one colour per decision."""
    figure, axis = plt.subplots(figsize=(5.0, 3.2))
    bins = np.linspace(-1.0, 1.0, 81)
    for decision in DECISIONS:
        values = [image["judge_similarity"] for image in images if image["decision"] == decision]
        if values:
            axis.hist(values, bins=bins, alpha=0.6, label=f"{decision} ({len(values):,})")
    axis.axvline(
        min_similarity,
        color="black",
        linestyle="--",
        linewidth=1,
        label=f"threshold {min_similarity}",
    )
    axis.set_xlabel("judge similarity to the identity's other first-round images")
    axis.set_ylabel("images")
    axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def training_image_similarity_figure(
    images: list[dict], max_similarity: float
) -> plt.Figure | None:
    """Histogram of every judged image's judge cosine to its nearest real training image, one
    colour per decision, with the threshold of the leakage check when it is on; None when the
    records do not hold it (shards written before it was recorded)."""
    if not images or any("nearest_training_image_similarity" not in image for image in images):
        return None
    figure, axis = plt.subplots(figsize=(5.0, 3.2))
    lowest = min((image["nearest_training_image_similarity"] for image in images), default=-1.0)
    bins = np.linspace(max(-1.0, np.floor(lowest / 0.05) * 0.05), 1.0, 81)
    for decision in DECISIONS:
        values = [
            image["nearest_training_image_similarity"]
            for image in images
            if image["decision"] == decision
        ]
        if values:
            axis.hist(values, bins=bins, alpha=0.6, label=f"{decision} ({len(values):,})")
    if max_similarity < CHECK_OFF:
        axis.axvline(
            max_similarity,
            color="black",
            linestyle="--",
            linewidth=1,
            label=f"threshold {max_similarity}",
        )
    axis.set_xlabel("judge cosine to the nearest real training image")
    axis.set_ylabel("images")
    axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def write_dataset_figures(out_dir: str, plan: dict, records: list[dict]) -> list[str]:
    """Draws the module's figures into OUT/figures; returns their paths relative to OUT."""
    images = [image for record in records for image in record["images"]]
    kept = sorted(
        (image for image in images if image["decision"] == "kept"),
        key=lambda image: (image["identity"], image["image_index"]),
    )
    generate = plan["generate"]
    figures = {
        "identities.png": identities_figure(out_dir, generate["formats"], kept),
        "judge_similarity.png": judge_similarity_figure(images, generate["min_judge_similarity"]),
        "training_image_similarity.png": training_image_similarity_figure(
            images, generate.get("max_training_image_similarity", CHECK_OFF)
        ),
    }
    written = []
    for name, figure in figures.items():
        if figure is None:
            continue
        path = f"{FIGURES_DIR}/{name}"
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
        plt.close(figure)
        paths.write_bytes_atomically(paths.Path(out_dir) / path, buffer.getvalue())
        written.append(path)
    return written
