"""The diffusion model's training identities in the conditioning encoder's space, cached.

The leakage check compares every generated identity with every training identity. A training
identity is represented by its centre, the renormalised mean of the conditioning encoder's
embeddings of its training images (no flip augmentation, as the diffusion model was conditioned):

    m_c = sum_{x in class c} E(x) / || sum_{x in class c} E(x) ||.

Embedding a training set costs one pass over it, so the centres are computed once and kept in
`CACHE_DIR/training_identities-<key>.npz`, where the key hashes the encoder's weights
(`weights_sha256`) and every `config.data` field: another encoder or other data never reads a
stale file. The file is written atomically (`paths.write_bytes_atomically`: locally to a temporary
name, then renamed; on an object store in one upload), so a killed run leaves none. CACHE_DIR may
be local or a `gs://` URL.
"""

import hashlib
import io
import json

import ml_collections
import numpy as np
from absl import logging

from diffusion_jax.core import paths
from diffusion_jax.tasks.data.sources import input_pipeline
from diffusion_jax.tasks.recognition.embeddings import EmbeddingExtractor

_CHUNK = 4096  # training images held in memory at once


def cache_key(encoder_weights_sha256: str, data_config: ml_collections.ConfigDict) -> str:
    """16 hex digits naming (encoder weights, data config)."""
    payload = json.dumps(
        {"encoder": encoder_weights_sha256, "data": data_config.to_dict()}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def identity_centres(
    records, num_identities: int, extractor: EmbeddingExtractor, batch_size: int
) -> np.ndarray:
    """m_c of the module docstring, float32 [num_identities, D], from random-access records
    {"image": uint8 [R, R, 3], "label": int}. A label without images keeps a zero row."""
    sums = np.zeros((num_identities, extractor.embedding_dim), np.float64)
    for start in range(0, len(records), _CHUNK):
        chunk = [records[index] for index in range(start, min(start + _CHUNK, len(records)))]
        images = np.stack([np.asarray(record["image"]) for record in chunk])
        labels = np.asarray([int(record["label"]) for record in chunk])
        embeddings = extractor.embed_arrays(
            images, batch_size=batch_size, description=f"Training identities {start}+"
        )
        np.add.at(sums, labels, embeddings)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def cached_identity_centres(
    config: ml_collections.ConfigDict,
    extractor: EmbeddingExtractor,
    encoder_weights_sha256: str,
    cache_dir: paths.PathLike,
) -> np.ndarray:
    """The training identities' centres for `config.data`, from the cache when present. The
    training data must be prepared (`input_pipeline.ensure_prepared`, which synchronises the
    processes of a distributed job, so only their common caller may call it)."""
    key = cache_key(encoder_weights_sha256, config.data)
    path = paths.Path(cache_dir) / f"training_identities-{key}.npz"
    if path.is_file():
        with np.load(io.BytesIO(path.read_bytes())) as cached:
            logging.info("Training identity centres from %s.", path)
            return cached["centres"]
    centres = identity_centres(
        input_pipeline.training_records(config.data),
        input_pipeline.num_train_identities(config.data),
        extractor,
        config.evaluate.batch_size,
    )
    buffer = io.BytesIO()
    np.savez(buffer, centres=centres, key=key)
    paths.write_bytes_atomically(path, buffer.getvalue())
    logging.info("Cached %d training identity centres in %s.", len(centres), path)
    return centres
