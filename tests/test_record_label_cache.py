"""The record-label cache: one scan per preparation, and a stale, broken or unwritable cache never
gives wrong labels."""

import os

import numpy as np
import pytest

from diffusion_jax.tasks.data.sources import record_label_cache
from diffusion_jax.tasks.data.sources.record_label_cache import RecordLabels, load_or_scan

LABELS = RecordLabels(labels=np.array([2, 0, 1, 0, 2], np.int32), names=("ann", "bo", "cy"))


class CountingScan:
    def __init__(self, result: RecordLabels = LABELS):
        self.result, self.calls = result, 0

    def __call__(self) -> RecordLabels:
        self.calls += 1
        return self.result


def refusing_scan() -> RecordLabels:
    raise AssertionError("the labels were scanned again instead of read from the cache")


@pytest.fixture
def dataset_dir(tmp_path):
    (tmp_path / "dataset_info.json").write_text('{"name": "faces", "version": "1.0.0"}')
    return tmp_path


def assert_labels_equal(actual: RecordLabels, expected: RecordLabels) -> None:
    assert actual.labels.dtype == np.int32
    np.testing.assert_array_equal(actual.labels, expected.labels)
    assert actual.names == expected.names


def test_the_first_opening_scans_and_later_ones_read_the_file(dataset_dir):
    scan = CountingScan()
    assert_labels_equal(load_or_scan(dataset_dir, "train", "label", 5, scan), LABELS)
    assert scan.calls == 1
    assert os.path.exists(record_label_cache.cache_path(str(dataset_dir), "train", "label"))
    assert_labels_equal(load_or_scan(dataset_dir, "train", "label", 5, refusing_scan), LABELS)
    # Each split and each label feature has its own file.
    other = RecordLabels(labels=np.array([1, 1, 0], np.int32))
    assert_labels_equal(load_or_scan(dataset_dir, "test", "label", 3, CountingScan(other)), other)
    named = RecordLabels(labels=np.array([0, 1, 0, 1, 0], np.int32), names=("x", "y"))
    assert_labels_equal(load_or_scan(dataset_dir, "train", "name", 5, CountingScan(named)), named)
    assert_labels_equal(load_or_scan(dataset_dir, "train", "label", 5, refusing_scan), LABELS)


def test_labels_without_names_round_trip(dataset_dir):
    unnamed = RecordLabels(labels=np.array([3, 1, 1], np.int64))
    load_or_scan(dataset_dir, "train", "label", 3, CountingScan(unnamed))
    cached = load_or_scan(dataset_dir, "train", "label", 3, refusing_scan)
    assert_labels_equal(cached, RecordLabels(labels=np.array([3, 1, 1], np.int32)))


def test_a_dataset_prepared_again_is_scanned_again(dataset_dir):
    load_or_scan(dataset_dir, "train", "label", 5, CountingScan())
    (dataset_dir / "dataset_info.json").write_text('{"name": "faces", "version": "1.0.1"}')
    reordered = RecordLabels(labels=np.array([0, 0, 1, 2, 2], np.int32), names=LABELS.names)
    scan = CountingScan(reordered)
    assert_labels_equal(load_or_scan(dataset_dir, "train", "label", 5, scan), reordered)
    assert scan.calls == 1
    assert_labels_equal(load_or_scan(dataset_dir, "train", "label", 5, refusing_scan), reordered)


def test_a_cache_of_another_record_count_is_scanned_again(dataset_dir):
    load_or_scan(dataset_dir, "train", "label", 5, CountingScan())
    longer = RecordLabels(labels=np.arange(6, dtype=np.int32))
    scan = CountingScan(longer)
    assert_labels_equal(load_or_scan(dataset_dir, "train", "label", 6, scan), longer)
    assert scan.calls == 1


@pytest.mark.parametrize("contents", [b"", b"not a zip file", b"PK\x03\x04 truncated"])
def test_an_unreadable_cache_is_replaced(dataset_dir, contents):
    path = record_label_cache.cache_path(str(dataset_dir), "train", "label")
    with open(path, "wb") as file:
        file.write(contents)
    scan = CountingScan()
    assert_labels_equal(load_or_scan(dataset_dir, "train", "label", 5, scan), LABELS)
    assert scan.calls == 1
    assert_labels_equal(load_or_scan(dataset_dir, "train", "label", 5, refusing_scan), LABELS)


def test_an_unwritable_directory_still_gives_the_labels_and_leaves_nothing(
    dataset_dir, monkeypatch
):
    def failing_replace(source, destination):
        raise PermissionError(13, "Permission denied", destination)

    monkeypatch.setattr(record_label_cache.os, "replace", failing_replace)
    assert_labels_equal(load_or_scan(dataset_dir, "train", "label", 5, CountingScan()), LABELS)
    assert sorted(os.listdir(dataset_dir)) == ["dataset_info.json"]


def test_a_scan_of_the_wrong_length_is_refused_and_not_kept(dataset_dir):
    with pytest.raises(ValueError, match=r"scanned \(5,\) labels for the 4 records"):
        load_or_scan(dataset_dir, "train", "label", 4, CountingScan())
    assert sorted(os.listdir(dataset_dir)) == ["dataset_info.json"]
