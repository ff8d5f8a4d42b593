"""Reads the named tensors of a checkpoint made elsewhere, as numpy arrays, without running code.

    .safetensors      read with `safetensors.numpy` (no PyTorch needed)
    .pt / .pth        read with `torch.load(..., weights_only=True)`: PyTorch's restricted
                      unpickler, which admits tensors and plain containers and refuses any other
                      object, so a malicious pickle is rejected instead of executed

A PyTorch file may hold the state dict itself or nest it under one of NESTED_STATE_DICT_KEYS
(arcface_torch's training checkpoints `checkpoint_gpu_*.pt` keep the backbone under
"state_dict_backbone", next to the optimiser's state). A leading "module." (what
DistributedDataParallel adds) is stripped from every name. Floating-point tensors come back as
float32, integer ones keep their integer type. A file may be local or a `gs://` URL
(`core.paths`): a local file is read in place (safetensors maps it), one on an object store is
read into memory first.
"""

import io
import pickle
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy

from diffusion_jax.core import paths
from diffusion_jax.core.bad_input import BadInputError

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth")
NESTED_STATE_DICT_KEYS = ("state_dict_backbone", "state_dict", "model")
DDP_PREFIX = "module."


def load_tensors(path: str) -> dict[str, np.ndarray]:
    """The tensors of the .safetensors or PyTorch file at `path`, by name (see the docstring)."""
    path = str(paths.resolve(path))
    if not paths.Path(path).is_file():
        raise FileNotFoundError(f"No checkpoint file at {path}")
    suffix = paths.Path(path).suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        tensors = _load_safetensors(path)
    elif suffix in TORCH_SUFFIXES:
        tensors = _load_torch(path)
    else:
        raise BadInputError(
            path,
            f"unknown checkpoint suffix {suffix!r}; expected one of "
            f"{SAFETENSORS_SUFFIXES + TORCH_SUFFIXES}",
        )
    return _strip_ddp_prefix(tensors, path)


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
    try:
        if paths.is_url(path):
            arrays = safetensors.numpy.load(paths.Path(path).read_bytes())
        else:
            arrays = safetensors.numpy.load_file(path)
    except TypeError as error:  # numpy has no bfloat16
        raise BadInputError(
            path, f"{error}; save the tensors as float32 (or float16) to convert them"
        ) from error
    except safetensors.SafetensorError as error:
        raise BadInputError(path, f"not a readable safetensors file: {error}") from error
    return {name: _as_float32_or_int(array, path, name) for name, array in arrays.items()}


def _load_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            f"Reading the PyTorch file {path} needs PyTorch: `pip install diffusion_jax[torch]`, "
            "or convert the file to .safetensors elsewhere."
        ) from error
    try:
        source = io.BytesIO(paths.Path(path).read_bytes()) if paths.is_url(path) else path
        contents = torch.load(source, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise BadInputError(
            path,
            "not a PyTorch file of tensors that can be read safely (loaded with "
            f"weights_only=True, which refuses arbitrary objects): {_torch_reason(error)}",
        ) from error
    state_dict = _find_state_dict(contents, path, torch.Tensor)
    tensors = {}
    for name, tensor in state_dict.items():
        if tensor.is_floating_point():
            tensor = tensor.float()
        tensors[name] = _as_float32_or_int(tensor.detach().cpu().numpy(), path, name)
    return tensors


def _torch_reason(error: Exception) -> str:
    """The line of torch.load's message that says what it refused ("Unsupported global: GLOBAL
    posix.system ..."), without its colour codes or its advice to load the file unsafely."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line]
    refused = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
    return f"{type(error).__name__}: {(refused or lines or [''])[0]}"


def _find_state_dict(contents: Any, path: str, tensor_type: type) -> Mapping[str, Any]:
    """`contents` if it is a state dict, else its first NESTED_STATE_DICT_KEYS entry that is one."""
    if isinstance(contents, Mapping):
        for candidate in [contents] + [contents.get(key) for key in NESTED_STATE_DICT_KEYS]:
            if isinstance(candidate, Mapping) and _is_state_dict(candidate, tensor_type):
                return candidate
        found = f"a mapping with keys {sorted(map(str, contents))}"
    else:
        found = f"a {type(contents).__name__}"
    raise BadInputError(
        path,
        f"holds {found}, neither a state dict (tensor name -> tensor) nor a mapping holding one "
        f"under one of {NESTED_STATE_DICT_KEYS}",
    )


def _is_state_dict(mapping: Mapping[Any, Any], tensor_type: type) -> bool:
    return bool(mapping) and all(
        isinstance(name, str) and isinstance(value, tensor_type) for name, value in mapping.items()
    )


def _as_float32_or_int(array: np.ndarray, path: str, name: str) -> np.ndarray:
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        return np.asarray(array)
    raise BadInputError(path, f"tensor {name!r} has dtype {array.dtype}, not float or integer")


def _strip_ddp_prefix(tensors: dict[str, np.ndarray], path: str) -> dict[str, np.ndarray]:
    stripped = {}
    for name, array in tensors.items():
        key = name.removeprefix(DDP_PREFIX)
        if key in stripped:
            raise BadInputError(path, f"{name!r} and another tensor are both named {key!r}")
        stripped[key] = array
    return stripped
