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

A pickle can also ask for memory it does not hold: an opcode declares the length of the bytes
that follow it (and Python's unpickler allocates that length before reading), an array
declares its shape. So before anything is built, every opcode's declared length is checked
against the bytes left in the file (`pickletools.genops`), and an array is admitted only as
NumPy pickles one: an empty placeholder (the declared shape (0,) that NumPy always writes)
whose state then brings a shape, a plain numeric dtype and exactly shape x itemsize bytes of
data, all of them in the file. The content therefore never holds more payload than the file.
Every refusal is a `BadInputError` naming the file. The file may be local or a `gs://` URL
(`core.paths`).
"""

from __future__ import annotations

import dataclasses
import io
import math
import pickle
import pickletools

import numpy as np

from diffusion_jax.core import paths
from diffusion_jax.core.bad_input import BadInputError

# NumPy's dtype kinds an array of a verification file may have: bool, integers, floats.
_ARRAY_KINDS = "biuf"


class _NdarrayName:
    """What the pickle's global `numpy.ndarray` resolves to: a name for `_reconstruct`'s first
    argument, whose call is refused (`numpy.ndarray(shape)` would allocate any shape)."""

    def __call__(self, *args, **kwargs):
        raise pickle.UnpicklingError(
            "refused to call numpy.ndarray(...): it would allocate whatever shape the file declares"
        )

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NdarrayName()


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """`_codecs.encode` restricted to what pickle protocol 2 uses it for: bytes as latin-1."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError(
            f"_codecs.encode is admitted only as (str, 'latin1'), got "
            f"({type(text).__name__}, {encoding!r})"
        )
    return text.encode("latin1")


def _check_array(shape: object, dtype: object, data: object) -> None:
    """Admits an array of `shape` and `dtype` built from `data` only if `data` holds exactly
    its bytes and the dtype is a plain number (no objects, records or sub-arrays)."""
    plain = isinstance(dtype, np.dtype) and dtype.kind in _ARRAY_KINDS and dtype.fields is None
    if not plain or dtype.subdtype is not None:
        raise pickle.UnpicklingError(f"arrays of dtype {dtype!r} are not admitted")
    if not (
        isinstance(shape, tuple) and all(isinstance(size, int) and size >= 0 for size in shape)
    ):
        raise pickle.UnpicklingError(f"array shape {shape!r} is not a tuple of sizes")
    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError(f"array data must be bytes, got {type(data).__name__}")
    declared = math.prod(shape) * dtype.itemsize
    if declared != len(data):
        raise pickle.UnpicklingError(
            f"an array of shape {shape} and dtype {dtype} needs {declared} bytes, the file "
            f"gives {len(data)}"
        )


class _PickledArray(np.ndarray):
    """The placeholder `_reconstruct` returns; its `__setstate__` (pickle's BUILD) checks the
    state with `_check_array` before NumPy fills it in."""

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError(f"malformed array state of type {type(state).__name__}")
        shape, dtype, _, data = state[-4:]
        _check_array(shape, dtype, data)
        super().__setstate__(state)


def _reconstruct_ndarray(subtype: object, shape: object, dtype: object) -> np.ndarray:
    """NumPy's `_reconstruct(ndarray, (0,), b'b')`: the empty array that BUILD then fills."""
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError(f"only numpy.ndarray may be rebuilt, got {subtype!r}")
    if shape != (0,):
        raise pickle.UnpicklingError(
            f"an array declared with shape {shape!r} before its data (NumPy writes (0,))"
        )
    return _PickledArray((0,), np.uint8)


def _array_from_buffer(buffer: object, dtype: object, shape: object, order: str) -> np.ndarray:
    """What NumPy's `_frombuffer` does for pickle protocol 5, once `_check_array` admits it."""
    _check_array(shape, dtype, buffer)
    if order not in ("C", "F"):
        raise pickle.UnpicklingError(f"array order must be 'C' or 'F', got {order!r}")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)


_ADMITTED_GLOBALS = {
    ("_codecs", "encode"): _latin1_bytes,
    ("numpy", "ndarray"): _NDARRAY,
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


def _load(data: bytes) -> object:
    """The unpickled `data`, after `pickletools.genops` has checked every opcode's declared
    length against the bytes that remain (it reads them without allocating more)."""
    for _ in pickletools.genops(io.BytesIO(data)):
        pass
    return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


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
    raise BadInputError(
        path, f"image {index} is a {type(item).__name__}, expected bytes or a 1-D uint8 array"
    )


def _flags(issame: object, path: str) -> np.ndarray:
    if isinstance(issame, np.ndarray) and issame.dtype == bool and issame.ndim == 1:
        return np.array(issame, dtype=bool)
    if isinstance(issame, (list, tuple)) and all(isinstance(flag, bool) for flag in issame):
        return np.array(issame, dtype=bool).reshape(-1)
    raise BadInputError(
        path,
        "the same/different flags must be a list of bools or a 1-D bool array, got "
        f"{type(issame).__name__}",
    )


def read_verification_bin(path: str) -> VerificationBin:
    """The pairs of an InsightFace verification file, read with the restricted unpickler.

    Raises BadInputError naming `path` when the pickle asks for any other object (nothing is
    called), declares more bytes than the file holds, is malformed, or holds a number of images
    other than twice its number of flags.
    """
    try:
        data = paths.Path(path).read_bytes()
    except OSError as error:
        raise BadInputError(path, f"cannot read it: {error}") from None
    try:
        content = _load(data)
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        AttributeError,
    ) as error:
        raise BadInputError(path, f"not a readable verification file: {error}") from None
    if not (isinstance(content, (tuple, list)) and len(content) == 2):
        raise BadInputError(
            path, f"expected a pickled pair (bins, issame_list), got {type(content).__name__}"
        )
    bins, issame = content
    if not isinstance(bins, (list, tuple)):
        raise BadInputError(
            path, f"bins must be a list of encoded images, got {type(bins).__name__}"
        )
    is_same = _flags(issame, path)
    if len(bins) != 2 * len(is_same):
        raise BadInputError(
            path,
            f"{len(bins)} images for {len(is_same)} same/different flags; a verification "
            "file holds 2 images per flag",
        )
    images = [_encoded_image(item, path, index) for index, item in enumerate(bins)]
    return VerificationBin(images=images, is_same=is_same)
