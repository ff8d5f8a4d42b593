"""Identity-conditioned diffusion on faces: the config entry point and its presets.

Use as `--config=configs/faces.py` (the `base` preset) or `--config=configs/faces.py:PRESET`:

    demo   a 2-core CPU, minutes: 32x32 procedural faces, latent diffusion on 8x8x4 latents of a
           small autoencoder with a small UNet (`demo,pixel`: in pixels).
    base   one GPU: 64x64, an ADM UNet.
    large  a TPU pod slice or several GPUs: 112x112, parameters sharded over an `fsdp` mesh axis.

Every preset is the shared default (configs/default.py, where each key is described) with the
values of configs/presets/PRESET.py. The unit tests' tiny config is tests/configs/unit.py.

Each preset runs in its default space (`config.diffusion.space`); `PRESET,latent` or
`PRESET,pixel` chooses the space, e.g. `--config=configs/faces.py:demo,latent`: latent diffusion
on the autoencoder of `config.autoencoder`, with the UNet adapted to the latents' size
(`apply_latent` of the preset).

Every field can be overridden on the command line, e.g. `--config.train.batch_size=256`; unknown
keys and values of the wrong type are refused (the config is locked and type-checked).
"""

import importlib.util
import os

import ml_collections

PRESETS = ("base", "demo", "large")
SPACES = ("pixel", "latent")

# config_flags loads this file by path, not as a package: its siblings are loaded by path too.
_HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(preset: str = "base") -> ml_collections.ConfigDict:
    """Returns the config of `preset` (see the module docstring), e.g. "demo" or "demo,latent"."""
    name, _, space = (preset or "base").partition(",")
    if name not in PRESETS:
        raise ValueError(
            f"Unknown preset {name!r} in configs/faces.py; choose one of {sorted(PRESETS)}"
            + (" (the unit tests' config is tests/configs/unit.py)." if name == "test" else ".")
        )
    if space not in ("",) + SPACES:
        raise ValueError(
            f"Unknown space {space!r} in preset {preset!r}; write PRESET,pixel or PRESET,latent."
        )
    default = _load("default.py")
    settings = _load(os.path.join("presets", f"{name}.py"))
    config = default.get_config()
    config.lock()  # a preset changes values only: a key the default lacks is an error
    settings.apply(config)
    if space:
        config.diffusion.space = space
    if config.diffusion.space == "latent":
        default.apply_latent(config)
        settings.apply_latent(config)
    config.preset = preset
    config.unlock()
    return config


def _load(relative_path: str):
    """The module in `relative_path` from this directory."""
    path = os.path.join(_HERE, relative_path)
    module_name = "faces_configs." + os.path.splitext(relative_path)[0].replace(os.sep, ".")
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
