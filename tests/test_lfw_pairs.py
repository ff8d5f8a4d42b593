"""LFW pairs.txt: folds and pair kinds read back as written; malformed lines and missing images
refused with the line or the file named."""

import os
import re

import pytest

from diffusion_jax.core.bad_input import BadInputError
from diffusion_jax.tasks.data.verification import lfw_pairs
from tests import format_fixtures

FOLDS = [  # (matched pairs, mismatched pairs) of each fold
    (
        [("Ann_Lee", 1, 2), ("Bo_Ray", 3, 12)],
        [("Ann_Lee", 1, "Cy_Doe", 1), ("Bo_Ray", 2, "Cy_Doe", 4)],
    ),
    (
        [("Cy_Doe", 2, 3), ("Dee_Fox", 1, 2)],
        [("Dee_Fox", 1, "Ann_Lee", 2), ("Cy_Doe", 1, "Bo_Ray", 3)],
    ),
]


def _expected(image_root: str, folds) -> list[tuple]:
    def path(name, number):
        return os.path.join(image_root, name, f"{name}_{number:04d}.jpg")

    expected = []
    for fold, (matched, mismatched) in enumerate(folds):
        expected += [(path(n, a), path(n, b), True, fold) for n, a, b in matched]
        expected += [(path(n, a), path(m, b), False, fold) for n, a, m, b in mismatched]
    return expected


@pytest.mark.parametrize(
    "header, folds", [("2\t2", FOLDS), ("2", FOLDS[:1])], ids=["view2", "view1"]
)
def test_pairs_read_back_as_written(tmp_path, header, folds):
    pairs_path, image_root = str(tmp_path / "pairs.txt"), str(tmp_path / "lfw")
    format_fixtures.write_lfw_tree(pairs_path, image_root, folds, header)
    pairs = lfw_pairs.read_lfw_pairs(pairs_path, image_root)
    assert pairs == _expected(image_root, folds)
    assert pairs[1].path_b.endswith(os.path.join("Bo_Ray", "Bo_Ray_0012.jpg"))


@pytest.mark.parametrize(
    "line_number, bad_line",
    [(3, "Bo_Ray\t3"), (4, "Ann_Lee\t1\tCy_Doe"), (2, "Ann_Lee\tone\t2"), (6, "Cy_Doe\t0\t3")],
    ids=["short-matched", "matched-where-mismatched", "not-a-number", "image-zero"],
)
def test_malformed_line_is_refused_naming_number_and_content(tmp_path, line_number, bad_line):
    pairs_path, image_root = str(tmp_path / "pairs.txt"), str(tmp_path / "lfw")
    format_fixtures.write_lfw_tree(pairs_path, image_root, FOLDS, "2\t2")
    with open(pairs_path) as pairs_file:
        lines = pairs_file.read().splitlines()
    lines[line_number - 1] = bad_line
    with open(pairs_path, "w") as pairs_file:
        pairs_file.write("\n".join(lines) + "\n")
    message = f"{pairs_path}, line {line_number}: .*got {re.escape(repr(bad_line))}"
    with pytest.raises(BadInputError, match=message):
        lfw_pairs.read_lfw_pairs(pairs_path, image_root)


@pytest.mark.parametrize(
    "header, problem",
    [
        ("10\t300", ": 10 folds of 2 x 300 pairs need 6001 lines, the file has 9"),
        (
            "two\t2",
            ", line 1: expected '<folds>\\\\t<pairs per fold>' or '<pairs>', got 'two\\\\t2'",
        ),
    ],
)
def test_bad_counts_are_refused(tmp_path, header, problem):
    pairs_path, image_root = str(tmp_path / "pairs.txt"), str(tmp_path / "lfw")
    format_fixtures.write_lfw_tree(pairs_path, image_root, FOLDS, header)
    with pytest.raises(BadInputError, match=f"{pairs_path}{problem}"):
        lfw_pairs.read_lfw_pairs(pairs_path, image_root)


def test_missing_images_are_named(tmp_path):
    pairs_path, image_root = str(tmp_path / "pairs.txt"), str(tmp_path / "lfw")
    format_fixtures.write_lfw_tree(pairs_path, image_root, FOLDS, "2\t2")
    missing = os.path.join(image_root, "Cy_Doe", "Cy_Doe_0004.jpg")
    os.remove(missing)
    message = f"{pairs_path}: 1 image files .* do not exist, first: \\['{missing}'\\]"
    with pytest.raises(ValueError, match=message):
        lfw_pairs.read_lfw_pairs(pairs_path, image_root)


def test_a_byte_that_is_not_utf8_is_refused_naming_file_and_line(tmp_path):
    pairs_path, image_root = str(tmp_path / "pairs.txt"), str(tmp_path / "lfw")
    format_fixtures.write_lfw_tree(pairs_path, image_root, FOLDS, "2\t2")
    with open(pairs_path, "rb") as pairs_file:
        lines = pairs_file.read().split(b"\n")
    lines[2] = lines[2].replace(b"Bo_Ray", b"Bo_R\xe9y")  # Latin-1 for U+00E9
    with open(pairs_path, "wb") as pairs_file:
        pairs_file.write(b"\n".join(lines))
    message = f"{pairs_path}, line 3: byte 0xe9 at offset {len(lines[0]) + len(lines[1]) + 6}"
    with pytest.raises(BadInputError, match=message + " is not UTF-8 text"):
        lfw_pairs.read_lfw_pairs(pairs_path, image_root)
