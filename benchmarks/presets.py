"""The presets of configs/faces.py for the benchmarks, loaded by path as `--config` loads them
(configs/ is a folder of config files, not a package). Benchmarks run as scripts, so their own
folder is on `sys.path` and `from presets import load_preset` finds this module.

`shrink_for_quick(config)` is the sizes of every script's `--quick` mode (benchmarks/README.md,
"Quick modes"): a preset's networks and batches made tiny, everything that chooses what runs
(the sampler, prediction type, schedule, loss weighting, guidance, encoder head, optimiser,
compute dtype, space, mesh) kept as the preset has it, so a quick run exercises the code paths
that the full run times, in seconds.
"""

import importlib.util
import pathlib

import ml_collections

FACES_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "faces.py"
# --quick: the sampler's steps at most (DPM-Solver++(2M) takes second-order steps from the
# second step to the one before the last, so 4 steps exercise both orders).
QUICK_SAMPLER_STEPS = 4


def load_preset(preset: str) -> ml_collections.ConfigDict:
    """`configs/faces.py:<preset>`, e.g. "demo" or "base,pixel"."""
    spec = importlib.util.spec_from_file_location("faces_config", FACES_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


def shrink_for_quick(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` (changed in place and returned) at tiny sizes, in either space: 32x32 images,
    32-dimensional identities, a 2-level UNet of 16 base channels, iresnet_small at 32x32, a
    2-level autoencoder (16x16x4 latents), batches of 8, at most QUICK_SAMPLER_STEPS sampler
    steps; for the scripts that run the main job, 2 optimiser steps per trained network, a dataset
    of 8 training identities x 2 images and 20 held-out ones x 2 (one verification set, the
    prepared pairs), 2 x 2 figure and consistency samples, 2 generated identities x 2 images, and
    generation thresholds that every identity and image passes (networks trained for 2 steps, or
    random, embed all faces alike)."""
    config.data.resolution = 32
    config.data.num_train_identities = 8
    config.data.images_per_train_identity = 2
    config.data.num_heldout_identities = 20  # 2 per verification fold, the fewest
    config.data.images_per_heldout_identity = 2
    config.data.pairs_per_fold = 1
    config.data.worker_count = 0
    config.condition.dim = 32
    config.encoder.architecture = "iresnet_small"
    config.encoder.input_resolution = 32
    config.encoder.embedding_dim = 32
    config.autoencoder.block_out_channels = (8, 16)
    config.autoencoder.layers_per_block = 1
    config.autoencoder.norm_num_groups = 4
    config.autoencoder.scale_batches = 2
    config.model.base_channels = 16
    config.model.channel_mults = (1, 2)
    config.model.num_res_blocks = 1
    # Attention at the UNet's lower level: its input is 32x32 pixels or 16x16 latents, halved
    # again by a space-to-depth stem.
    side = 32 // (2 if config.diffusion.space == "latent" else 1)
    side //= 2 if config.model.stem == "space_to_depth" else 1
    config.model.attention_resolutions = (side // 2,)
    config.model.head_channels = 8
    config.model.num_groups = 4
    for train in (config.encoder.train, config.autoencoder.train, config.train):
        train.batch_size = 8
        train.num_steps = 2
        train.log_every_steps = 2
        train.checkpoint_every_steps = 2
    config.train.figures_every_steps = 0
    config.recognizer.num_steps = 2
    config.sample.num_steps = min(config.sample.num_steps, QUICK_SAMPLER_STEPS)
    config.sample.identities = (0, 1)
    config.sample.samples_per_identity = 2
    config.evaluate.verification_sets = ("heldout",)
    config.evaluate.batch_size = 8
    config.evaluate.consistency_identities = 2
    config.evaluate.consistency_samples_per_identity = 2
    config.evaluate.real_images_per_identity = 2
    config.generate.num_identities = 2
    config.generate.images_per_identity = 2
    config.generate.identities_per_shard = 2
    config.generate.batch_size = 8
    config.generate.max_identity_similarity = 1.0
    config.generate.max_training_similarity = 1.0
    config.generate.min_judge_similarity = -1.0
    config.generate.max_duplicate_similarity = 1.0
    return config


def quick_overrides(preset: str) -> list[str]:
    """`shrink_for_quick` as the main job's flags for `configs/faces.py:<preset>`:
    `--config.KEY=VALUE` for every value it changes, sorted."""
    config = load_preset(preset)
    before = _flat(config.to_dict())
    after = _flat(shrink_for_quick(config).to_dict())
    return [
        f"--config.{key}={_flag_value(value)}"
        for key, value in sorted(after.items())
        if before.get(key) != value
    ]


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _flag_value(value) -> str:
    """How config_flags reads `value` back: tuples as Python literals, the rest as str()."""
    return repr(tuple(value)) if isinstance(value, (tuple, list)) else str(value)
