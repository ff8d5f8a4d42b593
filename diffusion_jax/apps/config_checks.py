"""Checks that a config's values are consistent, before anything runs.

The locked `ml_collections` config already refuses unknown keys and values of the wrong type;
this module refuses values that are well-typed but wrong (an unknown sampler, a batch that does
not divide, a model whose resolutions do not fit), naming the offending field. Where a component
validates its own arguments (schedules, samplers, the UNet), it is asked, so there is one source
of truth for what is allowed.
"""

import inspect
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from diffusion_jax.core import paths
from diffusion_jax.core.bad_input import BadInputError
from diffusion_jax.core.diffusion.losses import LOSS_WEIGHTINGS
from diffusion_jax.core.diffusion.parameterization import PREDICTION_TYPES
from diffusion_jax.core.diffusion.samplers import check_strength, get_sampler
from diffusion_jax.core.diffusion.schedules import beta_schedule
from diffusion_jax.core.models.iresnet import IRESNET_NAMES
from diffusion_jax.core.models.margin_heads import MARGIN_PRESETS
from diffusion_jax.core.training import state as state_lib
from diffusion_jax.tasks.conditional_diffusion.denoiser import unet_graphdef
from diffusion_jax.tasks.conditional_diffusion.identity_conditions import CONDITION_SOURCES
from diffusion_jax.tasks.data.faces import procedural_faces
from diffusion_jax.tasks.data.sources import image_decoding, input_pipeline
from diffusion_jax.tasks.generation import dataset_writers
from diffusion_jax.tasks.generation.identity_sources import IDENTITY_SOURCES
from diffusion_jax.tasks.generation.style_sources import STYLE_SOURCES
from diffusion_jax.tasks.latent.autoencoder_training import autoencoder_builder
from diffusion_jax.tasks.latent.diffusion_space import SPACES, downsampling_factor
from diffusion_jax.tasks.recognition.encoder_training import encoder_builder, encoder_margins

SUPPORTED = {
    "data.source": input_pipeline.SOURCES,
    "data.image_policy": image_decoding.POLICIES,
    "condition.source": CONDITION_SOURCES,
    "encoder.architecture": IRESNET_NAMES,
    "encoder.head": tuple(MARGIN_PRESETS),
    "train.lr_decay": state_lib.LR_DECAYS,
    "encoder.train.lr_decay": state_lib.LR_DECAYS,
    "autoencoder.train.lr_decay": state_lib.LR_DECAYS,
    "diffusion.space": SPACES,
    "model.dtype": tuple(state_lib.COMPUTE_DTYPES),
    "diffusion.prediction_type": PREDICTION_TYPES,
    "diffusion.loss_weighting": LOSS_WEIGHTINGS,
}


class ConfigError(BadInputError):
    """A config value is inconsistent: `source` is "config.<field>"; `str(error)` is `message`,
    which names the field and its value."""

    def __init__(self, field: str, message: str):
        super().__init__(f"config.{field}", message)
        self.args = (message,)


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first inconsistent field of `config`."""
    for field, allowed in SUPPORTED.items():
        value = _get(config, field)
        if value not in allowed:
            raise ConfigError(field, f"config.{field}={value!r} is not one of {list(allowed)}.")

    _require(
        config,
        "data.resolution",
        lambda r: procedural_faces.MIN_RESOLUTION <= r <= procedural_faces.MAX_RESOLUTION,
        f"must lie in [{procedural_faces.MIN_RESOLUTION}, {procedural_faces.MAX_RESOLUTION}]",
    )
    for field in (
        "data.num_train_identities",
        "data.images_per_train_identity",
        "data.num_heldout_identities",
        "data.images_per_heldout_identity",
        "data.pairs_per_fold",
        "sample.samples_per_identity",
        "condition.dim",
        "diffusion.num_timesteps",
        "encoder.embedding_dim",
        "encoder.margin_scale",
        "evaluate.batch_size",
        "evaluate.consistency_samples_per_identity",
    ):
        _require(config, field, lambda v: v > 0, "must be positive")
    for section in ("train", "encoder.train", "autoencoder.train"):
        _validate_train_section(config, section)
    _require(config, "evaluate.consistency_identities", lambda v: v >= 2, "must be >= 2")
    _require(
        config,
        "evaluate.real_images_per_identity",
        lambda v: v >= 2,
        "must be >= 2 (the source image and a second real one)",
    )
    _require(config, "evaluate.validation_fraction", lambda v: 0 < v < 1, "must lie in (0, 1)")
    _require(
        config,
        "evaluate.spread_seeds",
        lambda seeds: len(set(seeds)) == len(seeds) and config.recognizer.seed not in seeds,
        f"must be distinct seeds other than recognizer.seed={config.recognizer.seed}",
    )
    _require(config, "train.figures_every_steps", lambda v: v >= 0, "must be >= 0 (0 = at the end)")
    _require(config, "condition.p_uncond", lambda v: 0 <= v <= 1, "must lie in [0, 1]")
    _require(config, "condition.partial_dropout", lambda v: 0 <= v < 1, "must lie in [0, 1)")
    _require(config, "sample.guidance_scale", lambda v: v >= 0, "must be >= 0")
    _require(
        config,
        "sample.num_steps",
        lambda v: 0 < v <= config.diffusion.num_timesteps,
        f"must lie in [1, diffusion.num_timesteps={config.diffusion.num_timesteps}]",
    )
    _require(config, "sample.identities", lambda ids: len(ids) > 0, "must not be empty")
    if config.data.source == "procedural":  # other sources know their identities once read
        _require(
            config,
            "sample.identities",
            lambda ids: all(0 <= i < config.data.num_train_identities for i in ids),
            f"must be training labels in [0, {config.data.num_train_identities})",
        )
        _require(
            config,
            "evaluate.consistency_identities",
            lambda n: n <= config.data.num_train_identities,
            f"must be at most data.num_train_identities={config.data.num_train_identities}",
        )
    elif config.data.source in ("image_folder", "recordio"):
        _require(config, "data.path", lambda p: paths.resolve(p).exists(), "does not exist")
    _require(
        config,
        "mesh.data",
        lambda v: v == -1 or v > 0,
        "must be positive or -1 (all remaining devices)",
    )
    _require(config, "mesh.fsdp", lambda v: v == -1 or v > 0, "must be positive or -1")

    _validate_autoencoder(config)  # before the UNet: in latent space it defines x_0's shape
    _ask(
        "diffusion.beta_schedule",
        lambda: beta_schedule(config.diffusion.beta_schedule, config.diffusion.num_timesteps),
    )
    _ask("sample.sampler", lambda: get_sampler(config.sample.sampler))
    _ask("model", lambda: unet_graphdef(config))
    _validate_encoder(config)
    _validate_generate(config)


def _validate_generate(config: ml_collections.ConfigDict) -> None:
    for field in (
        "num_identities",
        "identities_per_shard",
        "batch_size",
        "candidates_per_identity",
        "identities_timeout_minutes",
        "dataset_timeout_minutes",
    ):
        _require(config, f"generate.{field}", lambda v: v > 0, "must be positive")
    _require(
        config,
        "generate.images_per_identity",
        lambda v: v >= 2,
        "must be >= 2 (an image is judged against the identity's other images)",
    )
    _require(config, "generate.max_resample_rounds", lambda v: v >= 0, "must be >= 0")
    _require(
        config,
        "generate.batch_size",
        lambda v: v % jax.local_device_count() == 0,
        f"must be divisible by the {jax.local_device_count()} local devices",
    )
    for field in (
        "max_identity_similarity",
        "max_training_similarity",
        "min_judge_similarity",
        "max_duplicate_similarity",
        "max_training_image_similarity",
    ):
        _require(config, f"generate.{field}", lambda v: -1 <= v <= 1, "must lie in [-1, 1]")
    _require(
        config,
        "generate.identity_source",
        lambda v: v in IDENTITY_SOURCES,
        f"is not one of {list(IDENTITY_SOURCES)}",
    )
    _validate_style(config)
    _require(
        config,
        "generate.image_format",
        lambda v: v in dataset_writers.IMAGE_FORMATS,
        f"is not one of {list(dataset_writers.IMAGE_FORMATS)}",
    )
    _require(config, "generate.jpeg_quality", lambda v: 1 <= v <= 100, "must lie in [1, 100]")
    _require(
        config,
        "generate.formats",
        lambda formats: formats and set(formats) <= set(dataset_writers.FORMATS),
        f"must be a non-empty tuple of {list(dataset_writers.FORMATS)}",
    )
    if config.generate.identity_source == "images":
        _require_directory(config, "generate.identity_images", "a folder of identity images")
    if config.generate.judge_encoder:
        _require_directory(config, "generate.judge_encoder", "an encoder directory")
    for field in (
        "data.max_identities",
        "data.max_images_per_identity",
        "recognizer.num_identities",
        "recognizer.images_per_identity",
    ):
        _require(config, field, lambda v: v == -1 or v > 0, "must be -1 (all) or positive")
    for field in ("data.max_shift", "recognizer.max_shift"):
        _require(
            config,
            field,
            lambda v: 0 <= v < config.data.resolution // 2,
            f"must lie in [0, data.resolution / 2 = {config.data.resolution // 2})",
        )
    _require(config, "recognizer.color_jitter", lambda v: 0 <= v < 1, "must lie in [0, 1)")
    _require(
        config,
        "recognizer.data_source",
        lambda v: v in ("",) + input_pipeline.SOURCES,
        f"is not '' (config.data) or one of {list(input_pipeline.SOURCES)}",
    )


def _validate_style(config: ml_collections.ConfigDict) -> None:
    """generate.style_*: style from real images (`tasks.generation.style_sources`)."""
    _require(
        config,
        "generate.style_source",
        lambda v: v in STYLE_SOURCES,
        f"is not one of {list(STYLE_SOURCES)}",
    )
    _ask("generate.style_strength", lambda: check_strength(config.generate.style_strength))
    _require(config, "generate.max_style_similarity", lambda v: -1 <= v <= 1, "must lie in [-1, 1]")
    if config.generate.style_source != "none":
        _require(
            config,
            "sample.sampler",
            lambda name: "strength" in inspect.signature(get_sampler(name)).parameters,
            "cannot start part-way (no `strength` option), which generate.style_source="
            f"{config.generate.style_source!r} needs",
        )


def _validate_train_section(config: ml_collections.ConfigDict, section: str) -> None:
    """The fields every training run reads (`core.training.loop`): config.train and
    config.encoder.train."""
    for field in (
        "batch_size",
        "num_steps",
        "log_every_steps",
        "checkpoint_every_steps",
        "keep_checkpoints",
        "learning_rate",
        "grad_clip_norm",
    ):
        _require(config, f"{section}.{field}", lambda v: v > 0, "must be positive")
    _require(
        config,
        f"{section}.batch_size",
        lambda v: v % jax.device_count() == 0,
        f"must be divisible by the {jax.device_count()} devices",
    )
    _require(config, f"{section}.warmup_steps", lambda v: v >= 0, "must be >= 0")
    _require(config, f"{section}.ema_decay", lambda v: 0 <= v < 1, "must lie in [0, 1)")


def _validate_encoder(config: ml_collections.ConfigDict) -> None:
    _require(config, "encoder.margins", lambda m: len(m) in (0, 3), "must be () or (m1, m2, m3)")
    _ask("encoder.margins", lambda: encoder_margins(config.encoder))
    _ask("encoder", lambda: state_lib.model_graphdef(encoder_builder(config, num_classes=2)))
    if config.encoder.checkpoint:
        _require_directory(
            config,
            "encoder.checkpoint",
            "an encoder written by --mode=train_encoder or "
            "`python -m diffusion_jax.convert arcface_torch`",
        )
    elif config.condition.source == "encoder":
        _require(
            config,
            "condition.dim",
            lambda d: d == config.encoder.embedding_dim,
            f"must equal encoder.embedding_dim={config.encoder.embedding_dim}",
        )


def _validate_autoencoder(config: ml_collections.ConfigDict) -> None:
    weights = ("kl_weight", "perceptual_weight", "discriminator_weight", "discriminator_start_step")
    for field in weights:
        _require(config, f"autoencoder.{field}", lambda v: v >= 0, "must be >= 0")
    _require(config, "autoencoder.scale_batches", lambda v: v > 0, "must be positive")
    _ask("autoencoder", lambda: state_lib.model_graphdef(autoencoder_builder(config)))
    if config.autoencoder.discriminator_weight > 0:
        min_side = 3 * 2**config.autoencoder.discriminator_layers
        _require(
            config,
            "autoencoder.discriminator_layers",
            lambda _: config.data.resolution >= min_side,
            f"needs images of at least {min_side} pixels, but data.resolution is "
            f"{config.data.resolution}",
        )
    if config.diffusion.space != "latent":
        return
    factor = downsampling_factor(config)
    _require(
        config,
        "data.resolution",
        lambda r: r % factor == 0,
        f"must be a multiple of the autoencoder's downsampling factor {factor}",
    )
    _require(
        config,
        "sample.clip_x0",
        lambda clip: not clip,
        "must be False in latent space: latents are not confined to [-1, 1]",
    )
    if config.autoencoder.checkpoint:
        _require_directory(
            config,
            "autoencoder.checkpoint",
            "an autoencoder written by "
            "--mode=train_autoencoder or `python -m diffusion_jax.convert autoencoder_kl`",
        )


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
    value = config
    for key in field.split("."):
        value = value[key]
    return value


def _require(
    config: ml_collections.ConfigDict, field: str, predicate: Callable[[Any], bool], rule: str
) -> None:
    value = _get(config, field)
    if not predicate(value):
        raise ConfigError(field, f"config.{field}={value!r} {rule}.")


def _require_directory(config: ml_collections.ConfigDict, field: str, expected: str) -> None:
    _require(
        config,
        field,
        lambda path: paths.resolve(path).is_dir(),
        f"is not a directory ({expected})",
    )


def _ask(field: str, check: Callable[[], Any]) -> None:
    """Runs a component's own validation and re-raises its ValueError under the field's name."""
    try:
        check()
    except ValueError as error:
        raise ConfigError(field, f"config.{field}: {error}") from error
