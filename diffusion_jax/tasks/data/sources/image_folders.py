"""A TFDS builder that prepares identity folders, `root/<identity>/<image>`, into ArrayRecord files.

This is how CASIA-WebFace, DigiFace-1M and VGGFace2 look once extracted. Preparation reads every
`.jpg`, `.jpeg`, `.png` and `.webp` file once, decodes it with `image_decoding.decode_image` at
the config's resolution and policy, and stores one split, `train`, identity by identity in
sorted order, with features:

- image: PNG, uint8 [R, R, 3];
- label: int32, contiguous 0 .. K - 1 over the identities (sorted by name, Python string order)
  that have at least one decodable image, so the same folder always gives the same labels;
- identity: the folder name; path: `<identity>/<file>`, relative to root.

Bad input is skipped, never fatal and never silent: an unreadable directory, a file outside an
identity folder or with another extension, a nested directory, an unreadable file, an entry
whose type cannot be read (a broken symbolic link, a link loop, no permission to stat it), a
FIFO, socket or device, a folder or file name that is not valid UTF-8 (it would be stored as the
identity or path; shown with `\\xNN` escapes), any `ImageDecodeError` (zero bytes, not an image,
truncated or corrupt, too many pixels) and an identity left without images. Each is logged and
listed with its reason in `preparation_report.json`; with `strict=True` the first one raises a
`BadInputError` instead, naming the file. A root that cannot be listed is a `BadInputError`.

Beside the ArrayRecord files, in the builder's versioned data dir, lie `identity_labels.json`
({identity: label}), `preparation_report.json` and `prepared_files.json`, the listing of the
prepared files that a reuse checks them against (`prepared_files`). TFDS prepares into a
temporary `incomplete.*` dir and renames it only once everything is written, so an interrupted
preparation leaves no dataset that loads; the next preparation removes what a killed one left
(`prepared_files`). The config name encodes the root's path (a hash), the
resolution, the policy and max_pixels: any other setting prepares anew. It does not see a change
of the folder's contents; prepare such a folder into another data_dir.

Prepared datasets load without this module: `tfds.builder_from_directory(builder.data_dir)`.

Both root and data_dir may be local or `gs://` URLs (`core.paths`; TFDS writes data_dir through
epath). A local root is listed with `os.scandir`; a root on an object store with epath's
`iterdir`, one listing per identity and a request per entry to tell folders from files.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import hashlib
import itertools
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from diffusion_jax.core import paths
from diffusion_jax.core.bad_input import BadInputError
from diffusion_jax.tasks.data.sources import (
    image_decoding,
    prepared_files,
    prepared_records,
    record_label_cache,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
LABELS_FILENAME = "identity_labels.json"
REPORT_FILENAME = "preparation_report.json"
SPLIT = "train"
# Files decoded ahead of the TFDS writer, per thread: bounds the memory held by finished PNGs.
_PREFETCH_PER_THREAD = 4


@dataclasses.dataclass(kw_only=True)
class ImageFolderConfig(tfds.core.BuilderConfig):
    """Where the identity folders are and how their images are decoded; the name encodes it all.

    `root` is made absolute (a URL is kept as given); the name is
    `<root's basename>-<hash of root>_r<resolution>_<policy>_max<max_pixels>`.
    """

    name: str = ""
    version: str = "1.0.0"
    root: str = ""
    resolution: int = 112
    policy: str = "resize"
    max_pixels: int = image_decoding.DEFAULT_MAX_PIXELS

    def __post_init__(self):
        for field in ("resolution", "max_pixels"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        if self.policy not in image_decoding.POLICIES:
            raise ValueError(
                f"policy must be one of {image_decoding.POLICIES}, got {self.policy!r}"
            )
        if not self.root:
            raise ValueError("root must name the directory of identity folders, got ''")
        self.root = str(paths.resolve(self.root))
        root_hash = hashlib.sha256(self.root.encode()).hexdigest()[:12]
        slug = re.sub(r"[^A-Za-z0-9]+", "_", paths.Path(self.root).name) or "root"
        self.name = self.name or (
            f"{slug}-{root_hash}_r{self.resolution}_{self.policy}_max{self.max_pixels}"
        )


class _SkipLog:
    """The inputs a preparation leaves out: each logged and recorded, or raised when strict."""

    def __init__(self, root: str, strict: bool):
        self.root = root
        self.strict = strict
        self.entries: list[dict[str, str]] = []

    def skip(self, path: str, kind: str, reason: str) -> None:
        """Records `path` (relative to root, as `_shown` gives it) as skipped for `reason`,
        classified by `kind`."""
        where = paths.Path(self.root) / path
        if self.strict:
            raise BadInputError(where, f"{reason} (strict preparation refuses what it would skip)")
        logging.warning("Skipping %s: %s", where, reason)
        self.entries.append({"path": path, "kind": kind, "reason": reason})

    def report(self, num_examples: int, num_identities: int) -> dict[str, Any]:
        return {
            "root": self.root,
            "num_examples": num_examples,
            "num_identities": num_identities,
            "num_skipped": len(self.entries),
            "skipped_by_kind": dict(collections.Counter(entry["kind"] for entry in self.entries)),
            "skipped": self.entries,
        }


class _Entry(NamedTuple):
    """A directory entry: its name and full path, and its type, following symbolic links:
    "directory", "file" (a regular file; any object on an object store), "special" (a FIFO,
    socket or device) or "unreadable" (a broken link, a link loop, no permission to stat it),
    with `problem` saying why."""

    name: str
    path: str
    type: str
    problem: str = ""


def _local_entry(entry: os.DirEntry) -> _Entry:
    try:
        if entry.is_dir():
            return _Entry(entry.name, entry.path, "directory")
        if entry.is_file():
            return _Entry(entry.name, entry.path, "file")
        entry.stat()  # neither: a special file, or a link whose target cannot be reached
        return _Entry(entry.name, entry.path, "special")
    except OSError as error:
        return _Entry(entry.name, entry.path, "unreadable", f"cannot read its type: {error}")


def _remote_entry(entry: paths.Path) -> _Entry:
    try:
        return _Entry(entry.name, str(entry), "directory" if entry.is_dir() else "file")
    except OSError as error:
        return _Entry(entry.name, str(entry), "unreadable", f"cannot read its type: {error}")


def _sorted_entries(path: str) -> list[_Entry]:
    """The entries of directory `path`, sorted by name (local: `os.scandir`; object store:
    epath's `iterdir`). Raises OSError if `path` cannot be listed, never for an entry."""
    if paths.is_url(path):
        entries = [_remote_entry(entry) for entry in paths.Path(path).iterdir()]
    else:
        with os.scandir(path) as scanned:
            entries = [_local_entry(entry) for entry in scanned]
    return sorted(entries, key=lambda entry: entry.name)


def _shown(name: str) -> str:
    """`name` as it can be stored and printed: bytes that are not UTF-8 (which `os` gives as
    lone surrogates) become `\\xNN`."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _list_image_files(root: str, skips: _SkipLog) -> list[str]:
    """Relative paths `<identity>/<file>` of the candidate images, identity by identity, both in
    sorted order; everything else under root is skipped."""
    try:
        identities = _sorted_entries(root)
    except OSError as error:
        raise BadInputError(root, f"cannot list the identity folders: {error}") from error
    found = []
    for identity in identities:
        name = _shown(identity.name)
        if name != identity.name:
            # A lossy stand-in for the name could collide with another folder's name.
            skips.skip(name, "undecodable_name", "the name is not valid UTF-8")
            continue
        if identity.type == "unreadable":
            skips.skip(name, "unreadable_directory", identity.problem)
            continue
        if identity.type != "directory":
            skips.skip(name, "unsupported_file", "a file outside any identity folder")
            continue
        try:
            entries = _sorted_entries(identity.path)
        except OSError as error:
            skips.skip(name, "unreadable_directory", f"cannot list directory: {error}")
            continue
        images = []
        for entry in entries:
            path = f"{name}/{_shown(entry.name)}"
            if path != f"{name}/{entry.name}":
                skips.skip(path, "undecodable_name", "the name is not valid UTF-8")
            elif entry.type == "unreadable":
                skips.skip(path, "unreadable_file", entry.problem)
            elif entry.type == "directory":
                skips.skip(path, "unsupported_file", "a nested directory (not read)")
            elif entry.type == "special":
                skips.skip(
                    path, "unsupported_file", "not a regular file (a FIFO, socket or device)"
                )
            elif not entry.name.lower().endswith(IMAGE_EXTENSIONS):
                skips.skip(path, "unsupported_file", f"extension not one of {IMAGE_EXTENSIONS}")
            else:
                images.append(path)
        if not images:
            skips.skip(name, "empty_identity", "no image files")
        found += images
    return found


class _Skipped(NamedTuple):
    kind: str
    reason: str


def _encode_file(config: ImageFolderConfig, path: str) -> bytes | _Skipped:
    """PNG of the decoded image at `path` (relative to root), or why it is skipped: returned
    rather than raised, so that one bad file leaves the thread pool's other results intact."""
    full_path = str(paths.Path(config.root) / path)
    try:
        data = paths.Path(full_path).read_bytes()
    except OSError as error:
        return _Skipped("unreadable_file", f"cannot read: {error}")
    try:
        image = image_decoding.decode_image(
            data,
            resolution=config.resolution,
            policy=config.policy,
            max_pixels=config.max_pixels,
            source=full_path,
        )
    except image_decoding.ImageDecodeError as error:
        return _Skipped(error.kind, error.reason)
    return image_decoding.encode_png(image)


def _ordered_thread_map(
    function: Callable[[str], Any], items: Iterable[str], num_threads: int
) -> Iterator[Any]:
    """function(item) for each item, in order, computed by `num_threads` threads (PIL releases
    the GIL while decoding and encoding) at most `_PREFETCH_PER_THREAD * num_threads` ahead."""
    with concurrent.futures.ThreadPoolExecutor(num_threads) as executor:
        pending = collections.deque()
        for item in items:
            pending.append(executor.submit(function, item))
            if len(pending) >= _PREFETCH_PER_THREAD * num_threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _write_json(path: paths.Path, value: Any) -> None:
    paths.Path(path).write_text(json.dumps(value, indent=1, ensure_ascii=False), encoding="utf-8")


class IdentityFolders(prepared_files.ListedPreparation, tfds.core.GeneratorBasedBuilder):
    """Images of `root/<identity>/<image>` labelled by identity: split `train` (module doc)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def __init__(
        self,
        *,
        config: ImageFolderConfig,
        strict: bool = False,
        num_threads: int = min(8, os.cpu_count() or 1),
        file_format="array_record",
        **kwargs,
    ):
        """`strict` turns every skip into an error; `num_threads` decode in parallel."""
        if not isinstance(config, ImageFolderConfig):
            raise ValueError(f"config must be an ImageFolderConfig, got {config!r}")
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be a positive integer, got {num_threads!r}")
        self._strict = strict
        self._num_threads = num_threads
        super().__init__(config=config, file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        resolution = self.builder_config.resolution
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                f"Identity folders under {self.builder_config.root}, decoded by the "
                f"{self.builder_config.policy!r} policy of "
                "diffusion_jax.tasks.data.sources.image_decoding; "
                f"labels in {LABELS_FILENAME}, skipped inputs in {REPORT_FILENAME}."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(
                        shape=(resolution, resolution, 3), encoding_format="png"
                    ),
                    "label": tfds.features.Scalar(np.int32),
                    "identity": tfds.features.Text(),
                    "path": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = self.builder_config.root
        if not paths.Path(root).is_dir():
            raise BadInputError(root, "is not a directory (of identity folders)")
        return {SPLIT: self._generate_examples()}

    def _generate_examples(self):
        """Yields the examples, then writes the label mapping and the report into the (still
        temporary) data dir."""
        config = self.builder_config
        skips = _SkipLog(config.root, self._strict)
        image_paths = _list_image_files(config.root, skips)
        encoded = _ordered_thread_map(
            functools.partial(_encode_file, config), image_paths, self._num_threads
        )
        labels: dict[str, int] = {}
        num_examples = 0
        for identity, files in itertools.groupby(
            zip(image_paths, encoded, strict=True), key=lambda item: item[0].split("/", 1)[0]
        ):
            images = []
            for path, result in files:
                if isinstance(result, _Skipped):
                    skips.skip(path, *result)
                else:
                    images.append((path, result))
            if not images:
                skips.skip(identity, "empty_identity", "no decodable image")
                continue
            labels[identity] = len(labels)
            for path, png in images:
                example = {"image": png, "label": labels[identity], "identity": identity}
                yield path, {**example, "path": path}
            num_examples += len(images)
        if not labels:
            raise BadInputError(
                config.root, f"no decodable image under it ({len(skips.entries)} inputs skipped)"
            )
        _write_json(paths.Path(self.data_dir) / LABELS_FILENAME, labels)
        _write_json(
            paths.Path(self.data_dir) / REPORT_FILENAME, skips.report(num_examples, len(labels))
        )


def prepare_image_folder(
    root: str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    resolution: int,
    policy: str = "resize",
    strict: bool = False,
    max_pixels: int = image_decoding.DEFAULT_MAX_PIXELS,
    num_threads: int = min(8, os.cpu_count() or 1),
    verify_hashes: bool = False,
) -> IdentityFolders:
    """Prepares the identity folders under `root` into the TFDS `data_dir` unless already
    prepared with these settings, and returns the builder (its `data_dir` is the dataset's).

    A dataset prepared earlier is checked against its listing of prepared files: the sizes, and
    the SHA-256 with `verify_hashes` (`prepared_files`). In strict mode a dataset prepared
    earlier with skipped inputs is refused too. Call it from one process; the others load the
    prepared directory.
    """
    config = ImageFolderConfig(
        root=root, resolution=resolution, policy=policy, max_pixels=max_pixels
    )
    builder = IdentityFolders(
        config=config, strict=strict, num_threads=num_threads, data_dir=os.fspath(data_dir)
    )
    builder.download_and_prepare(verify_hashes=verify_hashes)
    if strict:
        skipped = read_preparation_report(builder.data_dir)["skipped"]
        if skipped:
            raise ValueError(
                f"strict preparation refuses {builder.data_dir}: prepared earlier with "
                f"{len(skipped)} skipped inputs, first {skipped[0]['path']}: {skipped[0]['reason']}"
            )
    return builder


def read_identity_labels(dataset_dir: str | os.PathLike) -> dict[str, int]:
    """{identity name: label} of a prepared dataset (its versioned dir, `builder.data_dir`)."""
    return paths.read_json(paths.Path(dataset_dir) / LABELS_FILENAME)


def read_preparation_report(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """The preparation report of a prepared dataset: root, num_examples, num_identities,
    num_skipped, skipped_by_kind {kind: count} and skipped [{path, kind, reason}]."""
    return paths.read_json(paths.Path(dataset_dir) / REPORT_FILENAME)


class ImageLabelSource:
    """A grain random-access source of {"image": uint8 [R, R, 3], "label": int32} over a
    prepared identity-folder dataset, in stored order."""

    def __init__(self, dataset_dir: str | os.PathLike, split: str = SPLIT):
        self._dataset_dir, self._split = os.fspath(dataset_dir), split
        self._records = prepared_records.NamedRecords(
            tfds.builder_from_directory(self._dataset_dir).as_data_source(split), self._dataset_dir
        )

    @property
    def record_labels(self) -> np.ndarray:
        """The label of every record, int32 [len(self)]: from the label cache beside the dataset,
        else in one pass with images left encoded (`record_label_cache`)."""
        return record_label_cache.load_or_scan(
            self._dataset_dir, self._split, "label", len(self), self._scan_labels
        ).labels

    def _scan_labels(self) -> record_label_cache.RecordLabels:
        encoded = tfds.builder_from_directory(self._dataset_dir).as_data_source(
            self._split, decoders={"image": tfds.decode.SkipDecoding()}
        )
        labels = [encoded[index]["label"] for index in range(len(encoded))]
        return record_label_cache.RecordLabels(labels=np.asarray(labels, np.int32))

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        record = self._records[index]
        return {"image": record["image"], "label": np.int32(record["label"])}

    def __repr__(self) -> str:
        return f"ImageLabelSource({self._dataset_dir!r})"
