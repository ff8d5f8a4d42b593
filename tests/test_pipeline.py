"""Tests of the grain training pipeline and the split readers, on a tiny prepared dataset."""

import itertools
import socket
import subprocess
import sys

import grain
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from diffusion_jax.tasks.data.sources import input_pipeline

BATCH = 8
TRAIN_RECORDS = 8 * 4


def _data_config(data_dir, **changes) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(
        {
            "source": "procedural",
            "data_dir": str(data_dir),
            "resolution": 32,
            "seed": 5,
            "num_train_identities": 8,
            "images_per_train_identity": 4,
            "num_heldout_identities": 20,
            "images_per_heldout_identity": 4,
            "pairs_per_fold": 2,
            "horizontal_flip": False,
            "worker_count": 0,
        }
    )
    config.update(changes)
    return config


@pytest.fixture(scope="module")
def data_config(tmp_path_factory):
    """The dataset of test_faces_builder, in the same session directory (prepared once)."""
    config = _data_config(tmp_path_factory.getbasetemp() / "tfds")
    input_pipeline.ensure_prepared(config)
    return config


@pytest.fixture(scope="module")
def train_images(data_config):
    """The stored training images as the model sees them, [N, H, W, 3] in [-1, 1]."""
    return (
        input_pipeline.load_split_arrays(data_config, "train")["image"].astype(np.float32) / 127.5
        - 1.0
    )


def _batches(iterator, count: int) -> list[dict]:
    return list(itertools.islice(iterator, count))


def _record_indices(images: np.ndarray, train_images: np.ndarray) -> np.ndarray:
    """The training record each image [B, H, W, 3] is, found by exact comparison."""
    matches = np.all(images[:, None] == train_images[None], axis=(2, 3, 4))
    assert np.all(matches.sum(axis=1) == 1)
    return matches.argmax(axis=1)


def test_batches_are_scaled_stored_images_and_labels(data_config, train_images):
    batches = _batches(
        input_pipeline.make_train_iterator(data_config, global_batch_size=BATCH, seed=0), 6
    )
    labels = input_pipeline.load_split_arrays(data_config, "train")["label"]
    for batch in batches:
        assert set(batch) == {"image", "label"}
        assert batch["image"].dtype == np.float32 and batch["image"].shape == (BATCH, 32, 32, 3)
        assert batch["label"].dtype == np.int32 and batch["label"].shape == (BATCH,)
        assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
        np.testing.assert_array_equal(
            batch["label"], labels[_record_indices(batch["image"], train_images)]
        )
    # One epoch is 4 batches of 8: a permutation of the 32 records, and the next epoch another.
    epochs = [
        np.concatenate([_record_indices(b["image"], train_images) for b in batches[i : i + 4]])
        for i in (0, 4)
    ]
    np.testing.assert_array_equal(np.sort(epochs[0]), np.arange(TRAIN_RECORDS))
    assert not np.array_equal(epochs[0], np.arange(TRAIN_RECORDS))
    assert not np.array_equal(epochs[0][:16], epochs[1][:16])


def test_order_is_determined_by_the_seed(data_config):
    first = _batches(
        input_pipeline.make_train_iterator(data_config, global_batch_size=BATCH, seed=3), 3
    )
    again = _batches(
        input_pipeline.make_train_iterator(data_config, global_batch_size=BATCH, seed=3), 3
    )
    other = _batches(
        input_pipeline.make_train_iterator(data_config, global_batch_size=BATCH, seed=4), 3
    )
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    assert not all(np.array_equal(a["image"], b["image"]) for a, b in zip(first, other))


def test_horizontal_flip_mirrors_about_half_of_the_images(data_config, train_images):
    flipping = _data_config(data_config.data_dir, horizontal_flip=True)
    images = np.concatenate(
        [
            b["image"]
            for b in _batches(
                input_pipeline.make_train_iterator(flipping, global_batch_size=BATCH, seed=0), 8
            )
        ]
    )
    is_stored = np.all(images[:, None] == train_images[None], axis=(2, 3, 4)).any(axis=1)
    is_mirrored = np.all(images[:, None] == train_images[None, :, :, ::-1], axis=(2, 3, 4)).any(
        axis=1
    )
    assert np.all(is_stored | is_mirrored)
    assert 16 < is_mirrored.sum() < 48


def _shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """`image` moved down by dy and right by dx pixels, the vacated border filled from its edge."""
    height, width = image.shape[:2]
    rows = np.clip(np.arange(height) - dy, 0, height - 1)
    cols = np.clip(np.arange(width) - dx, 0, width - 1)
    return image[rows][:, cols]


def test_random_shift_translates_by_at_most_max_shift(data_config, train_images):
    shifting = _data_config(data_config.data_dir, max_shift=2)
    images = np.concatenate(
        [
            b["image"]
            for b in _batches(
                input_pipeline.make_train_iterator(shifting, global_batch_size=BATCH, seed=0), 4
            )
        ]
    )
    offsets = list(itertools.product(range(-2, 3), repeat=2))
    candidates = np.stack([[_shifted(x, dy, dx) for dy, dx in offsets] for x in train_images])
    # matches[i, r, k]: batch image i is record r shifted by offsets[k].
    matches = np.all(images[:, None, None] == candidates[None], axis=(3, 4, 5))
    assert matches.any(axis=(1, 2)).all()
    used = {offsets[k] for k in np.nonzero(matches.any(axis=1))[1]}
    assert len(used) > 5  # 32 draws from 25 offsets


def _luma(x: np.ndarray) -> np.ndarray:
    return x @ np.array([0.299, 0.587, 0.114])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_color_jitter_scales_brightness_contrast_and_saturation_by_its_drawn_factors(seed):
    image = np.random.default_rng(10 + seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out = input_pipeline._RandomColorJitter(0.4).random_map(
        {"image": image, "label": 3}, np.random.default_rng(seed)
    )
    brightness, contrast, saturation = np.random.default_rng(seed).uniform(0.6, 1.4, size=3)
    # torchvision's ColorJitter order and blends, in float64.
    x = np.clip(image / 255.0 * brightness, 0, 1)
    x = np.clip(contrast * (x - _luma(x).mean()) + _luma(x).mean(), 0, 1)
    x = np.clip(saturation * (x - _luma(x)[..., None]) + _luma(x)[..., None], 0, 1)
    assert out["label"] == 3 and out["image"].dtype == np.uint8
    assert np.abs(out["image"].astype(int) - np.round(x * 255)).max() <= 1
    assert np.abs(out["image"].astype(int) - image).mean() > 2  # not the identity


def test_color_jitter_keeps_a_grey_image_grey_and_zero_strength_changes_nothing():
    grey = np.repeat(np.arange(0, 256, 4, dtype=np.uint8).reshape(8, 8, 1), 3, axis=2)
    out = input_pipeline._RandomColorJitter(0.5).random_map(
        {"image": grey}, np.random.default_rng(4)
    )
    assert np.all(out["image"] == out["image"][..., :1])  # saturation acts on colour only
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    same = input_pipeline._RandomColorJitter(0.0).random_map(
        {"image": image}, np.random.default_rng(1)
    )
    np.testing.assert_array_equal(same["image"], image)


def test_the_iterator_jitters_colours_when_asked(data_config, train_images):
    augmenting = _data_config(data_config.data_dir, color_jitter=0.3)
    labels = input_pipeline.load_split_arrays(data_config, "train")["label"]
    for batch in _batches(
        input_pipeline.make_train_iterator(augmenting, global_batch_size=BATCH, seed=0), 4
    ):
        distances = np.abs(batch["image"][:, None] - train_images[None]).mean(axis=(2, 3, 4))
        assert distances.min(axis=1).min() > 0  # no image is left as stored
        nearest = distances.argmin(axis=1)  # ...but each is still nearest its own identity's
        np.testing.assert_array_equal(batch["label"], labels[nearest])


def test_iterator_state_round_trip(data_config):
    iterator = input_pipeline.make_train_iterator(data_config, global_batch_size=BATCH, seed=1)
    _batches(iterator, 5)
    state = iterator.get_state()
    expected = _batches(iterator, 4)
    resumed = input_pipeline.make_train_iterator(data_config, global_batch_size=BATCH, seed=1)
    resumed.set_state(state)
    for a, b in zip(expected, _batches(resumed, 4)):
        np.testing.assert_array_equal(a["image"], b["image"])


def test_iterator_checkpoints_with_orbax(data_config, tmp_path):
    iterator = input_pipeline.make_train_iterator(data_config, global_batch_size=BATCH, seed=1)
    _batches(iterator, 3)
    with ocp.CheckpointManager(tmp_path, item_names=("data",)) as manager:
        manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
        manager.wait_until_finished()
    expected = _batches(iterator, 2)
    resumed = input_pipeline.make_train_iterator(data_config, global_batch_size=BATCH, seed=1)
    with ocp.CheckpointManager(tmp_path, item_names=("data",)) as manager:
        manager.restore(
            3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed))
        )
    for a, b in zip(expected, _batches(resumed, 2)):
        np.testing.assert_array_equal(a["image"], b["image"])


_PROCESS_SCRIPT = """
import json
import sys
import jax
import ml_collections
import numpy as np
port, process_id, config_json, output = sys.argv[1:]
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=int(process_id))
from diffusion_jax.tasks.data.sources import input_pipeline
data_config = ml_collections.ConfigDict(json.loads(config_json))
iterator = input_pipeline.make_train_iterator(data_config, global_batch_size=8, seed=0)
np.save(output, np.concatenate([next(iterator)["image"] for _ in range(4)]))
"""


def test_two_processes_read_disjoint_halves_of_each_epoch(data_config, train_images, tmp_path):
    """Two JAX processes on localhost: each gets batches of 8 / 2, and in one epoch (16 records
    each) they read every record exactly once."""
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    outputs = [tmp_path / f"process_{i}.npy" for i in range(2)]
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _PROCESS_SCRIPT,
                str(port),
                str(i),
                data_config.to_json(),
                str(output),
            ]
        )
        for i, output in enumerate(outputs)
    ]
    assert [process.wait(timeout=120) for process in processes] == [0, 0]
    halves = [np.load(output) for output in outputs]
    assert [half.shape for half in halves] == [(16, 32, 32, 3)] * 2
    records = np.concatenate([_record_indices(half, train_images) for half in halves])
    np.testing.assert_array_equal(np.sort(records), np.arange(TRAIN_RECORDS))


def test_split_arrays(data_config):
    heldout = input_pipeline.load_split_arrays(data_config, "heldout")
    assert heldout["image"].shape == (80, 32, 32, 3) and heldout["image"].dtype == np.uint8
    assert heldout["label"].dtype == np.int32
    pairs = input_pipeline.load_split_arrays(data_config, "pairs")
    assert pairs["image_a"].shape == pairs["image_b"].shape == (40, 32, 32, 3)
    assert pairs["is_same"].dtype == bool and pairs["is_same"].sum() == 20
    with pytest.raises(
        ValueError, match="split must be one of \\('train', 'heldout', 'pairs'\\), got 'test'"
    ):
        input_pipeline.load_split_arrays(data_config, "test")


def test_first_images_of_labels(data_config, train_images):
    images, labels = input_pipeline.first_images_of_labels(data_config, [5, 0, 5])
    np.testing.assert_array_equal(labels, [5, 0, 5])
    np.testing.assert_array_equal(images, train_images[[20, 0, 20]])
    with pytest.raises(
        ValueError, match="labels must be a 1-D sequence in \\[0, 8\\) .* got \\[8\\]"
    ):
        input_pipeline.first_images_of_labels(data_config, [8])


def test_bad_arguments_raise_clear_errors(data_config):
    with pytest.raises(ValueError, match="global_batch_size must be a positive integer, got 0"):
        input_pipeline.make_train_iterator(data_config, global_batch_size=0, seed=0)
    with pytest.raises(ValueError, match="seed must be an integer in \\[0, 2\\*\\*32\\), got -1"):
        input_pipeline.make_train_iterator(data_config, global_batch_size=BATCH, seed=-1)
    with pytest.raises(ValueError, match="data.source must be one of .*, got 'folders'"):
        input_pipeline.ensure_prepared(_data_config(data_config.data_dir, source="folders"))
