"""The path layer: every file the project reads or writes goes through these paths, so a workdir,
an exported model, a prepared dataset or a generated dataset may be a local path or a URL of an
object store (`gs://bucket/run`).

Paths are `etils.epath.Path`, the path type Orbax and TFDS already use: on a local path it is a
`pathlib.Path`; on `gs://` it reaches Cloud Storage through fsspec/gcsfs (chosen below). One type
end to end means no module spells its own `os.path` / `open` logic, and no local-only assumption
(such as `os.path.abspath`, which turns `gs://b/run` into `/cwd/gs:/b/run`) can creep into a path
that reaches storage.

Commit protocols. A local file system renames atomically; an object store does not rename at all
(a "move" is a copy and a delete), but it writes each object atomically: a reader sees the old
object or the whole new one, never part of one. So a file that must never be seen half-written is
written with `write_bytes_atomically` (local: a `.partial` file, fsync, rename; object store: one
upload), and a set of files is committed by writing a marker object last (a shard record, a
manifest, an exported model's description): readers trust the files only once the marker exists.
"""

import json
import os
import shutil
import tempfile
from typing import Any

from etils import epath

# gs:// goes through fsspec/gcsfs, the client the emulator tests exercise, rather than
# tf.io.gfile, which epath would pick because TensorFlow is installed (and which cannot be pointed
# at an emulator). Set before any path is used, as epath reads it once.
os.environ.setdefault("EPATH_USE_TF", "false")

Path = epath.Path
PathLike = str | os.PathLike

_URL_SCHEMES = ("gs://", "s3://")


def is_url(path: PathLike) -> bool:
    """Whether `path` names an object in an object store (gs://, s3://) rather than a file."""
    return os.fspath(path).startswith(_URL_SCHEMES)


def resolve(path: PathLike) -> Path:
    """`path` as an absolute `Path`: `~` expanded and made absolute when local, kept as given
    when it is a URL."""
    text = os.fspath(path)
    if is_url(text):
        return Path(text)
    return Path(os.path.abspath(os.path.expanduser(text)))


def write_bytes_atomically(path: PathLike, data: bytes) -> None:
    """Writes `data` to `path` so that no reader ever sees a partial file: locally through
    `path.partial`, flushed to disk and renamed; on an object store as one upload."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_url(path):
        path.write_bytes(data)
        return
    partial = f"{path}.partial"
    with open(partial, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)


def write_shared_bytes(path: PathLike, data: bytes) -> None:
    """Writes `data` to `path`, a file that several processes may write at once with the same
    contents (a cache): locally through a temporary file unique to this writer, renamed over
    `path` (a shared `.partial` name could be truncated by one writer while another renames
    it); on an object store as one upload. A failed local write removes its temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_url(path):
        path.write_bytes(data)
        return
    temporary = None
    try:
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
        ) as file:
            temporary = file.name
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        if temporary is not None and os.path.exists(temporary):
            os.remove(temporary)
        raise


def json_bytes(value: Any) -> bytes:
    """The canonical serialisation: sorted keys, indented, UTF-8, trailing newline (so the same
    value always gives the same bytes)."""
    return (json.dumps(value, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()


def write_json_atomically(path: PathLike, value: Any) -> None:
    """`json_bytes(value)` written with `write_bytes_atomically`."""
    write_bytes_atomically(path, json_bytes(value))


def read_json(path: PathLike) -> Any:
    """The JSON at `path`; a file that does not parse is reported by name."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def read_json_if_exists(path: PathLike) -> Any | None:
    """The JSON at `path`, or None when there is no such file."""
    path = Path(path)
    return read_json(path) if path.is_file() else None


def move(source: PathLike, destination: PathLike) -> None:
    """Moves a file, replacing `destination`. Atomic locally; on an object store a copy then a
    delete, so callers commit what they move with a marker written afterwards."""
    source, destination = Path(source), Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    if is_url(source) or is_url(destination):
        source.copy(destination, overwrite=True)
        source.unlink()
    else:
        os.replace(source, destination)


def remove_tree(path: PathLike) -> None:
    """Deletes a directory and everything under it; nothing happens when it does not exist."""
    path = Path(path)
    if is_url(path):
        if path.exists():
            path.rmtree()
    else:
        shutil.rmtree(path, ignore_errors=True)


def is_nonempty_dir(path: PathLike) -> bool:
    """Whether `path` is a directory holding anything (on an object store: whether any object
    lies under the prefix `path/`)."""
    path = Path(path)
    return path.is_dir() and next(iter(path.iterdir()), None) is not None


def relative_files(root: PathLike) -> list[str]:
    """The relative paths ('a/b.png', '/'-separated) of every file under `root` at any depth,
    sorted; [] when `root` does not exist. (Not `Path.walk`: on gs:// it yields paths without
    their scheme.)"""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []

    def visit(directory: Path, prefix: str) -> None:
        for child in directory.iterdir():
            if child.is_dir():
                visit(child, f"{prefix}{child.name}/")
            else:
                found.append(f"{prefix}{child.name}")

    visit(root, "")
    return sorted(found)
