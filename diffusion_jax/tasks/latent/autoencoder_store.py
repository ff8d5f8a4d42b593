"""A latent-diffusion autoencoder on disk: its weights, architecture, latent scale, provenance.

    DIR/autoencoder.json  {"format_version": 1, "architecture": {...}, "latent_scale": 0.18215,
                           "provenance": {...}, "weights_sha256": "..."}
    DIR/weights/          Orbax checkpoint of the AutoencoderKL's parameters

`architecture` holds the keyword arguments of `AutoencoderKL` (see
`core.models.autoencoder.autoencoder_architecture`), so the network is rebuilt exactly.
`latent_scale` is the factor s the diffusion model's latents are multiplied by, z_diffusion = s * z,
chosen so they have about unit variance (diffusers' `scaling_factor`). `provenance` says where the
weights came from (a training run, or a converted directory and its hashes). The layout, the
interrupted-save rule (autoencoder.json is written last) and the refusal of weights that do not fit
the architecture, naming each parameter and both shapes, are `model_store.ModelStore`'s. DIR may be
local or a `gs://` URL (`core.paths`).
"""

import dataclasses
import math
from typing import Any

from diffusion_jax.core import paths
from diffusion_jax.core.model_store import ModelStore
from diffusion_jax.core.models.autoencoder import AutoencoderKL

FORMAT_VERSION = 1
AUTOENCODER_JSON = "autoencoder.json"

_STORE = ModelStore(
    description_file=AUTOENCODER_JSON,
    format_version=FORMAT_VERSION,
    model_class=AutoencoderKL,
    written_by=(
        "Autoencoders are written by --mode=train_autoencoder and by "
        "`python -m diffusion_jax.convert autoencoder_kl`."
    ),
)


@dataclasses.dataclass(frozen=True)
class LoadedAutoencoder:
    model: AutoencoderKL
    architecture: dict[str, Any]
    latent_scale: float
    provenance: dict[str, Any]
    weights_sha256: str
    directory: str


def is_complete(directory: str) -> bool:
    """Whether `directory` holds a fully written autoencoder."""
    return _STORE.is_complete(directory)


def save_autoencoder(
    directory: str,
    model: AutoencoderKL,
    architecture: dict[str, Any],
    *,
    latent_scale: float,
    provenance: dict[str, Any],
) -> str:
    """Writes `model` to `directory` (which must not hold anything yet); returns the weights hash.

    Every process must call it (Orbax writes the shards each process holds); process 0 writes
    autoencoder.json once the weights are complete.
    """
    latent_scale = float(latent_scale)
    if not (math.isfinite(latent_scale) and latent_scale > 0):
        raise ValueError(f"latent_scale must be a positive finite number, got {latent_scale}")
    fields = {"latent_scale": latent_scale, "provenance": provenance}
    return _STORE.save(directory, model, architecture, fields)


def read_description(directory: str) -> dict[str, Any]:
    """The contents of DIR/autoencoder.json, checked for completeness and format version."""
    return _STORE.read_description(directory)


def load_autoencoder(directory: str) -> LoadedAutoencoder:
    """Rebuilds the autoencoder saved in `directory`, on the first local device."""
    model, description = _STORE.load(directory)
    return LoadedAutoencoder(
        model=model,
        architecture=description["architecture"],
        latent_scale=float(description["latent_scale"]),
        provenance=description.get("provenance", {}),
        weights_sha256=description["weights_sha256"],
        directory=str(paths.resolve(directory)),
    )
