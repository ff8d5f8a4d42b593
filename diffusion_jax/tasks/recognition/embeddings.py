"""Identity embeddings of images: one jitted, sharded function of a frozen encoder.

    e(x) = f(x) / ||f(x)||                          (flip=False)
    e(x) = (f(x) + f(mirror(x))) / ||f(x) + f(mirror(x))||   (flip=True, insightface's evaluation)

where f is the encoder applied to x resized (bilinear, antialiased) to its input resolution.
Images are NHWC in [-1, 1] (uint8 arrays are mapped to that range first). The batch is split
over the mesh's devices and the weights are replicated; `embed_batch` embeds up to one padded
batch, `embed_arrays` a whole dataset in such batches (one compilation) with a progress bar.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax import nnx
from jax.sharding import Mesh

from diffusion_jax.core import parallel
from diffusion_jax.core.models.iresnet import IResNet
from diffusion_jax.tasks.data.sources.image_decoding import to_model_range


def resize_to(images: jax.Array, resolution: int) -> jax.Array:
    """Bilinear (antialiased) resize of NHWC images to resolution x resolution, if needed."""
    if images.shape[1:3] == (resolution, resolution):
        return images
    return jax.image.resize(
        images, (images.shape[0], resolution, resolution, images.shape[3]), "bilinear"
    )


def unit_embeddings(model: IResNet, images: jax.Array, *, flip: bool) -> jax.Array:
    """The encoder's unit-norm embeddings of `images` (see the module docstring)."""
    images = resize_to(images, model.input_resolution)
    embeddings = model(images).astype(jnp.float32)
    if flip:
        embeddings = embeddings + model(images[:, :, ::-1, :]).astype(jnp.float32)
    return embeddings / jnp.maximum(jnp.linalg.norm(embeddings, axis=-1, keepdims=True), 1e-12)


class EmbeddingExtractor:
    """`extractor(images) -> unit embeddings` on the device, for a frozen encoder in eval mode."""

    def __init__(self, model: IResNet, mesh: Mesh, *, flip: bool):
        model.eval()
        graphdef, state = nnx.split(model)
        self.mesh = mesh
        self.embedding_dim = model.embedding_dim
        self.weights = parallel.replicate(state, mesh)  # replicated encoder state

        def embed(state: nnx.State, images: jax.Array) -> jax.Array:
            return unit_embeddings(nnx.merge(graphdef, state), images, flip=flip)

        in_shardings = (parallel.replicated(mesh), parallel.batch_sharding(mesh))
        # `embed_sharded(weights, images)`: the jitted function `extractor(images)` calls.
        self.embed_sharded = jax.jit(
            embed, in_shardings=in_shardings, out_shardings=parallel.batch_sharding(mesh)
        )
        self._embed_replicated = jax.jit(
            embed, in_shardings=in_shardings, out_shardings=parallel.replicated(mesh)
        )

    def __call__(self, images: jax.Array) -> jax.Array:
        """Embeddings [B, D] of a global batch of images [B, H, W, 3] in [-1, 1], sharded like
        the images (ready for a train step)."""
        return self.embed_sharded(self.weights, images)

    def embed_batch(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        """Embeddings float32 [n, D] of n <= batch_size host images (uint8, or floats in [-1,
        1]), computed as rows 0..n-1 of one batch of `batch_size` (rounded up to a multiple of
        the device count) padded with zeros.

        An image's bits depend on its row and the batch size, not on the other rows: XLA's CPU
        kernels tile the batch, and rows in different tiles round differently (by ~1e-7).
        """
        return np.asarray(self.dispatch_batch(images, batch_size))[: len(images)]

    def dispatch_batch(self, images: np.ndarray, batch_size: int) -> jax.Array:
        """`embed_batch` without waiting: the replicated embeddings [batch_size, D] as queued on
        the device, of which the first len(images) rows are the images'."""
        num_devices = self.mesh.devices.size
        batch_size = -(-batch_size // num_devices) * num_devices
        if len(images) > batch_size:
            raise ValueError(f"{len(images)} images do not fit a batch of {batch_size}")
        chunk = np.asarray(images)
        chunk = to_model_range(chunk) if chunk.dtype == np.uint8 else chunk.astype(np.float32)
        padded = np.zeros((batch_size,) + chunk.shape[1:], np.float32)
        padded[: len(chunk)] = chunk
        batch = jax.make_array_from_callback(
            padded.shape, parallel.batch_sharding(self.mesh), functools.partial(_index, padded)
        )
        return self._embed_replicated(self.weights, batch)

    def embed_arrays(
        self, images: np.ndarray, *, batch_size: int = 256, description: str = "Embedding"
    ) -> np.ndarray:
        """Embeddings float32 [N, D] of host images [N, H, W, 3] (uint8, or floats in [-1, 1]),
        in `embed_batch`es of `batch_size` (one compilation serves all).

        Every process must call it with the same images.
        """
        embeddings = np.zeros((len(images), self.embedding_dim), np.float32)
        for start in tqdm.tqdm(
            range(0, len(images), batch_size),
            desc=description,
            unit="batch",
            disable=jax.process_index() > 0,
        ):
            chunk = images[start : start + batch_size]
            embeddings[start : start + len(chunk)] = self.embed_batch(chunk, batch_size)
        return embeddings


def _index(array: np.ndarray, index: tuple[slice, ...]) -> np.ndarray:
    return array[index]
