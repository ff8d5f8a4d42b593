"""Verification pairs decode to the same arrays from .bin, pairs.txt and the embedded faces."""

import glob
import io
import os

import numpy as np
import PIL.Image
import pytest

from diffusion_jax.core.bad_input import BadInputError
from diffusion_jax.tasks.data.sources import input_pipeline
from diffusion_jax.tasks.data.sources.image_decoding import decode_image
from diffusion_jax.tasks.evaluation import verification_sets
from diffusion_jax.tasks.evaluation.encoder_report import load_verification_sets
from tests import format_fixtures
from tests.helpers import tiny_config

RESOLUTION = 32


def png(seed: int, size: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size + 4, 3), dtype=np.uint8)
    encoded = io.BytesIO()
    PIL.Image.fromarray(pixels).save(encoded, format="PNG")
    return encoded.getvalue()


def test_contiguous_folds_match_kfold_without_shuffling():
    # sklearn's KFold(10).split(range(23)): the first 3 folds hold 3 pairs, the rest 2.
    folds = verification_sets.contiguous_folds(23)
    np.testing.assert_array_equal(np.bincount(folds), [3, 3, 3, 2, 2, 2, 2, 2, 2, 2])
    assert np.all(np.diff(folds) >= 0)
    with pytest.raises(ValueError, match="9 pairs cannot be split into 10 folds"):
        verification_sets.contiguous_folds(9)


def test_verification_bin_decodes_pairs_in_file_order(tmp_path):
    images = [png(seed, 40) for seed in range(40)]
    is_same = [bool(i % 2) for i in range(20)]
    path = tmp_path / "lfw.bin"
    path.write_bytes(format_fixtures.python2_pickle(images, is_same))

    pairs = verification_sets.from_verification_bin(str(path), resolution=RESOLUTION)
    assert pairs.images_a.shape == (20, RESOLUTION, RESOLUTION, 3)
    np.testing.assert_array_equal(pairs.is_same, is_same)
    np.testing.assert_array_equal(pairs.fold, np.repeat(np.arange(10), 2))
    np.testing.assert_array_equal(pairs.images_a[3], decode_image(images[6], resolution=RESOLUTION))
    np.testing.assert_array_equal(pairs.images_b[3], decode_image(images[7], resolution=RESOLUTION))


def test_a_verification_bin_with_fewer_pairs_than_folds_is_refused_naming_it(tmp_path):
    path = tmp_path / "tiny.bin"
    images = [png(seed, 8) for seed in range(4)]
    path.write_bytes(format_fixtures.python2_pickle(images, [True, False]))
    with pytest.raises(BadInputError, match=f"{path}: 2 pairs cannot be split into 10 folds"):
        verification_sets.from_verification_bin(str(path), resolution=RESOLUTION)


def test_lfw_pairs_decode_with_their_folds(tmp_path):
    folds = [([(f"Person_{f}", 1, 2)], [(f"Person_{f}", 1, f"Other_{f}", 1)]) for f in range(10)]
    pairs_path, root = str(tmp_path / "pairs.txt"), str(tmp_path / "lfw")
    format_fixtures.write_lfw_tree(pairs_path, root, folds, header="10\t1")
    for seed, path in enumerate(sorted(glob.glob(os.path.join(root, "*", "*.jpg")))):
        with open(path, "wb") as f:
            f.write(png(seed, 48))

    pairs = verification_sets.from_lfw_pairs(pairs_path, root, resolution=RESOLUTION)
    assert len(pairs) == 20
    np.testing.assert_array_equal(pairs.is_same, [True, False] * 10)
    np.testing.assert_array_equal(pairs.fold, np.repeat(np.arange(10), 2))
    with open(os.path.join(root, "Person_4", "Person_4_0002.jpg"), "rb") as f:
        expected = decode_image(f.read(), resolution=RESOLUTION)
    np.testing.assert_array_equal(pairs.images_b[8], expected)


def test_procedural_pairs_have_ten_balanced_folds(prepared_data_dir):
    config = tiny_config(data_dir=prepared_data_dir)
    pairs = verification_sets.from_procedural(config.data)
    per_fold = 2 * config.data.pairs_per_fold
    assert len(pairs) == 10 * per_fold
    np.testing.assert_array_equal(np.bincount(pairs.fold), [per_fold] * 10)
    np.testing.assert_array_equal(np.bincount(pairs.fold[pairs.is_same]), [per_fold // 2] * 10)
    assert pairs.images_a.shape[1:] == (config.data.resolution, config.data.resolution, 3)


def test_resampled_heldout_pairs_are_of_the_heldout_images_in_identity_disjoint_folds(
    prepared_data_dir,
):
    config = tiny_config(data_dir=prepared_data_dir)
    heldout = input_pipeline.load_split_arrays(config.data, "heldout")
    pairs_per_fold = 7  # more pairs than the tiny preset's folds have images
    pairs = verification_sets.from_heldout_images(
        config.data, pairs_per_fold=pairs_per_fold, seed=3
    )
    assert len(pairs) == 10 * 2 * pairs_per_fold
    np.testing.assert_array_equal(np.bincount(pairs.fold[pairs.is_same]), [pairs_per_fold] * 10)
    # Find each image in the held-out split: the identity of both sides decides is_same, and no
    # identity appears in two folds.
    flat = heldout["image"].reshape(len(heldout["image"]), -1)
    index = {image.tobytes(): i for i, image in enumerate(flat)}

    def labels_of(images: np.ndarray) -> np.ndarray:
        rows = images.reshape(len(pairs), -1)
        return heldout["label"][[index[row.tobytes()] for row in rows]]

    label_a, label_b = labels_of(pairs.images_a), labels_of(pairs.images_b)
    np.testing.assert_array_equal(label_a == label_b, pairs.is_same)
    folds_of_identity = {}
    for label, fold in zip(np.concatenate([label_a, label_b]), np.tile(pairs.fold, 2)):
        folds_of_identity.setdefault(int(label), set()).add(int(fold))
    assert all(len(folds) == 1 for folds in folds_of_identity.values())

    config.evaluate.verification_sets = ("heldout", f"heldout@{pairs_per_fold}")
    sets = load_verification_sets(config, config.data.resolution)
    assert sorted(sets) == ["heldout", f"heldout@{pairs_per_fold}"]
    assert len(sets[f"heldout@{pairs_per_fold}"]) == len(pairs)


@pytest.mark.parametrize("entry", ["heldout@0", "heldout@", "heldout@many"])
def test_a_bad_resampled_heldout_entry_is_refused(prepared_data_dir, entry):
    config = tiny_config(data_dir=prepared_data_dir)
    config.evaluate.verification_sets = (entry,)
    with pytest.raises(ValueError, match="write heldout@N"):
        load_verification_sets(config, config.data.resolution)


def test_heldout_identities_split_into_disjoint_parts_fixed_by_the_data_seed():
    labels = np.repeat(np.arange(100, 200), 3)
    parts = verification_sets.heldout_identity_parts(labels, data_seed=7, validation_fraction=0.3)
    assert len(parts["validation"]) == 30 and len(parts["test"]) == 70
    assert not set(parts["validation"]) & set(parts["test"])
    np.testing.assert_array_equal(
        np.sort(np.concatenate([parts["validation"], parts["test"]])), np.arange(100, 200)
    )
    again = verification_sets.heldout_identity_parts(
        np.random.default_rng(0).permutation(labels), data_seed=7, validation_fraction=0.3
    )
    np.testing.assert_array_equal(again["validation"], parts["validation"])  # not label order
    other = verification_sets.heldout_identity_parts(labels, data_seed=8, validation_fraction=0.3)
    assert set(other["validation"]) != set(parts["validation"])
    # Not the first identities: a permutation, not a cut of the sorted labels.
    assert set(parts["validation"]) != set(range(100, 130))
    for fraction in (0.0, 1.0, 0.001):
        with pytest.raises(ValueError, match="validation"):
            verification_sets.heldout_identity_parts(
                labels, data_seed=7, validation_fraction=fraction
            )


def test_validation_and_test_pairs_draw_only_their_parts_identities(monkeypatch):
    num_identities, images_per_identity = 60, 3
    labels = np.repeat(np.arange(num_identities), images_per_identity)
    # Each image carries its identity in its pixels, so a pair's identities can be read back.
    images = np.broadcast_to(labels[:, None, None, None], (len(labels), 2, 2, 3)).astype(np.uint8)
    monkeypatch.setattr(
        input_pipeline,
        "load_split_arrays",
        lambda data_config, split: {"image": images, "label": labels},
    )
    config = tiny_config()
    config.evaluate.verification_sets = ("validation@4", "test@4", "heldout@4")
    identities_of = {}
    for seed in (0, 1):
        config.seed = seed  # draws other pairs, never moves an identity to the other part
        sets = load_verification_sets(config, config.data.resolution)
        assert sorted(sets) == ["heldout@4", "test@4", "validation@4"]
        for name in ("validation@4", "test@4"):
            pairs = sets[name]
            assert len(pairs) == 10 * 2 * 4
            label_a, label_b = pairs.images_a[:, 0, 0, 0], pairs.images_b[:, 0, 0, 0]
            np.testing.assert_array_equal(label_a == label_b, pairs.is_same)
            identities_of.setdefault(name, set()).update(label_a.tolist() + label_b.tolist())
    parts = verification_sets.heldout_identity_parts(
        labels, data_seed=config.data.seed, validation_fraction=config.evaluate.validation_fraction
    )
    assert identities_of["validation@4"] <= set(parts["validation"].tolist())
    assert identities_of["test@4"] <= set(parts["test"].tolist())
    assert not identities_of["validation@4"] & identities_of["test@4"]


@pytest.mark.parametrize("entry", ["test@0", "validation@", "test@x"])
def test_a_bad_heldout_part_entry_is_refused_naming_it(entry):
    config = tiny_config()
    config.evaluate.verification_sets = (entry,)
    name = entry.partition("@")[0]
    with pytest.raises(BadInputError, match=f"write {name}@N"):
        load_verification_sets(config, config.data.resolution)
