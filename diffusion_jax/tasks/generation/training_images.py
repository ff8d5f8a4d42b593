"""The real training images under the judge, cached, and each image's nearest one of them.

The image-level leakage check (`image_filter`) compares every judged image x with every real
training image y_j, the images the diffusion model learned from
(`input_pipeline.training_records(config.data)`, j their position in that order), under the judge
encoder J:

    t(x) = max_j cos(J(x), J(y_j)),      j*(x) = the first j reaching the maximum,

and records t(x), j*(x) and the label of y_j*. For a real image the same search may leave out the
training images of its own identity (the report's reference: a real face against the nearest
training face of another person).

The judge embeddings of the training images (unit, float32 [M, D], with their labels) cost one
pass over the training set, so they are computed once and kept in
`CACHE_DIR/training_images_judge-<key>.npz`, where the key hashes the judge's weights
(`weights_sha256`) and every `config.data` field (`training_identities.cache_key`): another judge or
other data never reads a stale file. The file is written atomically, local or `gs://`.

The search (`NearestTrainingImages`) runs on the device: the training embeddings are replicated
on the mesh in chunks of at most `CHUNK` rows and a scan keeps each query's best cosine and its
index, so memory stays [queries, CHUNK] whatever M is (the embeddings themselves take M x D x 4
bytes, host and device). The dot products are float32 at full precision (no TF32), and a query
batch of the same shape gives the same bits however it was put together, so the records are the
same in every rerun.
"""

import dataclasses
import functools
import hashlib
import io

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from diffusion_jax.core import parallel, paths
from diffusion_jax.tasks.data.sources import input_pipeline
from diffusion_jax.tasks.generation.training_identities import cache_key
from diffusion_jax.tasks.recognition.embeddings import EmbeddingExtractor

CACHE_PREFIX = "training_images_judge-"
CHUNK = 16_384  # training embeddings per step of the search
_EMBED_CHUNK = 4096  # training images held in memory at once while embedding
NO_LABEL = -1  # a query whose own identity is not excluded
_PADDING_LABEL = -2  # the rows that pad the last chunk, never a nearest image


@dataclasses.dataclass(frozen=True)
class TrainingImages:
    """The judge's unit embeddings of the training images, float32 [M, D], in the order of
    `input_pipeline.training_records`, and their labels, int32 [M]."""

    embeddings: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def sha256(self) -> str:
        """Identifies the exact bits (recorded in the generation plan)."""
        digest = hashlib.sha256(np.ascontiguousarray(self.embeddings, "<f4").tobytes())
        digest.update(np.ascontiguousarray(self.labels, "<i4").tobytes())
        return digest.hexdigest()


def judge_embeddings(records, extractor: EmbeddingExtractor, batch_size: int) -> TrainingImages:
    """The `TrainingImages` of random-access records {"image": uint8 [R, R, 3], "label": int}."""
    embeddings = np.zeros((len(records), extractor.embedding_dim), np.float32)
    labels = np.zeros(len(records), np.int32)
    for start in range(0, len(records), _EMBED_CHUNK):
        stop = min(start + _EMBED_CHUNK, len(records))
        chunk = [records[index] for index in range(start, stop)]
        labels[start:stop] = [int(record["label"]) for record in chunk]
        embeddings[start:stop] = extractor.embed_arrays(
            np.stack([np.asarray(record["image"]) for record in chunk]),
            batch_size=batch_size,
            description=f"Training images under the judge {start}+",
        )
    return TrainingImages(embeddings, labels)


def cache_path(
    cache_dir: paths.PathLike, judge_weights_sha256: str, data_config: ml_collections.ConfigDict
) -> paths.Path:
    return (
        paths.Path(cache_dir) / f"{CACHE_PREFIX}{cache_key(judge_weights_sha256, data_config)}.npz"
    )


def cached_training_images(
    config: ml_collections.ConfigDict,
    extractor: EmbeddingExtractor,
    judge_weights_sha256: str,
    cache_dir: paths.PathLike,
) -> TrainingImages:
    """The `TrainingImages` of `config.data` under the judge, from the cache when present. On a
    miss the training data must be prepared (`input_pipeline.ensure_prepared`)."""
    path = cache_path(cache_dir, judge_weights_sha256, config.data)
    if path.is_file():
        with np.load(io.BytesIO(path.read_bytes())) as cached:
            logging.info("Training images' judge embeddings from %s.", path)
            return TrainingImages(cached["embeddings"], cached["labels"])
    training = judge_embeddings(
        input_pipeline.training_records(config.data), extractor, config.evaluate.batch_size
    )
    buffer = io.BytesIO()
    np.savez(buffer, embeddings=training.embeddings, labels=training.labels)
    paths.write_bytes_atomically(path, buffer.getvalue())
    logging.info("Cached the judge embeddings of %d training images in %s.", len(training), path)
    return training


def training_images_for_generation(
    config: ml_collections.ConfigDict,
    extractor: EmbeddingExtractor,
    judge_weights_sha256: str,
    cache_dir: paths.PathLike,
    expected_sha256: str | None,
) -> TrainingImages:
    """`cached_training_images` for a generation worker; a worker that finds no cache prepares
    the data (alone: the processes of a jax.distributed job have prepared it together) and
    computes them. Refused unless they are the bits the plan records (`expected_sha256`, worker
    0's), so every worker judges against the same embeddings."""
    path = cache_path(cache_dir, judge_weights_sha256, config.data)
    if not path.is_file() and jax.process_count() == 1:
        input_pipeline.ensure_prepared(config.data)
    training = cached_training_images(config, extractor, judge_weights_sha256, cache_dir)
    if expected_sha256 is not None and training.sha256 != expected_sha256:
        raise ValueError(
            f"The judge embeddings of the training images in {path} (sha256 {training.sha256}) "
            f"are not those the dataset's plan records ({expected_sha256}): this worker reads "
            "other training data, or computed them on other hardware. Give every worker the "
            "same data and cache (the workdir), or delete the dataset and start again."
        )
    return training


def _search(train, train_labels, queries, query_labels):
    """(best cosine, its index, its label) [P] of each query [P, D] among the chunked training
    embeddings [C, S, D] whose labels [C, S] are neither padding nor the query's own label."""
    chunk = train.shape[1]

    def step(best, inputs):
        embeddings, labels, offset = inputs
        similarity = jnp.einsum(
            "pd,sd->ps", queries, embeddings, precision=jax.lax.Precision.HIGHEST
        )
        excluded = (labels[None, :] == _PADDING_LABEL) | (labels[None, :] == query_labels[:, None])
        similarity = jnp.where(excluded, -jnp.inf, similarity)
        column = jnp.argmax(similarity, axis=1)  # the first maximum
        value = jnp.take_along_axis(similarity, column[:, None], axis=1)[:, 0]
        better = value > best[0]  # strictly: an earlier chunk keeps a tie
        return (
            jnp.where(better, value, best[0]),
            jnp.where(better, offset + column, best[1]),
            jnp.where(better, labels[column], best[2]),
        ), None

    count = queries.shape[0]
    start = (
        jnp.full((count,), -jnp.inf, jnp.float32),
        jnp.zeros((count,), jnp.int32),
        jnp.full((count,), NO_LABEL, jnp.int32),
    )
    offsets = jnp.arange(train.shape[0], dtype=jnp.int32) * chunk
    best, _ = jax.lax.scan(step, start, (train, train_labels, offsets))
    return best


@functools.cache
def _jitted_search(mesh: Mesh):
    """`_search` on replicated arrays of `mesh`, compiled once per mesh and shapes."""
    replicated = parallel.replicated(mesh)
    return jax.jit(_search, in_shardings=replicated, out_shardings=replicated)


class NearestTrainingImages:
    """t(x), j*(x) and its label for query embeddings, on the device (module docstring)."""

    def __init__(self, training: TrainingImages, mesh: Mesh, chunk: int = CHUNK):
        if not len(training):
            raise ValueError("there are no training images to compare with")
        self.labels = np.asarray(training.labels, np.int32)
        count, dim = training.embeddings.shape
        chunk = min(chunk, count)
        chunks = -(-count // chunk)
        embeddings = np.zeros((chunks * chunk, dim), np.float32)
        embeddings[:count] = training.embeddings
        labels = np.full(chunks * chunk, _PADDING_LABEL, np.int32)
        labels[:count] = self.labels
        self.mesh = mesh
        self._train = parallel.replicate(
            (embeddings.reshape(chunks, chunk, dim), labels.reshape(chunks, chunk)), mesh
        )
        self._search = _jitted_search(mesh)
        self._no_labels: dict[int, jax.Array] = {}

    def dispatch(
        self, queries: jax.Array | np.ndarray, query_labels: np.ndarray | None = None
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(similarity float32, index int32, label int32) [P] of unit queries [P, D], as queued
        on the device; with `query_labels` [P], the training images of a query's own label are
        left out (a query left with none gets -inf and label -1)."""
        if not isinstance(queries, jax.Array):  # replicated from the host, in every process
            queries = parallel.replicate(np.asarray(queries, np.float32), self.mesh)
        if query_labels is None:
            if queries.shape[0] not in self._no_labels:
                self._no_labels[queries.shape[0]] = parallel.replicate(
                    np.full(queries.shape[0], NO_LABEL, np.int32), self.mesh
                )
            labels = self._no_labels[queries.shape[0]]
        else:
            labels = parallel.replicate(np.asarray(query_labels, np.int32), self.mesh)
        return self._search(*self._train, queries, labels)

    def search(
        self, queries: np.ndarray, query_labels: np.ndarray | None = None, batch_size: int = 1024
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`dispatch` over host queries [N, D] of any number, in padded batches of `batch_size`
        (one compilation), read back: (similarity, index, label) [N]."""
        queries = np.asarray(queries, np.float32)
        if query_labels is None:
            query_labels = np.full(len(queries), NO_LABEL, np.int32)
        outputs = ([], [], [])
        for start in range(0, len(queries), batch_size):
            chunk = queries[start : start + batch_size]
            padded = np.zeros((batch_size, queries.shape[1]), np.float32)
            padded[: len(chunk)] = chunk
            labels = np.full(batch_size, NO_LABEL, np.int32)
            labels[: len(chunk)] = query_labels[start : start + batch_size]
            for output, value in zip(outputs, self.dispatch(padded, labels)):
                output.append(np.asarray(value)[: len(chunk)])
        return tuple(
            np.concatenate(output) if output else np.zeros(0, dtype)
            for output, dtype in zip(outputs, (np.float32, np.int32, np.int32))
        )


QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}


def similarity_summary(values) -> dict:
    """{"images", "mean", "p50", "p90", "p99", "max"} of the finite values (linear-interpolated
    quantiles); {"images": 0} when there are none."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return {"images": 0}
    return {
        "images": int(len(values)),
        "mean": float(values.mean()),
        **{name: float(np.quantile(values, q)) for name, q in QUANTILES.items()},
        "max": float(values.max()),
    }
