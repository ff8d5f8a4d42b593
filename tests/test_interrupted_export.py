"""An export killed midway (SIGKILL while Orbax writes the weights, or after the weights and before
the description) leaves weights without a description; saving again replaces them, while a
complete model or any other file is still refused. benchmarks/kill_trainers.py found the case: an
encoder killed during its export could not be exported again."""

import os
import re

import pytest
from flax import nnx

from diffusion_jax.core.fingerprint import array_tree_sha256
from diffusion_jax.core.models.iresnet import IResNet
from diffusion_jax.tasks.recognition import encoder_store

ARCHITECTURE = {
    "depths": [1],
    "widths": [8],
    "stem_channels": 8,
    "input_resolution": 16,
    "embedding_dim": 8,
    "dropout": 0.0,
}


def model(seed: int) -> IResNet:
    return IResNet(**ARCHITECTURE, rngs=nnx.Rngs(seed))


def save(directory) -> str:
    return encoder_store.save_encoder(str(directory), model(1), ARCHITECTURE, provenance={})


@pytest.mark.parametrize("left_behind", ["partial", "weights_only"])
def test_an_interrupted_export_is_replaced(tmp_path, left_behind):
    directory = tmp_path / "model"
    if left_behind == "partial":  # killed while Orbax wrote the weights
        (directory / "weights.orbax-checkpoint-tmp").mkdir(parents=True)
        (directory / "weights.orbax-checkpoint-tmp" / "_CHECKPOINT_METADATA").write_text("{}")
    else:  # killed after the weights, before the description
        encoder_store.save_encoder(str(directory), model(0), ARCHITECTURE, provenance={})
        os.remove(directory / encoder_store.ENCODER_JSON)
    weights_sha256 = save(directory)
    assert sorted(os.listdir(directory)) == [encoder_store.ENCODER_JSON, "weights"]
    assert encoder_store.read_description(str(directory))["weights_sha256"] == weights_sha256
    loaded = encoder_store.load_encoder(str(directory)).model
    assert array_tree_sha256(nnx.state(loaded)) == array_tree_sha256(nnx.state(model(1)))


@pytest.mark.parametrize("present", ["complete", "other"])
def test_a_complete_model_or_another_file_is_still_refused(tmp_path, present):
    directory = tmp_path / "model"
    if present == "complete":
        save(directory)
    else:
        (directory / "weights").mkdir(parents=True)
        (directory / "notes.txt").write_text("keep me")
    before = sorted(os.listdir(directory))
    with pytest.raises(FileExistsError, match=re.escape(f"{directory} is not empty")):
        save(directory)
    assert sorted(os.listdir(directory)) == before
