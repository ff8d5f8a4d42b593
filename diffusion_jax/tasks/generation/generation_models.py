"""The networks a generation job runs, loaded once, and the jitted batches they compute.

    GenerationModels.draw(cond [B, D], keys [B], style_images=None)  ->  uint8 [B, R, R, 3]
        the samples, decoded to images in latent space, as a jax.Array still in flight; with
        style images (float32 [B, R, R, 3] in [-1, 1], `style_sources`), each starts from its
        style image (encoded, in latent space) noised to generate.style_strength (SDEdit)
    GenerationModels.embed_round(pixels uint8 [n, R, R, 3])
        ->  (judge, condition, training_similarity, training_index, training_label):
        judge       float32 [P, D_J]    the judge encoder's unit embeddings of the stored pixels
                                        (rows :n; P = images_per_identity, padding included)
        condition   float32 [P, D]      the conditioning encoder's, for cos(E(x), c) in the
                                        manifest (the generator's own, optimistic view)
        training_*  [P]                 the judge cosine to the nearest real training image,
                                        its index and label (`training_images`; set them first
                                        with `use_training_images`)

Both are dispatched asynchronously (JAX returns before the device finishes) as jax.Arrays still
in flight, so a caller can queue the next batch before reading these. `embed_round` embeds one
identity's round as rows 0..n-1 of a batch of `images_per_identity`: an embedding's last bits
depend on its row in the batch (`EmbeddingExtractor.embed_batch`), so judging a round alone,
rather than inside whatever sampler batch drew it, makes the records the same bits whichever
worker draws the identity.
The batches are split over the mesh's devices and every network's weights are replicated.

The judge is `config.generate.judge_encoder`, or WORKDIR/judge/encoder/model, which the
pipeline's `judge` stage trains with the conditioning encoder's recipe and `encoder.seed + 1`.
A judge with the conditioning encoder's weights is refused.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from diffusion_jax.core import parallel
from diffusion_jax.core.diffusion.schedules import schedule_from_config
from diffusion_jax.core.fingerprint import array_tree_sha256
from diffusion_jax.core.run_layout import RunLayout
from diffusion_jax.tasks.conditional_diffusion.denoiser import unet_graphdef
from diffusion_jax.tasks.conditional_diffusion.sample_functions import make_sample_fn
from diffusion_jax.tasks.conditional_diffusion.sampling_params import restore_sampling_params
from diffusion_jax.tasks.generation.style_sources import StyleSource
from diffusion_jax.tasks.generation.training_images import NearestTrainingImages, TrainingImages
from diffusion_jax.tasks.latent.diffusion_space import diffusion_space
from diffusion_jax.tasks.recognition import encoder_store
from diffusion_jax.tasks.recognition.embeddings import EmbeddingExtractor


def judge_directory(config: ml_collections.ConfigDict, workdir: str) -> str:
    """`config.generate.judge_encoder`, else WORKDIR/judge/encoder/model."""
    return str(RunLayout.from_config(workdir, config).judge.export_dir)


def _to_uint8(images: jax.Array) -> jax.Array:
    return jnp.clip(jnp.round((images + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


class GenerationModels:
    """The diffusion model (sampling parameters of its checkpoint), its diffusion space, the
    conditioning encoder and the judge, on `mesh`; `identity` describes them for the manifest."""

    nearest_training: NearestTrainingImages | None = None  # `use_training_images`
    style_source: StyleSource | None = None  # `use_style_source`

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, judge_dir: str, mesh: Mesh):
        self.mesh = mesh
        self.params, self.step = restore_sampling_params(config, workdir, mesh)
        conditioning = encoder_store.load_encoder(
            RunLayout.from_config(workdir, config).encoder.export_dir
        )
        judge = encoder_store.load_encoder(judge_dir)
        if judge.weights_sha256 == conditioning.weights_sha256:
            raise ValueError(
                f"The judge {judge.directory} has the conditioning encoder's weights; generated "
                "images must be filtered by a different network (config.generate.judge_encoder)."
            )
        self.conditioning = EmbeddingExtractor(conditioning.model, mesh, flip=False)
        self.judge = EmbeddingExtractor(judge.model, mesh, flip=False)
        self.space = diffusion_space(config, workdir, mesh)
        schedule = schedule_from_config(
            config.diffusion.beta_schedule, config.diffusion.num_timesteps
        )
        graphdef = unet_graphdef(config)
        self.sample_fn = make_sample_fn(graphdef, schedule, config)  # (params, cond, keys) -> x_0
        self._sample_unconditional = make_sample_fn(graphdef, schedule, config, guidance_scale=0)
        self._sample_styled = None  # (params, cond, keys, start_x0) -> x_0
        if config.generate.style_source != "none":
            self._sample_styled = make_sample_fn(
                graphdef, schedule, config, strength=config.generate.style_strength
            )
        self.condition_dim = config.condition.dim
        self.round_batch_size = config.generate.images_per_identity
        self.identity = {
            "diffusion": {"step": self.step, "params_sha256": array_tree_sha256(self.params)},
            "conditioning_encoder": conditioning.weights_sha256,
            "judge_encoder": judge.weights_sha256,
        }
        if self.space.is_latent:
            self.identity["autoencoder"] = self.space.autoencoder.weights_sha256
        logging.info(
            "Generating with diffusion step %d, conditioning encoder %s, judge %s.",
            self.step,
            conditioning.directory,
            judge.directory,
        )

    def _put(self, array) -> jax.Array:
        return jax.device_put(array, parallel.batch_sharding(self.mesh))

    def draw(
        self, cond: np.ndarray, keys: jax.Array, style_images: np.ndarray | None = None
    ) -> jax.Array:
        """Samples one image per row of `cond`, example b from keys[b], starting from
        style_images[b] when given (module docstring)."""
        if style_images is None:
            x0 = self.sample_fn(self.params, self._put(cond), self._put(keys))
        else:
            if self._sample_styled is None:
                raise ValueError("style images need config.generate.style_source other than 'none'")
            start_x0 = self.space.encode(self._put(np.asarray(style_images, np.float32)))
            x0 = self._sample_styled(self.params, self._put(cond), self._put(keys), start_x0)
        return _to_uint8(self.space.decode(x0))

    def use_style_source(self, style_source: StyleSource | None) -> None:
        """Where styled images start (`style_sources`; None: from noise), read by the drawing
        of shards (`shard_drawing.dispatch`) and by their judging."""
        if style_source is not None and self._sample_styled is None:
            raise ValueError("a style source needs config.generate.style_source other than 'none'")
        self.style_source = style_source

    def use_training_images(self, training: TrainingImages) -> None:
        """The judge embeddings of the real training images that `embed_round` searches."""
        self.nearest_training = NearestTrainingImages(training, self.mesh)

    def embed_round(self, pixels: np.ndarray) -> tuple[jax.Array, ...]:
        """(judge, conditioning) unit embeddings of one identity's round of n stored images and
        (cosine, index, label) of each one's nearest training image under the judge, as queued
        on the device (read them without waiting on later work: rows :n of each)."""
        if self.nearest_training is None:
            raise ValueError("call use_training_images before embed_round")
        judge = self.judge.dispatch_batch(pixels, self.round_batch_size)
        return (
            judge,
            self.conditioning.dispatch_batch(pixels, self.round_batch_size),
            *self.nearest_training.dispatch(judge),
        )

    def draw_unconditional(self, keys: jax.Array) -> jax.Array:
        """Unconditional images [B, R, R, 3] in [-1, 1] (guidance scale 0), one per key."""
        cond = np.zeros((keys.shape[0], self.condition_dim), np.float32)
        return self.space.decode(
            self._sample_unconditional(self.params, self._put(cond), self._put(keys))
        )
