"""InsightFace verification files (`lfw.bin`, `cfp_fp.bin`, `agedb_30.bin`, ...), read safely.

A file is a pickle of `(bins, issame_list)`: `bins` holds 2 * len(issame_list) encoded images
(JPEG/PNG bytes) and pair i is (bins[2i], bins[2i + 1]), showing one identity when
issame_list[i] is True. InsightFace wrote them with Python 2 (protocol 2, images as `str`), so
they are read with encoding='bytes'; files re-written with Python 3 carry `bytes`, which
protocol 2 spells as a call of `_codecs.encode`, or occasionally uint8 NumPy arrays.

A pickle can call any importable function while loading. The unpickler here resolves only the
few globals that plain byte strings and arrays need, each to a safe stand-in; every other
global is refused before anything is called. (Plain opcodes still build numbers, strings, dicts
and None, which call nothing; the content is then checked to be bytes or arrays and bools.)
The file may be local or a `gs://` URL (`core.paths`).
"""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np

from diffusion_jax.core import paths

_NDARRAY_RECONSTRUCT = np.empty(0).__reduce__()[0]  # numpy.(_)core.multiarray._reconstruct


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """`_codecs.encode` restricted to what pickle protocol 2 uses it for: bytes as latin-1."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError(
            f"_codecs.encode is admitted only as (str, 'latin1'), got "
            f"({type(text).__name__}, {encoding!r})"
        )
    return text.encode("latin1")


def _reconstruct_ndarray(subtype: type, shape: tuple, dtype: bytes | str) -> np.ndarray:
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"only numpy.ndarray may be rebuilt, got {subtype!r}")
    return _NDARRAY_RECONSTRUCT(subtype, shape, dtype)


def _array_from_buffer(buffer: bytes, dtype: np.dtype, shape: tuple, order: str) -> np.ndarray:
    """What NumPy's `_frombuffer` does for pickle protocol 5."""
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)


_ADMITTED_GLOBALS = {
    ("_codecs", "encode"): _latin1_bytes,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct_ndarray,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct_ndarray,
    ("numpy.core.numeric", "_frombuffer"): _array_from_buffer,
    ("numpy._core.numeric", "_frombuffer"): _array_from_buffer,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only `_ADMITTED_GLOBALS`; refuses persistent ids."""

    def find_class(self, module: str, name: str):
        try:
            return _ADMITTED_GLOBALS[module, name]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to load global '{module}.{name}': a verification file holds only "
                "bytes, lists, tuples, bools and arrays; nothing was called"
            ) from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"refused persistent id {pid!r}")


@dataclasses.dataclass(frozen=True)
class VerificationBin:
    """images: 2 * P encoded images; is_same: [P] bool, pair i = (images[2i], images[2i + 1])."""

    images: list[bytes]
    is_same: np.ndarray


def _encoded_image(item: object, path: str, index: int) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 1:
        return item.tobytes()
    raise ValueError(
        f"{path}: image {index} is a {type(item).__name__}, expected bytes or a 1-D uint8 array"
    )


def _flags(issame: object, path: str) -> np.ndarray:
    if isinstance(issame, np.ndarray) and issame.dtype == bool and issame.ndim == 1:
        return issame.copy()
    if isinstance(issame, (list, tuple)) and all(isinstance(flag, bool) for flag in issame):
        return np.array(issame, dtype=bool).reshape(-1)
    raise ValueError(
        f"{path}: the same/different flags must be a list of bools or a 1-D bool "
        f"array, got {type(issame).__name__}"
    )


def read_verification_bin(path: str) -> VerificationBin:
    """The pairs of an InsightFace verification file, read with the restricted unpickler.

    Raises ValueError naming `path` when the pickle asks for any other object (nothing is
    called), is malformed, or holds a number of images other than twice its number of flags.
    """
    with paths.Path(path).open("rb") as file:
        try:
            content = _RestrictedUnpickler(file, encoding="bytes").load()
        except (
            pickle.UnpicklingError,
            EOFError,
            ValueError,
            TypeError,
            IndexError,
            KeyError,
        ) as error:
            raise ValueError(f"{path}: not a readable verification file: {error}") from None
    if not (isinstance(content, (tuple, list)) and len(content) == 2):
        raise ValueError(
            f"{path}: expected a pickled pair (bins, issame_list), got {type(content).__name__}"
        )
    bins, issame = content
    if not isinstance(bins, (list, tuple)):
        raise ValueError(
            f"{path}: bins must be a list of encoded images, got {type(bins).__name__}"
        )
    is_same = _flags(issame, path)
    if len(bins) != 2 * len(is_same):
        raise ValueError(
            f"{path}: {len(bins)} images for {len(is_same)} same/different "
            f"flags; a verification file holds 2 images per flag"
        )
    images = [_encoded_image(item, path, index) for index, item in enumerate(bins)]
    return VerificationBin(images=images, is_same=is_same)
