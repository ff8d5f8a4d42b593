"""TfdsNamedSource reads a locally prepared TFDS dataset by name, and never downloads one."""

import os
import pickle

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from diffusion_jax.core.bad_input import BadInputError
from diffusion_jax.tasks.data.sources.tfds_source import TfdsNamedSource

DATASET_NAME = "tfds_source_test_faces"
HEIGHT, WIDTH = 12, 20  # non-square, so each policy must crop
PERSON_OF_RECORD = ("carol", "alice", "bob", "alice", "carol")
CLASS_NAMES = ("zed", "carol", "bob", "alice")  # not sorted, and "zed" has no record


def stored_pixels(index: int) -> np.ndarray:
    return np.random.default_rng(index).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


class TfdsSourceTestFaces(tfds.core.GeneratorBasedBuilder):
    """Registered as DATASET_NAME: each record's person as Text ("name") and as ClassLabel."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "image": tfds.features.Image(shape=(None, None, 3)),
            "name": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=CLASS_NAMES),
        }
        return tfds.core.DatasetInfo(
            builder=self, features=tfds.features.FeaturesDict(features), disable_shuffling=True
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for index, person in enumerate(PERSON_OF_RECORD):
            yield index, {"image": stored_pixels(index), "name": person, "label": person}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    TfdsSourceTestFaces(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir


def test_text_labels_are_the_sorted_names(data_dir):
    source = TfdsNamedSource(
        DATASET_NAME, "train", data_dir, resolution=8, policy="center_crop", label_key="name"
    )
    assert len(source) == len(PERSON_OF_RECORD)
    assert source.identity_names == ("alice", "bob", "carol")
    assert source.num_identities == 3
    np.testing.assert_array_equal(source.record_labels, [2, 0, 1, 0, 2])
    for index, person in enumerate(PERSON_OF_RECORD):
        record = source[index]
        assert record["label"].dtype == np.int32
        assert record["label"] == ("alice", "bob", "carol").index(person)
        # center_crop at R = 8 < 12: the central 8x8 pixels, untouched (top 2, left 6).
        np.testing.assert_array_equal(record["image"], stored_pixels(index)[2:10, 6:14])
    np.testing.assert_array_equal(source.first_index_of_labels([2, 0, 1]), [0, 1, 2])


def test_class_labels_keep_their_integers(data_dir):
    source = TfdsNamedSource(DATASET_NAME, "train", data_dir, resolution=16, policy="resize")
    assert source.identity_names is None
    assert source.num_identities == len(CLASS_NAMES)
    for index, person in enumerate(PERSON_OF_RECORD):
        record = source[index]
        assert record["label"] == CLASS_NAMES.index(person)
        # resize: the central 12x12 square, Lanczos-resampled to 16x16.
        square = PIL.Image.fromarray(stored_pixels(index)).crop((4, 0, 16, 12))
        expected = square.resize((16, 16), PIL.Image.Resampling.LANCZOS)
        np.testing.assert_array_equal(record["image"], np.asarray(expected))
    np.testing.assert_array_equal(source.first_index_of_labels([3, 1]), [1, 0])
    with pytest.raises(ValueError, match=r"without records: \[0\]"):
        source.first_index_of_labels([0])


def test_source_survives_pickling_for_grain_workers(data_dir):
    source = TfdsNamedSource(DATASET_NAME, "train", data_dir, resolution=8, label_key="name")
    copy = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(copy[3]["image"], source[3]["image"])
    assert copy[3]["label"] == source[3]["label"] == 0


@pytest.mark.parametrize("name", ["lfw", DATASET_NAME])
def test_unprepared_dataset_is_refused_and_not_downloaded(name, tmp_path):
    empty_dir = str(tmp_path / "empty")
    os.makedirs(empty_dir)
    with pytest.raises(BadInputError, match=rf"{name!r} in data_dir=.*empty': not prepared there"):
        TfdsNamedSource(name, "train", empty_dir, resolution=8)
    assert os.listdir(empty_dir) == []


@pytest.mark.parametrize(
    "name, problem",
    [
        ("no_such_faces", "neither prepared there nor a known TFDS dataset name"),
        ("lfw:9.9.9", "cannot be opened: .*9.9.9"),
        ("Bad Name!", "cannot be opened: Parsing builder name string Bad Name! failed"),
    ],
    ids=["unknown", "unknown-version", "malformed"],
)
def test_unknown_or_malformed_name_is_refused_naming_it(tmp_path, name, problem):
    with pytest.raises(BadInputError, match=f"TFDS dataset {name!r} in data_dir=.*: {problem}"):
        TfdsNamedSource(name, "train", str(tmp_path), resolution=8)


def test_tfrecord_dataset_is_refused(tmp_path):
    TfdsSourceTestFaces(data_dir=str(tmp_path), file_format="tfrecord").download_and_prepare()
    with pytest.raises(ValueError, match="prepared as tfrecord, which has no random access"):
        TfdsNamedSource(DATASET_NAME, "train", str(tmp_path), resolution=8)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image_key": "photo"}, r"image_key='photo' is not a feature of the dataset"),
        ({"label_key": "image"}, r"label_key='image' must be a ClassLabel or Text feature"),
        ({"policy": "stretch"}, r"policy must be one of \(.*\), got 'stretch'"),
        ({"resolution": 0}, r"resolution must be a positive integer, got 0"),
    ],
)
def test_bad_arguments_are_refused(data_dir, kwargs, message):
    with pytest.raises(ValueError, match=message):
        TfdsNamedSource(DATASET_NAME, "train", data_dir, **{"resolution": 8, **kwargs})


@pytest.mark.parametrize("label_key", ["name", "label"])
def test_a_second_opening_reads_the_labels_from_the_cache(tmp_path, monkeypatch, label_key):
    data_dir = str(tmp_path)
    TfdsSourceTestFaces(data_dir=data_dir, file_format="array_record").download_and_prepare()
    first = TfdsNamedSource(DATASET_NAME, "train", data_dir, resolution=8, label_key=label_key)
    expected_labels, expected_names = first.record_labels, first.identity_names

    def refusing_scan(self):
        raise AssertionError("the labels were scanned again")

    monkeypatch.setattr(TfdsNamedSource, "_stored_labels", refusing_scan)
    second = TfdsNamedSource(DATASET_NAME, "train", data_dir, resolution=8, label_key=label_key)
    np.testing.assert_array_equal(second.record_labels, expected_labels)
    assert second.identity_names == expected_names
    assert second[3]["label"] == expected_labels[3]
