"""InsightFace verification .bin files: read as Python 2 and Python 3 wrote them; any other object
in the pickle refused before it runs; counts that disagree refused."""

import os
import pickle
import struct

import numpy as np
import pytest

from diffusion_jax.core.bad_input import BadInputError
from diffusion_jax.tasks.data.verification import verification_bin
from tests import format_fixtures

IS_SAME = [True, False, True]


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    images = [format_fixtures.tiny_image(seed) for seed in range(2 * len(IS_SAME))]
    images[3] = format_fixtures.tiny_image(3, "JPEG")  # over 255 bytes: BINSTRING in Python 2
    return images


def _write(tmp_path, content: bytes) -> str:
    path = str(tmp_path / "lfw.bin")
    with open(path, "wb") as bin_file:
        bin_file.write(content)
    return path


def test_reads_what_python2_insightface_wrote(tmp_path, images):
    assert len(images[3]) > 255 > len(images[0])
    python2_pickle = format_fixtures.python2_pickle(images, IS_SAME)
    assert pickle.loads(python2_pickle, encoding="bytes") == (images, IS_SAME)
    pairs = verification_bin.read_verification_bin(_write(tmp_path, python2_pickle))
    assert pairs.images == images
    np.testing.assert_array_equal(pairs.is_same, IS_SAME)
    assert pairs.is_same.dtype == bool


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("as_arrays", [False, True], ids=["bytes", "uint8-arrays"])
def test_reads_python3_pickles_of_bytes_and_arrays(tmp_path, images, protocol, as_arrays):
    bins = [np.frombuffer(image, np.uint8) for image in images] if as_arrays else images
    issame = np.array(IS_SAME) if as_arrays else IS_SAME
    path = _write(tmp_path, pickle.dumps((bins, issame), protocol=protocol))
    pairs = verification_bin.read_verification_bin(path)
    assert pairs.images == images
    np.testing.assert_array_equal(pairs.is_same, IS_SAME)


class _RunsShellCommand:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_without_running(tmp_path, images):
    marker = tmp_path / "pwned"
    malicious = pickle.dumps(([_RunsShellCommand(str(marker))] + images[1:], IS_SAME), protocol=2)
    path = _write(tmp_path, malicious)
    with pytest.raises(ValueError, match=f"{path}: .*refused to load global '(posix|os).system'"):
        verification_bin.read_verification_bin(path)
    assert not marker.exists()
    pickle.loads(malicious)  # the unrestricted unpickler runs it: the test's payload is live
    assert marker.exists()


@pytest.mark.parametrize(
    "stream, refused",
    [
        (b"\x80\x02cbuiltins\neval\nX\x03\x00\x00\x001+1\x85R.", "builtins.eval"),
        (b"\x80\x02cnumpy\nload\nX\x01\x00\x00\x00x\x85R.", "numpy.load"),
        (b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x03\x00\x00\x00hex\x86R.", "'hex'"),
    ],
    ids=["builtins.eval", "numpy.load", "codecs-beyond-latin1"],
)
def test_globals_beyond_bytes_and_arrays_are_refused(tmp_path, stream, refused):
    path = _write(tmp_path, stream)
    with pytest.raises(ValueError, match=f"{path}: .*{refused}"):
        verification_bin.read_verification_bin(path)


def test_mismatched_flag_count_is_refused_naming_the_file(tmp_path, images):
    path = _write(tmp_path, format_fixtures.python2_pickle(images[:5], IS_SAME))
    with pytest.raises(ValueError, match=f"{path}: 5 images for 3 same/different flags"):
        verification_bin.read_verification_bin(path)


@pytest.mark.parametrize(
    "content, problem",
    [
        ((["not bytes"] * 2, [True]), "image 0 is a str"),
        (([b"a", b"b"], [1]), "the same/different flags must be a list of bools"),
        (([b"a", b"b"],), "expected a pickled pair"),
    ],
)
def test_malformed_content_is_refused_naming_the_file(tmp_path, content, problem):
    path = _write(tmp_path, pickle.dumps(content, protocol=2))
    with pytest.raises(ValueError, match=f"{path}: {problem}"):
        verification_bin.read_verification_bin(path)


def test_truncated_file_is_refused_naming_it(tmp_path, images):
    path = _write(tmp_path, format_fixtures.python2_pickle(images, IS_SAME)[:-40])
    with pytest.raises(ValueError, match=f"{path}: not a readable verification file"):
        verification_bin.read_verification_bin(path)


def _array_call(count: int) -> bytes:
    """A pickle of ([numpy.ndarray((count,), 'u1')] * 2, [True]): 48 bytes that would allocate
    `count` bytes twice if numpy.ndarray were called."""
    array = (
        b"cnumpy\nndarray\n\x8a\x08" + struct.pack("<q", count) + b"\x85X\x02\x00\x00\x00u1\x86R"
    )
    return b"\x80\x02(" + array + b"q\x00h\x00l(\x88l\x86."


def _array_state(count: int, protocol: int) -> bytes:
    """A pickle of two 4-byte uint8 arrays whose declared shape is changed to (count,)."""
    content = pickle.dumps(([np.zeros(4, np.uint8)] * 2, [True]), protocol=protocol)
    return content.replace(b"K\x04\x85", b"J" + struct.pack("<i", count) + b"\x85", 1)


@pytest.mark.parametrize(
    "stream, problem",
    [
        (_array_call(10**9), "refused to call numpy.ndarray"),
        (_array_call(9 * 2**40), "refused to call numpy.ndarray"),
        (b"\x80\x05\x96" + struct.pack("<Q", 9 * 2**40) + b"abc.", "expected 9895604649984 bytes"),
        (_array_state(10**9, 2), "shape \\(1000000000,\\) and dtype uint8 needs 1000000000 bytes"),
        (_array_state(10**9, 5), "shape \\(1000000000,\\) and dtype uint8 needs 1000000000 bytes"),
        (pickle.dumps(([np.array([b"x"], object)] * 2, [True]), protocol=2), "dtype\\('O'\\)"),
    ],
    ids=["ndarray-1e9", "ndarray-9TiB", "bytearray8-9TiB", "state-p2", "state-p5", "objects"],
)
def test_sizes_beyond_the_file_are_refused_before_allocating(tmp_path, stream, problem):
    path = _write(tmp_path, stream)
    with pytest.raises(
        BadInputError, match=f"{path}: not a readable verification file: .*{problem}"
    ):
        verification_bin.read_verification_bin(path)
