"""Latent diffusion: the diffusion space (shapes, encoding, decoding, the autoencoder's check
against the config), config checks, and one run of the main job in latent space on the `test`
preset (encoder, autoencoder, UNet on latents, figures) followed by `--mode=sample` and
`--mode=generate`."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from diffusion_jax.apps import config_checks
from diffusion_jax.core import parallel
from diffusion_jax.core.models.autoencoder import AutoencoderKL
from diffusion_jax.core.training.checkpointing import Checkpointer
from diffusion_jax.main import MODES
from diffusion_jax.tasks.conditional_diffusion.denoiser import unet_builder
from diffusion_jax.tasks.generation import (
    dataset_validation,
    dataset_writers,
    generation_job,
    manifest,
    shard_drawing,
)
from diffusion_jax.tasks.generation.generation_models import GenerationModels
from diffusion_jax.tasks.latent import autoencoder_store
from diffusion_jax.tasks.latent.diffusion_space import (
    DiffusionSpace,
    configured_autoencoder_architecture,
    diffusion_shape,
    diffusion_space,
)
from tests.helpers import load_config, run_main_job, tiny_config

LATENT_SCALE = 0.7


# The latent run conditions on the encoder it trains for the perceptual loss anyway, so that the
# generation job (which needs a conditioning encoder) can run on it too.
LATENT_RUN_OVERRIDES = {"condition.source": "encoder"}


def latent_config(data_dir: str | None = None):
    config = load_config("test,latent")
    config.update_from_flattened_dict(LATENT_RUN_OVERRIDES)
    if data_dir is not None:
        config.data.data_dir = data_dir
    return config


@pytest.fixture(scope="module")
def saved_autoencoder(tmp_path_factory):
    """The `test,latent` preset's autoencoder, randomly initialised, saved with LATENT_SCALE."""
    config = latent_config()
    architecture = configured_autoencoder_architecture(config)
    directory = str(tmp_path_factory.mktemp("autoencoder") / "model")
    model = AutoencoderKL(**architecture, rngs=nnx.Rngs(0))
    autoencoder_store.save_autoencoder(
        directory, model, architecture, latent_scale=LATENT_SCALE, provenance={"test": True}
    )
    return directory


def test_the_unet_sees_images_in_pixel_space_and_latents_in_latent_space():
    assert diffusion_shape(tiny_config()) == (32, 3)
    config = latent_config()
    assert diffusion_shape(config) == (16, config.autoencoder.latent_channels)  # f = 2
    config.autoencoder.block_out_channels = (8, 16, 16)
    assert diffusion_shape(config) == (8, config.autoencoder.latent_channels)  # f = 4
    unet = nnx.eval_shape(lambda: unet_builder(latent_config())(nnx.Rngs(0)))
    assert unet.image_size == 16 and unet.in_channels == 4


def test_latent_space_encodes_scaled_posterior_means_and_decodes_clipped_images(saved_autoencoder):
    config = latent_config()
    config.autoencoder.checkpoint = saved_autoencoder
    mesh = parallel.make_mesh(config.mesh)
    space = diffusion_space(config, "unused", mesh)
    model = autoencoder_store.load_autoencoder(saved_autoencoder).model
    images = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)

    mean, _ = model.encode(jnp.asarray(images))
    x0 = space.encode(parallel.global_batch({"image": images}, mesh)["image"])
    np.testing.assert_allclose(x0, LATENT_SCALE * np.asarray(mean), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(space.encode_arrays(images), x0, rtol=1e-5, atol=1e-6)

    decoded = np.asarray(space.decode(x0))
    expected = np.clip(np.asarray(model.decode(mean)), -1, 1)
    np.testing.assert_allclose(decoded, expected, rtol=1e-4, atol=1e-5)
    assert decoded.shape == images.shape and decoded.min() >= -1 and decoded.max() <= 1

    pixel = DiffusionSpace(mesh)
    assert not pixel.is_latent
    assert pixel.encode_arrays(images) is images and pixel.decode(images) is images


def test_an_autoencoder_of_another_shape_is_refused_naming_the_fields(saved_autoencoder):
    config = latent_config()
    config.autoencoder.checkpoint = saved_autoencoder
    config.autoencoder.latent_channels = 8
    config.autoencoder.layers_per_block = 2
    mesh = parallel.make_mesh(config.mesh)
    with pytest.raises(ValueError) as error:
        diffusion_space(config, "unused", mesh)
    message = str(error.value)
    assert saved_autoencoder in message
    assert "latent_channels: the autoencoder has 4, config.autoencoder has 8" in message
    assert "layers_per_block: the autoencoder has 1, config.autoencoder has 2" in message


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"sample.clip_x0": True}, r"sample.clip_x0=True must be False in latent space"),
        ({"data.resolution": 33}, r"data.resolution=33 must be a multiple of .* factor 2"),
        ({"diffusion.space": "voxel"}, r"diffusion.space='voxel' is not one of"),
        ({"autoencoder.kl_weight": -1.0}, r"autoencoder.kl_weight=-1.0 must be >= 0"),
        ({"autoencoder.norm_num_groups": 3}, r"config.autoencoder: norm_num_groups=3"),
        ({"autoencoder.checkpoint": "/nonexistent"}, r"autoencoder.checkpoint='/nonexistent'"),
    ],
)
def test_config_checks_refuse_inconsistent_latent_settings(overrides, message):
    config = latent_config()
    config.update_from_flattened_dict(overrides)
    with pytest.raises(config_checks.ConfigError, match=message):
        config_checks.validate(config)


def test_the_presets_take_a_space_suffix():
    demo = load_config("demo")  # the demo runs in latent space
    assert demo.diffusion.space == "latent" and not demo.sample.clip_x0
    assert demo.to_dict() == load_config("demo,latent").to_dict() | {"preset": "demo"}
    demo_pixel = load_config("demo,pixel")
    assert demo_pixel.diffusion.space == "pixel" and demo_pixel.sample.clip_x0
    assert demo_pixel.model.stem == "space_to_depth"
    for config in (demo, demo_pixel):
        config_checks.validate(config)
    with pytest.raises(ValueError, match="Unknown space 'voxel'"):
        load_config("demo,voxel")


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory, prepared_data_dir):
    """One run of the main job in latent space through its command line: the perceptual
    encoder, the autoencoder and the latent UNet, 4 + 4 + 6 steps."""
    workdir = str(tmp_path_factory.mktemp("latent_run"))
    run_main_job(
        "test,latent",
        workdir,
        prepared_data_dir,
        LATENT_RUN_OVERRIDES,
        timeout=900,
        stages="diffusion,judge",
    )
    return workdir


@pytest.mark.slow  # reads the module's latent run of the main job (a subprocess)
@pytest.mark.e2e
def test_latent_training_leaves_an_autoencoder_checkpoints_and_decoded_figures(latent_run):
    assert autoencoder_store.is_complete(os.path.join(latent_run, "autoencoder", "model"))
    checkpoints = Checkpointer(os.path.join(latent_run, "checkpoints"), read_only=True)
    assert checkpoints.all_steps() == [3, 6]
    for name in ("forward_process", "x0_estimates", "reverse_process", "identities"):
        assert os.path.getsize(os.path.join(latent_run, "figures", f"{name}.png")) > 1000


@pytest.mark.slow
@pytest.mark.e2e
def test_sample_mode_decodes_latent_samples_to_images(latent_run, prepared_data_dir):
    config = latent_config(prepared_data_dir)
    out_dir = MODES["sample"](config, latent_run)
    for label in config.sample.identities:
        identity_dir = os.path.join(out_dir, f"identity_{label}")
        files = sorted(os.listdir(identity_dir))
        assert len(files) == config.sample.samples_per_identity
        image = np.asarray(Image.open(os.path.join(identity_dir, files[0])))
        assert image.shape == (32, 32, 3)  # decoded, not a 16x16x4 latent

    other = latent_config(prepared_data_dir)
    other.autoencoder.latent_channels = 8
    with pytest.raises(
        ValueError, match="autoencoder.latent_channels: checkpoint has 4, config has 8"
    ):
        MODES["sample"](other, latent_run)


@pytest.mark.slow
@pytest.mark.e2e
def test_the_generation_job_decodes_latent_samples_to_images(latent_run, prepared_data_dir):
    workdir = latent_run
    config = latent_config(prepared_data_dir)
    config.update_from_flattened_dict(
        {
            "generate.num_identities": 4,
            "generate.identities_per_shard": 2,
            "generate.formats": ("folders", "recordio"),
            "generate.image_format": "jpeg",
        }
    )
    summary = generation_job.generate_dataset(config, workdir)
    out_dir = summary["out_dir"]
    assert dataset_validation.validate(out_dir)["format_lengths"] == {
        "recordio": summary["counts"]["images"]
    }
    plan = manifest.read_json(os.path.join(out_dir, manifest.PLAN_FILE))
    autoencoder = autoencoder_store.read_description(os.path.join(workdir, "autoencoder", "model"))
    assert plan["networks"]["autoencoder"] == autoencoder["weights_sha256"]
    record = manifest.read_shard_record(out_dir, 1)
    image = next(image for image in record["images"] if image["decision"] == "kept")
    assert image["path"].endswith(".jpg")
    stored = np.asarray(Image.open(os.path.join(out_dir, image["path"])))
    assert stored.shape == (32, 32, 3)  # decoded from 16x16x4 latents

    models = GenerationModels(
        config,
        workdir,
        os.path.join(workdir, "judge", "encoder", "model"),
        parallel.make_mesh(config.mesh, jax.local_devices()),
    )
    identities = np.load(os.path.join(out_dir, manifest.IDENTITIES_FILE))
    job = shard_drawing.ImageJob(image["identity"], image["image_index"], image["attempt"])
    alone = shard_drawing.regenerate_image(models, identities, config.generate, job)
    assert (
        dataset_writers.encode_image(alone, "jpeg", 95)
        == open(os.path.join(out_dir, image["path"]), "rb").read()
    )
