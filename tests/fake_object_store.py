"""A fake object store for tests: `gs://` paths served from a local directory through epath, with
the semantics of an object store where commit protocols depend on them, and no emulator.

- Each object is written atomically: a file opened for writing appears under its name only when
  closed (a reader never sees part of it), replacing any object of that name.
- There is no rename: `rename` and `replace` raise, so code that commits by renaming fails.
- Every other epath operation (exists, is_dir, iterdir, walk, glob, copy, stat, unlink, rmtree,
  mkdir) works on the local directory `root/<bucket>/<key>`; a copy between a local path and a
  `gs://` one crosses over, as it does with the real backends.

`fake_object_store(root)` is a context manager that routes every `gs://` path to it. Only code
that goes through epath reaches it: a builtin `open`, `os.*` or a C++ reader given a `gs://` path
would touch `./gs:/...` instead, which `used_local_gs_paths(cwd)` detects.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from unittest import mock

from etils.epath import backend as backend_lib
from etils.epath import gpath

_SCHEME = "gs://"


class FakeObjectStore(backend_lib._OsPathBackend):  # pylint: disable=protected-access
    """The epath backend of the module docstring."""

    def __init__(self, root: str):
        self.root = os.fspath(root)
        self.renames_refused = 0

    def local(self, path) -> str:
        text = os.fspath(path)
        if not text.startswith(_SCHEME):
            return text
        return os.path.join(self.root, text[len(_SCHEME) :])

    def url(self, local_path) -> str:
        relative = os.path.relpath(os.fspath(local_path), self.root)
        return _SCHEME + ("" if relative == "." else relative)

    @contextlib.contextmanager
    def open(self, path, mode):  # pylint: disable=arguments-differ
        local = self.local(path)
        if "r" in mode and "+" not in mode:
            with super().open(local, mode) as file:
                yield file
            return
        if "a" in mode or "+" in mode:
            raise NotImplementedError(f"an object cannot be opened in mode {mode!r}")
        os.makedirs(os.path.dirname(local), exist_ok=True)
        descriptor, pending = tempfile.mkstemp(dir=self.root, prefix=".upload-")
        os.close(descriptor)
        try:
            with super().open(pending, mode) as file:
                yield file
        except BaseException:
            os.remove(pending)
            raise
        os.replace(pending, local)  # the upload completes: the object appears whole

    def exists(self, path):
        return super().exists(self.local(path))

    def isdir(self, path):
        return super().isdir(self.local(path))

    def listdir(self, path):
        local = self.local(path)
        # GCS lists "directories" with a trailing slash.
        return [
            name + "/" if os.path.isdir(os.path.join(local, name)) else name
            for name in super().listdir(local)
            if not name.startswith(".upload-")
        ]

    def glob(self, path):
        return [self.url(found) for found in super().glob(self.local(path))]

    def walk(self, top, *, top_down=True, on_error=None):
        for directory, dirs, files in os.walk(self.local(top), topdown=top_down, onerror=on_error):
            yield self.url(directory), dirs, [f for f in files if not f.startswith(".upload-")]

    def makedirs(self, path, *, exist_ok=False, mode=None):
        super().makedirs(self.local(path), exist_ok=exist_ok)

    def mkdir(self, path, *, exist_ok=False, mode=None):
        super().mkdir(self.local(path), exist_ok=exist_ok)

    def rmtree(self, path):
        super().rmtree(self.local(path))

    def remove(self, path):
        super().remove(self.local(path))

    def rename(self, path, dst):
        self.renames_refused += 1
        raise OSError(f"an object store cannot rename {path} to {dst}")

    def replace(self, path, dst):
        self.renames_refused += 1
        raise OSError(f"an object store cannot rename {path} to {dst}")

    def copy(self, path, dst, overwrite):
        source, destination = self.local(path), self.local(dst)
        if not overwrite and os.path.exists(destination):
            raise FileExistsError(f"{dst} already exists. Cannot copy {path}.")
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        with open(source, "rb") as file:
            data = file.read()
        with (
            self.open(dst, "wb")
            if os.fspath(dst).startswith(_SCHEME)
            else open(destination, "wb") as file
        ):
            file.write(data)

    def stat(self, path):
        return super().stat(self.local(path))


@contextlib.contextmanager
def fake_object_store(root: str) -> Iterator[FakeObjectStore]:
    """Routes every `gs://bucket/key` path to `root/bucket/key` (module docstring)."""
    store = FakeObjectStore(root)
    prefixes = {**gpath._PREFIX_TO_BACKEND, "gs": store}  # pylint: disable=protected-access
    with (
        mock.patch.object(gpath, "_PREFIX_TO_BACKEND", prefixes),
        mock.patch.object(gpath, "_GCS_BACKENDS", frozenset({store})),
        mock.patch.object(gpath, "_is_tf_installed", lambda: False),
    ):
        yield store


def used_local_gs_paths(directory: str) -> list[str]:
    """Files that code wrote under `directory/gs:` by giving a `gs://` path to a local API."""
    root = os.path.join(directory, "gs:")
    return sorted(
        os.path.relpath(os.path.join(parent, name), directory)
        for parent, _, names in os.walk(root)
        for name in names
    )
