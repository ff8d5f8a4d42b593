"""Where the diffusion model's identity condition comes from (`config.condition.source`).

encoder                the frozen identity encoder's unit embedding of the training image
                       itself, as IDiff-Face conditions (computed on the device for every
                       batch, after augmentation). The encoder is `config.encoder.checkpoint`,
                       or the one `--mode=train_encoder` trained into WORKDIR/encoder/model.
random_identity_table  a frozen random unit vector per training label: a stand-in that needs
                       no encoder (for experiments on the diffusion model alone).
"""

import dataclasses
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from diffusion_jax.core import parallel
from diffusion_jax.core.models.conditioning import random_identity_embeddings
from diffusion_jax.core.run_layout import RunLayout
from diffusion_jax.core.training.step import Batch
from diffusion_jax.tasks.data.sources import input_pipeline
from diffusion_jax.tasks.recognition.embeddings import EmbeddingExtractor
from diffusion_jax.tasks.recognition.encoder_store import load_encoder

CONDITION_SOURCES = ("encoder", "random_identity_table")


@dataclasses.dataclass(frozen=True)
class IdentityConditions:
    """`prepare_batch`: a global device batch {"image", "label"} -> {"image", "cond"};
    `of_images(images, labels)`: conditions [N, D] of host images in [-1, 1] with their labels
    (the figures' rows)."""

    prepare_batch: Callable[[Batch], Batch]
    of_images: Callable[[np.ndarray, np.ndarray], np.ndarray]


def identity_conditions(
    config: ml_collections.ConfigDict, workdir: str, mesh: Mesh
) -> IdentityConditions:
    if config.condition.source == "encoder":
        return _encoder_conditions(config, workdir, mesh)
    if config.condition.source == "random_identity_table":
        return _table_conditions(config, mesh)
    raise ValueError(
        f"condition.source must be one of {CONDITION_SOURCES}, got {config.condition.source!r}"
    )


def _encoder_conditions(
    config: ml_collections.ConfigDict, workdir: str, mesh: Mesh
) -> IdentityConditions:
    encoder = load_encoder(RunLayout.from_config(workdir, config).encoder.export_dir)
    if encoder.embedding_dim != config.condition.dim:
        raise ValueError(
            f"condition.dim is {config.condition.dim} but the encoder in {encoder.directory} "
            f"embeds in {encoder.embedding_dim} dimensions; set "
            f"--config.condition.dim={encoder.embedding_dim}."
        )
    extractor = EmbeddingExtractor(encoder.model, mesh, flip=False)
    return IdentityConditions(
        prepare_batch=lambda batch: {"image": batch["image"], "cond": extractor(batch["image"])},
        of_images=lambda images, labels: extractor.embed_arrays(images, description="Conditions"),
    )


def _table_conditions(config: ml_collections.ConfigDict, mesh: Mesh) -> IdentityConditions:
    table = random_identity_embeddings(
        input_pipeline.num_train_identities(config.data), config.condition.dim, seed=config.seed
    )
    table = parallel.replicate(table, mesh)
    lookup = jax.jit(
        lambda table, labels: table[labels], out_shardings=parallel.batch_sharding(mesh)
    )
    return IdentityConditions(
        prepare_batch=lambda batch: {
            "image": batch["image"],
            "cond": lookup(table, batch["label"]),
        },
        of_images=lambda images, labels: np.asarray(table)[np.asarray(labels)],
    )
