"""The unit tests' config: the shared default (configs/default.py) with tiny shapes and budgets.

32x32 images, 16x16 UNet features, a few channels, a handful of steps. Use as
`--config=tests/configs/unit.py` (pixel space) or `--config=tests/configs/unit.py:latent` (16x16x4
latents); tests/helpers.py calls it the `test` preset (`load_config("test")`,
`run_main_job("test,latent", ...)`). It copies no preset: tuning the demo leaves the tests as
they are.
"""

import importlib.util
import os

import ml_collections

SPACES = ("pixel", "latent")
_DEFAULT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "configs",
    "default.py",
)


def get_config(space: str = "") -> ml_collections.ConfigDict:
    """The unit tests' config in `space` ("": pixel)."""
    if space not in ("",) + SPACES:
        raise ValueError(
            f"Unknown space {space!r} in tests/configs/unit.py; write unit.py:pixel or "
            "unit.py:latent."
        )
    default = _load_default()
    config = default.get_config()
    config.lock()  # values only: a key the default lacks is an error
    _apply(config)
    if space:
        config.diffusion.space = space
    if config.diffusion.space == "latent":
        default.apply_latent(config)
        _apply_latent(config)
    config.preset = "test" + (f",{space}" if space else "")
    config.unlock()
    return config


def _apply(config: ml_collections.ConfigDict) -> None:
    config.diffusion.space = "pixel"  # the latent tests opt in with `test,latent`

    config.data.data_dir = "~/.cache/diffusion_jax/tfds"  # the tests pass their own
    config.data.resolution = 32  # the renderer's smallest; the space-to-depth stem halves it
    config.data.num_train_identities = 8
    config.data.images_per_train_identity = 4
    config.data.num_heldout_identities = 20  # the pairs' 10 folds share no identity
    config.data.images_per_heldout_identity = 4
    config.data.pairs_per_fold = 2
    config.data.horizontal_flip = False
    config.data.worker_count = 0

    config.condition.source = "random_identity_table"  # the encoder's tests opt in
    config.condition.dim = 32

    config.encoder.architecture = "iresnet_small"
    config.encoder.input_resolution = 32
    config.encoder.embedding_dim = 32
    config.encoder.head = "cosface"
    config.encoder.margin_scale = 32.0
    config.encoder.train.batch_size = 8
    config.encoder.train.num_steps = 4
    config.encoder.train.learning_rate = 2e-3
    config.encoder.train.warmup_steps = 2
    config.encoder.train.log_every_steps = 2
    config.encoder.train.checkpoint_every_steps = 2

    config.evaluate.verification_sets = ("heldout", "heldout@300")  # prepared and drawn pairs
    config.evaluate.batch_size = 16
    config.evaluate.consistency_identities = 4
    config.evaluate.consistency_samples_per_identity = 2
    config.evaluate.real_images_per_identity = 3

    config.autoencoder.block_out_channels = (8, 16)  # 32x32 -> 16x16 latents
    config.autoencoder.layers_per_block = 1
    config.autoencoder.norm_num_groups = 4
    config.autoencoder.discriminator_weight = 0.0  # the discriminator's tests opt in
    config.autoencoder.discriminator_start_step = 2
    config.autoencoder.discriminator_layers = 2
    config.autoencoder.discriminator_channels = 8
    config.autoencoder.scale_batches = 2
    config.autoencoder.train.batch_size = 8
    config.autoencoder.train.num_steps = 4
    config.autoencoder.train.learning_rate = 1e-3
    config.autoencoder.train.warmup_steps = 2
    config.autoencoder.train.log_every_steps = 2
    config.autoencoder.train.checkpoint_every_steps = 2

    config.model.base_channels = 16
    config.model.channel_mults = (1, 2)
    config.model.num_res_blocks = 1
    config.model.attention_resolutions = (8,)
    config.model.head_channels = 8
    config.model.dropout = 0.0
    config.model.stem = "space_to_depth"
    config.model.num_groups = 4
    config.model.dtype = "float32"  # CPU

    config.diffusion.num_timesteps = 100
    config.diffusion.beta_schedule = "cosine"
    config.diffusion.prediction_type = "v"
    config.diffusion.loss_weighting = "min_snr"

    config.train.batch_size = 8
    config.train.num_steps = 6
    config.train.learning_rate = 1e-3
    config.train.warmup_steps = 2
    config.train.ema_decay = 0.995
    config.train.log_every_steps = 2
    config.train.checkpoint_every_steps = 3
    config.train.figures_every_steps = 0  # figures only at the end

    # Guided sampling (the default's scale), with few steps.
    config.sample.sampler = "dpm_solver_pp_2m"
    config.sample.num_steps = 4
    config.sample.identities = (0, 1)
    config.sample.samples_per_identity = 2

    # The default's random identities, judge threshold and guidance: 8 training centres are too
    # few to fit a Gaussian to (the gaussian source has its own tests).
    config.generate.num_identities = 6
    config.generate.images_per_identity = 3
    config.generate.identities_per_shard = 2
    config.generate.batch_size = 8
    config.generate.candidates_per_identity = 8
    config.generate.max_identity_similarity = 0.5  # 32 dimensions
    config.generate.max_training_similarity = 0.9

    config.recognizer.num_steps = 4
    config.recognizer.max_shift = 2  # both augmentations run in the pipeline's tests
    config.recognizer.color_jitter = 0.2


def _apply_latent(config: ml_collections.ConfigDict) -> None:
    """16x16x4 latents of 32x32 images: a full-resolution stem, attention at 8x8."""
    config.model.stem = "conv"
    config.model.attention_resolutions = (8,)


def _load_default():
    """configs/default.py, loaded by path (config_flags loads this file by path too)."""
    spec = importlib.util.spec_from_file_location("unit_config_default", _DEFAULT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
