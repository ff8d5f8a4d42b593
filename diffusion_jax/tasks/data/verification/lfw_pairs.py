"""LFW's own `pairs.txt` (and `pairsDevTrain.txt` / `pairsDevTest.txt`) over an LFW image folder.

Layout (Huang et al. 2007, LFW technical report): the first line is "<folds>\\t<N>" (View 2:
"10\\t300"), or a single "<N>" for one fold (View 1). Then, fold by fold, N matched-pair lines
"name\\tn1\\tn2" followed by N mismatched-pair lines "name1\\tn1\\tname2\\tn2". Image n of a
person is `<image_root>/<name>/<name>_<n as 4 digits>.jpg`. The pairs file and the image root
may be local or `gs://` URLs (`core.paths`). The file must be UTF-8 text (LFW's is ASCII); every
problem is a `BadInputError` naming the file and, where there is one, the line.
"""

from __future__ import annotations

from typing import NamedTuple

from diffusion_jax.core import paths
from diffusion_jax.core.bad_input import BadInputError


class LfwPair(NamedTuple):
    """Two image paths, whether they show one person, and the fold (0-based) of the pair."""

    path_a: str
    path_b: str
    is_same: bool
    fold: int


def lfw_image_path(image_root: str, name: str, number: int, extension: str = ".jpg") -> str:
    """`<image_root>/<name>/<name>_<number:04d><extension>`."""
    return str(paths.Path(image_root) / name / f"{name}_{number:04d}{extension}")


def _parse_counts(first_line: str, pairs_path: str) -> tuple[int, int]:
    """(folds, pairs of each kind per fold) from the first line."""
    try:
        counts = [int(field) for field in first_line.split()]
    except ValueError:
        counts = []
    if len(counts) == 1:
        counts = [1, counts[0]]
    if len(counts) != 2 or min(counts) < 1:
        raise BadInputError(
            pairs_path,
            f"expected '<folds>\\t<pairs per fold>' or '<pairs>', got {first_line.rstrip()!r}",
            "line 1",
        )
    return counts[0], counts[1]


def _image_number(field: str) -> int:
    number = int(field)
    if number < 1:
        raise ValueError(f"image numbers start at 1, got {number}")
    return number


def _text_lines(data: bytes, pairs_path: str) -> list[str]:
    """The lines of `data` decoded as UTF-8; a byte that is not UTF-8 is refused naming its line."""
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as error:
        before = data[: error.start].decode("utf-8")
        line_number = len((before + "x").splitlines())  # "x": the line the byte starts or is on
        raise BadInputError(
            pairs_path,
            f"byte 0x{data[error.start]:02x} at offset {error.start} is not UTF-8 text",
            f"line {line_number}",
        ) from None


def read_lfw_pairs(pairs_path: str, image_root: str, *, extension: str = ".jpg") -> list[LfwPair]:
    """The pairs of `pairs_path`, fold by fold, matched before mismatched within a fold.

    Raises BadInputError naming the file: the line number and content of a line that is not
    UTF-8 or malformed, a wrong number of lines, and the image files that do not exist under
    `image_root`.
    """
    try:
        data = paths.Path(pairs_path).read_bytes()
    except OSError as error:
        raise BadInputError(pairs_path, f"cannot read it: {error}") from None
    lines = _text_lines(data, pairs_path)
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise BadInputError(pairs_path, "the file is empty")
    num_folds, pairs_per_fold = _parse_counts(lines[0], pairs_path)
    expected_lines = 1 + 2 * num_folds * pairs_per_fold
    if len(lines) != expected_lines:
        raise BadInputError(
            pairs_path,
            f"{num_folds} folds of 2 x {pairs_per_fold} pairs need {expected_lines} lines, the "
            f"file has {len(lines)}",
        )
    pairs = []
    for line_number, line in enumerate(lines[1:], start=2):
        fold, position = divmod(line_number - 2, 2 * pairs_per_fold)
        is_same = position < pairs_per_fold
        fields = line.split()
        try:
            if is_same and len(fields) == 3:
                name_a, name_b = fields[0], fields[0]
                number_a, number_b = _image_number(fields[1]), _image_number(fields[2])
            elif not is_same and len(fields) == 4:
                name_a, name_b = fields[0], fields[2]
                number_a, number_b = _image_number(fields[1]), _image_number(fields[3])
            else:
                raise ValueError("wrong number of fields")
        except ValueError as error:
            layout = "name\\tn1\\tn2" if is_same else "name1\\tn1\\tname2\\tn2"
            kind = "matched" if is_same else "mismatched"
            raise BadInputError(
                pairs_path,
                f"expected a {kind} pair '{layout}' ({error}), got {line!r}",
                f"line {line_number}",
            ) from None
        pairs.append(
            LfwPair(
                lfw_image_path(image_root, name_a, number_a, extension),
                lfw_image_path(image_root, name_b, number_b, extension),
                is_same,
                fold,
            )
        )
    missing = sorted(
        {path for pair in pairs for path in pair[:2] if not paths.Path(path).is_file()}
    )
    if missing:
        raise BadInputError(
            pairs_path,
            f"{len(missing)} image files named by the pairs do not exist, first: {missing[:3]}",
        )
    return pairs
