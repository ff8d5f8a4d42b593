"""Bad configs are refused before anything runs, with a message that names the field."""

import importlib.util
import os
import subprocess
import sys

import pytest

from diffusion_jax.apps import config_checks
from diffusion_jax.core.diffusion import samplers
from tests.helpers import REPO_ROOT, config_argument, load_config

# The presets of configs/faces.py, and "test": the unit tests' config, tests/configs/unit.py.
PRESETS = ["demo", "base", "large", "test"]


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_are_valid(preset):
    config_checks.validate(load_config(preset))


def _dotted_keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        nested = isinstance(value, dict)
        keys |= _dotted_keys(value, f"{prefix}{key}.") if nested else {prefix + key}
    return keys


@pytest.mark.parametrize("space", ["", ",pixel", ",latent"])
@pytest.mark.parametrize("preset", PRESETS)
def test_presets_set_only_keys_the_default_declares(preset, space):
    spec = importlib.util.spec_from_file_location(
        "default_config", os.path.join(REPO_ROOT, "configs", "default.py")
    )
    default = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(default)
    config = load_config(preset + space)
    assert _dotted_keys(config.to_dict()) == _dotted_keys(default.get_config().to_dict())
    assert config.preset == preset + space


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("sample.sampler", "euler", "config.sample.sampler"),
        ("diffusion.beta_schedule", "quadratic", "config.diffusion.beta_schedule"),
        ("diffusion.prediction_type", "score", "config.diffusion.prediction_type"),
        ("diffusion.loss_weighting", "p2", "config.diffusion.loss_weighting"),
        ("train.batch_size", 0, "config.train.batch_size=0 must be positive"),
        ("train.ema_decay", 1.0, "config.train.ema_decay=1.0 must lie in [0, 1)"),
        (
            "sample.num_steps",
            101,
            "config.sample.num_steps=101 must lie in [1, diffusion.num_timesteps=100]",
        ),
        ("sample.identities", (0, 99), "config.sample.identities"),
        ("model.dtype", "float16", "config.model.dtype='float16'"),
        ("model.attention_resolutions", (3,), "config.model"),
        ("model.channel_mults", (1, 2, 2, 2, 2, 2), "config.model: image_size=32"),
        ("data.source", "lfw", "config.data.source='lfw'"),
        ("condition.source", "clip", "config.condition.source='clip'"),
        ("encoder.architecture", "resnet50", "config.encoder.architecture='resnet50'"),
        ("encoder.head", "sphereface", "config.encoder.head='sphereface'"),
        ("encoder.margins", (1.0, 0.5), "config.encoder.margins=(1.0, 0.5) must be ()"),
        ("encoder.margins", (1.0, 4.0, 0.0), "config.encoder.margins: "),
        ("encoder.input_resolution", 40, "config.encoder: "),
        ("encoder.checkpoint", "/no/such/encoder", "config.encoder.checkpoint='/no/such/encoder'"),
        ("evaluate.consistency_identities", 9, "must be at most data.num_train_identities=8"),
        ("evaluate.real_images_per_identity", 1, "real_images_per_identity=1 must be >= 2"),
        ("generate.images_per_identity", 1, "config.generate.images_per_identity=1 must be >= 2"),
        ("generate.formats", ("folders", "lmdb"), "config.generate.formats=('folders', 'lmdb')"),
        ("generate.formats", (), "must be a non-empty tuple"),
        ("generate.image_format", "webp", "config.generate.image_format='webp'"),
        ("generate.identity_source", "gan", "config.generate.identity_source='gan'"),
        ("generate.max_identity_similarity", 1.5, "must lie in [-1, 1]"),
        ("generate.max_resample_rounds", -1, "config.generate.max_resample_rounds=-1"),
        ("generate.identities_per_shard", 0, "config.generate.identities_per_shard=0"),
        ("generate.judge_encoder", "/no/such/judge", "config.generate.judge_encoder="),
        ("recognizer.data_source", "lmdb", "config.recognizer.data_source='lmdb'"),
        ("data.max_shift", -1, "config.data.max_shift=-1 must lie in [0, data.resolution / 2"),
        ("recognizer.max_shift", 16, "config.recognizer.max_shift=16 must lie in [0,"),
        ("recognizer.color_jitter", 1.0, "config.recognizer.color_jitter=1.0 must lie in [0, 1)"),
    ],
)
def test_inconsistent_values_are_refused_naming_the_field(field, value, message):
    config = load_config("test")
    section, key = field.split(".")
    config[section][key] = value
    with pytest.raises(config_checks.ConfigError) as error:
        config_checks.validate(config)
    assert message in str(error.value)


@pytest.mark.parametrize("sampler", sorted(samplers.SAMPLERS))
def test_every_registered_sampler_is_accepted_with_style_from_real_images(sampler):
    """generate.style_source="real" starts the sampler part-way: every registered sampler takes
    `strength`, so every one is accepted; one without it is refused."""
    config = load_config("test")
    config.sample.sampler = sampler
    config.generate.style_source = "real"
    config_checks.validate(config)


def test_a_sampler_that_cannot_start_part_way_is_refused_with_style(monkeypatch):
    monkeypatch.setitem(samplers.SAMPLERS, "euler", lambda eps_fn, schedule, x_T, rng: x_T)
    config = load_config("test")
    config.sample.sampler = "euler"
    config_checks.validate(config)  # a sampler without `strength` is fine without style
    config.generate.style_source = "real"
    with pytest.raises(config_checks.ConfigError, match="config.sample.sampler.*cannot start"):
        config_checks.validate(config)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["--config.train.batch_sze=8"],
            "Error: --config.train.batch_sze: no such config key (nearest: "
            "config.train.batch_size, ",
        ),
        (["--config.train.batch_size=eight"], "flag --config.train.batch_size=eight: invalid"),
        (["--config.sample.sampler=euler"], "Error: config.sample.sampler: Unknown sampler"),
        (["--config.train.batch_sze=8", "--debug"], "AttributeError: "),
        (["--config.sample.sampler=euler", "--debug"], "ConfigError: config.sample.sampler"),
        (
            ["--config=configs/absent.py"],
            "Error: --config=configs/absent.py: cannot load it: OSError: [Errno 2] No such file",
        ),
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "inconsistent-value",
        "unknown-key-debug",
        "inconsistent-value-debug",
        "absent-file",
    ],
)
@pytest.mark.slow  # a subprocess of the main job each (imports TensorFlow and JAX)
def test_command_line_refuses_unknown_keys_and_wrong_types(tmp_path, overrides, message):
    """One line naming the key and exit status 1; with --debug, the traceback instead."""
    has_config = any(override.startswith("--config=") for override in overrides)
    config = [] if has_config else [f"--config={config_argument('test')}"]
    command = [
        sys.executable,
        "-m",
        "diffusion_jax.main",
        *config,
        f"--workdir={tmp_path}",
        *overrides,
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert message in result.stderr
    assert ("Traceback" in result.stderr) == ("--debug" in overrides)
    assert not list(tmp_path.iterdir()), "nothing may be written before the config is accepted"


def test_an_encoder_trained_by_the_job_must_embed_in_the_condition_dimension():
    config = load_config("test")
    config.condition.source = "encoder"
    config.condition.dim = 16  # the test preset's encoder embeds in 32 dimensions
    with pytest.raises(config_checks.ConfigError, match="must equal encoder.embedding_dim=32"):
        config_checks.validate(config)
