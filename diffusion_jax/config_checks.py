"""Checks that a config's values are consistent, before anything runs.

The locked `ml_collections` config already refuses unknown keys and values of the wrong type;
this module refuses values that are well-typed but wrong (an unknown sampler, a batch that does
not divide, a model whose resolutions do not fit), naming the offending field. Where a component
validates its own arguments (schedules, samplers, the UNet), it is asked, so there is one source
of truth for what is allowed.
"""

import os
from typing import Any, Callable

import jax
import ml_collections

from diffusion_jax.data import image_decoding, pipeline, procedural_faces
from diffusion_jax.diffusion.losses import LOSS_WEIGHTINGS
from diffusion_jax.diffusion.parameterization import PREDICTION_TYPES
from diffusion_jax.diffusion.samplers import get_sampler
from diffusion_jax.diffusion.schedules import beta_schedule
from diffusion_jax.train import state as state_lib

SUPPORTED = {
    "data.source": pipeline.SOURCES,
    "data.image_policy": image_decoding.POLICIES,
    "condition.source": ("random_identity_table",),
    "model.dtype": tuple(state_lib.COMPUTE_DTYPES),
    "diffusion.prediction_type": PREDICTION_TYPES,
    "diffusion.loss_weighting": LOSS_WEIGHTINGS,
}


class ConfigError(ValueError):
    """A config value is inconsistent; the message names the field."""


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first inconsistent field of `config`."""
    for field, allowed in SUPPORTED.items():
        value = _get(config, field)
        if value not in allowed:
            raise ConfigError(f"config.{field}={value!r} is not one of {list(allowed)}.")

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
        "train.batch_size",
        "train.num_steps",
        "train.log_every_steps",
        "train.checkpoint_every_steps",
        "train.keep_checkpoints",
        "sample.samples_per_identity",
        "condition.dim",
        "diffusion.num_timesteps",
    ):
        _require(config, field, lambda v: v > 0, "must be positive")
    _require(
        config,
        "train.batch_size",
        lambda v: v % jax.device_count() == 0,
        f"must be divisible by the {jax.device_count()} devices",
    )
    _require(config, "train.figures_every_steps", lambda v: v >= 0, "must be >= 0 (0 = at the end)")
    _require(config, "train.learning_rate", lambda v: v > 0, "must be positive")
    _require(config, "train.warmup_steps", lambda v: v >= 0, "must be >= 0")
    _require(config, "train.grad_clip_norm", lambda v: v > 0, "must be positive")
    _require(config, "train.ema_decay", lambda v: 0 <= v < 1, "must lie in [0, 1)")
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
    elif config.data.source in ("image_folder", "recordio"):
        _require(config, "data.path", lambda p: os.path.exists(os.path.expanduser(p)), "does not exist")
    _require(
        config,
        "mesh.data",
        lambda v: v == -1 or v > 0,
        "must be positive or -1 (all remaining devices)",
    )
    _require(config, "mesh.fsdp", lambda v: v == -1 or v > 0, "must be positive or -1")

    _ask("diffusion.beta_schedule", lambda: beta_schedule(
        config.diffusion.beta_schedule, config.diffusion.num_timesteps
    ))
    _ask("sample.sampler", lambda: get_sampler(config.sample.sampler))
    _ask("model", lambda: state_lib.model_graphdef(config))


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
        raise ConfigError(f"config.{field}={value!r} {rule}.")


def _ask(field: str, check: Callable[[], Any]) -> None:
    """Runs a component's own validation and re-raises its ValueError under the field's name."""
    try:
        check()
    except ValueError as error:
        raise ConfigError(f"config.{field}: {error}") from error
