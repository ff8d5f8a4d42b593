"""Tests of the identity-folder TFDS builder: skipped inputs, labels, strictness, atomicity."""

import io
import os
import re

import grain
import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from diffusion_jax.core.bad_input import BadInputError
from diffusion_jax.tasks.data.sources import image_folders

RESOLUTION = 16
MAX_PIXELS = 10_000
RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (16, 16), dtype=np.uint8)
DEEP = RNG.integers(0, 65536, (16, 16), dtype=np.uint16)


def encoded(image: PIL.Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def write_tree(root, files: dict[str, bytes | None]) -> None:
    """Writes root/<path> for each path; None makes an empty directory."""
    for path, data in files.items():
        target = root / path
        if data is None:
            target.mkdir(parents=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)


JPEG = encoded(PIL.Image.fromarray(RNG.integers(0, 256, (40, 40, 3), dtype=np.uint8)), "JPEG")
FILES = {
    "alice/a.png": encoded(PIL.Image.fromarray(RGB), "PNG"),
    "alice/b.jpg": encoded(PIL.Image.fromarray(RGB).resize((24, 16)), "JPEG"),
    "alice/gray.png": encoded(PIL.Image.fromarray(GRAY), "PNG"),
    "alice/rgba.png": encoded(PIL.Image.new("RGBA", (16, 16), (200, 100, 0, 51)), "PNG"),
    "alice/truncated.jpg": JPEG[: len(JPEG) // 2],
    "bob/bomb.png": encoded(PIL.Image.new("RGB", (101, 100)), "PNG"),
    "bob/cmyk.JPG": encoded(PIL.Image.new("CMYK", (16, 16), (0, 255, 0, 0)), "JPEG"),
    "bob/deep.png": encoded(PIL.Image.fromarray(DEEP), "PNG"),
    "bob/empty.jpg": b"",
    "bob/notes.jpg": b"this is not an image\n",
    "bob/readme.txt": b"notes\n",
    "carol": None,
    "dave/x.png": encoded(PIL.Image.fromarray(RGB), "PNG"),
    "eve/broken.png": b"",
    "stray.txt": b"not an identity\n",
    "zed/z.webp": encoded(PIL.Image.fromarray(RGB), "WEBP", lossless=True),
}
EXPECTED_SKIPS = {
    "alice/truncated.jpg": "corrupt",
    "bob/bomb.png": "too_large",
    "bob/empty.jpg": "empty",
    "bob/notes.jpg": "not_an_image",
    "bob/readme.txt": "unsupported_file",
    "carol": "empty_identity",
    "dave": "unreadable_directory",
    "eve/broken.png": "empty",
    "eve": "empty_identity",
    "stray.txt": "unsupported_file",
}
EXPECTED_PATHS = [
    "alice/a.png",
    "alice/b.jpg",
    "alice/gray.png",
    "alice/rgba.png",
    "bob/cmyk.JPG",
    "bob/deep.png",
    "zed/z.webp",
]


def patch_unreadable(monkeypatch: pytest.MonkeyPatch, directory: str) -> None:
    """Makes os.scandir refuse `directory`, as chmod 000 does for a user other than root."""
    scandir = os.scandir

    def refusing_scandir(path="."):
        # shutil also calls scandir, with file descriptors.
        if not isinstance(path, int) and os.path.basename(os.fspath(path)) == directory:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing_scandir)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    write_tree(root, FILES)
    return root


def prepare(root, data_dir, **options):
    options = {"resolution": RESOLUTION, "max_pixels": MAX_PIXELS, "num_threads": 2, **options}
    with pytest.MonkeyPatch.context() as monkeypatch:
        patch_unreadable(monkeypatch, "dave")
        return image_folders.prepare_image_folder(root, data_dir, **options)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def builder(root, data_dir):
    return prepare(root, data_dir)


@pytest.fixture(scope="module")
def records(builder):
    source = tfds.builder_from_directory(builder.data_dir).as_data_source("train")
    return [source[index] for index in range(len(source))]


def test_every_bad_input_is_skipped_and_named_in_the_report(builder):
    report = image_folders.read_preparation_report(builder.data_dir)
    assert {entry["path"]: entry["kind"] for entry in report["skipped"]} == EXPECTED_SKIPS
    assert report["num_skipped"] == len(EXPECTED_SKIPS)
    assert report["skipped_by_kind"] == {
        "corrupt": 1,
        "too_large": 1,
        "empty": 2,
        "not_an_image": 1,
        "unsupported_file": 2,
        "empty_identity": 2,
        "unreadable_directory": 1,
    }
    assert (report["num_examples"], report["num_identities"]) == (7, 3)
    reasons = {entry["path"]: entry["reason"] for entry in report["skipped"]}
    assert "101x100 = 10100 pixels exceeds max_pixels = 10000" in reasons["bob/bomb.png"]
    assert "Permission denied" in reasons["dave"]


def test_labels_are_contiguous_in_sorted_identity_order(builder, records):
    assert image_folders.read_identity_labels(builder.data_dir) == {"alice": 0, "bob": 1, "zed": 2}
    assert [record["path"].decode() for record in records] == EXPECTED_PATHS
    identities = [record["identity"].decode() for record in records]
    assert identities == [path.split("/")[0] for path in EXPECTED_PATHS]
    assert [int(record["label"]) for record in records] == [0, 0, 0, 0, 1, 1, 2]


def test_stored_images_are_the_decoded_files(records):
    images = {record["path"].decode(): record["image"] for record in records}
    assert all(image.dtype == np.uint8 and image.shape == (16, 16, 3) for image in images.values())
    np.testing.assert_array_equal(images["alice/a.png"], RGB)
    np.testing.assert_array_equal(images["zed/z.webp"], RGB)
    np.testing.assert_array_equal(images["alice/gray.png"], np.repeat(GRAY[..., None], 3, axis=-1))
    deep = np.rint(DEEP.astype(np.float64) / 257.0)
    np.testing.assert_array_equal(images["bob/deep.png"], np.repeat(deep[..., None], 3, axis=-1))
    # Alpha 51 / 255 = 0.2 over white: 0.2 * (200, 100, 0) + 0.8 * 255.
    np.testing.assert_allclose(
        images["alice/rgba.png"], np.broadcast_to([244, 224, 204], (16, 16, 3)), atol=1
    )
    np.testing.assert_allclose(
        images["bob/cmyk.JPG"], np.broadcast_to([255, 0, 255], (16, 16, 3)), atol=2
    )
    # The 24 x 16 JPEG keeps its central 16 x 16, columns (24 - 16) // 2 = 4 to 19.
    jpeg = np.asarray(PIL.Image.open(io.BytesIO(FILES["alice/b.jpg"])))
    np.testing.assert_array_equal(images["alice/b.jpg"], jpeg[:, 4:20])


def test_the_image_label_source_reads_through_grain(builder, records):
    source = image_folders.ImageLabelSource(builder.data_dir)
    assert len(source) == 7
    elements = list(grain.MapDataset.source(source))
    assert sorted(elements[0]) == ["image", "label"]
    for element, record in zip(elements, records, strict=True):
        np.testing.assert_array_equal(element["image"], record["image"])
        assert element["label"].dtype == np.int32 and element["label"] == record["label"]


def test_record_labels_are_scanned_once_per_preparation(root, tmp_path, monkeypatch):
    builder = prepare(root, tmp_path)
    expected = [
        record["label"]
        for record in tfds.builder_from_directory(builder.data_dir).as_data_source("train")
    ]
    np.testing.assert_array_equal(
        image_folders.ImageLabelSource(builder.data_dir).record_labels, expected
    )

    def refusing_scan(self):
        raise AssertionError("the labels were scanned again")

    monkeypatch.setattr(image_folders.ImageLabelSource, "_scan_labels", refusing_scan)
    cached = image_folders.ImageLabelSource(builder.data_dir).record_labels
    assert cached.dtype == np.int32
    np.testing.assert_array_equal(cached, expected)


def test_strict_mode_refuses_the_first_bad_input(root, tmp_path):
    with pytest.raises(BadInputError, match="/bob/readme.txt: extension .*strict preparation"):
        prepare(root, tmp_path, strict=True)
    single = tmp_path / "single"
    write_tree(
        single, {"ann/good.png": FILES["alice/a.png"], "ann/bad.jpg": FILES["alice/truncated.jpg"]}
    )
    with pytest.raises(BadInputError, match="/ann/bad.jpg: truncated or corrupt image"):
        prepare(single, tmp_path / "tfds", strict=True)
    config = image_folders.ImageFolderConfig(
        root=single, resolution=RESOLUTION, max_pixels=MAX_PIXELS
    )
    assert not image_folders.IdentityFolders(
        config=config, data_dir=tmp_path / "tfds"
    ).is_prepared()


def test_strict_mode_refuses_a_dataset_prepared_with_skips(root, builder, data_dir):
    with pytest.raises(ValueError, match="prepared earlier with 10 skipped inputs"):
        prepare(root, data_dir, strict=True)


def test_an_interrupted_preparation_leaves_nothing_that_loads(root, tmp_path, monkeypatch):
    encode_file = image_folders._encode_file

    def failing_encode_file(config, path):
        # After the first identity's examples have gone to the writer.
        if path == "bob/deep.png":
            raise RuntimeError("interrupted")
        return encode_file(config, path)

    monkeypatch.setattr(image_folders, "_encode_file", failing_encode_file)
    with pytest.raises(RuntimeError, match="interrupted"):
        prepare(root, tmp_path)
    config = image_folders.ImageFolderConfig(
        root=root, resolution=RESOLUTION, max_pixels=MAX_PIXELS
    )
    builder = image_folders.IdentityFolders(config=config, data_dir=tmp_path)
    assert not builder.is_prepared()
    assert not os.path.exists(builder.data_dir)
    assert not list(tmp_path.glob("identity_folders/*/*"))  # No .incomplete dir left either.
    with pytest.raises(OSError, match="Could not read dataset info"):
        tfds.builder_from_directory(builder.data_dir)
    monkeypatch.setattr(image_folders, "_encode_file", encode_file)
    assert prepare(root, tmp_path).is_prepared()


def test_each_setting_names_its_own_dataset(root, builder, data_dir, tmp_path):
    base = {"root": root, "resolution": RESOLUTION, "max_pixels": MAX_PIXELS}
    configs = [
        image_folders.ImageFolderConfig(**base),
        image_folders.ImageFolderConfig(**{**base, "resolution": 8}),
        image_folders.ImageFolderConfig(**{**base, "policy": "center_crop"}),
        image_folders.ImageFolderConfig(**{**base, "max_pixels": 20_000}),
        image_folders.ImageFolderConfig(**{**base, "root": tmp_path}),
    ]
    assert len({config.name for config in configs}) == len(configs)
    assert configs[0].name == builder.builder_config.name
    assert configs[0].name.startswith("faces")  # The basename of the root.
    assert not image_folders.IdentityFolders(config=configs[2], data_dir=data_dir).is_prepared()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"resolution": 0}, "resolution must be a positive integer, got 0"),
        ({"policy": "squash"}, "policy must be one of .*, got 'squash'"),
        ({"max_pixels": 1.5}, "max_pixels must be a positive integer, got 1.5"),
        ({"root": ""}, "root must name the directory of identity folders"),
    ],
)
def test_config_rejects_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        image_folders.ImageFolderConfig(**{"root": "/data/faces", **changes})


def test_a_missing_root_is_refused(tmp_path):
    with pytest.raises(BadInputError, match="/missing: is not a directory"):
        image_folders.prepare_image_folder(tmp_path / "missing", tmp_path, resolution=RESOLUTION)


def test_a_root_without_any_decodable_image_is_refused(tmp_path):
    write_tree(tmp_path / "faces", {"ann/empty.png": b""})
    with pytest.raises(
        BadInputError, match="faces: no decodable image under it \\(2 inputs skipped"
    ):
        image_folders.prepare_image_folder(tmp_path / "faces", tmp_path, resolution=RESOLUTION)


# --- hostile entries: links, special files, names that are not UTF-8 ----------------------------


def test_link_loops_broken_links_and_fifos_are_counted_skips(tmp_path):
    root = tmp_path / "faces"
    write_tree(root, {"ann/a.png": FILES["alice/a.png"]})
    os.symlink(root / "ann" / "loop.png", root / "ann" / "loop.png")
    os.symlink(root / "nowhere.png", root / "ann" / "broken.png")
    os.mkfifo(root / "ann" / "pipe.png")
    os.symlink(root / "loop", root / "loop")
    builder = prepare(root, tmp_path / "tfds")
    report = image_folders.read_preparation_report(builder.data_dir)
    assert {entry["path"]: entry["kind"] for entry in report["skipped"]} == {
        "ann/broken.png": "unreadable_file",
        "ann/loop.png": "unreadable_file",
        "ann/pipe.png": "unsupported_file",
        "loop": "unreadable_directory",
    }
    assert "Too many levels of symbolic links" in report["skipped"][1]["reason"]
    assert report["num_examples"] == 1
    with pytest.raises(BadInputError, match=f"{root}/ann/broken.png: cannot read its type"):
        prepare(root, tmp_path / "strict", strict=True)


def test_names_that_are_not_utf8_are_counted_skips_shown_escaped(tmp_path):
    root = os.fsencode(tmp_path / "faces")
    for path in (b"ann/a.png", b"ann/b\xff.png", b"caf\xe9/a.png"):
        os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
        with open(os.path.join(root, path), "wb") as image_file:
            image_file.write(FILES["alice/a.png"])
    builder = prepare(tmp_path / "faces", tmp_path / "tfds")
    report = image_folders.read_preparation_report(builder.data_dir)
    assert [(entry["path"], entry["kind"]) for entry in report["skipped"]] == [
        ("ann/b\\xff.png", "undecodable_name"),
        ("caf\\xe9", "undecodable_name"),
    ]
    assert image_folders.read_identity_labels(builder.data_dir) == {"ann": 0}
    message = re.escape(f"{tmp_path}/faces/ann/b\\xff.png: the name is not valid UTF-8")
    with pytest.raises(BadInputError, match=message):
        prepare(tmp_path / "faces", tmp_path / "strict", strict=True)


def test_a_damaged_prepared_file_names_the_dataset_and_record_when_read(tmp_path):
    write_tree(tmp_path / "faces", {"ann/a.png": FILES["alice/a.png"], "bob/b.png": JPEG})
    builder = prepare(tmp_path / "faces", tmp_path / "tfds")
    source = image_folders.ImageLabelSource(builder.data_dir)
    (data_file,) = (path for path in os.listdir(builder.data_dir) if ".array_record" in path)
    with open(os.path.join(builder.data_dir, data_file), "r+b") as damaged:
        damaged.truncate(os.path.getsize(damaged.name) // 2)
    with pytest.raises(BadInputError, match=f"{builder.data_dir}, record 0: cannot read or decode"):
        source[0]
