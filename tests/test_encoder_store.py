"""Encoder directories: save/load round trips, and the directories that are refused."""

import json
import os
import re
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from diffusion_jax.core.bad_input import BadInputError
from diffusion_jax.core.fingerprint import array_tree_sha256
from diffusion_jax.core.models.iresnet import IResNet
from diffusion_jax.tasks.recognition import encoder_store

ARCHITECTURE = {
    "depths": [1, 1],
    "widths": [8, 16],
    "stem_channels": 8,
    "input_resolution": 16,
    "embedding_dim": 8,
    "dropout": 0.0,
}
PROVENANCE = {"trained_in": "/runs/a/encoder", "step": 12, "data": {"source": "procedural"}}


def encoder_with_statistics(seed: int) -> IResNet:
    """An IResNet in eval mode whose BatchNorm running statistics are not their initial 0 and 1,
    so a save or load that dropped them would change the embeddings."""
    model = IResNet(**ARCHITECTURE, rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    statistics = nnx.state(model, nnx.BatchStat)
    nnx.update(
        model, jax.tree.map(lambda x: rng.uniform(0.5, 1.5, x.shape).astype(x.dtype), statistics)
    )
    model.eval()
    return model


@nnx.jit
def raw_embeddings(model: IResNet, images: jax.Array) -> jax.Array:
    return model(images)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(model, directory, weights hash returned by save_encoder), saved once for the module."""
    model = encoder_with_statistics(seed=0)
    directory = str(tmp_path_factory.mktemp("store") / "encoder")
    weights_sha256 = encoder_store.save_encoder(
        directory, model, ARCHITECTURE, provenance=PROVENANCE
    )
    return model, directory, weights_sha256


def copy_of(directory: str, tmp_path) -> str:
    copy = str(tmp_path / "copy")
    shutil.copytree(directory, copy)
    return copy


def edit_description(directory: str, edit) -> None:
    path = os.path.join(directory, encoder_store.ENCODER_JSON)
    with open(path) as f:
        description = json.load(f)
    edit(description)
    with open(path, "w") as f:
        json.dump(description, f)


def test_round_trip_gives_the_same_weights_hash_and_embeddings(saved):
    model, directory, weights_sha256 = saved
    assert encoder_store.is_complete(directory)
    loaded = encoder_store.load_encoder(directory)

    assert weights_sha256 == array_tree_sha256(nnx.state(model))
    assert loaded.weights_sha256 == weights_sha256
    assert array_tree_sha256(nnx.state(loaded.model)) == weights_sha256
    assert loaded.architecture == ARCHITECTURE
    assert loaded.provenance == PROVENANCE
    assert (loaded.embedding_dim, loaded.input_resolution) == (8, 16)
    assert loaded.directory == directory

    # Eval mode (running statistics, not the batch's), so the embeddings are the saved model's.
    images = np.random.default_rng(1).uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)
    np.testing.assert_array_equal(
        np.asarray(raw_embeddings(loaded.model, images)), np.asarray(raw_embeddings(model, images))
    )


def test_another_model_has_another_hash(saved, tmp_path):
    _, _, weights_sha256 = saved
    other = encoder_store.save_encoder(
        str(tmp_path / "other"), encoder_with_statistics(seed=1), ARCHITECTURE, provenance={}
    )
    assert other != weights_sha256


def test_saving_into_an_existing_empty_directory_is_allowed(tmp_path):
    directory = tmp_path / "empty"
    directory.mkdir()
    encoder_store.save_encoder(
        str(directory), encoder_with_statistics(0), ARCHITECTURE, provenance={}
    )
    assert encoder_store.is_complete(str(directory))


def test_saving_into_a_non_empty_directory_is_refused_naming_it(tmp_path):
    directory = tmp_path / "busy"
    directory.mkdir()
    (directory / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=re.escape(f"{directory} is not empty")):
        encoder_store.save_encoder(
            str(directory), encoder_with_statistics(0), ARCHITECTURE, provenance={}
        )
    assert os.listdir(directory) == ["notes.txt"]


def test_an_architecture_that_is_not_json_fails_before_anything_is_written(tmp_path):
    directory = tmp_path / "encoder"
    architecture = {**ARCHITECTURE, "embedding_dim": np.int64(8)}
    with pytest.raises(TypeError, match="int64 is not JSON serializable"):
        encoder_store.save_encoder(
            str(directory), encoder_with_statistics(0), architecture, provenance={}
        )
    assert not directory.exists()


def test_a_directory_without_encoder_json_is_an_interrupted_save_and_is_refused(saved, tmp_path):
    directory = copy_of(saved[1], tmp_path)
    os.remove(os.path.join(directory, "encoder.json"))
    assert os.path.isdir(os.path.join(directory, "weights"))
    assert not encoder_store.is_complete(directory)
    with pytest.raises(BadInputError, match=re.escape(f"{directory}: no encoder.json: not a")):
        encoder_store.load_encoder(directory)


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"{not json", "not valid JSON: Expecting property name"),
        (b'{"a": "\xe9"}', "not valid JSON: 'utf-8' codec can't decode byte 0xe9"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'{"format_version": 1}', "lacks the object 'architecture'"),
        (b'{"format_version": 1, "architecture": {}}', "lacks the string 'weights_sha256'"),
    ],
    ids=["not-json", "latin1", "list", "no-architecture", "no-hash"],
)
def test_a_garbled_encoder_json_is_refused_naming_it(tmp_path, content, problem):
    description = tmp_path / "encoder.json"
    description.write_bytes(content)
    with pytest.raises(BadInputError, match=re.escape(f"{description}: {problem}")):
        encoder_store.load_encoder(str(tmp_path))


def test_another_format_version_is_refused(saved, tmp_path):
    directory = copy_of(saved[1], tmp_path)
    edit_description(directory, lambda description: description.update(format_version=2))
    with pytest.raises(ValueError, match="format_version 2 is not 1"):
        encoder_store.load_encoder(directory)
    # The copy itself is a valid encoder: only the version was refused.
    edit_description(directory, lambda description: description.update(format_version=1))
    assert encoder_store.load_encoder(directory).weights_sha256 == saved[2]


@pytest.mark.parametrize("change", [{"embedding_dim": 16}, {"widths": [8, 8]}, {"depths": [1, 2]}])
def test_weights_that_do_not_fit_the_described_architecture_are_refused_naming_the_directory(
    saved, tmp_path, change
):
    directory = copy_of(saved[1], tmp_path)
    edit_description(directory, lambda description: description["architecture"].update(change))
    message = f"{directory}/weights: do not fit the architecture in {directory}"
    with pytest.raises(ValueError, match=re.escape(message)):
        encoder_store.load_encoder(directory)
