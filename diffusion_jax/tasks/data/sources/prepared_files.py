"""The listing of a prepared dataset's files, with which a reused preparation proves itself whole.

`ListedPreparation` is mixed into the TFDS builders this project prepares (the procedural faces
and pairs of `faces_builder`, the identity folders of `image_folders`). Preparing one, in its
directory `<data_dir>/<name>/<config>` (the parent of its version directory `builder.data_dir`):

1. takes an exclusive lock, `prepare.lock` there (`flock`; the file is removed on leaving), so
   that processes preparing the same data_dir at once prepare it once: the others wait, then
   reuse it (without the lock, the second one to finish failed renaming onto the first's);
2. removes what a killed preparation of the same dataset and version left there: TFDS's
   temporary `incomplete.XXXXXX_<version>` directories, which also hold the temporary file of a
   listing being written. Nothing else is touched, and under the lock no live preparer owns them;
3. lets TFDS write into its temporary directory and, once every data file is there, writes
   `prepared_files.json` into it, atomically: {"files": {name: {"size": bytes, "sha256": hex}}}
   for every file the preparation produced (TFDS's own metadata, `dataset_info.json` and
   `features.json`, follows it and is not listed: it is parsed, so checked, on every load). TFDS
   then renames the directory into place, so a dataset never appears without its listing.

Reuse (`ListedPreparation.download_and_prepare` on a prepared dataset, or `check`) compares each
listed file's size (a stat: cheap, always) and, when asked, its SHA-256 (reads every byte), and
raises `BadInputError` naming the file, what differs and the directory to delete to prepare the
dataset again. A dataset prepared before listings existed is trusted as before, and logged once
per process as one that cannot be checked.

On an object store (`gs://`), or a file system without flock, nothing is locked: a preparation
there logs leftovers instead of removing them (another process may still be writing them). On an
object store TFDS's final rename is a copy, so a copy cut short lacks files that `check` then
reports missing (or lacks the listing, and is trusted as above). The processes of one JAX job
need no lock: `input_pipeline.ensure_prepared` lets process 0 prepare before the others look.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from typing import Any

from absl import logging

from diffusion_jax.core import paths
from diffusion_jax.core.bad_input import BadInputError
from diffusion_jax.core.fingerprint import file_sha256

LISTING_FILENAME = "prepared_files.json"
LOCK_FILENAME = "prepare.lock"
# The prefix of TFDS's temporary directories and files (`tfds.core.utils.incomplete_dir`).
_INCOMPLETE_PREFIX = "incomplete."
_unlisted_logged: set[str] = set()


def write_listing(dataset_dir: paths.PathLike) -> None:
    """Writes `prepared_files.json` into `dataset_dir`: the size and SHA-256 of each file in it
    (but TFDS temporaries), written atomically (`paths.write_json_atomically`)."""
    dataset_dir = paths.Path(dataset_dir)
    files = {}
    for name in paths.relative_files(dataset_dir):
        if name != LISTING_FILENAME and not name.startswith(_INCOMPLETE_PREFIX):
            path = dataset_dir / name
            files[name] = {"size": path.stat().length, "sha256": file_sha256(path)}
    paths.write_json_atomically(dataset_dir / LISTING_FILENAME, {"files": files})


def _read_listing(dataset_dir: paths.Path, remedy: str) -> dict[str, dict[str, Any]]:
    listing_path = dataset_dir / LISTING_FILENAME
    try:
        files = paths.read_json(listing_path)["files"]
        if not all(isinstance(entry["size"], int) for entry in files.values()):
            raise ValueError("a size is not an integer")
        if not all(isinstance(entry["sha256"], str) for entry in files.values()):
            raise ValueError("a SHA-256 is not a string")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise BadInputError(
            listing_path, f"is not a listing of prepared files ({error}); {remedy}"
        ) from None
    return files


def check(dataset_dir: paths.PathLike, *, hashes: bool) -> dict[str, Any] | None:
    """Checks the prepared dataset in `dataset_dir` (a version directory) against its listing:
    every listed file present with its size and, when `hashes`, its SHA-256.

    Returns {"dataset_dir", "files", "bytes", "sha256_checked"}, or None when the dataset has no
    listing (prepared before listings existed: logged once per process). Raises `BadInputError`
    naming the first file that differs and how to prepare the dataset again.
    """
    dataset_dir = paths.Path(dataset_dir)
    if not (dataset_dir / LISTING_FILENAME).is_file():
        if str(dataset_dir) not in _unlisted_logged:
            _unlisted_logged.add(str(dataset_dir))
            logging.warning(
                "%s has no %s (prepared before preparations listed their files): it is reused "
                "unchecked; delete it to prepare it again with a listing",
                dataset_dir,
                LISTING_FILENAME,
            )
        return None
    remedy = f"delete {dataset_dir} and run again to prepare the dataset anew"
    files = _read_listing(dataset_dir, remedy)
    for name, expected in files.items():
        path = dataset_dir / name
        if not path.is_file():
            raise BadInputError(path, f"is missing, but {LISTING_FILENAME} lists it; {remedy}")
        size = path.stat().length
        if size != expected["size"]:
            raise BadInputError(
                path,
                f"size {size} bytes vs {expected['size']} when prepared ({LISTING_FILENAME}): "
                f"the file was cut or changed since; {remedy}",
            )
    if hashes:
        for name, expected in files.items():
            path = dataset_dir / name
            if file_sha256(path) != expected["sha256"]:
                raise BadInputError(
                    path,
                    f"its SHA-256 differs from {expected['sha256'][:12]}... when prepared "
                    f"({LISTING_FILENAME}), at the same size: its bytes changed since; {remedy}",
                )
    return {
        "dataset_dir": str(dataset_dir),
        "files": len(files),
        "bytes": sum(entry["size"] for entry in files.values()),
        "sha256_checked": hashes,
    }


def _leftovers(version_dir: paths.Path) -> list[paths.Path]:
    """TFDS's temporary directories of `version_dir` beside it, `incomplete.XXXXXX_<version>`."""
    pattern = re.compile(
        rf"{re.escape(_INCOMPLETE_PREFIX)}[A-Z0-9]{{6}}_{re.escape(version_dir.name)}"
    )
    if not version_dir.parent.is_dir():
        return []
    return sorted(
        path
        for path in version_dir.parent.iterdir()
        if pattern.fullmatch(path.name) and path.is_dir()
    )


@contextlib.contextmanager
def _preparation_lock(dataset_dir: paths.Path) -> Iterator[bool]:
    """Holds an exclusive `flock` on `dataset_dir/prepare.lock` (created if needed, removed on
    leaving; a waiter that wakes on a file removed meanwhile takes the new one) and yields True.
    Yields False, holding nothing, on an object store or a file system without flock."""
    if paths.is_url(dataset_dir):
        yield False
        return
    lock_path = os.path.join(os.fspath(dataset_dir), LOCK_FILENAME)
    os.makedirs(os.fspath(dataset_dir), exist_ok=True)
    while True:
        lock = open(lock_path, "a")  # held open until the lock is released
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logging.info("Waiting for another process preparing the dataset (%s)", lock_path)
                fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError as error:
            lock.close()
            logging.warning("Preparing without a lock: cannot lock %s (%s)", lock_path, error)
            yield False
            return
        try:
            if os.path.samestat(os.fstat(lock.fileno()), os.stat(lock_path)):
                break
        except FileNotFoundError:
            pass
        lock.close()
    try:
        yield True
    finally:
        os.remove(lock_path)
        lock.close()


class ListedPreparation:
    """Mixin of a `tfds.core.GeneratorBasedBuilder` (listed before it among the bases): reuse is
    checked, preparation is locked, cleans up after a killed one and lists its files (module
    doc)."""

    def download_and_prepare(self, *, verify_hashes: bool = False, **kwargs) -> None:
        """Reuses the prepared dataset once `check`ed (SHA-256 too with `verify_hashes`), else
        prepares it (module doc); `kwargs` go to TFDS's `download_and_prepare`."""
        if self.is_prepared():
            check(self.data_dir, hashes=verify_hashes)
            super().download_and_prepare(**kwargs)  # logs the reuse
            return
        version_dir = self.data_path
        with _preparation_lock(version_dir.parent) as locked:
            for leftover in _leftovers(version_dir):
                if locked:
                    logging.warning("Removing %s, left by an interrupted preparation", leftover)
                    paths.remove_tree(leftover)
                else:
                    logging.warning(
                        "%s may be left by an interrupted preparation; without a lock it is not "
                        "removed: delete it when no other process prepares this dataset",
                        leftover,
                    )
            super().download_and_prepare(**kwargs)  # reuses what another process prepared

    def _download_and_prepare(self, dl_manager, download_config=None):
        super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
        write_listing(self.data_dir)  # TFDS's temporary directory until it renames it
