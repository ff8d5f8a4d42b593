"""Tests of the listing of prepared files: a reused dataset is checked (sizes always, SHA-256 on
request and in --mode=validate_dataset), the leftovers of a killed preparation are removed by the
next one, and processes preparing one data_dir at once all succeed."""

import logging
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from diffusion_jax.apps import validate_dataset
from diffusion_jax.core import paths
from diffusion_jax.core.bad_input import BadInputError
from diffusion_jax.core.fingerprint import file_sha256
from diffusion_jax.tasks.data.sources import (
    faces_builder,
    image_folders,
    input_pipeline,
    prepared_files,
)
from tests.helpers import REPO_ROOT, tiny_config

TFDS_METADATA = {"dataset_info.json", "features.json"}


@pytest.fixture
def config(prepared_data_dir, tmp_path):
    """The `test` preset on a copy of the session's prepared procedural faces, free to damage."""
    data_dir = tmp_path / "tfds"
    shutil.copytree(prepared_data_dir, data_dir)
    return tiny_config(str(data_dir))


def version_dirs(config) -> list[str]:
    """The version directories of the procedural faces and of their pairs."""
    builder_config = input_pipeline.builder_config(config.data)
    return [
        builder(config=builder_config, data_dir=config.data.data_dir).data_dir
        for builder in (faces_builder.ProceduralFaces, faces_builder.ProceduralFacePairs)
    ]


def train_shard(config) -> str:
    faces_dir = version_dirs(config)[0]
    (name,) = [name for name in os.listdir(faces_dir) if "-train.array_record" in name]
    return os.path.join(faces_dir, name)


def test_preparation_lists_every_file_it_wrote_with_size_and_sha256(config):
    for version_dir in version_dirs(config):
        listing = paths.read_json(os.path.join(version_dir, prepared_files.LISTING_FILENAME))
        written = set(os.listdir(version_dir)) - {prepared_files.LISTING_FILENAME}
        assert set(listing["files"]) == written - TFDS_METADATA
        assert any(".array_record-" in name for name in listing["files"])
        for name, entry in listing["files"].items():
            path = os.path.join(version_dir, name)
            assert entry == {"size": os.path.getsize(path), "sha256": file_sha256(path)}
    assert not os.path.exists(os.path.join(os.path.dirname(version_dir), "prepare.lock"))


def test_a_data_file_cut_in_half_is_refused_on_reuse_naming_it(config):
    shard = train_shard(config)
    size = os.path.getsize(shard)
    with open(shard, "r+b") as file:
        file.truncate(size // 2)
    message = (
        f"{re.escape(shard)}: size {size // 2} bytes vs {size} when prepared .*"
        f"delete {re.escape(os.path.dirname(shard))} and run again"
    )
    with pytest.raises(BadInputError, match=message):
        input_pipeline.ensure_prepared(config.data)
    with pytest.raises(BadInputError, match=message):  # the readers reuse it too
        input_pipeline.training_records(config.data)


def test_a_flipped_byte_is_refused_by_the_hashes_only(config, tmp_path):
    shard = train_shard(config)
    with open(shard, "r+b") as file:
        file.seek(os.path.getsize(shard) // 2)
        byte = file.read(1)
        file.seek(-1, os.SEEK_CUR)
        file.write(bytes([byte[0] ^ 0xFF]))
    input_pipeline.ensure_prepared(config.data)  # the sizes match
    message = f"{re.escape(shard)}: its SHA-256 differs from .* at the same size"
    config.data.verify_prepared = True
    with pytest.raises(BadInputError, match=message):
        input_pipeline.ensure_prepared(config.data)
    config.data.verify_prepared = False
    with pytest.raises(BadInputError, match=message):
        validate_dataset.run(config, str(tmp_path / "run"))


def test_validate_dataset_checks_the_prepared_data_when_nothing_is_generated(config, tmp_path):
    summary = validate_dataset.run(config, str(tmp_path / "run"))
    assert summary["valid"] and summary["data_source"] == "procedural"
    datasets = summary["prepared_datasets"]
    assert [dataset["dataset_dir"] for dataset in datasets] == version_dirs(config)
    assert all(dataset["sha256_checked"] and dataset["files"] >= 1 for dataset in datasets)

    unprepared = tiny_config(str(tmp_path / "empty"))
    with pytest.raises(BadInputError, match="is not prepared: nothing to validate"):
        validate_dataset.run(unprepared, str(tmp_path / "run"))
    for version_dir in version_dirs(config):
        os.remove(os.path.join(version_dir, prepared_files.LISTING_FILENAME))
    with pytest.raises(BadInputError, match="has no prepared_files.json: .* cannot be checked"):
        validate_dataset.run(config, str(tmp_path / "run"))


def test_a_dataset_prepared_without_a_listing_is_reused_and_logged_once(config, caplog):
    for version_dir in version_dirs(config):
        os.remove(os.path.join(version_dir, prepared_files.LISTING_FILENAME))
    with caplog.at_level(logging.WARNING):
        input_pipeline.ensure_prepared(config.data)
        input_pipeline.ensure_prepared(config.data)
        assert len(input_pipeline.training_records(config.data)) == 32
    unchecked = [record for record in caplog.records if "reused unchecked" in record.getMessage()]
    assert sorted(record.getMessage().split()[0] for record in unchecked) == sorted(
        version_dirs(config)
    )


def write_identity_folders(root, identities: int = 3, images: int = 4) -> None:
    rng = np.random.default_rng(0)
    for identity in range(identities):
        os.makedirs(root / f"id{identity}")
        for image in range(images):
            pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            PIL.Image.fromarray(pixels).save(root / f"id{identity}" / f"{image}.png")


def identity_folders_builder(root, data_dir) -> image_folders.IdentityFolders:
    config = image_folders.ImageFolderConfig(root=root, resolution=16)
    return image_folders.IdentityFolders(config=config, data_dir=data_dir)


def test_leftovers_of_an_interrupted_preparation_are_removed_and_nothing_else(tmp_path):
    root, data_dir = tmp_path / "faces", tmp_path / "tfds"
    write_identity_folders(root)
    dataset_dir = os.path.dirname(identity_folders_builder(root, data_dir).data_dir)
    other_dataset_dir = os.path.join(os.path.dirname(dataset_dir), "other_config")
    leftover = os.path.join(dataset_dir, "incomplete.AB12CD_1.0.0")
    kept = [
        os.path.join(dataset_dir, "incomplete.AB12CD_2.0.0"),  # another version's
        os.path.join(dataset_dir, "notes"),
        os.path.join(other_dataset_dir, "incomplete.ZZ99ZZ_1.0.0"),  # another dataset's
    ]
    for directory in [leftover, *kept]:
        os.makedirs(directory)
        with open(os.path.join(directory, "prepared_files.json.partial"), "wb") as file:
            file.write(b"{")
    builder = image_folders.prepare_image_folder(root, data_dir, resolution=16)
    assert not os.path.exists(leftover)
    assert all(os.path.isdir(directory) for directory in kept)
    assert sorted(os.listdir(dataset_dir)) == ["1.0.0", "incomplete.AB12CD_2.0.0", "notes"]
    assert prepared_files.check(builder.data_dir, hashes=True)["files"] == 3  # shard, 2 JSONs


def _prepare_in_subprocess(root, data_dir, *, kill_at: str = "", delay_s: float = 0.0):
    """A process preparing the identity folders of `root`: killed (SIGKILL) when it reaches the
    file `kill_at`, each file delayed by `delay_s`."""
    script = f"""
import os, signal, time
from diffusion_jax.tasks.data.sources import image_folders
encode_file = image_folders._encode_file
def encode(config, path):
    if path == {kill_at!r}:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep({delay_s})
    return encode_file(config, path)
image_folders._encode_file = encode
image_folders.prepare_image_folder({str(root)!r}, {str(data_dir)!r}, resolution=16, num_threads=1)
"""
    return subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_a_killed_preparation_is_cleaned_up_by_the_next_one(tmp_path):
    root, data_dir = tmp_path / "faces", tmp_path / "tfds"
    write_identity_folders(root)
    killed = _prepare_in_subprocess(root, data_dir, kill_at="id1/2.png")
    killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL
    dataset_dir = os.path.dirname(identity_folders_builder(root, data_dir).data_dir)
    leftover, lock = sorted(os.listdir(dataset_dir))  # what the kill left behind
    assert re.fullmatch(r"incomplete\.[A-Z0-9]{6}_1\.0\.0", leftover) and lock == "prepare.lock"
    builder = image_folders.prepare_image_folder(root, data_dir, resolution=16)
    assert os.listdir(dataset_dir) == ["1.0.0"]
    assert prepared_files.check(builder.data_dir, hashes=True) is not None


@pytest.mark.slow
def test_processes_preparing_one_data_dir_at_once_all_succeed(tmp_path):
    root, data_dir = tmp_path / "faces", tmp_path / "tfds"
    write_identity_folders(root)
    preparers = [_prepare_in_subprocess(root, data_dir, delay_s=0.3) for _ in range(2)]
    for preparer in preparers:
        output, _ = preparer.communicate(timeout=120)
        assert preparer.returncode == 0, output
    dataset_dir = os.path.dirname(identity_folders_builder(root, data_dir).data_dir)
    assert os.listdir(dataset_dir) == ["1.0.0"]
    assert prepared_files.check(os.path.join(dataset_dir, "1.0.0"), hashes=True) is not None
