"""`--mode=evaluate_encoder`: how well an identity encoder recognises faces.

For the encoder the diffusion model is conditioned on (`config.encoder.checkpoint`, or the one
trained into WORKDIR/encoder/model) it writes to WORKDIR/encoder_report/:

  report.json                 the encoder's provenance and weights hash; per verification set the
                              10-fold accuracy, TAR@FAR, EER, ROC AUC (`evaluation.verification`);
                              per labelled set the identity report (`evaluation.identity_report`)
  roc.png                     ROC curves of every verification set
  similarity_histograms.png   genuine and impostor similarity histograms of every labelled set

Verification sets are `config.evaluate.verification_sets` (see configs/faces.py). The labelled
sets are the embedded data's held-out identities (never seen in training) and its training
identities, or, for other sources, the first `MAX_LABELLED_IMAGES` training images.
Embeddings are flip-augmented when `config.evaluate.flip_embeddings` is set, as insightface does.
"""

import json
import re

import jax
import ml_collections
import numpy as np
from absl import logging

from diffusion_jax.core import parallel, paths, stages
from diffusion_jax.core.bad_input import BadInputError
from diffusion_jax.core.figures import save_figure
from diffusion_jax.core.run_layout import RunLayout
from diffusion_jax.tasks.data.sources import input_pipeline
from diffusion_jax.tasks.evaluation import verification_sets
from diffusion_jax.tasks.evaluation.identity_report import (
    identity_report,
    similarity_histogram_figure,
)
from diffusion_jax.tasks.evaluation.verification import evaluate_verification, roc_figure
from diffusion_jax.tasks.recognition.embeddings import EmbeddingExtractor
from diffusion_jax.tasks.recognition.encoder_store import load_encoder

MAX_LABELLED_IMAGES = 20_000
# heldout@N, validation@N, test@N: N matched + N mismatched pairs per fold drawn afresh over all
# held-out identities, or over the validation or the test part of them.
HELDOUT_DRAWN_PARTS = {"heldout": None} | {part: part for part in verification_sets.HELDOUT_PARTS}

# The ':' between PAIRS_TXT and IMAGE_ROOT, not the one of a URL's scheme (gs://).
_PAIRS_SEPARATOR = r":(?!//)"


def _drawn_heldout_set(entry: str) -> tuple[str | None, int] | None:
    """(part, pairs per fold) of an entry "heldout@N" / "validation@N" / "test@N" (part None:
    every held-out identity); None for other entries."""
    name, at, count = entry.partition("@")
    if not at or name not in HELDOUT_DRAWN_PARTS:
        return None
    if not count.isdigit() or int(count) < 1:
        raise BadInputError(
            f"config.evaluate.verification_sets entry {entry!r}",
            f"write {name}@N with N, the matched (and mismatched) pairs per fold, a positive "
            "integer",
        )
    return HELDOUT_DRAWN_PARTS[name], int(count)


def uses_heldout_identities(entries) -> bool:
    """Whether any verification set entry is drawn from the embedded faces' held-out images."""
    return any(entry == "heldout" or _drawn_heldout_set(entry) for entry in entries)


def load_verification_sets(
    config: ml_collections.ConfigDict, resolution: int
) -> dict[str, verification_sets.VerificationSet]:
    """The sets `config.evaluate.verification_sets` names, decoded at `resolution` (files) or as
    stored (the embedded held-out images), keyed by a short name ("heldout", "heldout@N", the
    .bin's stem, the image root's folder name)."""
    sets = {}
    for entry in config.evaluate.verification_sets:
        drawn = _drawn_heldout_set(entry)
        if entry == "heldout" or drawn is not None:
            if config.data.source != "procedural":
                raise BadInputError(
                    f"config.evaluate.verification_sets entry {entry!r}",
                    f"the embedded faces' held-out identities, but data.source is "
                    f"{config.data.source!r}; name .bin or pairs.txt files instead.",
                )
            if entry == "heldout":
                sets["heldout"] = verification_sets.from_procedural(config.data)
            else:
                part, pairs_per_fold = drawn
                sets[entry] = verification_sets.from_heldout_images(
                    config.data,
                    pairs_per_fold=pairs_per_fold,
                    seed=config.seed,
                    part=part,
                    validation_fraction=config.evaluate.validation_fraction,
                )
        elif entry.endswith(".bin"):
            sets[paths.Path(entry).stem] = verification_sets.from_verification_bin(
                str(paths.resolve(entry)), resolution=resolution, policy=config.data.image_policy
            )
        elif re.search(_PAIRS_SEPARATOR, entry):
            pairs_path, image_root = (
                str(paths.resolve(part)) for part in re.split(_PAIRS_SEPARATOR, entry, maxsplit=1)
            )
            sets[paths.Path(image_root).name] = verification_sets.from_lfw_pairs(
                pairs_path, image_root, resolution=resolution, policy=config.data.image_policy
            )
        else:
            raise BadInputError(
                f"config.evaluate.verification_sets entry {entry!r}",
                "not 'heldout', 'heldout@N', 'validation@N', 'test@N', a .bin file or "
                "'PAIRS_TXT:IMAGE_ROOT'.",
            )
    return sets


def labelled_sets(config: ml_collections.ConfigDict) -> dict[str, dict[str, np.ndarray]]:
    """{"name": {"image": uint8 [N, H, W, 3], "label": [N]}} for the identity reports."""
    if config.data.source == "procedural":
        return {
            "held-out identities": input_pipeline.load_split_arrays(config.data, "heldout"),
            "training identities": input_pipeline.load_split_arrays(config.data, "train"),
        }
    records = input_pipeline.training_records(config.data)
    count = min(len(records), MAX_LABELLED_IMAGES)
    items = [records[index] for index in range(count)]
    return {
        "training identities": {
            "image": np.stack([np.asarray(item["image"]) for item in items]),
            "label": np.asarray([int(item["label"]) for item in items]),
        }
    }


def pair_similarities(
    extractor: EmbeddingExtractor, pairs: verification_sets.VerificationSet, batch_size: int
) -> np.ndarray:
    """Cosine similarity of the unit embeddings of each pair's two images."""
    embeddings_a = extractor.embed_arrays(pairs.images_a, batch_size=batch_size)
    embeddings_b = extractor.embed_arrays(pairs.images_b, batch_size=batch_size)
    return np.sum(embeddings_a * embeddings_b, axis=-1)


def evaluate_encoder(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Writes the report of the module docstring; returns its JSON contents."""
    layout = RunLayout.from_config(workdir, config)
    stages.require(layout, config, "encoder")
    out_dir = layout.encoder_report
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder = load_encoder(layout.encoder.export_dir)
    input_pipeline.ensure_prepared(config.data)
    extractor = EmbeddingExtractor(
        encoder.model, parallel.make_mesh(config.mesh), flip=config.evaluate.flip_embeddings
    )
    batch_size = config.evaluate.batch_size

    verification = {}
    for name, pairs in load_verification_sets(config, encoder.input_resolution).items():
        similarities = pair_similarities(extractor, pairs, batch_size)
        verification[name] = evaluate_verification(similarities, pairs.is_same, pairs.fold)
        logging.info(
            "%s: accuracy %.4f +- %.4f over %d pairs.",
            name,
            verification[name].accuracy_mean,
            verification[name].accuracy_std,
            len(pairs),
        )

    identities = {}
    for name, arrays in labelled_sets(config).items():
        embeddings = extractor.embed_arrays(arrays["image"], batch_size=batch_size)
        identities[name] = identity_report(
            embeddings,
            arrays["label"],
            thresholds=tuple(config.evaluate.nearest_identity_thresholds),
            seed=config.seed,
        )

    report = {
        "encoder": {
            "directory": encoder.directory,
            "architecture": encoder.architecture,
            "provenance": encoder.provenance,
            "weights_sha256": encoder.weights_sha256,
        },
        "flip_embeddings": config.evaluate.flip_embeddings,
        "verification": {name: result.to_json() for name, result in verification.items()},
        "identities": {name: result.to_json() for name, result in identities.items()},
    }
    if jax.process_index() == 0:
        save_figure(roc_figure(verification), out_dir / "roc.png")
        save_figure(similarity_histogram_figure(identities), out_dir / "similarity_histograms.png")
        (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    logging.info("Encoder report written to %s.", out_dir)
    return report
