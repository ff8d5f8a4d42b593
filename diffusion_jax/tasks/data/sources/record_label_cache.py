"""The labels of a prepared dataset's records: scanned once, then read from a file beside it.

Cutting a training source to its first identities (`data.max_identities`,
`data.max_images_per_identity`) and mapping a TFDS Text label to integers both need the label of
every record in stored order: one pass over every record's bytes, minutes for millions of faces.
A prepared dataset does not change, so `load_or_scan` keeps the pass's result in
`<dataset dir>/record_labels_<split>_<label feature>.npz`:

    labels       int32 [num_records], the label of each record in stored order
    names        str [num_identities], the name of each label (a Text label), or empty
    info_digest  the SHA-256 of the dataset's dataset_info.json when the labels were scanned

A file whose record count or digest differs from the dataset's (the dataset was prepared again),
or that cannot be read, is ignored and replaced. The file is written atomically
(`paths.write_bytes_atomically`: locally to a temporary name unique to the writer, then renamed;
on an object store in one upload), so a reader never sees half of one; where the directory cannot
be written (a shared read-only copy), every opening pays the pass, with a warning. The dataset
dir may be local or a `gs://` URL.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import zipfile
from collections.abc import Callable

import numpy as np
from absl import logging

from diffusion_jax.core import paths


@dataclasses.dataclass(frozen=True)
class RecordLabels:
    labels: np.ndarray  # int32 [num_records]
    names: tuple[str, ...] = ()  # the name of each label, for a Text label; else ()


def cache_path(dataset_dir: str, split: str, label_key: str) -> str:
    return os.fspath(paths.Path(dataset_dir) / f"record_labels_{split}_{label_key}.npz")


def _info_digest(dataset_dir: str) -> str:
    return hashlib.sha256((paths.Path(dataset_dir) / "dataset_info.json").read_bytes()).hexdigest()


def _read(path: str, num_records: int, digest: str) -> RecordLabels | None:
    """The cached labels at `path`, or None when absent, unreadable or not this dataset's."""
    try:
        with np.load(io.BytesIO(paths.Path(path).read_bytes()), allow_pickle=False) as stored:
            labels, names = stored["labels"], stored["names"]
            stored_digest = str(stored["info_digest"])
    except FileNotFoundError:
        return None
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as error:
        logging.warning("Ignoring the unreadable label cache %s: %s", path, error)
        return None
    if stored_digest != digest:
        logging.warning("Ignoring the label cache %s: it holds another preparation's labels", path)
        return None
    if labels.shape != (num_records,) or labels.dtype != np.int32:
        logging.warning(
            "Ignoring the label cache %s: %s labels %s for %d records",
            path,
            labels.dtype,
            labels.shape,
            num_records,
        )
        return None
    return RecordLabels(labels=labels, names=tuple(str(name) for name in names))


def _write(path: str, record_labels: RecordLabels, digest: str) -> None:
    """Writes the cache atomically (`paths.write_bytes_atomically`); warns if it cannot."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        labels=record_labels.labels,
        names=np.asarray(record_labels.names, dtype=str),
        info_digest=np.asarray(digest),
    )
    try:
        paths.write_bytes_atomically(path, buffer.getvalue())
    except OSError as error:
        logging.warning(
            "Cannot keep the record labels in %s (%s): each opening scans them", path, error
        )


def load_or_scan(
    dataset_dir: str | os.PathLike,
    split: str,
    label_key: str,
    num_records: int,
    scan: Callable[[], RecordLabels],
) -> RecordLabels:
    """The labels, feature `label_key`, of the `num_records` records of `split` of the prepared
    dataset in `dataset_dir` (the directory holding its dataset_info.json): from the cache when
    it is this preparation's, else from `scan()`, which is then cached."""
    dataset_dir = os.fspath(dataset_dir)
    path, digest = cache_path(dataset_dir, split, label_key), _info_digest(dataset_dir)
    cached = _read(path, num_records, digest)
    if cached is not None:
        return cached
    scanned = scan()
    if np.shape(scanned.labels) != (num_records,):
        raise ValueError(
            f"scanned {np.shape(scanned.labels)} labels for the {num_records} "
            f"records of split {split!r} in {dataset_dir}"
        )
    scanned = dataclasses.replace(scanned, labels=np.asarray(scanned.labels, np.int32))
    _write(path, scanned, digest)
    return scanned
