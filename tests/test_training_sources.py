"""Identity folders and InsightFace RecordIO feed the same grain pipeline and training loop."""

import io
import json
import os
import shutil

import numpy as np
import PIL.Image
import pytest

from diffusion_jax.apps import config_checks
from diffusion_jax.core.bad_input import BadInputError
from diffusion_jax.tasks.conditional_diffusion import diffusion_training
from diffusion_jax.tasks.data.faces.procedural_faces import render_faces
from diffusion_jax.tasks.data.sources import image_folders, input_pipeline
from tests import format_fixtures
from tests.helpers import tiny_config

IMAGES_PER_IDENTITY = (3, 2, 4)  # three identities of unequal sizes
RESOLUTION = 32


def png(pixels: np.ndarray) -> bytes:
    encoded = io.BytesIO()
    PIL.Image.fromarray(pixels).save(encoded, format="PNG")
    return encoded.getvalue()


def expected_image(encoded: bytes) -> np.ndarray:
    """What the model should see: the image resized to 32x32 (Lanczos), in [-1, 1]."""
    image = PIL.Image.open(io.BytesIO(encoded)).convert("RGB")
    image = image.resize((RESOLUTION, RESOLUTION), PIL.Image.Resampling.LANCZOS)
    return np.asarray(image, np.float32) / 127.5 - 1


@pytest.fixture(scope="module")
def faces() -> list[list[bytes]]:
    """PNGs of 48x48 procedural faces, larger than the model's 32x32 so decoding must resize,
    rendered in one call: [identity][image]."""
    identity_ids = [i for i, n in enumerate(IMAGES_PER_IDENTITY) for _ in range(n)]
    image_ids = [k for n in IMAGES_PER_IDENTITY for k in range(n)]
    pixels = iter(render_faces(1, identity_ids, image_ids, resolution=48))
    return [[png(next(pixels)) for _ in range(n)] for n in IMAGES_PER_IDENTITY]


def data_config(tmp_path, source: str, path: str):
    config = tiny_config(data_dir=str(tmp_path / "tfds"))
    config.data.source = source
    config.data.path = path
    config.data.resolution = RESOLUTION
    config.sample.identities = (2, 0)
    return config


@pytest.fixture
def folder_config(tmp_path, faces):
    root = tmp_path / "faces"
    for identity, images in enumerate(faces):
        folder = root / f"person_{identity}"
        folder.mkdir(parents=True)
        for index, encoded in enumerate(images):
            (folder / f"{index:02d}.png").write_bytes(encoded)
    (root / "person_1" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return data_config(tmp_path, "image_folder", str(root))


@pytest.fixture
def recordio_config(tmp_path, faces):
    rec_path = str(tmp_path / "train.rec")
    format_fixtures.write_recordio(
        rec_path, str(tmp_path / "train.idx"), format_fixtures.insightface_records(faces)
    )
    return data_config(tmp_path, "recordio", rec_path)


@pytest.mark.parametrize("config_fixture", ["folder_config", "recordio_config"])
def test_source_feeds_the_train_iterator(config_fixture, request, faces):
    config = request.getfixturevalue(config_fixture)
    config_checks.validate(config)
    input_pipeline.ensure_prepared(config.data)
    assert input_pipeline.num_train_identities(config.data) == len(faces)

    iterator = input_pipeline.make_train_iterator(config.data, global_batch_size=9, seed=0)
    batch = next(iterator)
    assert batch["image"].shape == (9, RESOLUTION, RESOLUTION, 3)
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    # One epoch (9 images, shuffled) holds every identity as often as it has images.
    np.testing.assert_array_equal(np.bincount(batch["label"], minlength=3), IMAGES_PER_IDENTITY)

    images, labels = input_pipeline.first_images_of_labels(config.data, [2, 0])
    np.testing.assert_array_equal(labels, [2, 0])
    for image, label in zip(images, labels):
        np.testing.assert_allclose(image, expected_image(faces[label][0]), atol=1.5 / 127.5)


def test_image_folder_skips_the_bad_file_and_reports_it(folder_config):
    input_pipeline.ensure_prepared(folder_config.data)
    builder = image_folders.prepare_image_folder(
        folder_config.data.path, folder_config.data.data_dir, resolution=RESOLUTION
    )
    report = image_folders.read_preparation_report(builder.data_dir)
    assert report["num_skipped"] == 1
    assert report["skipped"][0]["path"].endswith(os.path.join("person_1", "broken.jpg"))
    with open(os.path.join(builder.data_dir, image_folders.LABELS_FILENAME)) as f:
        assert json.load(f) == {"person_0": 0, "person_1": 1, "person_2": 2}


def test_missing_path_is_refused_naming_the_field(tmp_path):
    config = data_config(tmp_path, "recordio", str(tmp_path / "absent.rec"))
    with pytest.raises(
        config_checks.ConfigError, match="config.data.path=.*absent.rec.* does not exist"
    ):
        config_checks.validate(config)


def test_a_prepared_file_damaged_during_training_names_the_dataset_and_record(
    prepared_data_dir, tmp_path
):
    data_dir = tmp_path / "tfds"
    shutil.copytree(prepared_data_dir, data_dir)
    config = tiny_config(str(data_dir))
    iterator = input_pipeline.make_train_iterator(config.data, global_batch_size=4, seed=0)
    epoch = len(input_pipeline.training_records(config.data)) // 4  # batches
    (data_file,) = data_dir.glob("procedural_faces/*/*/procedural_faces-train.array_record-*")
    with open(data_file, "r+b") as damaged:
        damaged.truncate(os.path.getsize(data_file) // 2)
    message = f"{data_file.parent}, record \\d+: cannot read or decode it"
    with pytest.raises(BadInputError, match=message):
        for _ in range(epoch):
            next(iterator)


@pytest.mark.slow  # trains the diffusion model (2 steps, its compile and figures)
def test_training_loop_runs_on_recordio(recordio_config, tmp_path):
    recordio_config.train.num_steps = 2
    state = diffusion_training.train_and_evaluate(recordio_config, str(tmp_path / "run"))
    assert int(state.step) == 2
    assert os.path.exists(tmp_path / "run" / "figures" / "identities.png")


def test_subset_indices_keeps_first_images_of_first_labels_in_stored_order():
    labels = np.array([1, 0, 1, 2, 0, 1, 0])
    np.testing.assert_array_equal(input_pipeline.subset_indices(labels, 2, 2), [0, 1, 2, 4])
    np.testing.assert_array_equal(input_pipeline.subset_indices(labels, -1, 1), [0, 1, 3])
    np.testing.assert_array_equal(input_pipeline.subset_indices(labels, 1, -1), [1, 4, 6])


@pytest.mark.parametrize("config_fixture", ["folder_config", "recordio_config"])
def test_max_identities_and_images_cut_every_file_source(config_fixture, request, faces):
    config = request.getfixturevalue(config_fixture)
    config.data.max_identities, config.data.max_images_per_identity = 2, 2
    config_checks.validate(config)
    input_pipeline.ensure_prepared(config.data)
    assert input_pipeline.num_train_identities(config.data) == 2
    records = input_pipeline.training_records(config.data)
    got = sorted((int(records[i]["label"]), i) for i in range(len(records)))
    assert [label for label, _ in got] == [0, 0, 1, 1]
    # Each identity's kept images are its first two, whatever the source's stored order.
    for label in (0, 1):
        kept = [
            np.asarray(records[i]["image"], np.float32) / 127.5 - 1
            for other, i in got
            if other == label
        ]
        for image, encoded in zip(kept, faces[label][:2]):
            np.testing.assert_allclose(image, expected_image(encoded), atol=1.5 / 127.5)
    batch = next(input_pipeline.make_train_iterator(config.data, global_batch_size=4, seed=0))
    np.testing.assert_array_equal(np.bincount(batch["label"], minlength=3), [2, 2, 0])


def test_max_images_per_identity_on_procedural_faces_are_the_first_ones(tmp_path):
    config = tiny_config(data_dir=str(tmp_path / "tfds"))
    full = input_pipeline.training_records(config.data)
    config.data.max_identities, config.data.max_images_per_identity = 3, 1
    cut = input_pipeline.training_records(config.data)
    per_identity = config.data.images_per_train_identity
    assert len(cut) == 3 and input_pipeline.num_train_identities(config.data) == 3
    for position, label in enumerate(range(3)):
        assert int(cut[position]["label"]) == label
        np.testing.assert_array_equal(cut[position]["image"], full[label * per_identity]["image"])


def test_bad_subset_sizes_are_refused_naming_the_field(tmp_path):
    config = tiny_config(data_dir=str(tmp_path / "tfds"))
    config.data.max_images_per_identity = 0
    with pytest.raises(config_checks.ConfigError, match="data.max_images_per_identity"):
        config_checks.validate(config)
