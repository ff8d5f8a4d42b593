"""arcface_torch import: embeddings equal PyTorch's, the CLI round trip, and refused inputs.

The reference is `diffusion_jax/torch_twins/iresnet.py`, a PyTorch IResNet with arcface_torch's
module names, randomly initialised with random BN statistics, BN affines and PReLU slopes, in eval
mode.
"""

import hashlib
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx

from diffusion_jax.core.models.iresnet import iresnet_architecture
from diffusion_jax.tasks.convert.arcface_torch import (
    convert_arcface_state_dict,
    infer_arcface_architecture,
)
from diffusion_jax.tasks.convert.tensor_files import load_tensors
from tests.helpers import REPO_ROOT

SMALL = iresnet_architecture("iresnet_small", input_resolution=32)

# Jitted: on CPU one compilation of the network is faster than eager op-by-op dispatch.
embed = nnx.jit(lambda model, images: model(images))


@pytest.fixture(scope="module")
def torch_twin():
    """(torch, diffusion_jax.torch_twins.iresnet); skips the test without PyTorch."""
    torch = pytest.importorskip("torch")
    from diffusion_jax.torch_twins import iresnet as torch_iresnet

    return torch, torch_iresnet


def random_images(batch: int, resolution: int) -> np.ndarray:
    return (
        np.random.default_rng(0)
        .uniform(-1, 1, (batch, resolution, resolution, 3))
        .astype(np.float32)
    )


def assert_same_embeddings(model, twin, torch, resolution: int) -> None:
    """Per-example cosine similarity > 0.9999 and a small max-abs difference, on 2 images."""
    images = random_images(2, resolution)
    ours = np.asarray(embed(model, jnp.asarray(images)))
    with torch.no_grad():
        reference = twin(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    cosine = (ours * reference).sum(-1) / (
        np.linalg.norm(ours, axis=-1) * np.linalg.norm(reference, axis=-1)
    )
    assert np.all(cosine > 0.9999), cosine
    np.testing.assert_allclose(ours, reference, atol=1e-4 * np.abs(reference).max())


def zero_state_dict(architecture: dict, torch, torch_iresnet) -> dict[str, np.ndarray]:
    """The twin's state-dict keys and shapes, as zero-memory arrays (built on the meta device)."""
    with torch.device("meta"):
        twin = torch_iresnet.build(architecture)
    return {
        key: np.broadcast_to(np.float32(0), tuple(value.shape))
        for key, value in twin.state_dict().items()
    }


def test_iresnet18_from_a_pth_file_matches_torch(torch_twin, tmp_path):
    torch, torch_iresnet = torch_twin
    architecture = iresnet_architecture("iresnet18")
    twin = torch_iresnet.randomise_(torch_iresnet.build(architecture), seed=0)
    path = str(tmp_path / "backbone.pth")
    torch.save(twin.state_dict(), path)

    tensors = load_tensors(path)
    assert tensors["layer1.0.bn1.num_batches_tracked"].dtype == np.int64
    assert infer_arcface_architecture(tensors) == "iresnet18"
    assert_same_embeddings(convert_arcface_state_dict(tensors, architecture), twin, torch, 112)


def test_small_variant_from_safetensors_matches_torch(torch_twin, tmp_path):
    torch, torch_iresnet = torch_twin
    twin = torch_iresnet.randomise_(torch_iresnet.build(SMALL), seed=1)
    path = str(tmp_path / "backbone.safetensors")
    safetensors.numpy.save_file({k: v.numpy() for k, v in twin.state_dict().items()}, path)

    tensors = load_tensors(path)
    assert infer_arcface_architecture(tensors) == "iresnet_small"
    assert_same_embeddings(convert_arcface_state_dict(tensors, SMALL), twin, torch, 32)


@pytest.mark.slow  # two subprocesses of the converter's command line
def test_cli_converts_a_ddp_training_checkpoint(torch_twin, tmp_path):
    from diffusion_jax.tasks.recognition.encoder_store import load_encoder

    torch, torch_iresnet = torch_twin
    twin = torch_iresnet.randomise_(torch_iresnet.build(SMALL), seed=2)
    # Like arcface_torch's checkpoint_gpu_*.pt, with the "module." prefixes of a DDP model.
    checkpoint = {
        "epoch": 3,
        "global_step": 1200,
        "state_dict_backbone": {f"module.{k}": v for k, v in twin.state_dict().items()},
        "state_dict_softmax_fc": {"weight": torch.zeros(4, 8)},
    }
    path = str(tmp_path / "checkpoint_gpu_0.pt")
    torch.save(checkpoint, path)
    output = str(tmp_path / "encoder")
    command = [
        sys.executable, "-m", "diffusion_jax.convert", "arcface_torch",
        "--checkpoint", path, "--output", output, "--input_resolution", "32",
    ]  # fmt: skip

    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"iresnet_small at 32x32, 664,592 parameters -> {output}" in result.stdout
    loaded = load_encoder(output)
    with open(path, "rb") as f:
        source_sha256 = hashlib.sha256(f.read()).hexdigest()
    assert loaded.provenance["source_sha256"] == source_sha256
    assert loaded.provenance["converted_from"] == "arcface_torch"
    assert loaded.architecture == SMALL
    assert_same_embeddings(loaded.model, twin, torch, 32)

    again = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and f"--output {output} is not empty" in again.stderr


def test_wrong_architecture_names_the_unexpected_keys(torch_twin):
    tensors = zero_state_dict(iresnet_architecture("iresnet50"), *torch_twin)
    with pytest.raises(ValueError) as error:
        convert_arcface_state_dict(tensors, iresnet_architecture("iresnet18"))
    message = str(error.value)
    # iresnet50 has 3, 4, 14, 3 blocks per stage, iresnet18 2 of each: 16 blocks too many, of
    # 15 keys each (3 BNs of 4, 2 convolutions, 1 PReLU; num_batches_tracked is ignored).
    assert "missing keys" not in message and "shape mismatches" not in message
    assert "unexpected keys (240): layer1.2.* (15 keys), layer2.2.* (15 keys), layer2.3" in message
    assert "layer3.9.* (15 keys), layer3.10.* (15 keys)" in message
    assert message.endswith("The checkpoint looks like iresnet50.")


def test_missing_keys_and_wrong_shapes_are_named(torch_twin):
    tensors = zero_state_dict(SMALL, *torch_twin)
    del tensors["layer2.1.prelu.weight"]
    with pytest.raises(ValueError) as error:
        convert_arcface_state_dict(tensors, {**SMALL, "input_resolution": 64})
    message = str(error.value)
    assert "missing keys (1): layer2.1.prelu.weight;" in message and "looks like" not in message
    # 128 channels at 2x2 in the checkpoint, at 4x4 for 64x64 inputs.
    assert "shape mismatches (1): fc.weight: checkpoint (512, 512), model (512, 2048)" in message


def test_features_scale_must_be_one(torch_twin):
    torch, torch_iresnet = torch_twin
    tensors = {k: v.numpy() for k, v in torch_iresnet.build(SMALL).state_dict().items()}
    tensors["features.weight"] = np.full_like(tensors["features.weight"], 2.0)
    with pytest.raises(ValueError, match="features.weight is not all ones"):
        convert_arcface_state_dict(tensors, SMALL)


class _RunsAShellCommand:
    """Pickles as a call to os.system: what a malicious checkpoint would hold."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_a_pickle_with_arbitrary_objects_is_refused_unexecuted(torch_twin, tmp_path):
    torch, _ = torch_twin
    marker = tmp_path / "pwned"
    path = str(tmp_path / "backbone.pt")
    torch.save({"conv1.weight": _RunsAShellCommand(f"touch {marker}")}, path)
    with pytest.raises(ValueError, match=f"{path}: not a PyTorch file of tensors"):
        load_tensors(path)
    assert not marker.exists()


def test_a_pt_file_without_a_state_dict_is_refused(torch_twin, tmp_path):
    torch, _ = torch_twin
    path = str(tmp_path / "optimizer.pt")
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, path)
    expected = r"optimizer.pt: holds a mapping with keys \['epoch', 'optimizer'\]"
    with pytest.raises(ValueError, match=expected):
        load_tensors(path)


def test_safetensors_names_lose_the_ddp_prefix_and_floats_become_float32(tmp_path):
    path = str(tmp_path / "weights.safetensors")
    safetensors.numpy.save_file(
        {
            "module.conv1.weight": np.ones((2, 3), np.float16),
            "module.bn1.num_batches_tracked": np.array(7, np.int64),
        },
        path,
    )
    tensors = load_tensors(path)
    assert sorted(tensors) == ["bn1.num_batches_tracked", "conv1.weight"]
    assert tensors["conv1.weight"].dtype == np.float32
    assert tensors["bn1.num_batches_tracked"] == 7


def test_unknown_suffix_and_missing_file_are_refused(tmp_path):
    path = tmp_path / "weights.onnx"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"weights.onnx: unknown checkpoint suffix '.onnx'"):
        load_tensors(str(path))
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_tensors(str(tmp_path / "absent.pth"))


@pytest.mark.parametrize("name", ["iresnet18", "iresnet34", "iresnet50", "iresnet100"])
def test_published_architectures_are_recognised(torch_twin, name):
    tensors = zero_state_dict(iresnet_architecture(name), *torch_twin)
    assert infer_arcface_architecture(tensors) == name
    del tensors["conv1.weight"]
    assert infer_arcface_architecture(tensors) is None
