"""diffusers AutoencoderKL import: encodings and decodings equal PyTorch's, the CLI round trip, and
the configs and state dicts that are refused.

The reference is `diffusion_jax/torch_twins/autoencoder_kl.py`, a PyTorch AutoencoderKL with
diffusers' module names, built from a diffusers config.json and randomly initialised, GroupNorm
affines included.
"""

import hashlib
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx

from diffusion_jax.convert import main as convert_main
from diffusion_jax.core.fingerprint import array_tree_sha256
from diffusion_jax.core.models.autoencoder import AutoencoderKL, autoencoder_architecture
from diffusion_jax.tasks.convert.autoencoder_kl import (
    convert_autoencoder_kl_state_dict,
    from_diffusers_config,
)
from tests.helpers import REPO_ROOT

RESOLUTION = 16

# Jitted: on CPU one compilation of the network is faster than eager op-by-op dispatch.
encode = nnx.jit(lambda model, images: model.encode(images))
decode = nnx.jit(lambda model, latents: model.decode(latents))


@pytest.fixture(scope="module")
def torch_twin():
    """(torch, diffusion_jax.torch_twins.autoencoder_kl); skips the test without PyTorch."""
    torch = pytest.importorskip("torch")
    from diffusion_jax.torch_twins import autoencoder_kl as torch_autoencoder_kl

    return torch, torch_autoencoder_kl


def state_dict_arrays(twin) -> dict[str, np.ndarray]:
    return {key: value.numpy() for key, value in twin.state_dict().items()}


def write_diffusers_directory(directory, config: dict, tensors: dict[str, np.ndarray]) -> str:
    """A diffusers model directory: config.json and diffusion_pytorch_model.safetensors."""
    os.makedirs(directory)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    safetensors.numpy.save_file(
        tensors, os.path.join(directory, "diffusion_pytorch_model.safetensors")
    )
    return str(directory)


def assert_matches_torch(model, twin, torch) -> None:
    """mean, logvar and the decoding of random latents agree with the twin's to 1e-4 of their
    largest magnitude, on 2 images."""
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (2, RESOLUTION, RESOLUTION, 3)).astype(np.float32)
    mean, logvar = encode(model, jnp.asarray(images))
    with torch.no_grad():
        reference_mean, reference_logvar = twin.encode(
            torch.from_numpy(images.transpose(0, 3, 1, 2))
        )
    for ours, reference in [(mean, reference_mean), (logvar, reference_logvar)]:
        reference = reference.numpy().transpose(0, 2, 3, 1)
        np.testing.assert_allclose(ours, reference, atol=1e-4 * np.abs(reference).max(), rtol=0)

    latents = rng.normal(size=mean.shape).astype(np.float32)
    decoded = decode(model, jnp.asarray(latents))
    with torch.no_grad():
        reference = twin.decode(torch.from_numpy(latents.transpose(0, 3, 1, 2))).numpy()
    reference = reference.transpose(0, 2, 3, 1)
    assert decoded.shape == (2, RESOLUTION, RESOLUTION, 3)
    np.testing.assert_allclose(decoded, reference, atol=1e-4 * np.abs(reference).max(), rtol=0)


@pytest.mark.slow  # two subprocesses of the converter's command line
def test_cli_converts_a_diffusers_directory_that_matches_torch(torch_twin, tmp_path):
    from diffusion_jax.tasks.latent.autoencoder_store import load_autoencoder

    torch, torch_autoencoder_kl = torch_twin
    config = torch_autoencoder_kl.diffusers_config()
    twin = torch_autoencoder_kl.randomise_(torch_autoencoder_kl.TorchAutoencoderKL(config), 0)
    model_dir = write_diffusers_directory(tmp_path / "vae", config, state_dict_arrays(twin))
    output = str(tmp_path / "autoencoder")
    command = [
        sys.executable, "-m", "diffusion_jax.convert", "autoencoder_kl",
        "--model_dir", model_dir, "--output", output,
    ]  # fmt: skip

    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    num_parameters = sum(parameter.numel() for parameter in twin.parameters())
    expected = (
        f"Converted {model_dir}: {num_parameters:,} parameters, downsampling factor 2, 4 latent "
        f"channels, latent scale 0.5 -> {output}"
    )
    assert expected in result.stdout
    loaded = load_autoencoder(output)
    weights = os.path.join(model_dir, "diffusion_pytorch_model.safetensors")
    with open(weights, "rb") as f:
        source_sha256 = hashlib.sha256(f.read()).hexdigest()
    assert loaded.provenance == {
        "converted_from": "diffusers AutoencoderKL",
        "source": model_dir,
        "weights_file": weights,
        "source_sha256": source_sha256,
        "diffusers_config": config,
    }
    assert loaded.latent_scale == 0.5
    assert loaded.architecture == autoencoder_architecture(
        block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4
    )
    assert_matches_torch(loaded.model, twin, torch)

    again = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and f"--output {output} is not empty" in again.stderr


def test_without_attention_and_1x1_convolutions_matches_torch(torch_twin):
    torch, torch_autoencoder_kl = torch_twin
    # Flux's VAE has no quant convolutions; mid_block_add_attention=False drops the attention.
    config = torch_autoencoder_kl.diffusers_config(
        use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=False
    )
    twin = torch_autoencoder_kl.randomise_(torch_autoencoder_kl.TorchAutoencoderKL(config), 1)
    tensors = state_dict_arrays(twin)
    assert not any("attentions" in key or "quant_conv" in key for key in tensors)
    architecture, _ = from_diffusers_config(config)
    assert_matches_torch(convert_autoencoder_kl_state_dict(tensors, architecture), twin, torch)


def test_old_attention_names_convert_to_the_same_weights(torch_twin):
    _, torch_autoencoder_kl = torch_twin
    config = torch_autoencoder_kl.diffusers_config()
    tensors = state_dict_arrays(
        torch_autoencoder_kl.randomise_(torch_autoencoder_kl.TorchAutoencoderKL(config), 2)
    )
    old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    old_tensors = {}
    for key, value in tensors.items():
        for new, old in old_names.items():
            key = key.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
        old_tensors[key] = value
    assert "decoder.mid_block.attentions.0.proj_attn.weight" in old_tensors
    architecture, _ = from_diffusers_config(config)

    converted = convert_autoencoder_kl_state_dict(tensors, architecture)
    from_old_names = convert_autoencoder_kl_state_dict(old_tensors, architecture)
    assert array_tree_sha256(nnx.state(from_old_names)) == array_tree_sha256(nnx.state(converted))

    old_tensors["encoder.mid_block.attentions.0.to_k.bias"] = tensors[
        "encoder.mid_block.attentions.0.to_k.bias"
    ]
    expected = (
        "holds both encoder.mid_block.attentions.0.key.bias and "
        "encoder.mid_block.attentions.0.to_k.bias"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        convert_autoencoder_kl_state_dict(old_tensors, architecture)


def test_missing_unexpected_and_misshaped_keys_are_named(torch_twin):
    _, torch_autoencoder_kl = torch_twin
    config = torch_autoencoder_kl.diffusers_config()
    tensors = state_dict_arrays(torch_autoencoder_kl.TorchAutoencoderKL(config))
    del tensors["decoder.up_blocks.1.resnets.0.conv_shortcut.bias"]
    tensors["encoder.mid_block.attentions.0.rel_pos_bias"] = np.zeros(4, np.float32)
    tensors["quant_conv.weight"] = np.zeros((16, 16, 1, 1), np.float32)
    architecture, _ = from_diffusers_config(config)
    with pytest.raises(ValueError) as error:
        convert_autoencoder_kl_state_dict(tensors, architecture)
    message = str(error.value)
    assert message.startswith(f"The state dict does not fit the AutoencoderKL {architecture}: ")
    assert "missing keys (1): decoder.up_blocks.1.resnets.0.conv_shortcut.bias." in message
    assert "unexpected keys (1): encoder.mid_block.attentions.0.rel_pos_bias." in message
    expected = (
        "shape mismatches (1): quant_conv.weight: checkpoint (16, 16, 1, 1), model (8, 8, 1, 1)"
    )
    assert expected in message


def test_a_checkpoint_of_another_shape_is_refused_listing_the_mismatches(torch_twin):
    _, torch_autoencoder_kl = torch_twin
    config = torch_autoencoder_kl.diffusers_config()
    wider = torch_autoencoder_kl.diffusers_config(block_out_channels=[8, 32], norm_num_groups=8)
    tensors = state_dict_arrays(torch_autoencoder_kl.TorchAutoencoderKL(wider))
    reference = state_dict_arrays(torch_autoencoder_kl.TorchAutoencoderKL(config))
    num_different = sum(tensors[key].shape != reference[key].shape for key in reference)
    architecture, _ = from_diffusers_config(config)
    with pytest.raises(ValueError) as error:
        convert_autoencoder_kl_state_dict(tensors, architecture)
    message = str(error.value)
    assert "missing keys" not in message and "unexpected keys" not in message
    assert (
        f"shape mismatches ({num_different}): decoder.conv_in.bias: checkpoint (32,), model (16,); "
        "decoder.conv_in.weight: checkpoint (32, 4, 3, 3), model (16, 4, 3, 3); " in message
    )
    assert message.endswith("; ...")  # the list is cut short


def test_stable_diffusions_vae_has_the_keys_and_shapes_of_the_twin(torch_twin):
    """Checked without materialising 84M parameters: with one key removed from the twin's state
    dict (built on the meta device), that key is the only problem the converter finds."""
    torch, torch_autoencoder_kl = torch_twin
    config = torch_autoencoder_kl.diffusers_config(
        block_out_channels=[128, 256, 512, 512],
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        layers_per_block=2,
        norm_num_groups=32,
        sample_size=256,
        scaling_factor=0.18215,
    )
    with torch.device("meta"):
        twin = torch_autoencoder_kl.TorchAutoencoderKL(config)
    tensors = {
        key: np.broadcast_to(np.float32(0), tuple(value.shape))
        for key, value in twin.state_dict().items()
    }
    del tensors["decoder.conv_out.bias"]
    architecture, _ = from_diffusers_config(config)
    with pytest.raises(ValueError) as error:
        convert_autoencoder_kl_state_dict(tensors, architecture)
    assert str(error.value).endswith(f"{architecture}: missing keys (1): decoder.conv_out.bias")

    abstract_model = nnx.eval_shape(lambda: AutoencoderKL(**architecture, rngs=nnx.Rngs(0)))
    num_parameters = sum(p.size for p in jax.tree.leaves(nnx.state(abstract_model, nnx.Param)))
    assert num_parameters == sum(p.numel() for p in twin.parameters()) == 83_653_863


@pytest.mark.parametrize(
    "override, message",
    [
        (
            {"down_block_types": ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"]},
            "down_block_types is ['DownEncoderBlock2D', 'AttnDownEncoderBlock2D']; only "
            "DownEncoderBlock2D, once per entry of block_out_channels (2), is supported",
        ),
        (
            {"up_block_types": ["UpDecoderBlock2D"]},
            "up_block_types is ['UpDecoderBlock2D']; only UpDecoderBlock2D, once per entry",
        ),
        ({"act_fn": "gelu"}, "act_fn is 'gelu'; only ('silu', 'swish') (SiLU) are supported"),
        ({"shift_factor": 0.1159}, "shift_factor is 0.1159; only null is supported"),
        ({"scaling_factor": None}, "scaling_factor is None; a positive number is needed"),
        ({"latents_std": [1.0] * 4}, "latents_std is [1.0, 1.0, 1.0, 1.0]; only null"),
        (
            {"_class_name": "AsymmetricAutoencoderKL"},
            "_class_name is 'AsymmetricAutoencoderKL'; only 'AutoencoderKL' is supported",
        ),
        (
            {"attention_head_dim": 8, "norm_type": "spatial"},
            "config.json has keys this importer does not know: ['attention_head_dim', 'norm_type']",
        ),
    ],
)
def test_unsupported_configs_are_refused_naming_the_key(override, message):
    config = {
        "block_out_channels": [8, 16],
        "down_block_types": ["DownEncoderBlock2D"] * 2,
        "up_block_types": ["UpDecoderBlock2D"] * 2,
        **override,
    }
    with pytest.raises(ValueError, match=re.escape(message)):
        from_diffusers_config(config)


def test_absent_config_keys_take_diffusers_defaults():
    architecture, latent_scale = from_diffusers_config(
        {"block_out_channels": [8], "_name_or_path": "x", "sample_size": [32, 32]}
    )
    assert latent_scale == 0.18215
    assert architecture == autoencoder_architecture(
        block_out_channels=(8,), layers_per_block=1, latent_channels=4, norm_num_groups=32
    )


def test_cli_refuses_a_directory_without_config_a_shifted_latent_space_and_no_weights(
    tmp_path,
):
    model_dir = tmp_path / "vae"
    model_dir.mkdir()
    arguments = ["autoencoder_kl", "--model_dir", str(model_dir), "--output", str(tmp_path / "o")]
    with pytest.raises(SystemExit, match=re.escape(f"error: No config.json in {model_dir}")):
        convert_main(arguments)
    (model_dir / "config.json").write_text(json.dumps({"shift_factor": 0.0609}))
    with pytest.raises(SystemExit, match="error: shift_factor is 0.0609; only null"):
        convert_main(arguments)
    (model_dir / "config.json").write_text(json.dumps({"block_out_channels": [8]}))
    weights = model_dir / "diffusion_pytorch_model.fp16.safetensors"
    with pytest.raises(SystemExit, match=re.escape(f"error: No checkpoint file at {weights}")):
        convert_main([*arguments, "--weights", str(weights)])
    assert not (tmp_path / "o").exists()
