"""A corpus of malformed (and valid but unusual) inputs, each run through a real entry point.

Every case is built at test time (no committed binaries) and states its OUTCOME CLASS:

- "error": the entry point raises `BadInputError` (or a subclass: `ImageDecodeError`,
  `InvalidDatasetError`, `ConfigError`) whose message, one line (the main job prints it as its
  one line on stderr), names the input (file, line, record, key);
  for the main job's command line: a non-zero exit status, no traceback, and on stderr one line
  starting with `Error:` (or absl's one-line flags-parsing usage error) that names the input.
  Pickle attacks also check that nothing ran (a marker file is not created) and, to show the
  payload is live, that an unrestricted unpickler does create the marker.
- "skip": `image_folders.prepare_image_folder` completes, and its preparation report lists the
  input among its counted skips while the good images are kept; with `strict=True` the same
  tree raises `BadInputError` naming it.
- "read": the input is read correctly: the right pixels and labels.

The corpus holds 121 cases (test ids `test_malformed_input[<case id>]`): images (decode_image),
identity folders (prepare_image_folder), RecordIO (RecordIOReader, the recordio training
source), verification .bin (read_verification_bin, from_verification_bin), PyTorch and
safetensors files (tensor_files.load_tensors), LFW pairs.txt (read_lfw_pairs, from_lfw_pairs),
the verification-set loader (encoder_report.load_verification_sets), exported encoders
(encoder_store.load_encoder), TFDS by name (TfdsNamedSource), the record-label cache, and the
main job's command line (config files and keys, a bad input found at run time; subprocesses,
marked slow).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import io
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import tracemalloc
from collections.abc import Callable

import numpy as np
import PIL.Image
import pytest

from diffusion_jax.core.bad_input import BadInputError
from diffusion_jax.tasks.data.sources import image_decoding, image_folders, input_pipeline
from diffusion_jax.tasks.data.sources.image_decoding import decode_image
from tests import format_fixtures
from tests.format_fixtures import encode_image as encode
from tests.format_fixtures import png_header_only
from tests.helpers import REPO_ROOT, UNIT_CONFIG, main_job_environment, tiny_config

RESOLUTION = 16
RNG = np.random.default_rng(20261206)
_MIB = 1 << 20


# --- outcomes -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Error:
    """`call()` must raise BadInputError whose message matches every regex of `needles`.

    kind: the `kind` the error must carry (ImageDecodeError), if any.
    marker: a file the input would create if its code ran; it must not exist afterwards.
    live: called after the check, it must create `marker` (the payload is not a dud).
    max_traced_bytes: the most memory (tracemalloc, NumPy's buffers included) the call may take.
    """

    call: Callable[[], object]
    needles: list[str]
    kind: str | None = None
    marker: str | None = None
    live: Callable[[], object] | None = None
    max_traced_bytes: int | None = None


@dataclasses.dataclass
class Skip:
    """prepare_image_folder(root) lists each `skipped` path (a regex, matched in full) with its
    kind (None: any kind) and nothing else, keeps exactly `kept`; strict mode raises
    BadInputError matching `strict_needle`."""

    root: str
    data_dir: str
    skipped: dict[str, str | None]
    kept: list[str]
    strict_needle: str


@dataclasses.dataclass
class Read:
    """`check()` reads the input and asserts its pixels and labels."""

    check: Callable[[], None]


@dataclasses.dataclass
class CliError:
    """`python -m diffusion_jax.main <args>` must fail as the module doc says, its error line
    matching every regex of `needles`; with `debug` the traceback must be shown instead."""

    args: list[str]
    needles: list[str]
    debug: bool = False
    untouched: str | None = None  # a workdir that a refused config must leave uncreated


OUTCOME_CLASS = {Error: "error", CliError: "error", Skip: "skip", Read: "read"}


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    outcome: str
    build: Callable[[object], Error | Skip | Read | CliError]
    slow: bool


CASES: list[Case] = []


def case(case_id: str, outcome: str, *, slow: bool = False):
    """Registers the decorated builder `build(tmp_path) -> outcome` as case `case_id`."""
    assert outcome in ("error", "skip", "read"), outcome

    def register(build):
        assert all(existing.id != case_id for existing in CASES), case_id
        CASES.append(Case(case_id, outcome, build, slow))
        return build

    return register


def _line(number: int) -> str:
    """A message naming line `number`: `path:12:` or `..., line 12`."""
    return rf"(:|line ){number}\b"


def _named(path) -> str:
    return re.escape(str(path))


# --- builders -----------------------------------------------------------------------------------


def rgb_pixels(seed: int, size: int = RESOLUTION) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def png(seed: int, size: int = RESOLUTION) -> bytes:
    return encode(PIL.Image.fromarray(rgb_pixels(seed, size)), "PNG")


def jpeg(seed: int, size: int = 64) -> bytes:
    return encode(PIL.Image.fromarray(rgb_pixels(seed, size)), "JPEG", quality=90)


def jpeg_header_only(width: int, height: int) -> bytes:
    """SOI, a baseline SOF0 claiming width x height 3-component pixels, an SOS, no scan data."""
    components = b"".join(bytes([number, 0x11, 0]) for number in (1, 2, 3))
    start_of_frame = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + components
    start_of_scan = (
        b"\xff\xda" + struct.pack(">HB", 12, 3) + b"\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    )
    return b"\xff\xd8" + start_of_frame + start_of_scan + b"\xff\xd9"


def write(path, data: bytes) -> str:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "wb") as file:
        file.write(data)
    return str(path)


def write_text(path, text: str) -> str:
    return write(path, text.encode())


# Pickle opcodes, written by hand where pickle.dumps cannot produce the stream.
def p_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def p_str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def p_long(number: int) -> bytes:
    data = number.to_bytes(number.bit_length() // 8 + 1, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def p_os_system(marker: str) -> bytes:
    """A call of os.system(`touch marker`) (GLOBAL, argument, TUPLE1, REDUCE)."""
    return p_global("os", "system") + p_str(f"touch {marker}") + b"\x85R"


class _OsSystem:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _BuiltinsEval:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"__import__('pathlib').Path({self.marker!r}).touch()",)


class _Subprocess:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return subprocess.check_call, (["touch", self.marker],)


class Harmless:
    """A plain class: its pickle names a global outside every allowlist."""

    def __init__(self):
        self.value = 1


def _live_pickle(data: bytes) -> Callable[[], object]:
    return lambda: pickle.loads(data)


# --- images: decode_image -----------------------------------------------------------------------

SOURCE = "faces/x.jpg"


def decode_error(data: bytes, kind: str | None = None, **options) -> Error:
    return Error(
        lambda: decode_image(data, resolution=RESOLUTION, source=SOURCE, **options),
        [_named(SOURCE)],
        kind=kind,
    )


@case("img-empty", "error")
def _(tmp_path):
    return decode_error(b"", "empty")


@case("img-random-bytes", "error")
def _(tmp_path):
    return decode_error(np.random.default_rng(1).bytes(4096), "not_an_image")


@case("img-text-named-jpg", "error")
def _(tmp_path):
    return decode_error(b"<html><body>404 Not Found</body></html>\n", "not_an_image")


@case("img-truncated-jpeg", "error")
def _(tmp_path):
    data = jpeg(2)
    return decode_error(data[: len(data) // 2], "corrupt")


@case("img-truncated-png", "error")
def _(tmp_path):
    data = png(3, size=64)
    return decode_error(data[: len(data) // 2], "corrupt")


@case("img-png-corrupt-image-data", "error")
def _(tmp_path):
    data = bytearray(png(4, size=64))
    idat = data.index(b"IDAT")
    data[idat + 40 : idat + 60] = bytes(20)  # the zlib stream damaged, the CRC now wrong
    return decode_error(bytes(data), "corrupt")


@case("img-jpeg-header-only", "error")
def _(tmp_path):
    return decode_error(jpeg(5)[:200])


@case("img-bomb-png-header-10-gigapixels", "error")
def _(tmp_path):
    error = decode_error(png_header_only(100_000, 100_000), "too_large")
    error.max_traced_bytes = 16 * _MIB
    return error


@case("img-bomb-png-header-over-40-megapixels", "error")
def _(tmp_path):
    # 8000 x 6000 = 48 MP: above the default max_pixels, below PIL's own bomb limit.
    error = decode_error(png_header_only(8000, 6000), "too_large")
    error.max_traced_bytes = 16 * _MIB
    return error


@case("img-bomb-jpeg-header-4-gigapixels", "error")
def _(tmp_path):
    error = decode_error(jpeg_header_only(65_535, 65_535), "too_large")
    error.max_traced_bytes = 16 * _MIB
    return error


@case("img-tiff-unsupported-format", "error")
def _(tmp_path):
    return decode_error(encode(PIL.Image.new("RGB", (4, 4)), "TIFF"), "not_an_image")


def _decoded(data: bytes, **options) -> np.ndarray:
    decoded = decode_image(data, resolution=RESOLUTION, source=SOURCE, **options)
    assert decoded.dtype == np.uint8 and decoded.shape == (RESOLUTION, RESOLUTION, 3)
    return decoded


@case("img-cmyk-jpeg", "read")
def _(tmp_path):
    cmyk = (10, 200, 30, 50)
    data = encode(PIL.Image.new("CMYK", (RESOLUTION, RESOLUTION), cmyk), "JPEG", quality=95)

    def check():
        c, m, y, k = np.array(cmyk, np.float64)
        expected = (255.0 - np.array([c, m, y])) * (255.0 - k) / 255.0
        np.testing.assert_allclose(_decoded(data), np.broadcast_to(expected, (16, 16, 3)), atol=2)

    return Read(check)


@case("img-16-bit-png", "read")
def _(tmp_path):
    values = np.random.default_rng(6).integers(0, 65536, (RESOLUTION, RESOLUTION), dtype=np.uint16)
    values[0, :4] = [0, 128, 129, 65535]
    data = encode(PIL.Image.fromarray(values), "PNG")

    def check():
        assert PIL.Image.open(io.BytesIO(data)).mode.startswith("I")
        expected = np.rint(values.astype(np.float64) / 257.0).astype(np.uint8)
        np.testing.assert_array_equal(_decoded(data), np.repeat(expected[..., None], 3, axis=-1))

    return Read(check)


@case("img-palette-png-with-transparency", "read")
def _(tmp_path):
    indices = np.random.default_rng(7).integers(0, 4, (RESOLUTION, RESOLUTION), dtype=np.uint8)
    palette = np.array([[10, 20, 30], [200, 100, 50], [0, 255, 0], [7, 7, 7]], np.uint8)
    image = PIL.Image.fromarray(indices, mode="P")
    image.putpalette(palette.ravel().tolist())
    data = encode(image, "PNG", transparency=1)  # entry 1 fully transparent

    def check():
        expected = palette[indices].copy()
        expected[indices == 1] = image_decoding.BACKGROUND
        np.testing.assert_array_equal(_decoded(data), expected)

    return Read(check)


def _alpha_case(mode: str):
    rgb = rgb_pixels(8)
    alpha = np.random.default_rng(9).integers(0, 256, (RESOLUTION, RESOLUTION), dtype=np.uint8)
    a = alpha[..., None].astype(np.float64) / 255.0
    if mode == "RGBA":
        pixels, colour = np.concatenate([rgb, alpha[..., None]], axis=-1), rgb
    else:
        pixels, colour = np.stack([rgb[..., 0], alpha], axis=-1), rgb[..., :1]
    data = encode(PIL.Image.fromarray(pixels, mode=mode), "PNG")
    expected = np.broadcast_to(a * colour + (1.0 - a) * 255.0, (RESOLUTION, RESOLUTION, 3))

    def check():
        np.testing.assert_allclose(_decoded(data), expected, atol=1.0)

    return Read(check)


@case("img-rgba-png", "read")
def _(tmp_path):
    return _alpha_case("RGBA")


@case("img-la-png", "read")
def _(tmp_path):
    return _alpha_case("LA")


def _exif_rotated_jpeg() -> tuple[bytes, np.ndarray]:
    """A 16 x 16 JPEG stored with its top-left 8 x 8 quadrant white (the rest black) and EXIF
    orientation 6 (displayed rotated 90 degrees clockwise), and the displayed pixels."""
    stored = np.zeros((RESOLUTION, RESOLUTION, 3), np.uint8)
    stored[:8, :8] = 255
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    data = encode(
        PIL.Image.fromarray(stored), "JPEG", quality=100, subsampling=0, exif=exif.tobytes()
    )
    return data, np.rot90(stored, k=-1)  # k=-1: clockwise; the white quadrant goes top-right


@case("img-exif-rotated-jpeg", "read")
def _(tmp_path):
    data, displayed = _exif_rotated_jpeg()

    def check():
        raw = np.asarray(PIL.Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
        assert raw[:8, :8].mean() > 240 and raw[:8, 8:].mean() < 15  # as stored
        decoded = _decoded(data).astype(int)
        assert decoded[:8, 8:].mean() > 240, "EXIF orientation 6 not applied"
        assert decoded[:8, :8].mean() < 15 and decoded[8:].mean() < 15
        np.testing.assert_allclose(decoded, displayed, atol=12)

    return Read(check)


@case("img-progressive-jpeg", "read")
def _(tmp_path):
    data = encode(PIL.Image.fromarray(rgb_pixels(10)), "JPEG", quality=90, progressive=True)

    def check():
        opened = PIL.Image.open(io.BytesIO(data))
        assert opened.info.get("progressive") or opened.info.get("progression")
        np.testing.assert_array_equal(_decoded(data), np.asarray(opened.convert("RGB")))

    return Read(check)


@case("img-grayscale-jpeg", "read")
def _(tmp_path):
    gray = np.random.default_rng(11).integers(0, 256, (RESOLUTION, RESOLUTION), dtype=np.uint8)
    data = encode(PIL.Image.fromarray(gray, mode="L"), "JPEG", quality=90)

    def check():
        opened = PIL.Image.open(io.BytesIO(data))
        assert opened.mode == "L"
        expected = np.repeat(np.asarray(opened)[..., None], 3, axis=-1)
        np.testing.assert_array_equal(_decoded(data), expected)

    return Read(check)


@case("img-bilevel-png", "read")
def _(tmp_path):
    bits = np.random.default_rng(12).integers(0, 2, (RESOLUTION, RESOLUTION)).astype(bool)
    data = encode(PIL.Image.fromarray(bits), "PNG")

    def check():
        assert PIL.Image.open(io.BytesIO(data)).mode == "1"
        expected = np.repeat(np.where(bits, 255, 0).astype(np.uint8)[..., None], 3, axis=-1)
        np.testing.assert_array_equal(_decoded(data), expected)

    return Read(check)


@case("img-animated-gif-first-frame", "read")
def _(tmp_path):
    frames = [
        PIL.Image.new("RGB", (RESOLUTION, RESOLUTION), colour)
        for colour in [(255, 0, 0), (0, 0, 255)]
    ]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    data = buffer.getvalue()

    def check():
        assert PIL.Image.open(io.BytesIO(data)).n_frames == 2
        np.testing.assert_array_equal(_decoded(data), np.broadcast_to([255, 0, 0], (16, 16, 3)))

    return Read(check)


# --- identity folders: prepare_image_folder -----------------------------------------------------


def folder_tree(tmp_path, files: dict[str, bytes | None]) -> str:
    """root/<path> for each path (None: an empty directory), and a good identity `good/a.png`."""
    root = tmp_path / "faces"
    for path, data in {"good/a.png": png(100), **files}.items():
        target = root / path
        if data is None:
            target.mkdir(parents=True)
        else:
            write(target, data)
    return str(root)


def folder_skip(tmp_path, files: dict[str, bytes | None], path: str, kind: str | None) -> Skip:
    root = folder_tree(tmp_path, files)
    return Skip(root, str(tmp_path / "tfds"), {re.escape(path): kind}, ["good/a.png"], _named(path))


@case("folder-empty-file", "skip")
def _(tmp_path):
    files = {"ann/empty.jpg": b"", "ann/ok.png": png(12)}
    skip = folder_skip(tmp_path, files, "ann/empty.jpg", "empty")
    skip.kept = ["ann/ok.png", "good/a.png"]
    return skip


@case("folder-truncated-jpeg", "skip")
def _(tmp_path):
    data = jpeg(13)
    files = {"ann/cut.jpg": data[: len(data) // 2], "ann/ok.png": png(14)}
    skip = folder_skip(tmp_path, files, "ann/cut.jpg", "corrupt")
    skip.kept = ["ann/ok.png", "good/a.png"]
    return skip


@case("folder-random-bytes", "skip")
def _(tmp_path):
    files = {"ann/noise.png": np.random.default_rng(15).bytes(2048), "ann/ok.png": png(16)}
    skip = folder_skip(tmp_path, files, "ann/noise.png", "not_an_image")
    skip.kept = ["ann/ok.png", "good/a.png"]
    return skip


@case("folder-decompression-bomb", "skip")
def _(tmp_path):
    files = {"ann/bomb.png": png_header_only(100_000, 100_000), "ann/ok.png": png(17)}
    skip = folder_skip(tmp_path, files, "ann/bomb.png", "too_large")
    skip.kept = ["ann/ok.png", "good/a.png"]
    return skip


@case("folder-tiff-named-jpg", "skip")
def _(tmp_path):
    files = {"ann/photo.jpg": encode(PIL.Image.new("RGB", (4, 4)), "TIFF"), "ann/ok.png": png(18)}
    skip = folder_skip(tmp_path, files, "ann/photo.jpg", "not_an_image")
    skip.kept = ["ann/ok.png", "good/a.png"]
    return skip


@case("folder-text-file", "skip")
def _(tmp_path):
    files = {"ann/notes.txt": b"notes\n", "ann/ok.png": png(19)}
    skip = folder_skip(tmp_path, files, "ann/notes.txt", "unsupported_file")
    skip.kept = ["ann/ok.png", "good/a.png"]
    return skip


@case("folder-file-at-root", "skip")
def _(tmp_path):
    return folder_skip(tmp_path, {"README.txt": b"faces\n"}, "README.txt", "unsupported_file")


@case("folder-empty-identity", "skip")
def _(tmp_path):
    return folder_skip(tmp_path, {"ann": None}, "ann", "empty_identity")


@case("folder-nested-directory", "skip")
def _(tmp_path):
    files = {"ann/more/x.png": png(20), "ann/ok.png": png(21)}
    skip = folder_skip(tmp_path, files, "ann/more", "unsupported_file")
    skip.kept = ["ann/ok.png", "good/a.png"]
    return skip


@case("folder-dangling-symlink", "skip")
def _(tmp_path):
    skip = folder_skip(tmp_path, {"ann/ok.png": png(22)}, "ann/gone.jpg", None)
    os.symlink(
        os.path.join(skip.root, "ann", "missing.jpg"), os.path.join(skip.root, "ann", "gone.jpg")
    )
    skip.kept = ["ann/ok.png", "good/a.png"]
    return skip


@case("folder-self-referencing-symlink", "skip")
def _(tmp_path):
    skip = folder_skip(tmp_path, {"ann/ok.png": png(23)}, "ann/loop.jpg", None)
    link = os.path.join(skip.root, "ann", "loop.jpg")
    os.symlink(link, link)
    skip.kept = ["ann/ok.png", "good/a.png"]
    return skip


@case("folder-self-referencing-symlink-at-root", "skip")
def _(tmp_path):
    skip = folder_skip(tmp_path, {}, "loop", None)
    link = os.path.join(skip.root, "loop")
    os.symlink(link, link)
    skip.strict_needle = r"faces/loop\b"
    return skip


@case("folder-identity-name-not-utf8", "skip")
def _(tmp_path):
    root = folder_tree(tmp_path, {})
    identity = os.path.join(os.fsencode(root), b"Jos\xe9_Lee")  # Latin-1: not valid UTF-8
    os.mkdir(identity)
    write(os.path.join(identity, b"a.png"), png(24))
    # However the name is shown (escaped, replaced), its valid part is named.
    return Skip(root, str(tmp_path / "tfds"), {r"Jos.*Lee(/a\.png)?": None}, ["good/a.png"], "Jos")


@case("folder-file-name-not-utf8", "skip")
def _(tmp_path):
    root = folder_tree(tmp_path, {"ann/ok.png": png(29)})
    write(os.path.join(os.fsencode(root), b"ann", b"caf\xe9.png"), png(30))
    return Skip(
        root, str(tmp_path / "tfds"), {r"ann/caf.*\.png": None}, ["ann/ok.png", "good/a.png"], "caf"
    )


@case("folder-fifo-named-jpg", "skip")
def _(tmp_path):
    skip = folder_skip(tmp_path, {"ann/ok.png": png(31)}, "ann/pipe.jpg", None)
    os.mkfifo(os.path.join(skip.root, "ann", "pipe.jpg"))  # reading it would block forever
    skip.kept = ["ann/ok.png", "good/a.png"]
    return skip


@case("folder-root-is-a-file", "error")
def _(tmp_path):
    root = write(tmp_path / "faces.zip", b"PK\x03\x04 not a directory")

    def prepare():
        return image_folders.prepare_image_folder(
            root, str(tmp_path / "tfds"), resolution=RESOLUTION, num_threads=1
        )

    return Error(prepare, [_named(root)])


@case("folder-unusual-images-read", "read")
def _(tmp_path):
    deep = np.random.default_rng(25).integers(0, 65536, (RESOLUTION, RESOLUTION), dtype=np.uint16)
    palette = PIL.Image.fromarray(np.array([[0, 1] * 8] * 16, np.uint8), mode="P")
    palette.putpalette([10, 20, 30, 200, 100, 50])
    files = {
        "ann/cmyk.jpg": encode(PIL.Image.new("CMYK", (16, 16), (0, 255, 0, 0)), "JPEG"),
        "ann/deep.png": encode(PIL.Image.fromarray(deep), "PNG"),
        "ann/exif.jpg": _exif_rotated_jpeg()[0],
        "ann/gray.jpg": encode(PIL.Image.fromarray(deep.astype(np.uint8), mode="L"), "JPEG"),
        "ann/palette.png": encode(palette, "PNG", transparency=1),
        "ann/png-named.jpg": png(26),
        "ann/progressive.jpg": encode(
            PIL.Image.fromarray(rgb_pixels(27)), "JPEG", progressive=True
        ),
        "bob/la.png": encode(PIL.Image.new("LA", (16, 16), (90, 128)), "PNG"),
        "bob/rgba.png": encode(PIL.Image.new("RGBA", (16, 16), (200, 100, 0, 51)), "PNG"),
        "bob/x.webp": encode(PIL.Image.fromarray(rgb_pixels(28)), "WEBP", lossless=True),
    }
    root = folder_tree(tmp_path, files)
    all_files = {"good/a.png": png(100), **files}

    def check():
        import tensorflow_datasets as tfds

        builder = image_folders.prepare_image_folder(
            root, str(tmp_path / "tfds"), resolution=RESOLUTION, num_threads=1
        )
        report = image_folders.read_preparation_report(builder.data_dir)
        assert report["num_skipped"] == 0, report["skipped"]
        assert image_folders.read_identity_labels(builder.data_dir) == {
            "ann": 0,
            "bob": 1,
            "good": 2,
        }
        records = tfds.builder_from_directory(builder.data_dir).as_data_source("train")
        seen = {}
        for record in (records[index] for index in range(len(records))):
            path = record["path"].decode()
            seen[path] = int(record["label"])
            expected = decode_image(all_files[path], resolution=RESOLUTION)
            np.testing.assert_array_equal(record["image"], expected, err_msg=path)
        assert seen == {
            path: {"ann": 0, "bob": 1, "good": 2}[path.split("/")[0]] for path in all_files
        }
        exif = {record["path"].decode(): record["image"] for record in records}["ann/exif.jpg"]
        assert exif[:8, 8:].mean() > 240 and exif[:8, :8].mean() < 15  # orientation applied

    return Read(check)


# --- RecordIO: RecordIOReader and the recordio training source ------------------------------------

IDENTITIES = [[png(200 + i) for i in range(2)], [png(210 + i) for i in range(3)]]


def recordio_files(tmp_path, identities=None, records=None) -> tuple[str, str, dict]:
    """train.rec / train.idx of an InsightFace set (keys 1-5 images, 0 header, 6-7 identities)."""
    rec_path, idx_path = str(tmp_path / "train.rec"), str(tmp_path / "train.idx")
    if records is None:
        records = format_fixtures.insightface_records(identities or IDENTITIES)
    offsets = format_fixtures.write_recordio(rec_path, idx_path, records)
    return rec_path, idx_path, offsets


def open_reader(rec_path: str) -> Callable[[], object]:
    from diffusion_jax.tasks.data.sources import recordio

    return lambda: recordio.RecordIOReader(rec_path)


def rewrite_index(idx_path: str, lines: list[str]) -> None:
    write_text(idx_path, "".join(line + "\n" for line in lines))


def recordio_data_config(rec_path: str):
    config = tiny_config()
    config.data.source = "recordio"
    config.data.path = rec_path
    config.data.resolution = RESOLUTION
    config.data.image_policy = "resize"
    return config.data


@case("rec-valid-read-through-training-source", "read")
def _(tmp_path):
    rec_path, _, _ = recordio_files(tmp_path)

    def check():
        records = input_pipeline.training_records(recordio_data_config(rec_path))
        expected = [(image, label) for label, images in enumerate(IDENTITIES) for image in images]
        assert len(records) == len(expected)
        for index, (image, label) in enumerate(expected):
            element = records[index]
            np.testing.assert_array_equal(element["image"], decode_image(image, resolution=16))
            assert int(element["label"]) == label

    return Read(check)


@case("rec-truncated-record", "error")
def _(tmp_path):
    rec_path, _, _ = recordio_files(tmp_path)
    with open(rec_path, "r+b") as rec_file:
        rec_file.truncate(os.path.getsize(rec_path) - 6)
    return Error(open_reader(rec_path), [_named(rec_path)])


@case("rec-bad-magic", "error")
def _(tmp_path):
    rec_path, idx_path, offsets = recordio_files(tmp_path)
    with open(rec_path, "r+b") as rec_file:
        rec_file.seek(offsets[3])
        rec_file.write(b"\xff\xff\xff\xff")
    return Error(open_reader(rec_path), [_named(rec_path), r"(key|record) 3\b"])


@case("rec-index-offset-past-end", "error")
def _(tmp_path):
    rec_path, idx_path, offsets = recordio_files(tmp_path)
    rewrite_index(idx_path, [f"{k}\t{o + 10**6 * (k == 2)}" for k, o in offsets.items()])
    return Error(open_reader(rec_path), [_named(idx_path), r"(key|record) 2\b"])


@case("rec-index-offset-inside-record", "error")
def _(tmp_path):
    rec_path, idx_path, offsets = recordio_files(tmp_path)
    rewrite_index(idx_path, [f"{k}\t{o + 8 * (k == 2)}" for k, o in offsets.items()])
    return Error(open_reader(rec_path), [_named(idx_path), r"(key|record) 2\b"])


@case("rec-index-non-numeric-line", "error")
def _(tmp_path):
    rec_path, idx_path, offsets = recordio_files(tmp_path)
    lines = [f"{k}\t{o}" for k, o in offsets.items()]
    lines[3] = "3\tabc"
    rewrite_index(idx_path, lines)
    return Error(open_reader(rec_path), [_named(idx_path), _line(4)])


@case("rec-index-negative-offset", "error")
def _(tmp_path):
    rec_path, idx_path, offsets = recordio_files(tmp_path)
    lines = [f"{k}\t{o}" for k, o in offsets.items()]
    lines[2] = "2\t-8"
    rewrite_index(idx_path, lines)
    return Error(open_reader(rec_path), [_named(idx_path), _line(3)])


@case("rec-index-offset-beyond-int64", "error")
def _(tmp_path):
    rec_path, idx_path, offsets = recordio_files(tmp_path)
    lines = [f"{k}\t{o}" for k, o in offsets.items()]
    lines[2] = f"2\t{2**64 + 8}"
    rewrite_index(idx_path, lines)
    return Error(open_reader(rec_path), [_named(idx_path), _line(3)])


@case("rec-index-key-beyond-int64", "error")
def _(tmp_path):
    rec_path, idx_path, offsets = recordio_files(tmp_path)
    lines = [f"{k}\t{o}" for k, o in offsets.items()]
    lines.append(f"{2**70}\t0")
    rewrite_index(idx_path, lines)
    return Error(open_reader(rec_path), [_named(idx_path), _line(len(lines))])


@case("rec-index-binary-garbage-line", "error")
def _(tmp_path):
    rec_path, idx_path, offsets = recordio_files(tmp_path)
    with open(idx_path, "ab") as idx_file:
        idx_file.write(b"\xff\xfe\x00garbage\x01\n")
    return Error(open_reader(rec_path), [_named(idx_path), _line(len(offsets) + 1)])


@case("rec-index-duplicate-key", "error")
def _(tmp_path):
    rec_path, idx_path, offsets = recordio_files(tmp_path)
    with open(idx_path, "a") as idx_file:
        idx_file.write(f"3\t{offsets[4]}\n")
    return Error(open_reader(rec_path), [_named(idx_path), r"\b3\b"])


@case("rec-index-empty", "error")
def _(tmp_path):
    rec_path, idx_path, _ = recordio_files(tmp_path)
    write(idx_path, b"")
    return Error(open_reader(rec_path), [_named(idx_path)])


@case("rec-index-lacks-keys-of-header", "error")
def _(tmp_path):
    rec_path, idx_path, offsets = recordio_files(tmp_path)
    rewrite_index(idx_path, [f"{k}\t{o}" for k, o in offsets.items() if k != 4])
    return Error(open_reader(rec_path), [_named(idx_path), r"\b4\b"])


@case("rec-record-file-empty", "error")
def _(tmp_path):
    rec_path, _, _ = recordio_files(tmp_path)
    write(rec_path, b"")
    return Error(open_reader(rec_path), [_named(rec_path)])


@case("rec-header-record-bad-identity-range", "error")
def _(tmp_path):
    records = format_fixtures.insightface_records(IDENTITIES)
    records[0] = (0, format_fixtures.image_record([9.0, 3.0], b""))  # first > end
    rec_path, _, _ = recordio_files(tmp_path, records=records)
    return Error(open_reader(rec_path), [_named(rec_path), r"header record"])


@case("rec-record-shorter-than-its-header", "error")
def _(tmp_path):
    images = [(1, format_fixtures.image_record(0.0, png(220))), (2, b"short")]
    rec_path, _, _ = recordio_files(tmp_path, records=images)
    return Error(open_reader(rec_path), [_named(rec_path), r"(key|record) 2\b"])


@case("rec-undecodable-image-in-training-source", "error")
def _(tmp_path):
    identities = [list(IDENTITIES[0]), list(IDENTITIES[1])]
    identities[1][1] = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40  # key 4
    rec_path, _, _ = recordio_files(tmp_path, identities=identities)

    def read_all():
        records = input_pipeline.training_records(recordio_data_config(rec_path))
        return [records[index] for index in range(len(records))]

    return Error(read_all, [_named(rec_path), r"(key|record) 4\b"])


@case("rec-fractional-label-in-training-source", "error")
def _(tmp_path):
    records = [
        (1, format_fixtures.image_record(0.0, png(221))),
        (2, format_fixtures.image_record(1.5, png(222))),
    ]
    rec_path, _, _ = recordio_files(tmp_path, records=records)

    def read_all():
        source = input_pipeline.training_records(recordio_data_config(rec_path))
        return [source[index] for index in range(len(source))]

    return Error(read_all, [_named(rec_path), r"(key|record) 2\b"])


# --- verification .bin: read_verification_bin, from_verification_bin -----------------------------


def bin_file(tmp_path, content: bytes, name: str = "lfw.bin") -> str:
    return write(tmp_path / name, content)


def read_bin(path: str) -> Callable[[], object]:
    from diffusion_jax.tasks.data.verification import verification_bin

    return lambda: verification_bin.read_verification_bin(path)


def bin_attack(tmp_path, stream: bytes, global_name: str, live: bool = True) -> Error:
    path = bin_file(tmp_path, stream)
    return Error(
        read_bin(path),
        [_named(path), global_name],
        marker=str(tmp_path / "pwned"),
        live=_live_pickle(stream) if live else None,
    )


def marker_of(tmp_path) -> str:
    return str(tmp_path / "pwned")


@case("bin-valid-python2-pickle-read", "read")
def _(tmp_path):
    images = [png(300 + i, size=24) for i in range(40)]
    is_same = [bool(i % 3) for i in range(20)]
    path = bin_file(tmp_path, format_fixtures.python2_pickle(images, is_same))

    def check():
        from diffusion_jax.tasks.evaluation import verification_sets

        pairs = verification_sets.from_verification_bin(path, resolution=RESOLUTION)
        np.testing.assert_array_equal(pairs.is_same, is_same)
        np.testing.assert_array_equal(pairs.fold, np.repeat(np.arange(10), 2))
        for index in (0, 7, 19):
            for side, images_side in ((0, pairs.images_a), (1, pairs.images_b)):
                expected = decode_image(images[2 * index + side], resolution=RESOLUTION)
                np.testing.assert_array_equal(images_side[index], expected)

    return Read(check)


@case("bin-reduce-os-system", "error")
def _(tmp_path):
    stream = pickle.dumps(([_OsSystem(marker_of(tmp_path)), b"x"], [True]), protocol=2)
    return bin_attack(tmp_path, stream, r"(posix|os)\.system")


@case("bin-reduce-builtins-eval", "error")
def _(tmp_path):
    stream = pickle.dumps(([_BuiltinsEval(marker_of(tmp_path)), b"x"], [True]), protocol=2)
    # Protocol 2 writes Python 2's module names (pickle's fix_imports): __builtin__.eval.
    return bin_attack(tmp_path, stream, r"(__builtin__|builtins)\.eval")


@case("bin-reduce-subprocess", "error")
def _(tmp_path):
    stream = pickle.dumps(([_Subprocess(marker_of(tmp_path)), b"x"], [True]), protocol=2)
    # Protocol 2 names subprocess.check_call by Python 2's module, commands.check_call.
    return bin_attack(tmp_path, stream, r"(subprocess|commands)\.check_call")


@case("bin-stack-global-protocol-4-eval", "error")
def _(tmp_path):
    stream = pickle.dumps(([b"x", _BuiltinsEval(marker_of(tmp_path))], [True]), protocol=4)
    assert b"\x93" in stream  # STACK_GLOBAL
    return bin_attack(tmp_path, stream, r"builtins\.eval")


@case("bin-inst-opcode-protocol-0", "error")
def _(tmp_path):
    stream = b"(V" + f"touch {marker_of(tmp_path)}".encode() + b"\nios\nsystem\n."
    return bin_attack(tmp_path, stream, r"(posix|os)\.system")


@case("bin-global-of-plain-class", "error")
def _(tmp_path):
    stream = pickle.dumps(([Harmless(), b"x"], [True]), protocol=2)
    return bin_attack(tmp_path, stream, r"Harmless", live=False)


@case("bin-global-collections-ordereddict", "error")
def _(tmp_path):
    stream = pickle.dumps(([b"a", b"b"], collections.OrderedDict(a=True)), protocol=2)
    return bin_attack(tmp_path, stream, r"collections\.OrderedDict", live=False)


@case("bin-attack-nested-deep-in-lists", "error")
def _(tmp_path):
    nested = [[[b"x", (b"y", [_OsSystem(marker_of(tmp_path))])]]]
    stream = pickle.dumps((nested, [True]), protocol=2)
    return bin_attack(tmp_path, stream, r"(posix|os)\.system")


@case("bin-attack-nested-in-ndarray-reconstruct-args", "error")
def _(tmp_path):
    # numpy's own _reconstruct (admitted) with os.system(...) as its shape argument.
    stream = (
        b"\x80\x02"
        + p_global("numpy.core.multiarray", "_reconstruct")
        + p_global("numpy", "ndarray")
        + p_os_system(marker_of(tmp_path))
        + b"U\x01b\x87R."
    )
    return bin_attack(tmp_path, stream, r"(posix|os)\.system")


@case("bin-attack-nested-in-codecs-encode-args", "error")
def _(tmp_path):
    stream = (
        b"\x80\x02]q\x00("
        + p_global("_codecs", "encode")
        + p_os_system(marker_of(tmp_path))
        + p_str("latin1")
        + b"\x86R"  # TUPLE2, REDUCE: _codecs.encode(os.system(...), 'latin1')
        + b"U\x01xe]q\x01\x88a\x86."
    )
    return bin_attack(tmp_path, stream, r"(posix|os)\.system")


@case("bin-attack-inside-object-array", "error")
def _(tmp_path):
    array = np.empty(1, dtype=object)
    array[0] = _OsSystem(marker_of(tmp_path))
    stream = pickle.dumps(([array, b"x"], [True]), protocol=2)
    return bin_attack(tmp_path, stream, r"(posix|os)\.system")


@case("bin-object-array-harmless", "error")
def _(tmp_path):
    array = np.array([b"a", b"b"], dtype=object)
    path = bin_file(tmp_path, pickle.dumps(([array, b"x"], [True]), protocol=2))
    return Error(read_bin(path), [_named(path)])


@case("bin-persistent-id", "error")
def _(tmp_path):
    path = bin_file(tmp_path, b"\x80\x02" + p_str("payload") + b"Q.")
    return Error(read_bin(path), [_named(path)])


@case("bin-extension-code", "error")
def _(tmp_path):
    path = bin_file(tmp_path, b"\x80\x02\x82\xf0.")  # EXT1 240: no such registered extension
    return Error(read_bin(path), [_named(path)])


@case("bin-ndarray-of-9-tib", "error")
def _(tmp_path):
    stream = (
        b"\x80\x02"
        + p_global("numpy.core.multiarray", "_reconstruct")
        + p_global("numpy", "ndarray")
        + p_long(9 * 2**40)
        + b"\x85U\x01b\x87R."
    )
    with pytest.raises(MemoryError):
        pickle.loads(stream)  # unrestricted: the payload is live
    path = bin_file(tmp_path, stream)
    return Error(read_bin(path), [_named(path)], max_traced_bytes=64 * _MIB)


def _asks_for_1e9_bytes(array: object) -> None:
    """Checks that the unrestricted unpickler built the 1 GB array (untouched: not resident)."""
    assert isinstance(array, np.ndarray) and array.shape == (10**9,) and array.dtype == np.uint8


@case("bin-50-byte-file-asks-for-1e9-elements", "error")
def _(tmp_path):
    # numpy.ndarray((10**9,), 'u1'): 1 GB from a 31-byte file.
    stream = (
        b"\x80\x02"
        + p_global("numpy", "ndarray")
        + b"J"
        + struct.pack("<i", 10**9)
        + b"\x85U\x02u1\x86R."
    )
    assert len(stream) <= 50
    _asks_for_1e9_bytes(pickle.loads(stream))
    path = bin_file(tmp_path, stream)
    return Error(read_bin(path), [_named(path)], max_traced_bytes=64 * _MIB)


@case("bin-1e9-elements-then-a-pair", "error")
def _(tmp_path):
    # The same 1 GB array, as image 0 of an otherwise well-formed pair: the content checks pass.
    stream = (
        b"\x80\x02("
        + p_global("numpy", "ndarray")
        + b"J"
        + struct.pack("<i", 10**9)
        + b"\x85U\x02u1\x86RU\x01xl]\x88a\x86."
    )
    _asks_for_1e9_bytes(pickle.loads(stream, encoding="bytes")[0][0])
    path = bin_file(tmp_path, stream)
    return Error(read_bin(path), [_named(path)], max_traced_bytes=64 * _MIB)


@case("bin-bytes-of-declared-length-1-tib", "error")
def _(tmp_path):
    stream = b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"ab."  # BINBYTES8
    path = bin_file(tmp_path, stream)
    return Error(read_bin(path), [_named(path)], max_traced_bytes=64 * _MIB)


@case("bin-fewer-pairs-than-folds", "error")
def _(tmp_path):
    images = [png(400 + i) for i in range(6)]
    path = bin_file(tmp_path, format_fixtures.python2_pickle(images, [True, False, True]))

    def load():
        from diffusion_jax.tasks.evaluation import verification_sets

        return verification_sets.from_verification_bin(path, resolution=RESOLUTION)

    return Error(load, [_named(path)])


@case("bin-truncated", "error")
def _(tmp_path):
    images = [png(410 + i) for i in range(4)]
    stream = format_fixtures.python2_pickle(images, [True, False])
    path = bin_file(tmp_path, stream[: len(stream) - 30])
    return Error(read_bin(path), [_named(path)])


@case("bin-empty-file", "error")
def _(tmp_path):
    path = bin_file(tmp_path, b"")
    return Error(read_bin(path), [_named(path)])


@case("bin-not-a-pickle", "error")
def _(tmp_path):
    path = bin_file(tmp_path, np.random.default_rng(31).bytes(1000))
    return Error(read_bin(path), [_named(path)])


@case("bin-image-and-flag-counts-disagree", "error")
def _(tmp_path):
    images = [png(420 + i) for i in range(5)]
    path = bin_file(tmp_path, format_fixtures.python2_pickle(images, [True, False, True]))
    return Error(read_bin(path), [_named(path)])


@case("bin-undecodable-image", "error")
def _(tmp_path):
    images = [png(430 + i) for i in range(20)]
    images[5] = b"not an image at all"
    path = bin_file(tmp_path, format_fixtures.python2_pickle(images, [True] * 10))

    def load():
        from diffusion_jax.tasks.evaluation import verification_sets

        return verification_sets.from_verification_bin(path, resolution=RESOLUTION)

    return Error(load, [_named(path), r"image 5\b"])


# --- PyTorch and safetensors files: tensor_files.load_tensors -------------------------------------


def load_tensors(path: str) -> Callable[[], object]:
    from diffusion_jax.tasks.convert import tensor_files

    return lambda: tensor_files.load_tensors(path)


def torch_file(tmp_path, content: object) -> str:
    import torch

    path = str(tmp_path / "backbone.pt")
    torch.save(content, path)
    return path


def _live_torch(path: str) -> Callable[[], object]:
    def load():
        import torch

        return torch.load(path, weights_only=False)

    return load


@case("pt-valid-state-dict-read", "read")
def _(tmp_path):
    import torch

    weight = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    path = torch_file(tmp_path, {"module.conv.weight": weight, "module.steps": torch.tensor(3)})

    def check():
        tensors = load_tensors(path)()
        assert sorted(tensors) == ["conv.weight", "steps"]
        assert tensors["conv.weight"].dtype == np.float32
        np.testing.assert_array_equal(tensors["conv.weight"], weight.numpy())
        assert int(tensors["steps"]) == 3

    return Read(check)


@case("pt-reduce-os-system-in-state-dict", "error")
def _(tmp_path):
    import torch

    marker = marker_of(tmp_path)
    path = torch_file(tmp_path, {"w": torch.zeros(2), "extra": _OsSystem(marker)})
    return Error(
        load_tensors(path),
        [_named(path), r"(posix|os)\.system"],
        marker=marker,
        live=_live_torch(path),
    )


@case("pt-legacy-pickle-builtins-eval", "error")
def _(tmp_path):
    marker = marker_of(tmp_path)
    stream = pickle.dumps(_BuiltinsEval(marker), protocol=2)
    path = write(tmp_path / "legacy.pth", stream)
    return Error(
        load_tensors(path),
        [_named(path), r"builtins\.eval|eval"],
        marker=marker,
        live=_live_pickle(stream),
    )


@case("pt-global-non-allowlisted-class", "error")
def _(tmp_path):
    import torch

    path = torch_file(tmp_path, {"w": torch.zeros(2), "args": argparse.Namespace(lr=0.1)})
    return Error(load_tensors(path), [_named(path), r"Namespace"])


@case("pt-subprocess-nested-in-checkpoint", "error")
def _(tmp_path):
    import torch

    marker = marker_of(tmp_path)
    content = {"state_dict_backbone": {"w": torch.zeros(2)}, "optim": [{"h": _Subprocess(marker)}]}
    path = torch_file(tmp_path, content)
    return Error(
        load_tensors(path), [_named(path), r"check_call"], marker=marker, live=_live_torch(path)
    )


@case("safetensors-header-claims-1-tib", "error")
def _(tmp_path):
    path = write(tmp_path / "model.safetensors", struct.pack("<Q", 2**40) + b"{}")
    return Error(load_tensors(path), [_named(path)], max_traced_bytes=64 * _MIB)


@case("safetensors-truncated", "error")
def _(tmp_path):
    import safetensors.numpy

    data = safetensors.numpy.save({"w": np.arange(64, dtype=np.float32)})
    path = write(tmp_path / "model.safetensors", data[: len(data) - 40])
    return Error(load_tensors(path), [_named(path)])


# --- LFW pairs.txt: read_lfw_pairs, from_lfw_pairs ------------------------------------------------

PAIR_FOLDS = [
    (
        [("Ann_Lee", 1, 2), ("Bo_Ray", 3, 12)],
        [("Ann_Lee", 1, "Cy_Doe", 1), ("Bo_Ray", 2, "Cy_Doe", 4)],
    ),
    (
        [("Cy_Doe", 2, 3), ("Dee_Fox", 1, 2)],
        [("Dee_Fox", 1, "Ann_Lee", 2), ("Cy_Doe", 1, "Bo_Ray", 3)],
    ),
]


def lfw_tree(tmp_path, folds=PAIR_FOLDS, header: str = "2\t2") -> tuple[str, str]:
    pairs_path, image_root = str(tmp_path / "pairs.txt"), str(tmp_path / "lfw")
    format_fixtures.write_lfw_tree(pairs_path, image_root, folds, header)
    return pairs_path, image_root


def replace_line(pairs_path: str, line_number: int, content: bytes) -> None:
    with open(pairs_path, "rb") as pairs_file:
        lines = pairs_file.read().split(b"\n")
    lines[line_number - 1] = content
    write(pairs_path, b"\n".join(lines))


def read_pairs(pairs_path: str, image_root: str) -> Callable[[], object]:
    from diffusion_jax.tasks.data.verification import lfw_pairs

    return lambda: lfw_pairs.read_lfw_pairs(pairs_path, image_root)


def lfw_with_images(tmp_path, newline: str = "\n") -> tuple[str, str, list]:
    folds = [([(f"P{f}", 1, 2)], [(f"P{f}", 1, f"Q{f}", 1)]) for f in range(10)]
    pairs_path, image_root = lfw_tree(tmp_path, folds, "10\t1")
    for seed, (directory, _, names) in enumerate(sorted(os.walk(image_root))):
        for offset, name in enumerate(sorted(names)):
            write(os.path.join(directory, name), png(500 + 10 * seed + offset, size=20))
    if newline != "\n":
        with open(pairs_path) as pairs_file:
            text = pairs_file.read()
        write(pairs_path, text.replace("\n", newline).encode())
    return pairs_path, image_root, folds


def from_lfw(pairs_path: str, image_root: str) -> Callable[[], object]:
    def load():
        from diffusion_jax.tasks.evaluation import verification_sets

        return verification_sets.from_lfw_pairs(pairs_path, image_root, resolution=RESOLUTION)

    return load


def _check_lfw_read(pairs_path: str, image_root: str) -> None:
    pairs = from_lfw(pairs_path, image_root)()
    assert len(pairs) == 20
    np.testing.assert_array_equal(pairs.is_same, [True, False] * 10)
    np.testing.assert_array_equal(pairs.fold, np.repeat(np.arange(10), 2))
    with open(os.path.join(image_root, "Q4", "Q4_0001.jpg"), "rb") as image_file:
        expected = decode_image(image_file.read(), resolution=RESOLUTION)
    np.testing.assert_array_equal(pairs.images_b[9], expected)


@case("pairs-valid-read", "read")
def _(tmp_path):
    pairs_path, image_root, _ = lfw_with_images(tmp_path)
    return Read(lambda: _check_lfw_read(pairs_path, image_root))


@case("pairs-crlf-line-ends-read", "read")
def _(tmp_path):
    pairs_path, image_root, _ = lfw_with_images(tmp_path, newline="\r\n")
    return Read(lambda: _check_lfw_read(pairs_path, image_root))


@case("pairs-too-few-fields", "error")
def _(tmp_path):
    pairs_path, image_root = lfw_tree(tmp_path)
    replace_line(pairs_path, 3, b"Bo_Ray\t3")
    return Error(read_pairs(pairs_path, image_root), [_named(pairs_path), _line(3)])


@case("pairs-non-numeric-image-number", "error")
def _(tmp_path):
    pairs_path, image_root = lfw_tree(tmp_path)
    replace_line(pairs_path, 5, b"Bo_Ray\ttwo\tCy_Doe\t4")
    return Error(read_pairs(pairs_path, image_root), [_named(pairs_path), _line(5)])


@case("pairs-latin-1-byte", "error")
def _(tmp_path):
    pairs_path, image_root = lfw_tree(tmp_path)
    replace_line(pairs_path, 6, b"Jos\xe9_Lee\t1\t2")
    return Error(read_pairs(pairs_path, image_root), [_named(pairs_path), _line(6)])


@case("pairs-header-count-disagrees", "error")
def _(tmp_path):
    pairs_path, image_root = lfw_tree(tmp_path, header="10\t300")
    return Error(read_pairs(pairs_path, image_root), [_named(pairs_path), r"6001"])


@case("pairs-header-not-numeric", "error")
def _(tmp_path):
    pairs_path, image_root = lfw_tree(tmp_path, header="ten\t2")
    return Error(read_pairs(pairs_path, image_root), [_named(pairs_path), _line(1)])


@case("pairs-empty-file", "error")
def _(tmp_path):
    pairs_path, image_root = lfw_tree(tmp_path)
    write(pairs_path, b"")
    return Error(read_pairs(pairs_path, image_root), [_named(pairs_path)])


@case("pairs-missing-image", "error")
def _(tmp_path):
    pairs_path, image_root = lfw_tree(tmp_path)
    missing = os.path.join(image_root, "Cy_Doe", "Cy_Doe_0004.jpg")
    os.remove(missing)
    return Error(read_pairs(pairs_path, image_root), [_named(pairs_path), _named(missing)])


@case("pairs-undecodable-image", "error")
def _(tmp_path):
    pairs_path, image_root, _ = lfw_with_images(tmp_path)
    broken = os.path.join(image_root, "P3", "P3_0002.jpg")
    write(broken, b"")
    return Error(from_lfw(pairs_path, image_root), [_named(broken)])


# --- the verification-set loader: encoder_report.load_verification_sets ---------------------------


def load_sets(*entries: str) -> Callable[[], object]:
    def load():
        from diffusion_jax.tasks.evaluation.encoder_report import load_verification_sets

        config = tiny_config()
        config.evaluate.verification_sets = tuple(entries)
        return load_verification_sets(config, RESOLUTION)

    return load


@case("vset-entry-of-unknown-kind", "error")
def _(tmp_path):
    entry = str(tmp_path / "faces.csv")
    return Error(load_sets(entry), [_named(entry)])


@case("vset-bin-that-does-not-exist", "error")
def _(tmp_path):
    entry = str(tmp_path / "missing" / "agedb_30.bin")
    return Error(load_sets(entry), [_named(entry)])


@case("vset-pairs-file-that-does-not-exist", "error")
def _(tmp_path):
    pairs_path = str(tmp_path / "nowhere" / "pairs.txt")
    (tmp_path / "lfw").mkdir()
    return Error(load_sets(f"{pairs_path}:{tmp_path / 'lfw'}"), [_named(pairs_path)])


@case("vset-bin-pickle-attack", "error")
def _(tmp_path):
    marker = marker_of(tmp_path)
    stream = pickle.dumps(([_OsSystem(marker), b"x"], [True]), protocol=2)
    path = bin_file(tmp_path, stream, "cfp_fp.bin")
    return Error(
        load_sets(path),
        [_named(path), r"(posix|os)\.system"],
        marker=marker,
        live=_live_pickle(stream),
    )


@case("vset-pairs-latin-1-byte", "error")
def _(tmp_path):
    pairs_path, image_root, _ = lfw_with_images(tmp_path)
    replace_line(pairs_path, 4, b"Fran\xe7ois\t1\t2")
    return Error(load_sets(f"{pairs_path}:{image_root}"), [_named(pairs_path), _line(4)])


# --- exported encoders: encoder_store.load_encoder ------------------------------------------------


def load_encoder(directory: str) -> Callable[[], object]:
    def load():
        from diffusion_jax.tasks.recognition import encoder_store

        return encoder_store.load_encoder(directory)

    return load


def encoder_dir(tmp_path, description: bytes | None, weights: bool = False) -> str:
    directory = tmp_path / "encoder"
    directory.mkdir()
    if description is not None:
        write(directory / "encoder.json", description)
    if weights:
        (directory / "weights").mkdir()
    return str(directory)


def small_architecture() -> dict:
    from diffusion_jax.core.models.iresnet import iresnet_architecture

    return iresnet_architecture("iresnet_small", input_resolution=32, embedding_dim=8)


@case("model-directory-without-description", "error")
def _(tmp_path):
    directory = encoder_dir(tmp_path, None, weights=True)
    return Error(load_encoder(directory), [_named(directory)])


@case("model-description-not-json", "error")
def _(tmp_path):
    directory = encoder_dir(tmp_path, b'{"format_version": 1, "architecture": ')
    return Error(load_encoder(directory), [_named(os.path.join(directory, "encoder.json"))])


@case("model-description-not-an-object", "error")
def _(tmp_path):
    directory = encoder_dir(tmp_path, b"[1, 2, 3]")
    return Error(load_encoder(directory), [_named(os.path.join(directory, "encoder.json"))])


@case("model-description-of-another-format-version", "error")
def _(tmp_path):
    description = {"format_version": 99, "architecture": small_architecture()}
    directory = encoder_dir(tmp_path, json.dumps(description).encode())
    return Error(load_encoder(directory), [_named(os.path.join(directory, "encoder.json"))])


@case("model-description-without-architecture", "error")
def _(tmp_path):
    directory = encoder_dir(tmp_path, b'{"format_version": 1, "weights_sha256": "00"}')
    return Error(
        load_encoder(directory), [_named(os.path.join(directory, "encoder.json")), "architecture"]
    )


@case("model-architecture-that-does-not-build", "error")
def _(tmp_path):
    description = {"format_version": 1, "architecture": {"no_such_argument": 3}}
    directory = encoder_dir(tmp_path, json.dumps(description).encode())
    return Error(load_encoder(directory), [_named(os.path.join(directory, "encoder.json"))])


@case("model-weights-missing", "error")
def _(tmp_path):
    description = {
        "format_version": 1,
        "architecture": small_architecture(),
        "provenance": {},
        "weights_sha256": "0" * 64,
    }
    directory = encoder_dir(tmp_path, json.dumps(description).encode(), weights=True)
    return Error(load_encoder(directory), [_named(directory)])


# --- TFDS by name: TfdsNamedSource --------------------------------------------------------------


def tfds_source(name: str, data_dir: str) -> Callable[[], object]:
    def load():
        from diffusion_jax.tasks.data.sources import tfds_source

        return tfds_source.TfdsNamedSource(name, "train", data_dir, resolution=RESOLUTION)

    return load


@case("tfds-name-that-does-not-exist", "error")
def _(tmp_path):
    return Error(tfds_source("no_such_dataset_q7z", str(tmp_path)), [r"no_such_dataset_q7z"])


@case("tfds-known-name-not-prepared", "error")
def _(tmp_path):
    return Error(tfds_source("mnist", str(tmp_path)), [r"mnist", _named(tmp_path)])


# --- the record-label cache beside a prepared dataset ---------------------------------------------


@case("label-cache-npz-with-pickled-attack", "read")
def _(tmp_path):
    from diffusion_jax.tasks.data.sources import record_label_cache

    root = folder_tree(
        tmp_path, {"ann/a.png": png(600), "ann/b.png": png(601), "bob/c.png": png(602)}
    )
    builder = image_folders.prepare_image_folder(
        root, str(tmp_path / "tfds"), resolution=RESOLUTION, num_threads=1
    )
    expected = image_folders.ImageLabelSource(builder.data_dir).record_labels  # writes the cache
    cache = record_label_cache.cache_path(builder.data_dir, "train", "label")
    with open(os.path.join(builder.data_dir, "dataset_info.json"), "rb") as info:
        digest = __import__("hashlib").sha256(info.read()).hexdigest()
    marker = marker_of(tmp_path)
    labels = np.empty(len(expected), dtype=object)
    labels[:] = [_OsSystem(marker)] + [0] * (len(expected) - 1)
    buffer = io.BytesIO()
    np.savez(buffer, labels=labels, names=np.asarray([], str), info_digest=np.asarray(digest))
    write(cache, buffer.getvalue())

    def check():
        record_labels = image_folders.ImageLabelSource(builder.data_dir).record_labels
        np.testing.assert_array_equal(record_labels, expected)
        np.testing.assert_array_equal(expected, [0, 0, 1, 2])
        assert not os.path.exists(marker), "the pickled payload in the label cache ran"
        with np.load(io.BytesIO(buffer.getvalue()), allow_pickle=True) as stored:
            stored["labels"]  # the unrestricted loader runs it: the payload is live
        assert os.path.exists(marker)

    return Read(check)


# --- the main job's command line (subprocesses: slow) -------------------------------------------


def cli_flags(tmp_path, *extra: str, config: str = UNIT_CONFIG) -> list[str]:
    return [f"--config={config}", f"--workdir={tmp_path / 'run'}", *extra]


def config_refused(tmp_path, flags: list[str], needles: list[str]) -> CliError:
    return CliError(flags, needles, untouched=str(tmp_path / "run"))


@case("cli-config-file-does-not-exist", "error", slow=True)
def _(tmp_path):
    missing = str(tmp_path / "no_such_config.py")
    return config_refused(tmp_path, cli_flags(tmp_path, config=missing), [r"no_such_config\.py"])


@case("cli-config-file-syntax-error", "error", slow=True)
def _(tmp_path):
    path = write_text(tmp_path / "broken_config.py", "def get_config(:\n    return None\n")
    return config_refused(tmp_path, cli_flags(tmp_path, config=path), [r"broken_config\.py"])


@case("cli-config-file-without-get-config", "error", slow=True)
def _(tmp_path):
    path = write_text(tmp_path / "empty_config.py", "CONFIG = {'data': {}}\n")
    return config_refused(tmp_path, cli_flags(tmp_path, config=path), [r"empty_config\.py"])


@case("cli-config-value-of-wrong-type", "error", slow=True)
def _(tmp_path):
    return config_refused(
        tmp_path,
        cli_flags(tmp_path, "--config.data.resolution=sixty-four"),
        [r"data\.resolution|resolution"],
    )


@case("cli-config-unknown-key", "error", slow=True)
def _(tmp_path):
    return config_refused(
        tmp_path, cli_flags(tmp_path, "--config.data.no_such_key=1"), [r"no_such_key"]
    )


@case("cli-config-misspelt-key-names-nearest", "error", slow=True)
def _(tmp_path):
    return config_refused(
        tmp_path,
        cli_flags(tmp_path, "--config.data.resolutoin=64"),
        [r"resolutoin", r"data\.resolution\b"],
    )


def _bad_recordio_flags(tmp_path) -> tuple[list[str], str]:
    rec_path, idx_path, offsets = recordio_files(tmp_path)
    lines = [f"{k}\t{o}" for k, o in offsets.items()]
    lines[2] = "2\tnot-an-offset"
    rewrite_index(idx_path, lines)
    flags = cli_flags(
        tmp_path,
        "--mode=train_encoder",
        "--config.data.source=recordio",
        f"--config.data.path={rec_path}",
        f"--config.data.data_dir={tmp_path / 'tfds'}",
        "--config.evaluate.verification_sets=()",
    )
    return flags, idx_path


@case("cli-bad-recordio-index-found-at-run-time", "error", slow=True)
def _(tmp_path):
    flags, idx_path = _bad_recordio_flags(tmp_path)
    return CliError(flags, [_named(idx_path), _line(3)])


@case("cli-bad-recordio-index-with-debug-shows-traceback", "error", slow=True)
def _(tmp_path):
    flags, idx_path = _bad_recordio_flags(tmp_path)
    return CliError(flags + ["--debug"], [_named(idx_path)], debug=True)


# --- the harness ------------------------------------------------------------------------------


def _check_error(outcome: Error) -> None:
    tracing = outcome.max_traced_bytes is not None
    if tracing:
        tracemalloc.start()
    try:
        outcome.call()
    except BadInputError as error:
        message = str(error)
        if outcome.kind is not None:
            assert getattr(error, "kind", None) == outcome.kind, message
    except Exception as error:  # noqa: BLE001 - the wrong type is the failure reported
        pytest.fail(
            f"raised {type(error).__module__}.{type(error).__qualname__}, not a BadInputError: "
            f"{error}"
        )
    else:
        pytest.fail("read without an error")
    finally:
        if tracing:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    for needle in outcome.needles:
        assert re.search(needle, message), f"{needle!r} not in the message: {message}"
    assert "\n" not in message.strip(), f"the message is not one line: {message}"
    if tracing:
        assert peak <= outcome.max_traced_bytes, (
            f"allocated {peak / _MIB:.0f} MiB before refusing (at most "
            f"{outcome.max_traced_bytes / _MIB:.0f} MiB allowed): {message}"
        )
    if outcome.marker is not None:
        assert not os.path.exists(outcome.marker), "the input's payload ran"
        if outcome.live is not None:
            try:
                outcome.live()
            except Exception:  # noqa: BLE001 - only the marker matters
                pass
            assert os.path.exists(outcome.marker), "the payload is a dud: the case tests nothing"


def _check_skip(outcome: Skip) -> None:
    import tensorflow_datasets as tfds

    try:
        builder = image_folders.prepare_image_folder(
            outcome.root, outcome.data_dir, resolution=RESOLUTION, num_threads=1
        )
    except Exception as error:  # noqa: BLE001
        pytest.fail(f"preparation raised {type(error).__name__} instead of skipping: {error}")
    report = image_folders.read_preparation_report(builder.data_dir)
    entries = report["skipped"]
    for pattern, kind in outcome.skipped.items():
        matching = [entry for entry in entries if re.fullmatch(pattern, entry["path"])]
        assert matching, f"no skip matches {pattern!r}: {entries}"
        if kind is not None:
            assert [entry["kind"] for entry in matching] == [kind] * len(matching), entries
    unexpected = [
        entry
        for entry in entries
        if not any(re.fullmatch(pattern, entry["path"]) for pattern in outcome.skipped)
    ]
    assert not unexpected, f"skipped beyond the case's input: {unexpected}"
    assert report["num_skipped"] == len(entries) == sum(report["skipped_by_kind"].values())
    records = tfds.builder_from_directory(builder.data_dir).as_data_source("train")
    kept = sorted(records[index]["path"].decode() for index in range(len(records)))
    assert kept == sorted(outcome.kept)

    with pytest.raises(BadInputError) as caught:
        image_folders.prepare_image_folder(
            outcome.root,
            outcome.data_dir + "-strict",
            resolution=RESOLUTION,
            num_threads=1,
            strict=True,
        )
    assert re.search(outcome.strict_needle, str(caught.value)), str(caught.value)


def _check_cli(outcome: CliError) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "diffusion_jax.main", *outcome.args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=main_job_environment(),
    )
    shown = f"exit status {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode != 0, shown
    if outcome.debug:
        assert "Traceback" in result.stderr, shown
        assert all(re.search(needle, result.stderr) for needle in outcome.needles), shown
        return
    assert "Traceback" not in result.stderr + result.stdout, shown
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    usage_lines = [line for line in result.stderr.splitlines() if "Flags parsing error" in line]
    lines = error_lines or usage_lines
    assert len(lines) == 1, f"expected one 'Error:' (or usage error) line; {shown}"
    for needle in outcome.needles:
        assert re.search(needle, lines[0]), f"{needle!r} not in {lines[0]!r}"
    if outcome.untouched is not None:
        assert not os.path.exists(outcome.untouched), "wrote to the workdir of a refused config"


def _param(one: Case):
    marks = [pytest.mark.slow] if one.slow else []
    return pytest.param(one, id=one.id, marks=marks)


@pytest.mark.parametrize("one", [_param(one) for one in CASES])
def test_malformed_input(one: Case, tmp_path):
    outcome = one.build(tmp_path)
    assert OUTCOME_CLASS[type(outcome)] == one.outcome, (one.outcome, outcome)
    if isinstance(outcome, Error):
        _check_error(outcome)
    elif isinstance(outcome, Skip):
        _check_skip(outcome)
    elif isinstance(outcome, CliError):
        _check_cli(outcome)
    else:
        outcome.check()


def test_the_corpus_is_as_large_as_its_docstring_says():
    stated = int(re.search(r"The corpus holds (\d+) cases", __doc__).group(1))
    assert stated == len(CASES) >= 40
    outcomes = collections.Counter(one.outcome for one in CASES)
    assert set(outcomes) == {"error", "skip", "read"}, outcomes
