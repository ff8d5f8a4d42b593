"""The grain input pipeline over the procedural faces, and readers of whole splits for evaluation.

Every function takes the `config.data` ConfigDict of configs/faces.py and reads these fields:
source ("procedural"), data_dir (TFDS data dir; "~" is expanded), resolution, seed,
num_train_identities, images_per_train_identity, num_heldout_identities,
images_per_heldout_identity, pairs_per_fold, horizontal_flip, max_shift and worker_count (0 reads
in the calling process) and color_jitter (0 but for the recognisers' training sets,
`recognizer_training`). For every source, `max_identities` and `max_images_per_identity` (-1:
all) cut the training records to the first identity labels and the first records of each
(`training_records`). A dataset prepared earlier (procedural, image_folder) is checked against
the listing its preparation wrote whenever it is reused: the sizes of its files, and their SHA-256
in `ensure_prepared` when `verify_prepared` (`prepared_files`).

data_dir and data.path may be local or `gs://` URLs (`core.paths`): TFDS reads and writes data_dir
through epath, `recordio` reads a `.rec` on an object store by ranged reads, and `image_folders`
lists identity folders there through epath.
"""

from __future__ import annotations

from collections.abc import Sequence

import grain
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from diffusion_jax.core import paths
from diffusion_jax.core.bad_input import BadInputError
from diffusion_jax.tasks.data.sources import (
    faces_builder,
    image_folders,
    prepared_files,
    prepared_records,
    recordio,
    tfds_source,
)
from diffusion_jax.tasks.data.sources.image_decoding import (
    LUMA_WEIGHTS,
    decode_image,
    to_model_range,
)

SPLITS = ("train", "heldout", "pairs")
SOURCES = ("procedural", "image_folder", "recordio", "tfds")


def builder_config(data_config: ml_collections.ConfigDict) -> faces_builder.ProceduralFacesConfig:
    """The TFDS builder config that `data_config` describes."""
    if data_config.source != "procedural":
        raise ValueError(
            f"data.source must be 'procedural' for the procedural faces, got {data_config.source!r}"
        )
    return faces_builder.ProceduralFacesConfig(
        resolution=data_config.resolution,
        seed=data_config.seed,
        num_train_identities=data_config.num_train_identities,
        images_per_train_identity=data_config.images_per_train_identity,
        num_heldout_identities=data_config.num_heldout_identities,
        images_per_heldout_identity=data_config.images_per_heldout_identity,
        pairs_per_fold=data_config.pairs_per_fold,
    )


def _data_dir(data_config: ml_collections.ConfigDict) -> str:
    return str(paths.resolve(data_config.data_dir))


def _barrier() -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("training_data_prepared")


def ensure_prepared(data_config: ml_collections.ConfigDict) -> None:
    """Prepares the training source of `data_config` unless it already is.

    procedural: renders `procedural_faces` and `procedural_face_pairs` into data_dir;
    image_folder: decodes `data.path` into data_dir (see `image_folders`); recordio: opens the
    file, which checks its index against its data. A prepared dataset is reused once checked
    against its listing of prepared files, SHA-256 included when `data.verify_prepared`. With
    several processes, every process must call it (it synchronises them): process 0 prepares
    first; the others then find the data prepared in a shared data_dir, or prepare an identical
    copy into their local one.
    """
    _check_source(data_config)
    if data_config.source == "recordio":
        _recordio_reader(data_config)
        return
    if data_config.source == "tfds":
        _tfds_source(data_config)
        return
    is_first_process = jax.process_index() == 0
    if not is_first_process:
        _barrier()
    verify_hashes = data_config.get("verify_prepared", False)  # configs saved before it existed
    if data_config.source == "procedural":
        for builder in _procedural_builders(data_config):
            builder.download_and_prepare(verify_hashes=verify_hashes)
    else:
        _image_folder_builder(data_config, verify_hashes=verify_hashes)
    if is_first_process:
        _barrier()


def _check_source(data_config: ml_collections.ConfigDict) -> None:
    if data_config.source not in SOURCES:
        raise ValueError(f"data.source must be one of {SOURCES}, got {data_config.source!r}")
    is_file_source = data_config.source in ("image_folder", "recordio")
    if is_file_source and not paths.resolve(data_config.path).exists():
        raise FileNotFoundError(
            f"data.path={data_config.path!r} (for data.source={data_config.source!r}) "
            "does not exist"
        )


def _procedural_builders(
    data_config: ml_collections.ConfigDict,
) -> list[faces_builder.ProceduralFaces | faces_builder.ProceduralFacePairs]:
    config, data_dir = builder_config(data_config), _data_dir(data_config)
    return [
        faces_builder.ProceduralFaces(config=config, data_dir=data_dir),
        faces_builder.ProceduralFacePairs(config=config, data_dir=data_dir),
    ]


def _image_folder_builder(
    data_config: ml_collections.ConfigDict, verify_hashes: bool = False
) -> image_folders.IdentityFolders:
    """The identity-folder dataset of `data.path`, prepared into data_dir if it is not yet
    (else checked: `image_folders.prepare_image_folder`)."""
    return image_folders.prepare_image_folder(
        str(paths.resolve(data_config.path)),
        _data_dir(data_config),
        resolution=data_config.resolution,
        policy=data_config.image_policy,
        strict=data_config.strict,
        verify_hashes=verify_hashes,
    )


def check_prepared(data_config: ml_collections.ConfigDict) -> list[dict]:
    """--mode=validate_dataset on `data_config`: each dataset prepared for it (procedural: the
    faces and their pairs; image_folder: its identity folders) checked against its listing of
    prepared files, SHA-256 included (`prepared_files.check`), without preparing anything.

    Returns each dataset's summary. Raises BadInputError for a source this project does not
    prepare (recordio, tfds), a dataset not prepared, one without a listing, or a file that
    differs.
    """
    _check_source(data_config)
    if data_config.source == "procedural":
        builders = _procedural_builders(data_config)
    elif data_config.source == "image_folder":
        config = image_folders.ImageFolderConfig(
            root=str(paths.resolve(data_config.path)),
            resolution=data_config.resolution,
            policy=data_config.image_policy,
        )
        builders = [image_folders.IdentityFolders(config=config, data_dir=_data_dir(data_config))]
    else:
        raise BadInputError(
            f"config.data.source={data_config.source!r}",
            "validate_dataset checks the datasets this project prepares (procedural, "
            "image_folder); this source is read in place (recordio) or prepared by `tfds build`",
        )
    summaries = []
    for builder in builders:
        if not builder.is_prepared():
            raise BadInputError(
                builder.data_dir,
                "is not prepared: nothing to validate (the first run that reads config.data "
                "prepares it)",
            )
        summary = prepared_files.check(builder.data_dir, hashes=True)
        if summary is None:
            raise BadInputError(
                builder.data_dir,
                f"has no {prepared_files.LISTING_FILENAME}: prepared before preparations listed "
                "their files, it cannot be checked; delete it to prepare it again with one",
            )
        summaries.append(summary)
    return summaries


def _recordio_reader(data_config: ml_collections.ConfigDict) -> recordio.RecordIOReader:
    return recordio.RecordIOReader(str(paths.resolve(data_config.path)))


def _tfds_source(data_config: ml_collections.ConfigDict) -> tfds_source.TfdsNamedSource:
    return tfds_source.TfdsNamedSource(
        data_config.path,
        "train",
        _data_dir(data_config),
        resolution=data_config.resolution,
        policy=data_config.image_policy,
    )


class _DecodedRecordIO:
    """A grain source of {"image": uint8 [R, R, 3], "label": int32} over a RecordIO reader.

    A record whose image does not decode raises `ImageDecodeError` naming the file and key:
    a .rec is read in place, so there is no preparation report to skip it into.
    """

    def __init__(self, data_config: ml_collections.ConfigDict):
        self.reader = _recordio_reader(data_config)  # public: labels locate images by key
        self._resolution, self._policy = data_config.resolution, data_config.image_policy

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        record = self.reader[index]
        image = decode_image(
            record["image_bytes"],
            resolution=self._resolution,
            policy=self._policy,
            source=f"{self.reader.rec_path} (record {int(self.reader.image_keys[index])})",
        )
        return {"image": image, "label": np.int32(record["label"])}


def _all_training_records(data_config: ml_collections.ConfigDict):
    """Every training record of the source, uncut (`training_records` cuts them). A record that
    cannot be read or decoded raises BadInputError naming the dataset and the record."""
    _check_source(data_config)
    if data_config.source == "procedural":
        builder = _prepared(faces_builder.ProceduralFaces, data_config)
        return prepared_records.NamedRecords(builder.as_data_source("train"), builder.data_dir)
    if data_config.source == "image_folder":
        return image_folders.ImageLabelSource(_image_folder_builder(data_config).data_dir)
    if data_config.source == "tfds":
        return _tfds_source(data_config)
    return _DecodedRecordIO(data_config)


def _record_labels(data_config: ml_collections.ConfigDict, records) -> np.ndarray:
    """The label of every record of `records` (`_all_training_records`), int [len(records)],
    read without decoding any image."""
    if data_config.source == "procedural":  # stored identity by identity
        return np.repeat(
            np.arange(data_config.num_train_identities), data_config.images_per_train_identity
        )
    if data_config.source == "recordio":
        reader = records.reader
        if reader.identity_ranges is None:
            raise ValueError(
                f"{reader.rec_path} has no InsightFace header record, so data.max_identities / "
                "data.max_images_per_identity cannot select its identities"
            )
        starts, ends = reader.identity_ranges[:, 0], reader.identity_ranges[:, 1]
        if np.any(np.diff(starts) < 0):
            raise ValueError(
                f"{reader.rec_path}: the identity key ranges are not in label order, "
                "so data.max_identities / max_images_per_identity cannot use them"
            )
        labels = np.searchsorted(starts, reader.image_keys, side="right") - 1
        if np.any(labels < 0) or np.any(reader.image_keys >= ends[labels]):
            raise ValueError(f"{reader.rec_path}: an image key lies outside every identity range")
        return labels
    return records.record_labels  # identity folders and TFDS


class _Subset:
    """The records of `records` at `indices`, in that order (a grain random-access source)."""

    def __init__(self, records, indices: np.ndarray):
        self._records, self._indices = records, indices

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self._records[int(self._indices[index])]


def subset_indices(
    labels: np.ndarray, max_identities: int, max_images_per_identity: int
) -> np.ndarray:
    """Positions of the records kept: labels below `max_identities`, and of each label its first
    `max_images_per_identity` records in stored order (-1: no limit), in stored order."""
    labels = np.asarray(labels)
    keep = labels < max_identities if max_identities > 0 else np.ones(len(labels), bool)
    if max_images_per_identity > 0:
        order = np.argsort(labels, kind="stable")
        sorted_labels = labels[order]
        first = np.searchsorted(sorted_labels, sorted_labels, side="left")
        rank = np.empty(len(labels), np.int64)
        rank[order] = np.arange(len(labels)) - first  # k: the record is the label's k-th
        keep &= rank < max_images_per_identity
    return np.flatnonzero(keep)


def _limits(data_config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(max_identities, max_images_per_identity); -1 for a config written before they existed."""
    return (data_config.get("max_identities", -1), data_config.get("max_images_per_identity", -1))


def training_records(data_config: ml_collections.ConfigDict):
    """The random-access training records {"image": uint8 [R, R, 3], "label": int} of any source,
    cut by `max_identities` / `max_images_per_identity` (`subset_indices`) when either is set."""
    records = _all_training_records(data_config)
    max_identities, max_images_per_identity = _limits(data_config)
    if max_identities <= 0 and max_images_per_identity <= 0:
        return records
    indices = subset_indices(
        _record_labels(data_config, records), max_identities, max_images_per_identity
    )
    if not len(indices):
        raise ValueError(
            f"data.max_identities / max_images_per_identity leave no record of "
            f"{data_config.source} {data_config.path!r}"
        )
    return _Subset(records, indices)


def num_train_identities(data_config: ml_collections.ConfigDict) -> int:
    """How many identity labels the training records use (labels are 0 .. n-1), at most
    `max_identities` when set."""
    num, (max_identities, _) = _num_all_train_identities(data_config), _limits(data_config)
    return min(num, max_identities) if max_identities > 0 else num


def _num_all_train_identities(data_config: ml_collections.ConfigDict) -> int:
    if data_config.source == "procedural":
        return data_config.num_train_identities
    if data_config.source == "image_folder":
        return len(image_folders.read_identity_labels(_image_folder_builder(data_config).data_dir))
    if data_config.source == "tfds":
        return _tfds_source(data_config).num_identities
    reader = _recordio_reader(data_config)
    if reader.identity_ranges is None:
        raise ValueError(
            f"{reader.rec_path} has no InsightFace header record, so its number of identities "
            "is unknown"
        )
    return len(reader.identity_ranges)


def _prepared(
    builder_class: type[faces_builder.ProceduralFaces | faces_builder.ProceduralFacePairs],
    data_config: ml_collections.ConfigDict,
) -> faces_builder.ProceduralFaces | faces_builder.ProceduralFacePairs:
    """The prepared dataset of `builder_class`, its files' sizes checked against its listing
    (`prepared_files`); a single process prepares it if needed."""
    config, data_dir = builder_config(data_config), _data_dir(data_config)
    builder = builder_class(config=config, data_dir=data_dir)
    if builder.is_prepared():
        prepared_files.check(builder.data_dir, hashes=False)
        return builder
    if jax.process_count() > 1:
        raise RuntimeError(
            f"the procedural faces are not prepared in {data_dir}: call "
            "ensure_prepared(data_config) in every process first"
        )
    ensure_prepared(data_config)
    return builder_class(config=config, data_dir=data_dir)


def load_split_arrays(data_config: ml_collections.ConfigDict, split: str) -> dict[str, np.ndarray]:
    """Every record of a split as NumPy arrays, in stored order (identity by identity; pairs fold
    by fold). A single process prepares the data if needed; several must `ensure_prepared` first.

    "train" and "heldout" give image uint8 [N, H, W, 3], label, identity and image_index int32
    [N]; "pairs" gives image_a, image_b, is_same (bool), fold, identity_a, identity_b,
    image_index_a and image_index_b.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    is_pairs = split == "pairs"
    builder = _prepared(
        faces_builder.ProceduralFacePairs if is_pairs else faces_builder.ProceduralFaces,
        data_config,
    )
    source = builder.as_data_source(split)
    records = source.__getitems__(range(len(source)))
    features = builder.info.features
    return {
        key: np.asarray([record[key] for record in records], features[key].np_dtype)
        for key in features
    }


def first_images_of_labels(
    data_config: ml_collections.ConfigDict, labels: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """The first training image of each of `labels`, as the model sees it: float32 [R, H, W, 3]
    in [-1, 1], and the labels, int32 [R]. The procedural faces, RecordIO and TFDS sources
    locate an identity's images directly; identity folders are scanned in stored order until
    every label is found."""
    labels = np.asarray(labels, np.int32)
    num_identities = num_train_identities(data_config)
    if labels.ndim != 1 or np.any((labels < 0) | (labels >= num_identities)):
        raise ValueError(
            f"labels must be a 1-D sequence in [0, {num_identities}) (the training identities), "
            f"got {labels.tolist()}"
        )
    records = _all_training_records(data_config)  # a label's first record is always kept
    if data_config.source == "procedural":  # stored identity by identity
        indices = labels * data_config.images_per_train_identity
    elif data_config.source == "recordio":
        reader = records.reader
        first_keys = reader.identity_ranges[labels, 0]
        indices = np.searchsorted(reader.image_keys, first_keys)
    elif data_config.source == "tfds":
        indices = records.first_index_of_labels(labels)
    else:
        first_index = {}
        for index in range(len(records)):
            first_index.setdefault(int(records[index]["label"]), index)
            if all(int(label) in first_index for label in labels):
                break
        indices = [first_index[int(label)] for label in labels]
    images = [to_model_range(np.asarray(records[int(index)]["image"])) for index in indices]
    return np.stack(images), labels


class _RandomHorizontalFlip(grain.transforms.RandomMap):
    """Mirrors the image with probability 1/2."""

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        if rng.random() < 0.5:
            element = {**element, "image": element["image"][:, ::-1]}
        return element


class _RandomShift(grain.transforms.RandomMap):
    """Translates the image by (dy, dx), each uniform in [-max_shift, max_shift] pixels: the crop
    of the edge-padded image at offset (max_shift + dy, max_shift + dx)."""

    def __init__(self, max_shift: int):
        self.max_shift = max_shift

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        image, shift = element["image"], self.max_shift
        height, width = image.shape[:2]
        top, left = rng.integers(0, 2 * shift + 1, size=2)
        padded = np.pad(image, ((shift, shift), (shift, shift), (0, 0)), mode="edge")
        return {**element, "image": padded[top : top + height, left : left + width]}


class _RandomColorJitter(grain.transforms.RandomMap):
    """Brightness, contrast and saturation jitter (torchvision's ColorJitter without hue, in a
    fixed order), each factor uniform in [1 - strength, 1 + strength], on x = image / 255:
    x <- b x;  x <- c (x - mean(luma(x))) + mean(luma(x));  x <- s (x - luma(x)) + luma(x),
    each step clipped to [0, 1], then rounded back to uint8."""

    def __init__(self, strength: float):
        self.strength = strength

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        brightness, contrast, saturation = rng.uniform(
            max(0.0, 1.0 - self.strength), 1.0 + self.strength, size=3
        )
        x = np.clip(element["image"].astype(np.float32) / 255.0 * brightness, 0.0, 1.0)
        mean = np.mean(x @ LUMA_WEIGHTS)
        x = np.clip(contrast * (x - mean) + mean, 0.0, 1.0)
        luma = (x @ LUMA_WEIGHTS)[..., None]
        x = np.clip(saturation * (x - luma) + luma, 0.0, 1.0)
        return {**element, "image": np.round(x * 255.0).astype(np.uint8)}


class _ToModelInputs(grain.transforms.Map):
    """Keeps the image, scaled to [-1, 1], and the label, as int32."""

    def map(self, element: dict) -> dict:
        return {"image": to_model_range(element["image"]), "label": np.int32(element["label"])}


class _GlobalBatchRows:
    """A grain sampler over this process's rows of each global batch.

    The global order is that of an IndexSampler over `num_records` records shuffled from
    `seed`, reshuffled every epoch, endless: the same whatever the number of processes. With
    W = max(worker_count, 1) grain workers, the k-th batch a process emits comes from worker
    w = k % W, whose batches hold every W-th local index starting at w; of global batch k (what
    one process with W workers emits k-th), process p of P takes rows [p * b, (p + 1) * b),
    b = B / P. So local index w + W * (q * b + j) is global index w + W * (q * B + p * b + j):
    the identity when P = 1. Each record keeps its global index in its metadata, hence random
    augmentations that follow its position (a `RandomMap` draws from Philox(seed + index)).
    """

    def __init__(
        self,
        *,
        num_records: int,
        seed: int,
        global_batch_size: int,
        process_index: int,
        process_count: int,
        worker_count: int,
    ):
        self._global = grain.samplers.IndexSampler(
            num_records=num_records, shuffle=True, num_epochs=None, seed=seed
        )
        self._global_batch_size = global_batch_size
        self._rows = global_batch_size // process_count
        self._process_index, self._process_count = process_index, process_count
        self._workers = max(worker_count, 1)
        if process_count == 1:
            # Grain validates a restored iterator state by the sampler's repr. One process reads
            # record for record what the IndexSampler of ShardByJaxProcess read before this class
            # existed, and keeps its repr, so that the checkpoints written then still resume.
            self._repr = (
                f"IndexSampler(num_records={num_records}, shard_options=ShardByJaxProcess("
                "shard_index=0, shard_count=1, drop_remainder=True), shuffle=True, "
                f"num_epochs=None, seed={seed})"
            )
        else:
            self._repr = (
                f"GlobalBatchRows(num_records={num_records}, seed={seed}, "
                f"global_batch_size={global_batch_size}, process_index={process_index}, "
                f"process_count={process_count}, worker_count={worker_count})"
            )

    def __len__(self) -> int:
        return len(self._global) // self._process_count

    def __repr__(self) -> str:
        return self._repr

    def global_index(self, index: int) -> int:
        worker, position = index % self._workers, index // self._workers
        batch, row = divmod(position, self._rows)
        return worker + self._workers * (
            batch * self._global_batch_size + self._process_index * self._rows + row
        )

    def __getitem__(self, index: int) -> grain.RecordMetadata:
        if index < 0:
            raise IndexError(f"negative sampler index {index}")
        return self._global[self.global_index(index)]


def make_train_iterator(
    data_config: ml_collections.ConfigDict, *, global_batch_size: int, seed: int
) -> grain.DataLoaderIterator:
    """An endless iterator of training batches {"image": float32 [B, H, W, 3] in [-1, 1],
    "label": int32 [B]}, with B = global_batch_size / jax.process_count() for this process.

    The global batches do not depend on the number of processes: one order of the records,
    reshuffled every epoch from `seed`, cut into global batches; process p of P gets rows
    [p * B, (p + 1) * B) of each, and reads and decodes only those records. Each record is
    optionally mirrored at random (`horizontal_flip`), translated by up to `max_shift` pixels in
    each direction and colour-jittered by `color_jitter` (each absent or 0: never), with draws
    that depend on its position in the global order, not on the process. The batches are a
    function of (seed, worker_count): grain batches within each worker, so 0 and 1 workers agree
    but more workers group the records differently. Workers are processes and need absl flags
    parsed (as under `absl.app.run`). The iterator's position is `get_state()` /
    `set_state()`, or `grain.checkpoint.CheckpointSave(iterator)` in an Orbax CheckpointManager
    (one state per process: resume with the same number of processes). A single process
    prepares the data if needed; several must `ensure_prepared` first.
    """
    return _train_iterator(
        data_config,
        global_batch_size=global_batch_size,
        seed=seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def _train_iterator(
    data_config: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
) -> grain.DataLoaderIterator:
    """`make_train_iterator` as process `process_index` of `process_count` reads it."""
    if (
        isinstance(global_batch_size, bool)
        or not isinstance(global_batch_size, int)
        or global_batch_size < 1
    ):
        raise ValueError(f"global_batch_size must be a positive integer, got {global_batch_size!r}")
    if global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size ({global_batch_size}) must be divisible by the number of "
            f"processes ({process_count})"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    source = training_records(data_config)
    sampler = _GlobalBatchRows(
        num_records=len(source),
        seed=seed,
        global_batch_size=global_batch_size,
        process_index=process_index,
        process_count=process_count,
        worker_count=data_config.worker_count,
    )
    operations = [_RandomHorizontalFlip()] if data_config.horizontal_flip else []
    max_shift = data_config.get("max_shift", 0)  # configs saved before the field existed
    if max_shift:
        operations.append(_RandomShift(max_shift))
    if data_config.get("color_jitter", 0.0):  # set for the recognisers (config.recognizer)
        operations.append(_RandomColorJitter(data_config.color_jitter))
    operations += [
        _ToModelInputs(),
        grain.transforms.Batch(global_batch_size // process_count, drop_remainder=True),
    ]
    loader = grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=operations,
        worker_count=data_config.worker_count,
        shard_options=grain.sharding.NoSharding(),
    )
    return iter(loader)
