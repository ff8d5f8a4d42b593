"""Imports diffusers `AutoencoderKL` directories (the VAEs of Stable Diffusion 1.x, 2.x and XL,
and others of their layout) into `core.models.autoencoder.AutoencoderKL`.

A diffusers model directory holds config.json and diffusion_pytorch_model.safetensors (a
diffusers pipeline keeps its VAE in the vae/ subdirectory).

config.json -> architecture and latent scale (`from_diffusers_config`), diffusers' defaults where
a key is absent:

    in_channels, out_channels, block_out_channels,     copied into the architecture
    layers_per_block, latent_channels, norm_num_groups,
    use_quant_conv, use_post_quant_conv,
    mid_block_add_attention
    scaling_factor                                      the latent scale (default 0.18215)
    down_block_types / up_block_types                   DownEncoderBlock2D / UpDecoderBlock2D,
                                                        one per entry of block_out_channels
    act_fn                                              "silu" (or its alias "swish")
    _class_name                                         "AutoencoderKL"
    shift_factor, latents_mean, latents_std             absent or null: the autoencoder
                                                        directory records a scale only (so the
                                                        VAEs of SD3 and Flux, which shift their
                                                        latents, are refused)
    sample_size, force_upcast, other "_" keys           ignored: tiling, half-precision and
                                                        bookkeeping settings of diffusers
Any other key, or another value, is refused with a ValueError naming the key, so nothing that
would change the network is dropped silently.

Tensors: the NNX path of every parameter, joined with dots, is its diffusers state-dict key with
`weight` for kernel and scale (see the module docstring of `core.models.autoencoder`):

    PyTorch key                                NNX path                     layout change
    *.conv*.weight, *quant_conv.weight         *.kernel                     OIHW -> HWIO
    *.to_q/to_k/to_v/to_out.0.weight [O, I]    *.kernel [I, O]              transposed
    *.norm*.weight, *.group_norm.weight        *.scale
    *.bias                                     *.bias

Older checkpoints name the attention projections query, key, value and proj_attn (diffusers
renames them when it loads them, too); they are read as to_q, to_k, to_v and to_out.0. Anything
missing, left over or of the wrong shape is refused with a ValueError that lists it.
"""

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffusion_jax.core import paths
from diffusion_jax.core.models.autoencoder import AutoencoderKL, autoencoder_architecture

DIFFUSERS_CONFIG = "config.json"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
DEFAULT_SCALING_FACTOR = 0.18215  # diffusers' default: Stable Diffusion's VAE

# config.json keys copied into the architecture, with diffusers' defaults.
_ARCHITECTURE_DEFAULTS = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [64],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
}
_BLOCK_TYPES = {"down_block_types": "DownEncoderBlock2D", "up_block_types": "UpDecoderBlock2D"}
_ACTIVATIONS = ("silu", "swish")
_ABSENT_OR_NULL = ("shift_factor", "latents_mean", "latents_std")
_IGNORED = ("sample_size", "force_upcast")

_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_OLD_ATTENTION_KEY = re.compile(
    r"^(?P<block>.+\.attentions\.\d+)\.(?P<name>query|key|value|proj_attn)\.(?P<leaf>weight|bias)$"
)
_OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
# Longer lists of keys are cut short in error messages.
_KEYS_SHOWN = 10


def read_diffusers_config(model_dir: str) -> dict[str, Any]:
    """The config.json of the diffusers model directory `model_dir` (local or a `gs://` URL)."""
    path = paths.resolve(model_dir) / DIFFUSERS_CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"No {DIFFUSERS_CONFIG} in {model_dir}: not a diffusers model directory (a diffusers "
            "pipeline keeps its VAE in the vae/ subdirectory)"
        )
    return paths.read_json(path)


def from_diffusers_config(config: Mapping[str, Any]) -> tuple[dict[str, Any], float]:
    """(architecture, latent scale) of the diffusers AutoencoderKL config.json `config`; refuses
    the configs this AutoencoderKL cannot reproduce (see the module docstring)."""
    known = {*_ARCHITECTURE_DEFAULTS, *_BLOCK_TYPES, *_ABSENT_OR_NULL, *_IGNORED}
    known |= {"scaling_factor", "act_fn"}
    unknown = sorted(key for key in config if key not in known and not key.startswith("_"))
    if unknown:
        raise ValueError(
            f"{DIFFUSERS_CONFIG} has keys this importer does not know: {unknown}; converting "
            "without them could change the network"
        )
    class_name = config.get("_class_name", "AutoencoderKL")
    if class_name != "AutoencoderKL":
        raise ValueError(f"_class_name is {class_name!r}; only 'AutoencoderKL' is supported")
    act_fn = config.get("act_fn", "silu")
    if act_fn not in _ACTIVATIONS:
        raise ValueError(f"act_fn is {act_fn!r}; only {_ACTIVATIONS} (SiLU) are supported")
    for key in _ABSENT_OR_NULL:
        if config.get(key) is not None:
            raise ValueError(
                f"{key} is {config[key]!r}; only null is supported (the autoencoder directory "
                "records one latent scale, no shift or per-channel statistics)"
            )
    architecture = autoencoder_architecture(
        **{key: config.get(key, default) for key, default in _ARCHITECTURE_DEFAULTS.items()}
    )
    num_blocks = len(architecture["block_out_channels"])
    for key, block_type in _BLOCK_TYPES.items():
        block_types = list(config.get(key, [block_type]))
        if block_types != [block_type] * num_blocks:
            raise ValueError(
                f"{key} is {block_types}; only {block_type}, once per entry of "
                f"block_out_channels ({num_blocks}), is supported"
            )
    scaling_factor = config.get("scaling_factor", DEFAULT_SCALING_FACTOR)
    positive = isinstance(scaling_factor, int | float) and 0 < scaling_factor < math.inf
    if not positive:
        raise ValueError(f"scaling_factor is {scaling_factor!r}; a positive number is needed")
    return architecture, float(scaling_factor)


def convert_autoencoder_kl_state_dict(
    tensors: Mapping[str, np.ndarray], architecture: dict[str, Any]
) -> AutoencoderKL:
    """The AutoencoderKL of `architecture` holding the weights of the diffusers state dict
    `tensors`; see the module docstring for the mapping."""
    tensors = _rename_old_attention_keys(tensors)
    abstract_model = nnx.eval_shape(lambda: AutoencoderKL(**architecture, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract_model)
    variables = {_torch_key(path): (path, v) for path, v in nnx.to_flat_state(abstract_state)}
    expected_shapes = {
        key: _torch_shape(variable.get_value().shape) for key, (_, variable) in variables.items()
    }
    _check_keys_and_shapes(tensors, expected_shapes, architecture)
    filled = [
        (path, variable.replace(_to_nnx(tensors[key], variable.get_value().dtype)))
        for key, (path, variable) in variables.items()
    ]
    return nnx.merge(graphdef, nnx.from_flat_state(filled))


def _rename_old_attention_keys(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`tensors` with query/key/value/proj_attn renamed to to_q/to_k/to_v/to_out.0."""
    renamed = {}
    for key, value in tensors.items():
        if match := _OLD_ATTENTION_KEY.match(key):
            new_key = f"{match['block']}.{_OLD_ATTENTION_NAMES[match['name']]}.{match['leaf']}"
            if new_key in tensors:
                raise ValueError(f"The state dict holds both {key} and {new_key}, its new name")
            key = new_key
        renamed[key] = value
    return renamed


def _torch_key(path: Sequence[Any]) -> str:
    """('encoder', 'down_blocks', 0, 'resnets', 1, 'norm1', 'scale')
    -> 'encoder.down_blocks.0.resnets.1.norm1.weight'."""
    *modules, leaf = path
    return ".".join([*map(str, modules), _LEAF_NAMES[leaf]])


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The PyTorch shape of an NNX parameter: OIHW for an HWIO kernel, [O, I] for [I, O]."""
    if len(shape) == 4:
        return shape[3], shape[2], shape[0], shape[1]
    return tuple(reversed(shape))


def _to_nnx(array: np.ndarray, dtype: np.dtype) -> jax.Array:
    """The PyTorch tensor in the NNX layout: OIHW -> HWIO, [O, I] -> [I, O]."""
    if array.ndim == 4:
        array = np.transpose(array, (2, 3, 1, 0))
    elif array.ndim == 2:
        array = array.T
    return jnp.asarray(array, dtype)


def _check_keys_and_shapes(
    tensors: Mapping[str, np.ndarray],
    expected_shapes: Mapping[str, tuple[int, ...]],
    architecture: dict[str, Any],
) -> None:
    missing = sorted(set(expected_shapes) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected_shapes))
    wrong_shapes = [
        f"{key}: checkpoint {tuple(tensors[key].shape)}, model {expected_shapes[key]}"
        for key in sorted(set(tensors) & set(expected_shapes))
        if tuple(tensors[key].shape) != expected_shapes[key]
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_cut(missing, ', ')}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_cut(unexpected, ', ')}")
    if wrong_shapes:
        problems.append(f"shape mismatches ({len(wrong_shapes)}): {_cut(wrong_shapes, '; ')}")
    if problems:
        raise ValueError(
            f"The state dict does not fit the AutoencoderKL {architecture}: " + ". ".join(problems)
        )


def _cut(items: list[str], separator: str) -> str:
    """The first _KEYS_SHOWN items, joined."""
    shown = separator.join(items[:_KEYS_SHOWN])
    return shown if len(items) <= _KEYS_SHOWN else f"{shown}{separator}..."
