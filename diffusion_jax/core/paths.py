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
written with `write_bytes_atomically` (local: a temporary `.partial` file, fsync, rename; object
store: one upload), and a set of files is committed by writing a marker object last (a shard
record, a manifest, an exported model's description): readers trust the files only once the
marker exists.
"""

import json
import os
import shutil
import tempfile
from typing import Any

from etils import epath

from diffusion_jax.core.bad_input import BadInputError

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
    """Writes `data` to `path` so that no reader ever sees a partial file, even when several
    processes write the same path at once (a cache, a figure every process computes): locally
    through a temporary file unique to this writer (`.NAME.XXXXXX.partial`; a shared temporary
    name could be truncated by one writer while another renames it), flushed to disk and renamed
    over `path`; on an object store as one upload. A failed local write removes its temporary
    file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_url(path):
        path.write_bytes(data)
        return
    temporary = None
    try:
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=f".{path.name}.", suffix=".partial", delete=False
        ) as file:
            temporary = file.name
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
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
    """The JSON at `path`; a file that is not UTF-8 JSON raises BadInputError naming it."""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadInputError(path, f"not valid JSON: {error}") from None


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


# Generation preconditions (Cloud Storage). Cloud Storage numbers each version of an object (its
# generation) and writes or deletes an object only if the generation a request names is still the
# current one (0: there is no object), checking and writing in one step: a compare-and-swap, what
# a lease needs (`core.workdir_lock`). gcsfs offers only the 0 case ("create"), so these go
# through google-cloud-storage, which finds the same credentials (and STORAGE_EMULATOR_HOST).


def _blob(url: str):
    from google.cloud import storage  # imported here: only leases need it

    bucket, _, name = url.removeprefix("gs://").partition("/")
    return storage.Client().bucket(bucket).blob(name)


def read_with_generation(url: str) -> tuple[bytes, int] | None:
    """(the object at the gs:// `url`, its generation); None when there is no such object."""
    from google.api_core import exceptions

    blob = _blob(url)
    try:
        data = blob.download_as_bytes()
    except exceptions.NotFound:
        return None
    return data, int(blob.generation)


def write_if_generation(url: str, data: bytes, generation: int) -> int | None:
    """Writes `data` to the gs:// `url` if the object's generation there is still `generation`
    (0: if there is no object); returns the new generation, or None when another write came
    first (nothing is written then)."""
    from google.api_core import exceptions

    blob = _blob(url)
    try:
        blob.upload_from_string(data, if_generation_match=generation)
    except exceptions.PreconditionFailed:
        return None
    return int(blob.generation)


def delete_if_generation(url: str, generation: int) -> None:
    """Deletes the object at the gs:// `url` if its generation is still `generation`; does
    nothing when another write replaced it or it is gone."""
    from google.api_core import exceptions

    try:
        _blob(url).delete(if_generation_match=generation)
    except (exceptions.PreconditionFailed, exceptions.NotFound):
        pass
