"""Imports the IResNet backbones of insightface's `arcface_torch` into `core.models.iresnet`.

Every nnx.Param and nnx.BatchStat of the IResNet is read from one state-dict key, with s the
stage and b the block, both counted from 0:

    PyTorch key                          NNX path                     layout change
    conv1.weight                         conv1.kernel                 OIHW -> HWIO
    bn1.weight / bias                    bn1.scale / bias
    bn1.running_mean / running_var       bn1.mean / var
    prelu.weight                         prelu.negative_slope
    layer{s+1}.{b}.{bn1,conv1,...}       stages[s][b].{bn1,conv1,...}  (as above)
    layer{s+1}.{b}.downsample.0.weight   stages[s][b].downsample_conv.kernel
    layer{s+1}.{b}.downsample.1.*        stages[s][b].downsample_bn.*
    fc.weight [E, C*H*W]                 fc.kernel [H*W*C, E]         transposed; input rows
                                                                      from (c, h, w) to (h, w, c)
    fc.bias, bn2.*, features.bias/...    the same names

`features.weight` is fixed at 1 in arcface_torch and has no counterpart here: it is checked to be
all ones. `*.num_batches_tracked` counters are ignored. Anything else missing, left over or of
the wrong shape is refused with a ValueError that lists it.
"""

import re
from collections.abc import Mapping, Sequence
from typing import Any

import einops
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffusion_jax.core.models.iresnet import IRESNET_NAMES, IResNet, iresnet_architecture

IGNORED_SUFFIX = ".num_batches_tracked"
FIXED_SCALE_KEY = "features.weight"

_LEAF_NAMES = {
    "kernel": "weight",
    "scale": "weight",
    "bias": "bias",
    "mean": "running_mean",
    "var": "running_var",
    "negative_slope": "weight",
}
_MODULE_NAMES = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}
_BLOCK_KEY = re.compile(r"^layer(\d+)\.(\d+)\.")
# Above this many offending keys in one block, the error shows the block, not every key.
_KEYS_SHOWN_PER_BLOCK = 3


def convert_arcface_state_dict(
    tensors: Mapping[str, np.ndarray], architecture: dict[str, Any]
) -> IResNet:
    """The IResNet of `architecture` (IResNet's keyword arguments) holding the weights of the
    arcface_torch state dict `tensors`, in eval mode; see the module docstring for the mapping."""
    abstract_model = nnx.eval_shape(lambda: IResNet(**architecture, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract_model)
    variables = {_torch_key(path): (path, v) for path, v in nnx.to_flat_state(abstract_state)}
    expected_shapes = {
        key: _torch_shape(path, variable.get_value().shape)
        for key, (path, variable) in variables.items()
    }
    expected_shapes[FIXED_SCALE_KEY] = (architecture["embedding_dim"],)
    _check_keys_and_shapes(tensors, expected_shapes, architecture)
    fixed_scale = tensors[FIXED_SCALE_KEY]
    if not np.all(fixed_scale == 1.0):
        raise ValueError(
            f"{FIXED_SCALE_KEY} is not all ones (it ranges over [{fixed_scale.min()}, "
            f"{fixed_scale.max()}]); arcface_torch fixes it at 1 and so does IResNet"
        )

    final_size = architecture["input_resolution"] // 2 ** len(architecture["depths"])
    filled = []
    for key, (path, variable) in variables.items():
        value = _to_nnx(path, tensors[key], final_size, variable.get_value().dtype)
        filled.append((path, variable.replace(value)))
    model = nnx.merge(graphdef, nnx.from_flat_state(filled))
    model.eval()
    return model


def infer_arcface_architecture(tensors: Mapping[str, np.ndarray]) -> str | None:
    """The name in IRESNET_NAMES with the blocks per stage, widths and stem channels of the state
    dict `tensors` (read from its keys and convolution shapes); None if no name has them."""
    blocks_per_stage: dict[int, int] = {}
    for key in tensors:
        if match := _BLOCK_KEY.match(key):
            stage, block = int(match[1]), int(match[2])
            blocks_per_stage[stage] = max(blocks_per_stage.get(stage, 0), block + 1)
    stages = sorted(blocks_per_stage)
    if not stages or stages != list(range(1, len(stages) + 1)):
        return None
    width_keys = [f"layer{stage}.0.conv1.weight" for stage in stages] + ["conv1.weight"]
    if not all(key in tensors for key in width_keys):
        return None
    *widths, stem_channels = (tensors[key].shape[0] for key in width_keys)
    found = {
        "depths": [blocks_per_stage[stage] for stage in stages],
        "widths": widths,
        "stem_channels": stem_channels,
    }
    for name in IRESNET_NAMES:
        architecture = iresnet_architecture(name)
        if all(architecture[key] == value for key, value in found.items()):
            return name
    return None


def _torch_key(path: Sequence[Any]) -> str:
    """The state-dict key of the NNX variable at `path`, e.g. ('stages', 0, 1, 'bn1', 'mean')
    -> 'layer1.1.bn1.running_mean'."""
    *modules, leaf = path
    parts = []
    if modules[0] == "stages":
        stage, block, *modules = modules[1:]
        parts.append(f"layer{stage + 1}.{block}")
    parts += [_MODULE_NAMES.get(module, module) for module in modules]
    parts.append(_LEAF_NAMES[leaf])
    return ".".join(parts)


def _torch_shape(path: Sequence[Any], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The PyTorch shape of the NNX variable at `path`, of shape `shape`."""
    if tuple(path) == ("fc", "kernel"):  # [H*W*C, E] <- [E, C*H*W]
        return shape[1], shape[0]
    if path[-1] == "kernel":  # convolutions: HWIO <- OIHW
        return shape[3], shape[2], shape[0], shape[1]
    return shape


def _to_nnx(path: Sequence[Any], array: np.ndarray, final_size: int, dtype: np.dtype) -> jax.Array:
    """The PyTorch tensor of the variable at `path` in the NNX layout (see the module docstring)."""
    if tuple(path) == ("fc", "kernel"):
        array = einops.rearrange(array, "e (c h w) -> (h w c) e", h=final_size, w=final_size)
    elif path[-1] == "kernel":
        array = np.transpose(array, (2, 3, 1, 0))
    return jnp.asarray(array, dtype)


def _check_keys_and_shapes(
    tensors: Mapping[str, np.ndarray],
    expected_shapes: Mapping[str, tuple[int, ...]],
    architecture: dict[str, Any],
) -> None:
    given = {key for key in tensors if not key.endswith(IGNORED_SUFFIX)}
    missing = sorted(set(expected_shapes) - given, key=_natural_order)
    unexpected = sorted(given - set(expected_shapes), key=_natural_order)
    wrong_shapes = [
        f"{key}: checkpoint {tuple(tensors[key].shape)}, model {expected_shapes[key]}"
        for key in sorted(given & set(expected_shapes), key=_natural_order)
        if tuple(tensors[key].shape) != expected_shapes[key]
    ]
    if not (missing or unexpected or wrong_shapes):
        return
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_summarise(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_summarise(unexpected)}")
    if wrong_shapes:
        problems.append(f"shape mismatches ({len(wrong_shapes)}): {'; '.join(wrong_shapes)}")
    inferred = infer_arcface_architecture(tensors)
    hint = ""
    if inferred and any(
        list(iresnet_architecture(inferred)[key]) != list(architecture[key])
        for key in ("depths", "widths")
    ):
        hint = f" The checkpoint looks like {inferred}."
    raise ValueError(
        f"The state dict does not fit the IResNet with depths={architecture['depths']} "
        f"widths={architecture['widths']} stem_channels={architecture['stem_channels']} "
        f"input_resolution={architecture['input_resolution']} "
        f"embedding_dim={architecture['embedding_dim']}: " + "; ".join(problems) + "." + hint
    )


def _natural_order(key: str) -> list[tuple[int, int, str]]:
    """Sorts 'layer3.2.bn1' before 'layer3.10.bn1'."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in key.split(".")]


def _summarise(keys: Sequence[str]) -> str:
    """The keys, those of a block written as 'layer2.3.* (15 keys)' when there are many."""
    by_block: dict[str, list[str]] = {}
    for key in keys:
        match = _BLOCK_KEY.match(key)
        by_block.setdefault(match[0] + "*" if match else key, []).append(key)
    shown = []
    for group, members in by_block.items():
        if len(members) > _KEYS_SHOWN_PER_BLOCK:
            shown.append(f"{group} ({len(members)} keys)")
        else:
            shown.extend(members)
    return ", ".join(shown)
