"""Where the diffusion model works (`config.diffusion.space`): pixels, or an autoencoder's latents.

    pixel   x_0 = x                              [B, R, R, 3], the image in [-1, 1]
    latent  x_0 = s * mu(x)                      [B, R/f, R/f, latent_channels]
            x   = clip(D(x_0 / s), -1, 1)        decoding a sample back to an image

with mu(x) the mean of the autoencoder's posterior q(z | x), D its decoder, f its downsampling
factor and s its latent scale (`latent.latent_scale`: 1 / std of the training latents). The
diffusion model is trained on posterior means, the mode of q(z | x), rather than on posterior
samples as latent-diffusion does: the latent of an image is then a function of the image, so
training batches are reproducible. The KL-regularised posterior's std is small against the
spread of the means; `--mode=train_autoencoder` logs both.

Latents are encoded on the fly, on the device, from each (augmented) training batch, as the
identity conditions are: nothing is cached, so nothing can go stale when the data or the
autoencoder change.

The UNet's input shape follows from the config alone (`diffusion_shape`), so a model can be built
before any autoencoder exists; a loaded autoencoder must then match `config.autoencoder`.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from diffusion_jax.core import parallel
from diffusion_jax.core.models.autoencoder import autoencoder_architecture
from diffusion_jax.core.run_layout import RunLayout
from diffusion_jax.tasks.latent.autoencoder_store import LoadedAutoencoder, load_autoencoder

SPACES = ("pixel", "latent")
IMAGE_CHANNELS = 3
# config.autoencoder fields that are architecture arguments of AutoencoderKL.
ARCHITECTURE_FIELDS = (
    "block_out_channels",
    "layers_per_block",
    "latent_channels",
    "norm_num_groups",
    "mid_block_add_attention",
)


def configured_autoencoder_architecture(config: ml_collections.ConfigDict) -> dict:
    """The AutoencoderKL keyword arguments that `config.autoencoder` describes."""
    return autoencoder_architecture(
        **{field: config.autoencoder[field] for field in ARCHITECTURE_FIELDS},
        in_channels=IMAGE_CHANNELS,
        out_channels=IMAGE_CHANNELS,
    )


def downsampling_factor(config: ml_collections.ConfigDict) -> int:
    """f = 2^(number of autoencoder blocks - 1)."""
    return 2 ** (len(config.autoencoder.block_out_channels) - 1)


def diffusion_shape(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(side, channels) of x_0: (R, 3) for pixels, (R / f, latent_channels) for latents."""
    if config.diffusion.space == "pixel":
        return config.data.resolution, IMAGE_CHANNELS
    if config.diffusion.space == "latent":
        side = config.data.resolution // downsampling_factor(config)
        return side, config.autoencoder.latent_channels
    raise ValueError(f"diffusion.space must be one of {SPACES}, got {config.diffusion.space!r}")


def check_matches_config(autoencoder: LoadedAutoencoder, config: ml_collections.ConfigDict) -> None:
    """Refuses an autoencoder whose architecture is not the one `config.autoencoder` describes,
    naming every differing field with both values."""
    expected = configured_autoencoder_architecture(config)
    differing = [
        f"{key}: the autoencoder has {autoencoder.architecture.get(key)!r}, "
        f"config.autoencoder has {value!r}"
        for key, value in expected.items()
        if autoencoder.architecture.get(key) != value
    ]
    if differing:
        raise ValueError(
            f"The autoencoder in {autoencoder.directory} is not the one config.autoencoder "
            "describes:\n  " + "\n  ".join(differing) + "\nSet the config fields to the "
            "autoencoder's values (e.g. --config.autoencoder.latent_channels=...)."
        )


class DiffusionSpace:
    """Maps images to the diffusion model's x_0 and back (module docstring).

    `encode(images)`: a global device batch, sharded over the mesh -> x_0 sharded the same way.
    `encode_arrays(images)` / `decode(x_0)`: any batch, e.g. figure rows; decode returns images
    in [-1, 1]. In pixel space all three return their input.
    """

    def __init__(self, mesh: Mesh, autoencoder: LoadedAutoencoder | None = None):
        self.autoencoder = autoencoder
        if autoencoder is None:
            return
        graphdef, weights = nnx.split(autoencoder.model)
        scale = autoencoder.latent_scale
        self.weights = parallel.replicate(weights, mesh)

        def encode(weights: nnx.State, images: jax.Array) -> jax.Array:
            mean, _ = nnx.merge(graphdef, weights).encode(images)
            return scale * mean

        def decode(weights: nnx.State, x0: jax.Array) -> jax.Array:
            images = nnx.merge(graphdef, weights).decode(x0 / scale)
            return jnp.clip(images.astype(jnp.float32), -1.0, 1.0)

        batch = parallel.batch_sharding(mesh)
        self._encode_sharded = jax.jit(
            encode, in_shardings=(parallel.replicated(mesh), batch), out_shardings=batch
        )
        self._encode = jax.jit(encode)
        self._decode = jax.jit(decode)

    @property
    def is_latent(self) -> bool:
        return self.autoencoder is not None

    def encode(self, images: jax.Array) -> jax.Array:
        return self._encode_sharded(self.weights, images) if self.is_latent else images

    def encode_arrays(self, images: np.ndarray | jax.Array) -> jax.Array:
        return self._encode(self.weights, images) if self.is_latent else images

    def decode(self, x0: np.ndarray | jax.Array) -> jax.Array:
        return self._decode(self.weights, x0) if self.is_latent else x0


def diffusion_space(config: ml_collections.ConfigDict, workdir: str, mesh: Mesh) -> DiffusionSpace:
    """The space of `config.diffusion.space`; in latent space, the run layout's autoencoder
    (`config.autoencoder.checkpoint`, else WORKDIR/autoencoder/model), checked against
    `config.autoencoder`."""
    diffusion_shape(config)  # refuses an unknown space
    if config.diffusion.space == "pixel":
        return DiffusionSpace(mesh)
    autoencoder = load_autoencoder(RunLayout.from_config(workdir, config).autoencoder.export_dir)
    check_matches_config(autoencoder, config)
    return DiffusionSpace(mesh, autoencoder)
