"""Content hashes that name what a cache or a dataset was computed from.

`array_tree_sha256(tree)` hashes every array leaf of a pytree (its path, dtype, shape and bytes,
in the tree's deterministic leaf order), so two models with equal weights hash equally and any
change to any weight changes the hash. Used to key caches (a stale cache is never read) and to
name checkpoints in manifests. `file_sha256` reads through `core.paths`, so a file may be local or
on an object store (`gs://`).
"""

import hashlib
from typing import Any

import jax
import numpy as np

from diffusion_jax.core import paths


def array_tree_sha256(tree: Any) -> str:
    """Hex SHA-256 of the pytree's leaves, with their paths, dtypes and shapes."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        array = np.asarray(jax.device_get(leaf))
        digest.update(jax.tree_util.keystr(path).encode())
        # dtype.name, not dtype.str: NumPy gives every 1-byte ml_dtypes type the same str ('<V1').
        digest.update(f"{array.dtype.name}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def file_sha256(path: paths.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with paths.Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()
