"""The files of a generated face dataset, written shard by shard in up to three formats.

A dataset has C identities (labels 0 .. C - 1) of R x R RGB images, each encoded once by
`encode_image` (PNG or JPEG) and stored as those very bytes in every format. It is written as
N = `shard_count(C, P)` = ceil(C / P) shards of P identities (the last one may hold fewer);
shard s holds the labels `shard_labels(s, P, C)` = [s * P, min((s + 1) * P, C)), its images
sorted by (label, image_index). The protocol:

1. `write_shard` writes every file of one shard under a fresh staging directory, at its final
   path relative to the output directory OUT; shards are written independently, by any worker.
   When OUT is on an object store (a `gs://` URL, `core.paths`), there is no staging directory
   and no rename: the shard's files are written straight to OUT, each in one upload, replacing
   an earlier attempt's objects.
2. The caller moves the staged files to OUT at the same relative paths (local OUT only).
3. Once every shard is in OUT, `finalize` writes the dataset-level files, reading only the shard
   files; running it again gives the same bytes. Locally each file is written to a temporary
   name beside it, then renamed over it; on an object store it is written to a local temporary
   file, then uploaded in one write, so a reader never sees a partial object either way.
4. Once the caller has recorded finalize's files, `remove_shard_fragments` deletes the shard
   files that only finalize reads (the RecordIO fragments); deleting them again is harmless.

The ArrayRecord files are written and read by ArrayRecord's own (local) file layer, so on an
object store they pass through a local temporary file (a shard's file on writing, each shard's
file while finalize counts its records).

Layouts, relative to OUT (s: 5-digit shard, N: 5-digit shard count, ext: png or jpg):

- "folders": `images/id_{label:06d}/{image_index:03d}.{ext}` (`folder_image_path`) holding the
  encoded bytes, so that sorted folder names are label order (`identity_folder_name`); image
  indices above 999 are refused, as their names would not sort. Written by write_shard only; an
  identity without images has no folder. `sources.image_folders.prepare_image_folder` numbers the
  folders that have images 0 .. K - 1 in that order: the generated label when no identity is
  empty, and in any case the folder's name.
- "tfds": a TFDS dataset in `tfds/generated_faces/1.0.0/` (`TFDS_DIR`), split `train`, one
  ArrayRecord file per shard, `generated_faces-train.array_record-{s}-of-{N}` (TFDS's default
  file name template), from write_shard; `dataset_info.json` and `features.json` (shard lengths,
  file format) from finalize, by TFDS's DatasetInfo. Features: `image` (Image, shape (R, R, 3),
  the encoded bytes, encoding_format png or jpeg), `label` (ClassLabel, C classes), `image_index`
  (int32). Records are tf.train.Example protos serialized deterministically, one per ArrayRecord
  chunk, uncompressed (as PNG and JPEG do not compress further). It loads with
  `tfds.builder_from_directory(OUT/tfds/generated_faces/1.0.0)` and by name,
  `tfds.data_source("generated_faces", data_dir=OUT/tfds)` (hence `data.tfds_source`).
- "recordio": InsightFace RecordIO, `recordio/train.rec` + `recordio/train.idx`, in the layout of
  `sources.recordio` (whose functions frame and pack every record): key 0 the header record (flag
  2, labels (M + 1, M + 1 + C) for M images); keys 1 .. M the images in (label, image_index)
  order, flag 0, label = the label as a float, id = label, id2 = image_index; keys M + 1 ..
  M + C the identity records of labels 0 .. C - 1 (flag 2, labels (start_key, end_key), the
  half-open key range of that identity's images, empty for an identity without images; id =
  label, id2 = 0); the index lists keys 0 .. M + C in file order. write_shard writes the shard's
  image records as a fragment, `recordio/shards/shard_{s}.rec` + `.idx` (keys 0 .. n - 1, offsets
  within the fragment); finalize streams the header record, every fragment's bytes (RecordIO
  framing does not depend on a record's position) and the identity records into train.rec, and
  writes train.idx. Every key and label is stored exactly only up to 2**24 (float32), the
  largest end key accepted.

The same arguments give the same bytes (for one version of Pillow, zlib, libjpeg, protobuf and
array_record). Bad arguments raise ValueError naming the value.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from array_record.python import array_record_module
from tensorflow_datasets.core import example_serializer

from diffusion_jax.core import paths
from diffusion_jax.tasks.data.sources import image_decoding, recordio

FORMATS = ("folders", "tfds", "recordio")
IMAGE_FORMATS = ("png", "jpeg")
TFDS_NAME = "generated_faces"
TFDS_VERSION = "1.0.0"
TFDS_SPLIT = "train"
FOLDERS_DIR = "images"
TFDS_DIR = f"tfds/{TFDS_NAME}/{TFDS_VERSION}"
RECORDIO_REC = "recordio/train.rec"
RECORDIO_IDX = "recordio/train.idx"
FRAGMENT_DIR = "recordio/shards"

_FILE_EXTENSIONS = {"png": "png", "jpeg": "jpg"}
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG"}
# The 3-digit file names of "folders" sort in image_index order only below 1000.
_MAX_FOLDER_IMAGE_INDEX = 999
# One record per chunk (random access, as TFDS writes them), stored as is, by one thread.
_ARRAY_RECORD_OPTIONS = "group_size:1,uncompressed,max_parallelism:1"
# InsightFace stores keys as float32 labels: integers are exact up to 2**24.
_MAX_RECORDIO_KEY = 2**24
_FRAGMENT_NAME = re.compile(r"shard_\d{5,}\.(rec|idx)")
_PARTIAL_SUFFIX = ".partial"


class ShardImage(NamedTuple):
    """One image of a shard: its identity label, its index within the identity, and its bytes
    as `encode_image` gives them."""

    label: int
    image_index: int
    encoded: bytes


def identity_folder_name(label: int) -> str:
    """The "folders" directory of identity `label`: `id_{label:06d}`."""
    return f"id_{label:06d}"


def folder_image_path(label: int, image_index: int, image_format: str) -> str:
    """The "folders" file of an image, relative to the output directory."""
    _check_image_format(image_format)
    return (
        f"{FOLDERS_DIR}/{identity_folder_name(label)}/{image_index:03d}."
        f"{_FILE_EXTENSIONS[image_format]}"
    )


def shard_count(num_identities: int, identities_per_shard: int) -> int:
    """The number of shards: ceil(num_identities / identities_per_shard)."""
    _check_integer("num_identities", num_identities, minimum=1)
    _check_integer("identities_per_shard", identities_per_shard, minimum=1)
    return -(-num_identities // identities_per_shard)


def shard_labels(shard: int, identities_per_shard: int, num_identities: int) -> range:
    """The labels of shard `shard`: [shard * P, min((shard + 1) * P, num_identities)) for
    P = identities_per_shard."""
    _check_shard(shard, shard_count(num_identities, identities_per_shard))
    start = shard * identities_per_shard
    return range(start, min(start + identities_per_shard, num_identities))


def encode_image(pixels: np.ndarray, image_format: str = "png", jpeg_quality: int = 95) -> bytes:
    """The bytes of a uint8 RGB image [H, W, 3] as PNG (lossless, Pillow's default level) or
    JPEG (baseline, 4:2:0 chroma subsampling, `jpeg_quality` 1 .. 100), without metadata; the
    same pixels always give the same bytes."""
    _check_image_format(image_format)
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(
            f"pixels must be uint8 [H, W, 3], got {pixels.dtype} of shape {pixels.shape}"
        )
    pixels = np.ascontiguousarray(pixels)
    if image_format == "png":
        return image_decoding.encode_png(pixels)
    _check_integer("jpeg_quality", jpeg_quality, minimum=1)
    if jpeg_quality > 100:
        raise ValueError(f"jpeg_quality must be in [1, 100], got {jpeg_quality!r}")
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(
        buffer,
        format="JPEG",
        quality=int(jpeg_quality),
        subsampling="4:2:0",
        optimize=False,
        progressive=False,
    )
    return buffer.getvalue()


def write_shard(
    *,
    formats: Sequence[str],
    staging_dir: str | os.PathLike,
    shard: int,
    num_shards: int,
    identities_per_shard: int,
    num_identities: int,
    image_format: str,
    resolution: int,
    images: Iterable[ShardImage],
) -> list[str]:
    """Writes shard `shard` of the dataset in `formats` under `staging_dir` (an existing empty
    local directory, or the output directory itself when it is an object-store URL), each file
    at its final path relative to the output directory (module doc).

    `num_shards` must be `shard_count(num_identities, identities_per_shard)`. `images` are the
    shard's images, sorted by (label, image_index) without repeats, their labels in
    `shard_labels(shard, identities_per_shard, num_identities)`, each encoded as `image_format`
    at resolution x resolution. Everything is checked before anything is written.

    Returns: the sorted relative paths of the files written.
    """
    formats = _check_formats(formats)
    _check_dataset(num_shards, num_identities, image_format, resolution)
    expected_shards = shard_count(num_identities, identities_per_shard)
    if num_shards != expected_shards:
        raise ValueError(
            f"num_shards must be ceil(num_identities / identities_per_shard) = "
            f"ceil({num_identities} / {identities_per_shard}) = {expected_shards}, "
            f"got {num_shards}"
        )
    labels = shard_labels(shard, identities_per_shard, num_identities)
    images = _checked_images(
        images, shard, labels, image_format, resolution, as_folders="folders" in formats
    )
    staging_dir = os.fspath(staging_dir)
    if not paths.is_url(staging_dir) and (
        not paths.Path(staging_dir).is_dir() or paths.is_nonempty_dir(staging_dir)
    ):
        raise ValueError(f"staging_dir must be an existing empty directory, got {staging_dir!r}")
    shard_writers = {
        "folders": _write_folders,
        "tfds": _write_tfds_shard,
        "recordio": _write_recordio_fragment,
    }
    spec = _Shard(shard, num_shards, num_identities, image_format, resolution)
    written = []
    for name in formats:
        written += shard_writers[name](staging_dir, spec, images)
    return sorted(written)


def finalize(
    *,
    formats: Sequence[str],
    out_dir: str | os.PathLike,
    num_shards: int,
    num_identities: int,
    image_format: str,
    resolution: int,
    shard_lengths: Sequence[int],
) -> list[str]:
    """Writes the dataset-level files of `formats` in `out_dir` once every shard's files are
    there (module doc), `shard_lengths` being the number of images of each shard. Each file is
    written to a temporary name in its directory and renamed over its final name, so a reader
    never sees a partial file; an interrupted run may be repeated and gives the same bytes.

    Raises ValueError when a shard's file is missing (naming it) or disagrees with its length.
    Returns: the sorted relative paths of the files written ([] for "folders" alone).
    """
    formats = _check_formats(formats)
    _check_dataset(num_shards, num_identities, image_format, resolution)
    shard_lengths = list(shard_lengths)
    if len(shard_lengths) != num_shards:
        raise ValueError(
            f"shard_lengths must have num_shards = {num_shards} entries, got {len(shard_lengths)}"
        )
    for shard, length in enumerate(shard_lengths):
        _check_integer(f"shard_lengths[{shard}]", length, minimum=0)
    out_dir = os.fspath(out_dir)
    written = []
    if "tfds" in formats:
        written += _finalize_tfds(out_dir, num_identities, image_format, resolution, shard_lengths)
    if "recordio" in formats:
        written += _finalize_recordio(out_dir, num_identities, shard_lengths)
    return sorted(written)


def remove_shard_fragments(formats: Sequence[str], out_dir: str | os.PathLike) -> list[str]:
    """Deletes the shard files of `formats` that only `finalize` reads (the RecordIO fragments
    `recordio/shards/shard_*.rec|idx`, and their directory once empty): call it after recording
    finalize's files, as finalize cannot run again without them. Other files are left alone.

    Returns: the sorted relative paths deleted ([] when there are none).
    """
    formats = _check_formats(formats)
    fragment_dir = paths.Path(out_dir) / FRAGMENT_DIR
    if "recordio" not in formats or not fragment_dir.is_dir():
        return []
    names = sorted(
        path.name for path in fragment_dir.iterdir() if _FRAGMENT_NAME.fullmatch(path.name)
    )
    for name in names:
        # missing_ok: on an object store, a concurrent finalizer may delete them too.
        (fragment_dir / name).unlink(missing_ok=True)
    # An object store has no directories to remove; locally, only an empty one is removed.
    if not paths.is_url(fragment_dir) and not os.listdir(fragment_dir):
        os.rmdir(fragment_dir)
    return [f"{FRAGMENT_DIR}/{name}" for name in names]


# Arguments.


def _check_integer(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_shard(shard: int, num_shards: int) -> None:
    _check_integer("num_shards", num_shards, minimum=1)
    _check_integer("shard", shard, minimum=0)
    if shard >= num_shards:
        raise ValueError(f"shard must be < num_shards = {num_shards}, got {shard}")


def _check_image_format(image_format: str) -> None:
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")


def _check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    if isinstance(formats, str):
        raise ValueError(
            f"formats must be a sequence of names from {FORMATS}, got the string {formats!r}"
        )
    formats = tuple(formats)
    if not formats:
        raise ValueError(f"formats must name at least one of {FORMATS}, got none")
    for name in formats:
        if name not in FORMATS:
            raise ValueError(f"unknown format {name!r} in formats: expected names from {FORMATS}")
        if formats.count(name) > 1:
            raise ValueError(f"format {name!r} is repeated in formats {formats}")
    return formats


def _check_dataset(num_shards: int, num_identities: int, image_format: str, resolution: int):
    _check_integer("num_shards", num_shards, minimum=1)
    _check_integer("num_identities", num_identities, minimum=1)
    _check_image_format(image_format)
    _check_integer("resolution", resolution, minimum=1)


def _checked_images(
    images: Iterable[ShardImage],
    shard: int,
    labels: range,
    image_format: str,
    resolution: int,
    *,
    as_folders: bool,
) -> list[ShardImage]:
    """The images, their label and image_index as Python ints, after refusing images out of
    order, outside the shard's labels, or not encoded as image_format at resolution x resolution
    RGB (read from the header; no pixel is decoded)."""
    checked, previous = [], None
    for position, image in enumerate(images):
        if not isinstance(image, ShardImage):
            raise ValueError(f"images[{position}] must be a ShardImage, got {type(image).__name__}")
        _check_integer(f"images[{position}].label", image.label, minimum=0)
        _check_integer(f"images[{position}].image_index", image.image_index, minimum=0)
        where = f"image (label {image.label}, image_index {image.image_index})"
        if not labels.start <= image.label < labels.stop:
            raise ValueError(
                f"{where}: label outside shard {shard}'s labels [{labels.start}, {labels.stop})"
            )
        if as_folders and image.image_index > _MAX_FOLDER_IMAGE_INDEX:
            raise ValueError(
                f"{where}: the 'folders' format names images by 3 digits, so "
                f"image_index must be <= {_MAX_FOLDER_IMAGE_INDEX}"
            )
        key = (image.label, image.image_index)
        if previous is not None and key <= previous:
            raise ValueError(
                f"images must be sorted by (label, image_index) without repeats: "
                f"{where} follows (label {previous[0]}, image_index {previous[1]})"
            )
        previous = key
        _check_encoded(image.encoded, where, image_format, resolution)
        checked.append(ShardImage(int(image.label), int(image.image_index), image.encoded))
    return checked


def _check_encoded(encoded: bytes, where: str, image_format: str, resolution: int) -> None:
    if not isinstance(encoded, bytes):
        raise ValueError(f"{where}: encoded must be bytes, got {type(encoded).__name__}")
    try:
        with PIL.Image.open(io.BytesIO(encoded), formats=[_PIL_FORMATS[image_format]]) as opened:
            size, mode = opened.size, opened.mode
    except (PIL.UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ValueError(f"{where}: encoded is not a {image_format} image") from None
    if size != (resolution, resolution) or mode != "RGB":
        raise ValueError(
            f"{where}: encoded image is {size[0]}x{size[1]} {mode}, expected "
            f"{resolution}x{resolution} RGB for resolution {resolution}"
        )


# Shard files.


class _Shard(NamedTuple):
    """What every shard writer needs to know about the shard and the dataset."""

    shard: int
    num_shards: int
    num_identities: int
    image_format: str
    resolution: int


def _write_file(root: str, relative_path: str, data: bytes) -> None:
    """Writes a new local file (refusing to replace one), or an object in one upload."""
    path = paths.Path(root) / relative_path
    if paths.is_url(root):
        path.write_bytes(data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "xb") as file:  # local: exclusive creation ("x", which epath lacks)
        file.write(data)


@contextlib.contextmanager
def _local_file_for(path: str) -> Iterator[str]:
    """A local path to write `path` through, for writers that only write local files: `path`
    itself when local; for a URL a temporary local file, uploaded to `path` in one write once
    the block completes (nothing is uploaded when it raises)."""
    if not paths.is_url(path):
        yield path
        return
    with tempfile.TemporaryDirectory() as directory:
        local = paths.Path(directory) / paths.Path(path).name
        yield os.fspath(local)
        paths.move(local, path)


@contextlib.contextmanager
def _local_copy_of(path: str) -> Iterator[str]:
    """A local path to read `path` through, for readers that only read local files: `path`
    itself when local; for a URL a temporary local copy."""
    if not paths.is_url(path):
        yield path
        return
    with tempfile.TemporaryDirectory() as directory:
        local = paths.Path(directory) / paths.Path(path).name
        paths.Path(path).copy(local)
        yield os.fspath(local)


def _write_folders(staging_dir: str, spec: _Shard, images: list[ShardImage]) -> list[str]:
    written = []
    for image in images:
        relative_path = folder_image_path(image.label, image.image_index, spec.image_format)
        _write_file(staging_dir, relative_path, image.encoded)
        written.append(relative_path)
    return written


def _tfds_features(
    num_identities: int, image_format: str, resolution: int
) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(
                shape=(resolution, resolution, 3), encoding_format=image_format
            ),
            "label": tfds.features.ClassLabel(num_classes=num_identities),
            "image_index": tfds.features.Scalar(np.int32),
        }
    )


def _tfds_file_template(dataset_dir: str) -> tfds.core.ShardedFileTemplate:
    return tfds.core.ShardedFileTemplate(
        data_dir=dataset_dir,
        dataset_name=TFDS_NAME,
        split=TFDS_SPLIT,
        filetype_suffix=tfds.core.FileFormat.ARRAY_RECORD.file_suffix,
    )


def _tfds_shard_file(dataset_dir: str, shard: int, num_shards: int) -> str:
    template = _tfds_file_template(dataset_dir)
    return os.fspath(template.sharded_filepath(shard_index=shard, num_shards=num_shards))


def _write_tfds_shard(staging_dir: str, spec: _Shard, images: list[ShardImage]) -> list[str]:
    features = _tfds_features(spec.num_identities, spec.image_format, spec.resolution)
    serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
    dataset_dir = os.fspath(paths.Path(staging_dir) / TFDS_DIR)
    path = _tfds_shard_file(dataset_dir, spec.shard, spec.num_shards)
    if not paths.is_url(path):
        paths.Path(path).parent.mkdir(parents=True, exist_ok=True)
    with _local_file_for(path) as local_path:
        writer = array_record_module.ArrayRecordWriter(local_path, _ARRAY_RECORD_OPTIONS)
        try:
            for image in images:
                example = features.encode_example(
                    {"image": image.encoded, "label": image.label, "image_index": image.image_index}
                )
                # deterministic=True: the proto's feature map in key order, whatever the runtime.
                writer.write(
                    serializer.get_tf_example(example).SerializeToString(deterministic=True)
                )
        finally:
            writer.close()
    return [f"{TFDS_DIR}/{paths.Path(path).name}"]


def _fragment_paths(shard: int) -> tuple[str, str]:
    """The relative (.rec, .idx) paths of shard's RecordIO fragment."""
    stem = f"{FRAGMENT_DIR}/shard_{shard:05d}"
    return f"{stem}.rec", f"{stem}.idx"


def _image_record(image: ShardImage) -> bytes:
    header = recordio.IRHeader(0, float(image.label), image.label, image.image_index)
    return recordio.frame_record(recordio.pack_record(header, image.encoded))


def _write_recordio_fragment(staging_dir: str, spec: _Shard, images: list[ShardImage]) -> list[str]:
    rec_path, idx_path = _fragment_paths(spec.shard)
    records, index_lines, offset = [], [], 0
    for key, image in enumerate(images):
        record = _image_record(image)
        records.append(record)
        index_lines.append(recordio.format_index_line(key, offset))
        offset += len(record)
    _write_file(staging_dir, rec_path, b"".join(records))
    _write_file(staging_dir, idx_path, "".join(index_lines).encode("ascii"))
    return [rec_path, idx_path]


# Dataset-level files.


def _partial_path(path: paths.PathLike) -> str:
    """The temporary name beside `path` that finalize writes `path` under before renaming it
    (local output only)."""
    path = paths.Path(path)
    return os.fspath(path.parent / f".{path.name}{_PARTIAL_SUFFIX}")


def _finalize_tfds(out_dir, num_identities, image_format, resolution, shard_lengths):
    """dataset_info.json and features.json, after checking every shard file's record count."""
    dataset_dir = os.fspath(paths.Path(out_dir) / TFDS_DIR)
    num_bytes = 0
    for shard, length in enumerate(shard_lengths):
        path = _tfds_shard_file(dataset_dir, shard, len(shard_lengths))
        if not paths.Path(path).is_file():
            raise ValueError(
                f"cannot finalize 'tfds': the file of shard {shard}, {path}, is missing"
            )
        with _local_copy_of(path) as local_path:
            reader = array_record_module.ArrayRecordReader(local_path)
            try:
                num_records = reader.num_records()
            finally:
                reader.close()
        if num_records != length:
            raise ValueError(
                f"cannot finalize 'tfds': {path} holds {num_records} records, "
                f"shard_lengths[{shard}] = {length}"
            )
        num_bytes += paths.Path(path).stat().length
    info = tfds.core.DatasetInfo(
        builder=tfds.core.DatasetIdentity(
            name=TFDS_NAME,
            version=tfds.core.Version(TFDS_VERSION),
            data_dir=dataset_dir,
            module_name="",
        ),
        description=(
            f"Generated faces: {num_identities} identities, {sum(shard_lengths)} "
            f"{resolution}x{resolution} {image_format} images sorted by (label, image_index); "
            "written by diffusion_jax.tasks.generation.dataset_writers."
        ),
        features=_tfds_features(num_identities, image_format, resolution),
        supervised_keys=("image", "label"),
        disable_shuffling=True,
    )
    info.set_file_format(tfds.core.FileFormat.ARRAY_RECORD)
    info.set_splits(
        tfds.core.SplitDict(
            [
                tfds.core.SplitInfo(
                    name=TFDS_SPLIT,
                    shard_lengths=shard_lengths,
                    num_bytes=num_bytes,
                    filename_template=_tfds_file_template(dataset_dir),
                )
            ]
        )
    )
    on_object_store = paths.is_url(dataset_dir)
    local_partial_dir = _partial_path(paths.Path(dataset_dir) / "metadata")
    with (
        tempfile.TemporaryDirectory()
        if on_object_store
        else contextlib.nullcontext(local_partial_dir)
    ) as partial_dir:
        partial_dir = paths.Path(partial_dir)
        if not on_object_store:
            paths.remove_tree(partial_dir)
            partial_dir.mkdir(parents=True)
        info.write_to_directory(partial_dir)
        # dataset_info.json last: TFDS takes a directory holding it for a prepared dataset.
        names = sorted(
            (path.name for path in partial_dir.iterdir()),
            key=lambda name: (name == "dataset_info.json", name),
        )
        for name in names:
            paths.move(partial_dir / name, paths.Path(dataset_dir) / name)
        if not on_object_store:
            partial_dir.rmdir()
    return [f"{TFDS_DIR}/{name}" for name in names]


@contextlib.contextmanager
def _fragment_bytes(rec_path: str) -> Iterator[bytes | mmap.mmap]:
    """The bytes of a non-empty fragment: mapped when local, read in one request from an object
    store."""
    if paths.is_url(rec_path):
        yield paths.Path(rec_path).read_bytes()
        return
    with (
        open(rec_path, "rb") as rec_file,
        mmap.mmap(rec_file.fileno(), 0, access=mmap.ACCESS_READ) as buffer,
    ):
        yield buffer


def _read_fragment(
    buffer: bytes | mmap.mmap, rec_path: str, idx_path: str, shard: int, length: int, labels: range
) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, labels) of the fragment's records, the file's bytes being `buffer`, after
    checking that its index lists keys 0 .. length - 1 at the offsets of consecutive records
    that fill the file, their labels sorted and within `labels` (those after the earlier shards'
    labels)."""
    keys, offsets = recordio.read_index(idx_path)
    if not np.array_equal(keys, np.arange(length)):
        raise ValueError(
            f"cannot finalize 'recordio': {idx_path} lists {keys.size} keys, "
            f"expected 0 .. {length - 1} (shard_lengths[{shard}] = {length})"
        )
    size = len(buffer)
    if length == 0 or size == 0:
        if length or size:
            raise ValueError(
                f"cannot finalize 'recordio': {rec_path} holds {size} bytes and its "
                f"index {length} records"
            )
        return offsets, np.zeros(0, np.int64)
    record_labels = np.empty(length, np.int64)
    end = 0
    for key, offset in enumerate(offsets.tolist()):
        try:
            if offset != end:
                raise ValueError(f"offset {offset}, expected {end} (the end of key {key - 1})")
            record, end = recordio.unframe_record(buffer, offset)
            header, _ = recordio.unpack_record(record)
        except ValueError as error:
            raise ValueError(f"cannot finalize 'recordio': {rec_path} key {key}: {error}") from None
        record_labels[key] = header.label
    if end != size:
        raise ValueError(
            f"cannot finalize 'recordio': {rec_path} holds {size - end} bytes after its last record"
        )
    if np.any(np.diff(record_labels) < 0) or not (
        labels.start <= record_labels[0] and record_labels[-1] < labels.stop
    ):
        raise ValueError(
            f"cannot finalize 'recordio': the labels of {rec_path} are not sorted "
            f"within [{labels.start}, {labels.stop}) (after the earlier shards')"
        )
    return offsets, record_labels


def _write_recordio(
    partial_rec: str,
    partial_idx: str,
    fragments: list[list[str]],
    num_identities: int,
    shard_lengths: list[int],
) -> None:
    """Streams the header record, the fragments' records (one shard at a time) and the identity
    records into partial_rec, and their index into partial_idx (both local files)."""
    first_identity_key = sum(shard_lengths) + 1
    end_identity_key = first_identity_key + num_identities
    counts = np.zeros(num_identities, np.int64)
    with (
        open(partial_rec, "wb") as rec_file,
        open(partial_idx, "w", encoding="ascii", newline="\n") as idx_file,
    ):

        def append(key: int, labels: list[int], record_id: int) -> None:
            header = recordio.IRHeader(2, np.asarray(labels, np.float32), record_id, 0)
            idx_file.write(recordio.format_index_line(key, rec_file.tell()))
            rec_file.write(recordio.frame_record(recordio.pack_record(header, b"")))

        append(recordio.DATASET_HEADER_KEY, [first_identity_key, end_identity_key], 0)
        key, next_label = 1, 0
        for shard, ((fragment_rec, fragment_idx), length) in enumerate(
            zip(fragments, shard_lengths)
        ):
            is_empty = paths.Path(fragment_rec).stat().length == 0  # mmap refuses empty files
            with (
                contextlib.nullcontext(b"") if is_empty else _fragment_bytes(fragment_rec)
            ) as buffer:
                offsets, labels = _read_fragment(
                    buffer,
                    fragment_rec,
                    fragment_idx,
                    shard,
                    length,
                    range(next_label, num_identities),
                )
                next_label = int(labels[-1]) + 1 if length else next_label
                counts += np.bincount(labels, minlength=num_identities)
                base = rec_file.tell()
                for offset in offsets.tolist():
                    idx_file.write(recordio.format_index_line(key, base + offset))
                    key += 1
                rec_file.write(buffer)
        starts = 1 + np.cumsum(counts) - counts
        for label, (start, count) in enumerate(zip(starts.tolist(), counts.tolist())):
            append(first_identity_key + label, [start, start + count], label)


def _finalize_recordio(out_dir: str, num_identities: int, shard_lengths: list[int]) -> list[str]:
    """train.rec and train.idx, each written under its temporary name (removed on failure) and
    renamed once both are complete; for an object store, written to local temporary files and
    then uploaded, train.rec first."""
    num_shards, num_images = len(shard_lengths), sum(shard_lengths)
    first_identity_key = num_images + 1
    end_identity_key = first_identity_key + num_identities
    if end_identity_key > _MAX_RECORDIO_KEY:
        raise ValueError(
            f"RecordIO stores keys as float32 labels, exact up to {_MAX_RECORDIO_KEY}:"
            f" {num_images} images and {num_identities} identities need "
            f"{end_identity_key}"
        )
    fragments = [
        [os.fspath(paths.Path(out_dir) / path) for path in _fragment_paths(shard)]
        for shard in range(num_shards)
    ]
    for shard, fragment in enumerate(fragments):
        for path in fragment:
            if not paths.Path(path).is_file():
                raise ValueError(
                    f"cannot finalize 'recordio': the fragment of shard {shard}, {path}, is missing"
                )
    rec_path, idx_path = (
        os.fspath(paths.Path(out_dir) / path) for path in (RECORDIO_REC, RECORDIO_IDX)
    )
    with contextlib.ExitStack() as stack:
        if paths.is_url(out_dir):
            local_dir = paths.Path(stack.enter_context(tempfile.TemporaryDirectory()))
            partial_rec, partial_idx = (
                os.fspath(local_dir / paths.Path(path).name) for path in (rec_path, idx_path)
            )
        else:
            partial_rec, partial_idx = _partial_path(rec_path), _partial_path(idx_path)
            paths.Path(partial_rec).parent.mkdir(parents=True, exist_ok=True)
        try:
            _write_recordio(partial_rec, partial_idx, fragments, num_identities, shard_lengths)
        except BaseException:
            for path in (partial_rec, partial_idx):
                paths.Path(path).unlink(missing_ok=True)
            raise
        paths.move(partial_rec, rec_path)
        paths.move(partial_idx, idx_path)
    return [RECORDIO_IDX, RECORDIO_REC]
