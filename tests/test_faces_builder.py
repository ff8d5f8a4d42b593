"""Tests of the procedural faces TFDS builders and of the verification pair protocol."""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from diffusion_jax.tasks.data.faces import procedural_faces
from diffusion_jax.tasks.data.sources import faces_builder
from diffusion_jax.tasks.data.verification import verification_pairs

# 20 held-out identities (two per fold) x 4 images: each fold has 8 = 4 x 2 images for 2 + 2 pairs.
CONFIG = faces_builder.ProceduralFacesConfig(
    resolution=32,
    seed=5,
    num_train_identities=8,
    images_per_train_identity=4,
    num_heldout_identities=20,
    images_per_heldout_identity=4,
    pairs_per_fold=2,
)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """The session's TFDS data dir (test_pipeline prepares the same dataset there)."""
    return tmp_path_factory.getbasetemp() / "tfds"


@pytest.fixture(scope="module")
def builders(data_dir):
    faces = faces_builder.ProceduralFaces(config=CONFIG, data_dir=data_dir)
    pairs = faces_builder.ProceduralFacePairs(config=CONFIG, data_dir=data_dir)
    faces.download_and_prepare()
    pairs.download_and_prepare()
    return faces, pairs


def _read(builder, split: str) -> dict[str, np.ndarray]:
    source = builder.as_data_source(split)
    records = source.__getitems__(range(len(source)))
    return {key: np.asarray([record[key] for record in records]) for key in records[0]}


@pytest.fixture(scope="module")
def splits(builders):
    faces, pairs = builders
    return {
        "train": _read(faces, "train"),
        "heldout": _read(faces, "heldout"),
        "pairs": _read(pairs, "pairs"),
    }


def test_splits_have_the_configured_sizes(builders):
    faces, pairs = builders
    assert {name: split.num_examples for name, split in faces.info.splits.items()} == {
        "train": 32,
        "heldout": 80,
    }
    assert pairs.info.splits["pairs"].num_examples == 2 * 2 * 10
    assert faces.info.file_format == tfds.core.FileFormat.ARRAY_RECORD


@pytest.mark.parametrize("split, identities, images", [("train", 8, 4), ("heldout", 20, 4)])
def test_labels_are_contiguous_and_images_are_the_renders(splits, split, identities, images):
    records = splits[split]
    np.testing.assert_array_equal(records["label"], np.repeat(np.arange(identities), images))
    np.testing.assert_array_equal(records["image_index"], np.tile(np.arange(images), identities))
    first_identity = 0 if split == "train" else faces_builder.HELDOUT_IDENTITY_OFFSET
    np.testing.assert_array_equal(records["identity"], first_identity + records["label"])
    # PNG is lossless: the stored images are exactly the renderer's.
    rendered = procedural_faces.render_faces(
        CONFIG.seed, records["identity"], records["image_index"], CONFIG.resolution
    )
    np.testing.assert_array_equal(records["image"], rendered)


def test_train_and_heldout_identities_are_disjoint(splits):
    assert not set(splits["train"]["identity"]) & set(splits["heldout"]["identity"])


def test_pairs_follow_the_lfw_protocol(splits):
    pairs, heldout = splits["pairs"], splits["heldout"]
    np.testing.assert_array_equal(pairs["fold"], np.repeat(np.arange(10), 4))
    np.testing.assert_array_equal(pairs["is_same"], np.tile([True, True, False, False], 10))
    np.testing.assert_array_equal(pairs["identity_a"] == pairs["identity_b"], pairs["is_same"])
    position = {
        (i, j): n for n, (i, j) in enumerate(zip(heldout["identity"], heldout["image_index"]))
    }
    for side in "ab":
        keys = zip(pairs[f"identity_{side}"], pairs[f"image_index_{side}"])
        np.testing.assert_array_equal(
            pairs[f"image_{side}"], heldout["image"][[position[key] for key in keys]]
        )
    fold_identities = [
        set(pairs["identity_a"][pairs["fold"] == f]) | set(pairs["identity_b"][pairs["fold"] == f])
        for f in range(10)
    ]
    assert sum(map(len, fold_identities)) == len(set().union(*fold_identities)) == 20
    for fold in range(10):
        in_fold = pairs["fold"] == fold
        images = list(zip(pairs["identity_a"][in_fold], pairs["image_index_a"][in_fold]))
        images += zip(pairs["identity_b"][in_fold], pairs["image_index_b"][in_fold])
        assert len(set(images)) == len(images) == 8


def test_prepared_data_loads_without_the_builder_code_or_tensorflow(builders, data_dir):
    faces, _ = builders
    script = f"""
import sys
import tensorflow_datasets as tfds
heldout = tfds.builder_from_directory({str(faces.data_dir)!r}).as_data_source("heldout")
pairs = tfds.data_source("procedural_face_pairs/{CONFIG.name}", data_dir={str(data_dir)!r})["pairs"]
assert heldout[3]["image"].shape == (32, 32, 3) and len(heldout) == 80, heldout
assert pairs[0]["image_a"].dtype.name == "uint8" and len(pairs) == 40, pairs
assert "tensorflow" not in sys.modules and "diffusion_jax" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", script], check=True)


def test_an_equal_copy_of_the_predefined_config_is_accepted(tmp_path):
    builder = faces_builder.ProceduralFaces(
        config=faces_builder.ProceduralFacesConfig(), data_dir=tmp_path
    )
    assert builder.builder_config is faces_builder.ProceduralFaces.BUILDER_CONFIGS[0]
    assert builder.builder_config.name == "r64_seed0_train200x20_heldout50x12_pairs15"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"resolution": 16}, "resolution must lie in \\[32, 112\\], got 16"),
        ({"images_per_train_identity": 0}, "images_per_train_identity must be >= 1, got 0"),
        ({"num_heldout_identities": 19}, "num_heldout_identities must be >= 20"),
        ({"images_per_heldout_identity": 1}, "images_per_heldout_identity must be >= 2"),
        ({"seed": 2**32}, "seed must lie in \\[0, 2\\*\\*32\\)"),
        ({"pairs_per_fold": 1.5}, "pairs_per_fold must be an integer, got 1.5"),
    ],
)
def test_config_rejects_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        faces_builder.ProceduralFacesConfig(**changes)


def test_verification_pairs_are_balanced_disjoint_and_reproducible():
    labels = np.repeat(
        np.arange(100, 130), 6
    )  # 30 identities x 6 images: folds of 3 x 6 = 18 images.
    pairs = verification_pairs.make_verification_pairs(labels, pairs_per_fold=4, seed=1)
    np.testing.assert_array_equal(np.bincount(pairs.fold), np.full(10, 8))
    np.testing.assert_array_equal(labels[pairs.index_a] == labels[pairs.index_b], pairs.is_same)
    for fold in range(10):
        in_fold = pairs.fold == fold
        assert pairs.is_same[in_fold].sum() == 4
        images = np.concatenate([pairs.index_a[in_fold], pairs.index_b[in_fold]])
        assert len(np.unique(images)) == 16
        other_folds = np.concatenate([pairs.index_a[~in_fold], pairs.index_b[~in_fold]])
        assert not set(labels[images]) & set(labels[other_folds])
    again = verification_pairs.make_verification_pairs(labels, pairs_per_fold=4, seed=1)
    np.testing.assert_array_equal(again.index_a, pairs.index_a)
    other_seed = verification_pairs.make_verification_pairs(labels, pairs_per_fold=4, seed=2)
    assert not np.array_equal(other_seed.index_a, pairs.index_a)


def test_verification_pairs_reuse_images_only_when_a_fold_is_too_small():
    labels = np.repeat(
        np.arange(20), 3
    )  # Folds of 2 identities x 3 images, 8 needed for 2 + 2 pairs.
    pairs = verification_pairs.make_verification_pairs(labels, pairs_per_fold=2, seed=0)
    assert np.all(pairs.index_a != pairs.index_b)
    np.testing.assert_array_equal(labels[pairs.index_a] == labels[pairs.index_b], pairs.is_same)
    for fold in range(10):
        in_fold = pairs.fold == fold
        assert len(np.unique(np.concatenate([pairs.index_a[in_fold], pairs.index_b[in_fold]]))) == 6


def test_verification_pairs_reject_too_few_identities():
    with pytest.raises(ValueError, match="at least 2 identities per fold \\(20\\) .* got 19"):
        verification_pairs.make_verification_pairs(np.arange(19), pairs_per_fold=1, seed=0)
    with pytest.raises(ValueError, match="fold 0 has no identity with two images"):
        verification_pairs.make_verification_pairs(np.arange(20), pairs_per_fold=1, seed=0)
