"""Content hashes: equal trees hash equally; a changed value, name, dtype or shape changes it."""

import hashlib

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from diffusion_jax.core.fingerprint import array_tree_sha256, file_sha256


def make_tree() -> dict:
    return {
        "conv": {
            "kernel": np.arange(12, dtype=np.float32).reshape(2, 2, 3),
            "bias": np.zeros(3, np.float32),
        },
        "steps": [np.int32(7), np.array([1, 2, 3], np.int64)],
    }


def test_equal_trees_hash_equally_on_host_and_device():
    digest = array_tree_sha256(make_tree())
    assert len(digest) == 64 and int(digest, 16) >= 0  # hex SHA-256
    assert array_tree_sha256(make_tree()) == digest
    on_device = {
        "conv": {key: jnp.asarray(value) for key, value in make_tree()["conv"].items()},
        "steps": make_tree()["steps"],
    }
    assert array_tree_sha256(on_device) == digest


def test_any_change_of_a_value_a_name_a_dtype_or_a_shape_changes_the_hash():
    digest = array_tree_sha256(make_tree())

    one_element = make_tree()
    one_element["conv"]["kernel"][1, 0, 2] += 1e-6
    renamed = make_tree()
    renamed["conv"]["weight"] = renamed["conv"].pop("kernel")
    # The same bytes under another dtype, and under another shape.
    retyped = make_tree()
    retyped["conv"]["kernel"] = retyped["conv"]["kernel"].view(np.int32)
    reshaped = make_tree()
    reshaped["conv"]["kernel"] = reshaped["conv"]["kernel"].reshape(3, 2, 2)
    # The same values, split differently between two leaves.
    split_a = {"a": np.array([1.0, 2.0]), "b": np.array([3.0])}
    split_b = {"a": np.array([1.0]), "b": np.array([2.0, 3.0])}

    for changed in (one_element, renamed, retyped, reshaped):
        assert array_tree_sha256(changed) != digest
    assert array_tree_sha256(split_a) != array_tree_sha256(split_b)


def test_extension_dtypes_with_equal_bytes_but_different_values_hash_differently():
    signed = np.array([1, 2, -3], ml_dtypes.int4)
    unsigned = signed.view(ml_dtypes.uint4)  # the same bytes read as [1, 2, 13]
    assert unsigned.tolist() == [1, 2, 13]
    assert array_tree_sha256({"w": signed}) != array_tree_sha256({"w": unsigned})


def test_model_states_hash_equally_exactly_when_their_weights_are_equal():
    def state(seed: int) -> nnx.State:
        return nnx.state(nnx.Linear(3, 4, rngs=nnx.Rngs(seed)))

    assert array_tree_sha256(state(0)) == array_tree_sha256(state(0))
    assert array_tree_sha256(state(0)) != array_tree_sha256(state(1))


@pytest.mark.parametrize("size", [0, 5, 100])
def test_file_sha256_is_hashlib_of_the_bytes_across_chunk_boundaries(tmp_path, size):
    content = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    path = tmp_path / "blob.bin"
    path.write_bytes(content)
    expected = hashlib.sha256(content).hexdigest()
    assert file_sha256(str(path), chunk_bytes=7) == expected  # 100 bytes = 14 full chunks + 2
    assert file_sha256(str(path)) == expected
