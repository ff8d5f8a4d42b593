"""The generated-dataset writers: each format read back by the project's data layer (and TFDS),
byte-identical rewrites, an identity without images, and the refusals of bad input."""

import hashlib
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from diffusion_jax.tasks.data.sources import image_decoding, image_folders, recordio, tfds_source
from diffusion_jax.tasks.generation import dataset_writers as writers

RESOLUTION = 16
NUM_IDENTITIES = 5
IDENTITIES_PER_SHARD = 2
NUM_SHARDS = 3  # labels [0, 2), [2, 4), [4, 5)
IMAGES_PER_LABEL = (5, 4, 0, 6, 5)  # label 2 has no image
ALL_FORMATS = ("folders", "tfds", "recordio")


def _pixels(label: int, image_index: int, smooth: bool) -> np.ndarray:
    """Random pixels, or (for JPEG) a colour gradient with mild noise."""
    rng = np.random.default_rng(1000 * label + image_index)
    if not smooth:
        return rng.integers(0, 256, (RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
    ramp = np.linspace(0, 1, RESOLUTION)
    base = rng.uniform(40, 215, 3) + 40 * (ramp[:, None, None] + ramp[None, :, None])
    return np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8)


def _dataset(image_format: str) -> dict[tuple[int, int], tuple[np.ndarray, bytes]]:
    """{(label, image_index): (pixels, encoded)} of the test dataset, in sorted order."""
    dataset = {}
    for label, count in enumerate(IMAGES_PER_LABEL):
        for image_index in range(count):
            pixels = _pixels(label, image_index, smooth=image_format == "jpeg")
            dataset[label, image_index] = pixels, writers.encode_image(pixels, image_format)
    return dataset


def _shard_images(dataset, shard: int) -> list[writers.ShardImage]:
    labels = writers.shard_labels(shard, IDENTITIES_PER_SHARD, NUM_IDENTITIES)
    return [
        writers.ShardImage(label, image_index, encoded)
        for (label, image_index), (_, encoded) in dataset.items()
        if label in labels
    ]


def _move_staged(staging_dir, out_dir, relative_paths) -> None:
    """What the generation job does with a written shard: its files into out_dir, same paths."""
    for path in relative_paths:
        os.makedirs(os.path.dirname(os.path.join(out_dir, path)), exist_ok=True)
        os.replace(os.path.join(staging_dir, path), os.path.join(out_dir, path))


def _write_dataset(root, dataset, image_format="png", formats=ALL_FORMATS):
    """Writes every shard through a staging dir, then finalizes; returns (out_dir, the paths
    each shard's write_shard returned, finalize's paths)."""
    out_dir = os.path.join(root, "out")
    shard_paths = []
    for shard in range(NUM_SHARDS):
        staging_dir = os.path.join(root, f"staging_{shard}")
        os.makedirs(staging_dir)
        paths = writers.write_shard(
            formats=formats,
            staging_dir=staging_dir,
            shard=shard,
            num_shards=NUM_SHARDS,
            identities_per_shard=IDENTITIES_PER_SHARD,
            num_identities=NUM_IDENTITIES,
            image_format=image_format,
            resolution=RESOLUTION,
            images=_shard_images(dataset, shard),
        )
        _move_staged(staging_dir, out_dir, paths)
        shard_paths.append(paths)
    final_paths = _finalize(out_dir, dataset, image_format, formats)
    return out_dir, shard_paths, final_paths


def _finalize(out_dir, dataset, image_format="png", formats=ALL_FORMATS, shard_lengths=None):
    if shard_lengths is None:
        shard_lengths = [len(_shard_images(dataset, shard)) for shard in range(NUM_SHARDS)]
    return writers.finalize(
        formats=formats,
        out_dir=out_dir,
        num_shards=NUM_SHARDS,
        num_identities=NUM_IDENTITIES,
        image_format=image_format,
        resolution=RESOLUTION,
        shard_lengths=shard_lengths,
    )


def _file_hashes(root) -> dict[str, str]:
    """{relative path: sha256} of every file under root."""
    return {
        os.path.relpath(os.path.join(directory, name), root): hashlib.sha256(
            open(os.path.join(directory, name), "rb").read()
        ).hexdigest()
        for directory, _, names in os.walk(root)
        for name in names
    }


@pytest.fixture(scope="module")
def png_dataset():
    return _dataset("png")


@pytest.fixture(scope="module")
def written(tmp_path_factory, png_dataset):
    """The PNG dataset in every format: (out_dir, shard paths, finalize's paths)."""
    return _write_dataset(str(tmp_path_factory.mktemp("written")), png_dataset)


def test_shards_are_blocks_of_identities_per_shard_labels():
    assert writers.shard_count(NUM_IDENTITIES, IDENTITIES_PER_SHARD) == NUM_SHARDS
    blocks = [
        writers.shard_labels(shard, IDENTITIES_PER_SHARD, NUM_IDENTITIES)
        for shard in range(NUM_SHARDS)
    ]
    assert blocks == [range(0, 2), range(2, 4), range(4, 5)]
    assert writers.folder_image_path(12, 3, "jpeg") == "images/id_000012/003.jpg"


def test_written_paths_follow_the_layout(written):
    out_dir, shard_paths, final_paths = written
    tfds_dir = "tfds/generated_faces/1.0.0"
    assert shard_paths[1] == sorted(
        [f"images/id_000003/{index:03d}.png" for index in range(6)]  # label 2 has no image
        + [f"{tfds_dir}/generated_faces-train.array_record-00001-of-00003"]
        + ["recordio/shards/shard_00001.idx", "recordio/shards/shard_00001.rec"]
    )
    assert final_paths == [
        "recordio/train.idx",
        "recordio/train.rec",
        f"{tfds_dir}/dataset_info.json",
        f"{tfds_dir}/features.json",
    ]
    every_path = sorted(path for paths in shard_paths + [final_paths] for path in paths)
    assert sorted(_file_hashes(out_dir)) == every_path  # no temporary file is left behind


def test_folders_read_back_through_prepare_image_folder(written, png_dataset, tmp_path):
    out_dir = written[0]
    builder = image_folders.prepare_image_folder(
        os.path.join(out_dir, "images"), tmp_path, resolution=RESOLUTION, strict=True
    )
    # prepare_image_folder numbers the folders that have images: label 2 has none.
    names = image_folders.read_identity_labels(builder.data_dir)
    assert names == {"id_000000": 0, "id_000001": 1, "id_000003": 2, "id_000004": 3}
    generated_label = {label: int(name[3:]) for name, label in names.items()}
    source = image_folders.ImageLabelSource(builder.data_dir)
    assert len(source) == len(png_dataset)
    for position, ((label, image_index), (pixels, encoded)) in enumerate(png_dataset.items()):
        record = source[position]
        assert generated_label[int(record["label"])] == label
        np.testing.assert_array_equal(record["image"], pixels)
        path = os.path.join(out_dir, "images", f"id_{label:06d}", f"{image_index:03d}.png")
        assert open(path, "rb").read() == encoded


def test_tfds_reads_back_from_its_directory_and_by_name(written, png_dataset):
    out_dir = written[0]
    builder = tfds.builder_from_directory(os.path.join(out_dir, writers.TFDS_DIR))
    assert builder.info.splits["train"].shard_lengths == [9, 6, 5]
    assert builder.info.features["label"].num_classes == NUM_IDENTITIES
    records = builder.as_data_source("train")
    stored = builder.as_data_source("train", decoders={"image": tfds.decode.SkipDecoding()})
    by_name = tfds_source.TfdsNamedSource(
        "generated_faces", "train", os.path.join(out_dir, "tfds"), resolution=RESOLUTION
    )
    assert len(records) == len(by_name) == len(png_dataset)
    for position, ((label, image_index), (pixels, encoded)) in enumerate(png_dataset.items()):
        record = records[position]
        assert (record["label"], record["image_index"]) == (label, image_index)
        np.testing.assert_array_equal(record["image"], pixels)
        assert stored[position]["image"] == encoded
        assert by_name[position]["label"] == label
        np.testing.assert_array_equal(by_name[position]["image"], pixels)


def test_recordio_reads_back_with_identity_ranges(written, png_dataset):
    reader = recordio.RecordIOReader(os.path.join(written[0], "recordio", "train.rec"))
    # Label 2 has no image: its range is empty.
    np.testing.assert_array_equal(
        reader.identity_ranges, [[1, 6], [6, 10], [10, 10], [10, 16], [16, 21]]
    )
    assert len(reader) == len(png_dataset)
    for position, ((label, image_index), (pixels, encoded)) in enumerate(png_dataset.items()):
        assert reader[position] == {"image_bytes": encoded, "label": label}
        header, _ = reader.read(position + 1)
        assert (header.flag, header.id, header.id2) == (0, label, image_index)
        decoded = image_decoding.decode_image(encoded, resolution=RESOLUTION)
        np.testing.assert_array_equal(decoded, pixels)
    header, _ = reader.read(0)
    assert (header.flag, header.label.tolist()) == (2, [21, 26])


def test_jpeg_stores_the_encoded_bytes_in_every_format(tmp_path):
    dataset = _dataset("jpeg")
    out_dir, shard_paths, _ = _write_dataset(str(tmp_path), dataset, image_format="jpeg")
    assert "images/id_000000/000.jpg" in shard_paths[0]
    tfds_dir = os.path.join(out_dir, writers.TFDS_DIR)
    records = tfds.builder_from_directory(tfds_dir).as_data_source("train")
    stored = tfds.builder_from_directory(tfds_dir).as_data_source(
        "train", decoders={"image": tfds.decode.SkipDecoding()}
    )
    reader = recordio.RecordIOReader(os.path.join(out_dir, "recordio", "train.rec"))
    for position, ((label, image_index), (pixels, encoded)) in enumerate(dataset.items()):
        path = os.path.join(out_dir, "images", f"id_{label:06d}", f"{image_index:03d}.jpg")
        assert open(path, "rb").read() == encoded
        assert stored[position]["image"] == encoded
        assert reader[position]["image_bytes"] == encoded
        error = np.abs(records[position]["image"].astype(int) - pixels.astype(int))
        assert error.mean() < 2 and error.max() <= 16


def test_encode_image_is_deterministic():
    pixels = _pixels(3, 1, smooth=True)
    for image_format in writers.IMAGE_FORMATS:
        assert writers.encode_image(pixels, image_format) == writers.encode_image(
            pixels.copy(), image_format
        )
    assert writers.encode_image(pixels, "jpeg", jpeg_quality=50) != writers.encode_image(
        pixels, "jpeg"
    )


def test_rewrites_and_refinalizing_give_identical_bytes(written, png_dataset, tmp_path):
    out_dir, _, _ = _write_dataset(str(tmp_path), png_dataset)
    assert _file_hashes(out_dir) == _file_hashes(written[0])
    # An interrupted finalize leaves temporary files; running it again replaces them.
    tfds_dir = os.path.join(out_dir, writers.TFDS_DIR)
    os.makedirs(os.path.join(tfds_dir, ".metadata.partial"))
    with open(os.path.join(tfds_dir, ".metadata.partial", "features.json"), "w") as file:
        file.write("{")
    with open(os.path.join(out_dir, "recordio", ".train.rec.partial"), "wb") as file:
        file.write(b"partial")
    _finalize(out_dir, png_dataset)
    _finalize(out_dir, png_dataset)
    assert _file_hashes(out_dir) == _file_hashes(written[0])


def test_remove_shard_fragments_deletes_only_the_fragments(png_dataset, tmp_path):
    out_dir, _, _ = _write_dataset(str(tmp_path), png_dataset, formats=("recordio", "folders"))
    before = _file_hashes(out_dir)
    removed = writers.remove_shard_fragments(("recordio", "folders"), out_dir)
    fragments = [
        f"recordio/shards/shard_{shard:05d}.{ext}"
        for shard in range(NUM_SHARDS)
        for ext in ("idx", "rec")
    ]
    assert removed == fragments
    assert sorted(_file_hashes(out_dir)) == sorted(set(before) - set(fragments))
    assert not os.path.exists(os.path.join(out_dir, "recordio", "shards"))
    assert writers.remove_shard_fragments(("recordio",), out_dir) == []
    assert len(recordio.RecordIOReader(os.path.join(out_dir, "recordio", "train.rec"))) == 20
    # finalize reads the fragments: without them it names the first one missing.
    missing = os.path.join(out_dir, "recordio", "shards", "shard_00000.rec")
    with pytest.raises(ValueError, match=f"shard 0, {missing}, is missing"):
        _finalize(out_dir, png_dataset, formats=("recordio",))


def test_shards_without_images(tmp_path):
    """Three shards of one identity each, only the last with an image."""
    out_dir = str(tmp_path / "out")
    encoded = writers.encode_image(_pixels(2, 0, smooth=False))
    shards = [[], [], [writers.ShardImage(2, 0, encoded)]]
    for shard, images in enumerate(shards):
        staging_dir = tmp_path / f"staging_{shard}"
        staging_dir.mkdir()
        paths = writers.write_shard(
            formats=ALL_FORMATS,
            staging_dir=staging_dir,
            shard=shard,
            num_shards=3,
            identities_per_shard=1,
            num_identities=3,
            image_format="png",
            resolution=RESOLUTION,
            images=images,
        )
        _move_staged(staging_dir, out_dir, paths)
    writers.finalize(
        formats=ALL_FORMATS,
        out_dir=out_dir,
        num_shards=3,
        num_identities=3,
        image_format="png",
        resolution=RESOLUTION,
        shard_lengths=[0, 0, 1],
    )
    records = tfds.builder_from_directory(os.path.join(out_dir, writers.TFDS_DIR))
    assert [record["label"] for record in records.as_data_source("train")] == [2]
    reader = recordio.RecordIOReader(os.path.join(out_dir, "recordio", "train.rec"))
    np.testing.assert_array_equal(reader.identity_ranges, [[1, 1], [1, 1], [1, 2]])
    assert reader[0] == {"image_bytes": encoded, "label": 2}


@pytest.fixture
def shard_one(png_dataset, tmp_path):
    """Valid write_shard arguments for shard 1 (labels 2 and 3), to be spoilt one at a time."""
    staging_dir = tmp_path / "staging"
    staging_dir.mkdir()
    return dict(
        formats=ALL_FORMATS,
        staging_dir=staging_dir,
        shard=1,
        num_shards=NUM_SHARDS,
        identities_per_shard=IDENTITIES_PER_SHARD,
        num_identities=NUM_IDENTITIES,
        image_format="png",
        resolution=RESOLUTION,
        images=_shard_images(png_dataset, 1),
    )


def _image(label, image_index, pixels=None, image_format="png"):
    if pixels is None:
        pixels = _pixels(label, image_index, smooth=False)
    return writers.ShardImage(label, image_index, writers.encode_image(pixels, image_format))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"formats": ("folders", "zip")}, "unknown format 'zip'"),
        ({"formats": ()}, "at least one"),
        ({"formats": "tfds"}, "the string 'tfds'"),
        ({"formats": ("tfds", "tfds")}, "format 'tfds' is repeated"),
        ({"image_format": "webp"}, "image_format must be one of .* got 'webp'"),
        ({"shard": 3}, "shard must be < num_shards = 3, got 3"),
        ({"num_shards": 4}, r"num_shards must be .* = ceil\(5 / 2\) = 3, got 4"),
        ({"resolution": 0}, "resolution must be an integer >= 1, got 0"),
        (
            {"images": [_image(3, 1), _image(3, 0)]},
            r"sorted .* \(label 3, image_index 0\) follows \(label 3, image_index 1\)",
        ),
        ({"images": [_image(3, 0), _image(2, 1)]}, r"\(label 2, image_index 1\) follows"),
        ({"images": [_image(3, 0), _image(3, 0)]}, "without repeats"),
        ({"images": [_image(4, 0)]}, r"label 4, .*outside shard 1's labels \[2, 4\)"),
        ({"images": [_image(1, 0)]}, r"label 1, .*outside shard 1's labels \[2, 4\)"),
        (
            {"images": [_image(3, 0, np.zeros((8, 8, 3), np.uint8))]},
            "8x8 RGB, expected 16x16 RGB for resolution 16",
        ),
        (
            {
                "images": [
                    writers.ShardImage(
                        3, 0, image_decoding.encode_png(np.zeros((16, 16), np.uint8))
                    )
                ]
            },
            "16x16 L, expected 16x16 RGB",
        ),
        ({"images": [_image(3, 0, image_format="jpeg")]}, "encoded is not a png image"),
        ({"images": [_image(3, 1000)]}, "image_index must be <= 999"),
        ({"images": [(3, 0, b"")]}, r"images\[0\] must be a ShardImage"),
    ],
)
def test_write_shard_refuses_bad_input_before_writing(shard_one, changes, message):
    with pytest.raises(ValueError, match=message):
        writers.write_shard(**{**shard_one, **changes})
    assert not os.listdir(shard_one["staging_dir"])


def test_write_shard_refuses_a_used_staging_dir(shard_one):
    (shard_one["staging_dir"] / "left_over").write_text("")
    with pytest.raises(ValueError, match="staging_dir must be an existing empty directory"):
        writers.write_shard(**shard_one)


def test_image_index_above_999_is_only_refused_for_folders(shard_one):
    shard_one.update(formats=("recordio",), images=[_image(3, 1000)])
    assert writers.write_shard(**shard_one)[0] == "recordio/shards/shard_00001.idx"


@pytest.mark.parametrize(
    "arguments, message",
    [
        ((np.zeros((16, 16, 3), np.float32), "png"), "pixels must be uint8 .* float32"),
        ((np.zeros((16, 16), np.uint8), "png"), r"shape \(16, 16\)"),
        ((np.zeros((16, 16, 3), np.uint8), "gif"), "image_format must be one of .* 'gif'"),
        ((np.zeros((16, 16, 3), np.uint8), "jpeg", 101), r"jpeg_quality must be in \[1, 100\]"),
    ],
)
def test_encode_image_refuses_bad_input(arguments, message):
    with pytest.raises(ValueError, match=message):
        writers.encode_image(*arguments)


def test_finalize_refuses_missing_or_mismatched_shards(written, png_dataset, tmp_path):
    out_dir = written[0]
    with pytest.raises(ValueError, match="shard_lengths must have num_shards = 3 entries, got 2"):
        _finalize(out_dir, png_dataset, shard_lengths=[5, 4])
    with pytest.raises(ValueError, match=r"shard_00001.idx lists 6 keys, expected 0 .. 6"):
        _finalize(out_dir, png_dataset, formats=("recordio",), shard_lengths=[9, 7, 5])
    with pytest.raises(ValueError, match="array_record-00001-of-00003 holds 6 records"):
        _finalize(out_dir, png_dataset, formats=("tfds",), shard_lengths=[9, 7, 5])
    with pytest.raises(ValueError, match="image_format must be one of"):
        _finalize(out_dir, png_dataset, image_format="bmp")
    empty = str(tmp_path)
    missing = os.path.join(
        empty, writers.TFDS_DIR, "generated_faces-train.array_record-00000-of-00003"
    )
    with pytest.raises(ValueError, match=f"the file of shard 0, {missing}, is missing"):
        _finalize(empty, png_dataset, formats=("tfds",))
