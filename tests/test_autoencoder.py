"""AutoencoderKL: shapes, the posterior's sampling and clipping, and the autoencoder directory.

Agreement with diffusers' PyTorch AutoencoderKL is tested in test_convert_autoencoder_kl.py.
"""

import json
import math
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffusion_jax.core.bad_input import BadInputError
from diffusion_jax.core.fingerprint import array_tree_sha256
from diffusion_jax.core.models.autoencoder import (
    LOGVAR_MAX,
    LOGVAR_MIN,
    AutoencoderKL,
    autoencoder_architecture,
    sample_latents,
)
from diffusion_jax.tasks.latent import autoencoder_store

ARCHITECTURE = autoencoder_architecture(
    block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4
)
PROVENANCE = {"converted_from": "test", "source_sha256": "0" * 64}
LATENT_SCALE = 0.3
RESOLUTION = 16

# Jitted: on CPU one compilation of the network is faster than eager op-by-op dispatch.
encode = nnx.jit(lambda model, images: model.encode(images))
decode = nnx.jit(lambda model, latents: model.decode(latents))
reconstruct = nnx.jit(lambda model, images, rng: model(images, rng))


def random_images(batch: int = 2) -> np.ndarray:
    return (
        np.random.default_rng(0)
        .uniform(-1, 1, (batch, RESOLUTION, RESOLUTION, 3))
        .astype(np.float32)
    )


def abstract_autoencoder(architecture: dict) -> AutoencoderKL:
    return nnx.eval_shape(lambda: AutoencoderKL(**architecture, rngs=nnx.Rngs(0)))


def random_autoencoder(architecture: dict, seed: int) -> AutoencoderKL:
    """An AutoencoderKL whose weights NumPy draws (flax's initialisers would compile one program
    per shape): kernels ~ N(0, 1 / fan_in), scales ~ U(0.5, 1.5), biases ~ U(-0.1, 0.1)."""
    graphdef, state = nnx.split(abstract_autoencoder(architecture))
    rng = np.random.default_rng(seed)
    filled = []
    for path, variable in nnx.to_flat_state(state):
        shape = variable.get_value().shape
        if path[-1] == "kernel":
            value = rng.normal(size=shape) / math.sqrt(math.prod(shape[:-1]))
        elif path[-1] == "scale":
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.uniform(-0.1, 0.1, shape)
        filled.append((path, variable.replace(jnp.asarray(value, jnp.float32))))
    return nnx.merge(graphdef, nnx.from_flat_state(filled))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(model, directory, weights hash returned by save_autoencoder), saved once for the module."""
    model = random_autoencoder(ARCHITECTURE, seed=0)
    directory = str(tmp_path_factory.mktemp("store") / "autoencoder")
    weights_sha256 = autoencoder_store.save_autoencoder(
        directory, model, ARCHITECTURE, latent_scale=LATENT_SCALE, provenance=PROVENANCE
    )
    return model, directory, weights_sha256


def copy_with_architecture(directory: str, tmp_path, change: dict) -> str:
    """A copy of the autoencoder directory whose autoencoder.json describes another architecture."""
    copy = str(tmp_path / "copy")
    shutil.copytree(directory, copy)
    path = os.path.join(copy, autoencoder_store.AUTOENCODER_JSON)
    with open(path) as f:
        description = json.load(f)
    description["architecture"].update(change)
    with open(path, "w") as f:
        json.dump(description, f)
    return copy


@pytest.mark.parametrize(
    "block_out_channels, factor", [((8,), 1), ((8, 16), 2), ((8, 16, 16), 4), ((8, 8, 8, 8), 8)]
)
def test_latents_are_downsampled_by_two_per_block_after_the_first(block_out_channels, factor):
    architecture = {**ARCHITECTURE, "block_out_channels": list(block_out_channels)}
    model = abstract_autoencoder(architecture)
    assert model.downsampling_factor == factor and model.latent_channels == 4
    nnx.split(model, nnx.Param)  # raises if the model held state other than parameters
    images = jnp.zeros((2, 32, 16, 3))
    mean, logvar = nnx.eval_shape(lambda m, x: m.encode(x), model, images)
    assert mean.shape == logvar.shape == (2, 32 // factor, 16 // factor, 4)
    decoded = nnx.eval_shape(lambda m, z: m.decode(z), model, jnp.zeros(mean.shape))
    assert decoded.shape == (2, 32, 16, 3)


def test_images_that_do_not_divide_by_the_factor_are_refused():
    model = abstract_autoencoder(ARCHITECTURE)
    with pytest.raises(
        ValueError, match="Images of 15x16 do not divide by the downsampling factor 2"
    ):
        model.encode(jnp.zeros((1, 15, 16, 3)))


def test_group_count_must_divide_every_width():
    with pytest.raises(ValueError, match=r"norm_num_groups=4 must divide .* does not divide \[6\]"):
        AutoencoderKL(**{**ARCHITECTURE, "block_out_channels": [8, 6]}, rngs=nnx.Rngs(0))


def test_sampling_draws_mean_plus_standard_deviation_times_noise(saved):
    model = saved[0]
    images = jnp.asarray(random_images())
    rng = jax.random.key(3)
    reconstruction, mean, logvar = reconstruct(model, images, rng)
    expected_mean, expected_logvar = encode(model, images)
    np.testing.assert_allclose(mean, expected_mean, atol=1e-6)
    np.testing.assert_allclose(logvar, expected_logvar, atol=1e-6)
    z = mean + jnp.exp(logvar / 2) * jax.random.normal(rng, mean.shape)
    np.testing.assert_allclose(reconstruction, decode(model, z), atol=1e-5)

    # The noise is scaled by the standard deviation exp(logvar / 2), not by the variance.
    draws = sample_latents(
        jax.random.key(0), jnp.ones((100_000,)), jnp.full((100_000,), math.log(4))
    )
    assert abs(float(draws.mean()) - 1.0) < 0.03
    assert abs(float(draws.std()) - 2.0) < 0.03


def test_logvar_is_clipped_to_diffusers_range(saved):
    model = nnx.clone(saved[0])
    # quant_conv maps everything to its bias: mean = bias[:4], logvar = clip(bias[4:]).
    moments = np.array([0.5, -0.5, 2.0, 0.0, 100.0, -100.0, 3.0, -29.0], np.float32)
    model.quant_conv.kernel[...] = jnp.zeros_like(model.quant_conv.kernel[...])
    model.quant_conv.bias[...] = jnp.asarray(moments)
    mean, logvar = encode(model, jnp.asarray(random_images()))
    np.testing.assert_array_equal(mean, np.broadcast_to(moments[:4], mean.shape))
    expected_logvar = np.array([LOGVAR_MAX, LOGVAR_MIN, 3.0, -29.0], np.float32)
    np.testing.assert_array_equal(logvar, np.broadcast_to(expected_logvar, logvar.shape))
    assert (LOGVAR_MIN, LOGVAR_MAX) == (-30.0, 20.0)


def test_round_trip_gives_the_same_weights_hash_and_outputs(saved):
    model, directory, weights_sha256 = saved
    assert autoencoder_store.is_complete(directory)
    loaded = autoencoder_store.load_autoencoder(directory)

    assert weights_sha256 == array_tree_sha256(nnx.state(model))
    assert loaded.weights_sha256 == weights_sha256
    assert array_tree_sha256(nnx.state(loaded.model)) == weights_sha256
    assert loaded.architecture == ARCHITECTURE
    assert loaded.latent_scale == LATENT_SCALE
    assert loaded.provenance == PROVENANCE
    assert loaded.directory == directory
    assert autoencoder_store.read_description(directory)["format_version"] == 1

    images = jnp.asarray(random_images())
    for ours, theirs in zip(encode(loaded.model, images), encode(model, images), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    latents = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 8, 4)), jnp.float32)
    np.testing.assert_array_equal(decode(loaded.model, latents), decode(model, latents))


@pytest.mark.parametrize(
    "change, problem",
    [
        (
            {"block_out_channels": [8, 32]},
            "shape mismatches (87): decoder.conv_in.bias: checkpoint (16,), architecture (32,); "
            "decoder.conv_in.kernel: checkpoint (3, 3, 4, 16), architecture (3, 3, 4, 32); ",
        ),
        (
            {"latent_channels": 8},
            "shape mismatches (7): decoder.conv_in.kernel: checkpoint (3, 3, 4, 16), architecture "
            "(3, 3, 8, 16); encoder.conv_out.bias: checkpoint (8,), architecture (16,); ",
        ),
        (
            {"layers_per_block": 2},
            "missing from the checkpoint (32): decoder.up_blocks.0.resnets.2.conv1.bias, ",
        ),
        (
            {"mid_block_add_attention": False},
            "not in the architecture (20): decoder.mid_block.attentions.0.group_norm.bias, ",
        ),
    ],
    ids=["wider", "more_latent_channels", "deeper", "without_attention"],
)
def test_a_checkpoint_of_another_shape_is_refused_naming_the_parameters(
    saved, tmp_path, change, problem
):
    directory = copy_with_architecture(saved[1], tmp_path, change)
    with pytest.raises(ValueError) as error:
        autoencoder_store.load_autoencoder(directory)
    message = str(error.value)
    assert message.startswith(
        f"{directory}/weights: do not fit the architecture in {directory}/autoencoder.json ("
    )
    assert problem in message


def test_an_architecture_that_builds_no_model_is_refused_naming_the_file(saved, tmp_path):
    directory = copy_with_architecture(saved[1], tmp_path, {"norm_num_groups": 3})
    expected = f"{directory}/autoencoder.json: the architecture {{"
    with pytest.raises(ValueError, match=re.escape(expected)) as error:
        autoencoder_store.load_autoencoder(directory)
    assert "AutoencoderKL(**architecture) fails with norm_num_groups=3 must divide" in str(
        error.value
    )


def test_a_model_that_does_not_fit_its_architecture_is_not_saved(saved, tmp_path):
    directory = tmp_path / "autoencoder"
    architecture = {**ARCHITECTURE, "latent_channels": 2}
    with pytest.raises(ValueError, match=r"model \(1, 1, 8, 8\), architecture \(1, 1, 4, 4\)"):
        autoencoder_store.save_autoencoder(
            str(directory), saved[0], architecture, latent_scale=1.0, provenance={}
        )
    assert not directory.exists()


@pytest.mark.parametrize("latent_scale", [0.0, -0.18215, float("nan"), float("inf")])
def test_a_latent_scale_that_is_not_positive_and_finite_is_refused(saved, tmp_path, latent_scale):
    with pytest.raises(ValueError, match="latent_scale must be a positive finite number, got"):
        autoencoder_store.save_autoencoder(
            str(tmp_path / "a"), saved[0], ARCHITECTURE, latent_scale=latent_scale, provenance={}
        )


def test_a_directory_without_autoencoder_json_is_an_interrupted_save(saved, tmp_path):
    directory = copy_with_architecture(saved[1], tmp_path, {})
    os.remove(os.path.join(directory, "autoencoder.json"))
    assert not autoencoder_store.is_complete(directory)
    with pytest.raises(BadInputError, match=re.escape(f"{directory}: no autoencoder.json: not a")):
        autoencoder_store.load_autoencoder(directory)
