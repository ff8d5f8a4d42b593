"""The path layer (`core.paths`) on local paths, and the object-store branches of the modules that
commit files (the generated dataset's writers and job, RecordIO, caches, identity folders) on a
fake `gs://` store that has no rename (`tests/fake_object_store.py`): each must give the bytes it
gives locally, without renaming and without touching a local `gs:` directory."""

import hashlib
import json
import os
import pickle
import threading

import ml_collections
import numpy as np
import pytest

from diffusion_jax.core import paths
from diffusion_jax.core.bad_input import BadInputError
from diffusion_jax.core.fingerprint import file_sha256
from diffusion_jax.tasks.data.sources import image_folders, record_label_cache, recordio
from diffusion_jax.tasks.generation import dataset_writers, generation_job, manifest
from tests import test_dataset_writers as writer_tests
from tests.fake_object_store import fake_object_store, used_local_gs_paths

BUCKET = "gs://test-bucket"


def _file_hashes(root: str) -> dict[str, str]:
    """{relative path: sha256} of every file under a local root."""
    return {path: file_sha256(os.path.join(root, path)) for path in paths.relative_files(root)}


# ----------------------------------------------------------------------------- local paths


def test_resolve_makes_local_paths_absolute_and_keeps_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert str(paths.resolve("run")) == str(tmp_path / "run")
    assert str(paths.resolve("~/run")) == str(tmp_path / "home" / "run")
    assert str(paths.resolve(f"{BUCKET}/run")) == f"{BUCKET}/run"
    assert paths.is_url(f"{BUCKET}/run") and paths.is_url("s3://b/x")
    assert not paths.is_url(str(tmp_path)) and not paths.is_url("gs:relative")


def test_atomic_writes_leave_no_partial_file_and_replace_the_old_bytes(tmp_path):
    path = tmp_path / "deep" / "er" / "value.json"
    paths.write_json_atomically(path, {"b": 1, "a": [1.5, "x"]})
    assert path.read_bytes() == b'{\n "a": [\n  1.5,\n  "x"\n ],\n "b": 1\n}\n'
    assert path.read_bytes() == paths.json_bytes({"a": [1.5, "x"], "b": 1})
    paths.write_bytes_atomically(path, b"new")
    assert path.read_bytes() == b"new"
    assert sorted(os.listdir(path.parent)) == ["value.json"]
    with pytest.raises(ValueError, match="not JSON compliant"):
        paths.json_bytes({"nan": float("nan")})


def test_concurrent_writers_of_one_path_never_fail_or_leave_a_partial_file(tmp_path):
    """Processes that compute the same file (a figure, a cache) may write it at once."""
    path = tmp_path / "figures" / "same.png"
    errors = []

    def write_many():
        try:
            for _ in range(200):
                paths.write_bytes_atomically(path, b"same bytes")
        except Exception as error:  # noqa: BLE001 (reported below)
            errors.append(error)

    writers = [threading.Thread(target=write_many) for _ in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert not errors and path.read_bytes() == b"same bytes"
    assert os.listdir(path.parent) == ["same.png"]


def test_atomic_writes_leave_no_temporary_file_even_when_the_rename_fails(tmp_path, monkeypatch):
    path = tmp_path / "cache" / "labels.npz"
    paths.write_bytes_atomically(path, b"one")
    paths.write_bytes_atomically(path, b"two")
    assert path.read_bytes() == b"two" and os.listdir(path.parent) == ["labels.npz"]

    def failing_replace(source, destination):
        raise PermissionError(13, "Permission denied", destination)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(PermissionError):
        paths.write_bytes_atomically(path, b"three")
    assert path.read_bytes() == b"two" and os.listdir(path.parent) == ["labels.npz"]


def test_read_json_names_a_bad_file_and_read_json_if_exists_a_missing_one(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": ')
    with pytest.raises(BadInputError, match=f"{bad}: not valid JSON"):
        paths.read_json(bad)
    bad.write_bytes(b'{"a": "\xe9"}')  # Latin-1, not UTF-8
    with pytest.raises(BadInputError, match=f"{bad}: not valid JSON: 'utf-8' codec"):
        paths.read_json(bad)
    assert paths.read_json_if_exists(tmp_path / "absent.json") is None
    paths.write_json_atomically(tmp_path / "good.json", [1, 2])
    assert paths.read_json_if_exists(tmp_path / "good.json") == [1, 2]
    with pytest.raises(FileNotFoundError):
        paths.read_json(tmp_path / "absent.json")


def test_move_replaces_the_destination_and_makes_its_directory(tmp_path):
    source, destination = tmp_path / "a.bin", tmp_path / "new" / "b.bin"
    source.write_bytes(b"first")
    paths.move(source, destination)
    assert destination.read_bytes() == b"first" and not source.exists()
    source.write_bytes(b"second")
    paths.move(source, destination)
    assert destination.read_bytes() == b"second" and not source.exists()


def test_remove_tree_removes_everything_and_ignores_a_missing_path(tmp_path):
    paths.remove_tree(tmp_path / "absent")
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "file").write_text("x")
    paths.remove_tree(tmp_path / "tree")
    assert not (tmp_path / "tree").exists()


def test_relative_files_and_is_nonempty_dir(tmp_path):
    assert paths.relative_files(tmp_path / "absent") == []
    assert not paths.is_nonempty_dir(tmp_path) and not paths.is_nonempty_dir(tmp_path / "absent")
    for name in ("b/2.png", "a/1.png", "top.txt", "b/c/3.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    assert paths.relative_files(tmp_path) == ["a/1.png", "b/2.png", "b/c/3.png", "top.txt"]
    assert paths.is_nonempty_dir(tmp_path) and not paths.is_nonempty_dir(tmp_path / "top.txt")


# ----------------------------------------------------------------------- fake object store


@pytest.fixture
def store(tmp_path, monkeypatch):
    """The fake `gs://` store, with the working directory in tmp_path so that a `gs://` path
    given to a local API shows up as `tmp_path/gs:/...`."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    with fake_object_store(str(tmp_path / "objects")) as fake:
        yield fake
    assert used_local_gs_paths(str(work)) == []
    assert fake.renames_refused == 0


def test_the_path_layer_on_an_object_store(store):
    root = paths.Path(f"{BUCKET}/run")
    paths.write_json_atomically(root / "a" / "value.json", {"x": 1})
    assert paths.read_json(root / "a" / "value.json") == {"x": 1}
    paths.write_bytes_atomically(root / "cache.bin", b"cache")
    assert (root / "cache.bin").read_bytes() == b"cache"
    paths.move(root / "cache.bin", root / "b" / "moved.bin")
    assert (root / "b" / "moved.bin").read_bytes() == b"cache"
    assert not (root / "cache.bin").exists()
    assert paths.relative_files(root) == ["a/value.json", "b/moved.bin"]
    assert paths.is_nonempty_dir(root) and file_sha256(root / "b" / "moved.bin") == (
        hashlib.sha256(b"cache").hexdigest()
    )
    paths.remove_tree(root / "a")
    paths.remove_tree(root / "absent")
    assert paths.relative_files(root) == ["b/moved.bin"]
    with pytest.raises(OSError, match="cannot rename"):
        paths.Path(root / "b" / "moved.bin").rename(root / "c.bin")
    store.renames_refused = 0


def _write_dataset_in_place(out_dir: str, dataset, image_format="png"):
    """What the generation job does on an object store: each shard written straight to out_dir."""
    shard_paths = []
    for shard in range(writer_tests.NUM_SHARDS):
        shard_paths.append(
            dataset_writers.write_shard(
                formats=writer_tests.ALL_FORMATS,
                staging_dir=out_dir,
                shard=shard,
                num_shards=writer_tests.NUM_SHARDS,
                identities_per_shard=writer_tests.IDENTITIES_PER_SHARD,
                num_identities=writer_tests.NUM_IDENTITIES,
                image_format=image_format,
                resolution=writer_tests.RESOLUTION,
                images=writer_tests._shard_images(dataset, shard),
            )
        )
    return shard_paths, writer_tests._finalize(out_dir, dataset, image_format)


def test_dataset_writers_on_an_object_store_give_the_local_bytes(store, tmp_path):
    dataset = writer_tests._dataset("png")
    local_out, local_shards, local_final = writer_tests._write_dataset(
        str(tmp_path / "local"), dataset
    )
    out_dir = f"{BUCKET}/dataset"
    shard_paths, final_paths = _write_dataset_in_place(out_dir, dataset)
    assert (shard_paths, final_paths) == (local_shards, local_final)
    on_store = store.local(out_dir)
    assert _file_hashes(on_store) == _file_hashes(local_out)
    # Written again (a shard redone, finalize rerun), the objects keep their bytes.
    _write_dataset_in_place(out_dir, dataset)
    assert _file_hashes(on_store) == _file_hashes(local_out)

    reader = recordio.RecordIOReader(f"{out_dir}/{dataset_writers.RECORDIO_REC}")
    local_reader = recordio.RecordIOReader(os.path.join(local_out, dataset_writers.RECORDIO_REC))
    assert len(reader) == len(local_reader) == len(dataset)
    np.testing.assert_array_equal(reader.identity_ranges, local_reader.identity_ranges)
    assert [reader[i] for i in range(len(reader))] == [
        local_reader[i] for i in range(len(local_reader))
    ]
    copy = pickle.loads(pickle.dumps(reader.shard(1, 2)))
    assert copy[0] == local_reader.shard(1, 2)[0]

    removed = dataset_writers.remove_shard_fragments(writer_tests.ALL_FORMATS, out_dir)
    assert removed == dataset_writers.remove_shard_fragments(writer_tests.ALL_FORMATS, local_out)
    assert dataset_writers.remove_shard_fragments(writer_tests.ALL_FORMATS, out_dir) == []
    assert _file_hashes(on_store) == _file_hashes(local_out)


def test_record_label_cache_on_an_object_store(store):
    dataset_dir = f"{BUCKET}/tfds/faces/1.0.0"
    (paths.Path(dataset_dir) / "dataset_info.json").write_text('{"name": "faces"}')
    calls = []

    def scan():
        calls.append(1)
        return record_label_cache.RecordLabels(labels=np.array([0, 1, 1], np.int32))

    for _ in range(2):
        labels = record_label_cache.load_or_scan(dataset_dir, "train", "label", 3, scan)
        np.testing.assert_array_equal(labels.labels, [0, 1, 1])
    assert len(calls) == 1
    assert paths.Path(record_label_cache.cache_path(dataset_dir, "train", "label")).is_file()


def test_identity_folders_are_listed_and_read_from_an_object_store(store, tmp_path):
    local_root = tmp_path / "faces"
    writer_tests_files = {
        "ann/1.png": b"a",
        "ann/2.jpg": b"b",
        "bob/notes.txt": b"c",
        "loose.png": b"d",
        "bob/nested/3.png": b"e",
    }
    for path, data in writer_tests_files.items():
        (local_root / path).parent.mkdir(parents=True, exist_ok=True)
        (local_root / path).write_bytes(data)
        (paths.Path(f"{BUCKET}/faces") / path).write_bytes(data)
    results = []
    for root in (str(local_root), f"{BUCKET}/faces"):
        skips = image_folders._SkipLog(root, strict=False)
        listed = image_folders._list_image_files(root, skips)
        results.append((listed, [(entry["path"], entry["kind"]) for entry in skips.entries]))
    assert results[0] == results[1]
    assert results[0][0] == ["ann/1.png", "ann/2.jpg"]


# ------------------------------------------------------------ the generation job's protocol


def _job_config(formats=writer_tests.ALL_FORMATS) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "generate": {
                "formats": list(formats),
                "identities_per_shard": writer_tests.IDENTITIES_PER_SHARD,
                "num_identities": writer_tests.NUM_IDENTITIES,
                "image_format": "png",
                "jpeg_quality": 95,
                "min_judge_similarity": 0.5,
            },
            "data": {"resolution": writer_tests.RESOLUTION},
        }
    )


def _run_job_without_models(config, out_dir: str) -> dict:
    """The generation job's file protocol on the test dataset (no networks): the plan and
    identities, every shard through `write_shard`, then `finalize_dataset`."""
    dataset = writer_tests._dataset("png")
    plan = {"generate": config.generate.to_dict(), "format_version": manifest.FORMAT_VERSION}
    paths.write_json_atomically(paths.Path(out_dir) / manifest.PLAN_FILE, plan)
    paths.write_bytes_atomically(paths.Path(out_dir) / manifest.IDENTITIES_FILE, b"identities")
    for shard in range(writer_tests.NUM_SHARDS):
        labels = dataset_writers.shard_labels(
            shard, writer_tests.IDENTITIES_PER_SHARD, writer_tests.NUM_IDENTITIES
        )
        kept = {key: pixels for key, (pixels, _) in dataset.items() if key[0] in labels}
        records = [
            {
                "identity": label,
                "image_index": index,
                "decision": "kept",
                "judge_similarity": 0.9,
                "path": dataset_writers.folder_image_path(label, index, "png"),
            }
            for label, index in sorted(kept)
        ]
        generation_job.write_shard(config, out_dir, shard, records, kept)
    return generation_job.finalize_dataset(config, out_dir, plan)


def test_the_generation_job_commits_the_same_bytes_on_an_object_store(store, tmp_path):
    config = _job_config()
    local_out = str(tmp_path / "local")
    local_manifest = _run_job_without_models(config, local_out)
    out_dir = f"{BUCKET}/generated"
    assert _run_job_without_models(config, out_dir) == local_manifest
    on_store = store.local(out_dir)
    hashes = _file_hashes(on_store)
    assert hashes == {
        name: value
        for name, value in _file_hashes(local_out).items()
        if name != "shards/.finalize.lock"
    }
    assert not any(name.startswith(dataset_writers.FRAGMENT_DIR) for name in hashes)
    assert not any(".partial" in name for name in hashes)
    # A finalizer that comes later finds the manifest and returns it.
    plan = paths.read_json(f"{out_dir}/{manifest.PLAN_FILE}")
    assert generation_job.finalize_dataset(config, out_dir, plan) == local_manifest
    assert _file_hashes(on_store) == hashes


def test_a_finalizer_overtaken_on_an_object_store_returns_the_winners_manifest(store, monkeypatch):
    """Finalizer B starts, finalizer A finishes (manifest written, fragments deleted) while B
    reads the shard files: B finds its fragments gone and returns A's manifest."""
    config = _job_config(formats=("recordio",))
    out_dir = f"{BUCKET}/generated"
    finalize = dataset_writers.finalize
    overtaken = []

    def overtaken_finalize(**kwargs):
        if not overtaken:
            overtaken.append(True)
            monkeypatch.setattr(dataset_writers, "finalize", finalize)
            plan = paths.read_json(f"{out_dir}/{manifest.PLAN_FILE}")
            overtaken.append(generation_job.finalize_dataset(config, out_dir, plan))  # A
        return finalize(**kwargs)  # B, its fragments gone

    monkeypatch.setattr(dataset_writers, "finalize", overtaken_finalize)
    result = _run_job_without_models(config, out_dir)
    assert result is not None and result == overtaken[1]
    assert json.loads((paths.Path(out_dir) / manifest.MANIFEST_FILE).read_text()) == result
    assert not (paths.Path(out_dir) / dataset_writers.FRAGMENT_DIR / "shard_00000.rec").exists()


def test_a_local_finalizer_overtaken_is_not_hidden(tmp_path, monkeypatch):
    """Locally the lock rules the race out, so a failure of finalize is raised, not papered over
    by a manifest."""
    config = _job_config(formats=("recordio",))

    def failing_finalize(**kwargs):
        raise ValueError("cannot finalize 'recordio': the fragment of shard 0 is missing")

    monkeypatch.setattr(dataset_writers, "finalize", failing_finalize)
    with pytest.raises(ValueError, match="fragment of shard 0 is missing"):
        _run_job_without_models(config, str(tmp_path / "local"))


def test_identity_folders_prepare_from_an_object_store_as_from_a_local_root(store, tmp_path):
    from tests.test_image_folders import FILES, RESOLUTION, write_tree

    write_tree(tmp_path / "faces", FILES)
    for path, data in FILES.items():
        if data is not None:
            (paths.Path(f"{BUCKET}/faces") / path).write_bytes(data)
    prepared = []
    for root in (str(tmp_path / "faces"), f"{BUCKET}/faces"):
        builder = image_folders.prepare_image_folder(
            root, tmp_path / "tfds", resolution=RESOLUTION, num_threads=2
        )
        source = builder.as_data_source("train")
        report = image_folders.read_preparation_report(builder.data_dir)
        prepared.append(
            (
                [
                    {key: np.asarray(value).tolist() for key, value in source[i].items()}
                    for i in range(len(source))
                ],
                image_folders.read_identity_labels(builder.data_dir),
                [entry for entry in report["skipped"] if entry["path"] != "carol"],
            )
        )
    assert prepared[0] == prepared[1]
    assert len(prepared[0][0]) > 0
