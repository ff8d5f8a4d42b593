"""The README's headline table equals the committed demo report it cites, number for number.

README.md holds the headline result as a small Markdown table between the markers
`<!-- headline-table` and `<!-- /headline-table -->`. Each row is one verification set of the
committed report, docs/experiments/2026-12-06-demo-fewer-passes/report.json, formatted as the
report's own report.md formats it (`tasks/evaluation/claim_report.py`): accuracies in percent
with two decimals, "mean ± std"; the gap in points with two decimals; the ratio (acc_syn - 50) /
(acc_real - 50) with three; and the ratio's mean ± sample std over the recogniser seeds. A README
edited by hand, or a report replaced without the README, fails here.
"""

import json
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
README = REPO / "README.md"
REPORT = REPO / "docs" / "experiments" / "2026-12-06-demo-fewer-passes" / "report.json"
HEADLINE_SET = "test@300"

_BEGIN = "<!-- headline-table"
_END = "<!-- /headline-table -->"


def _accuracy(result: dict) -> str:
    return f"{100 * result['accuracy_mean']:.2f} ± {100 * result['accuracy_std']:.2f}"


def _expected_row(report: dict, name: str) -> list[str]:
    real = report["verification"]["real"][name]
    synthetic = report["verification"]["synthetic"][name]
    claim = report["claim"][name]
    ratio = claim["ratio_above_chance"]
    over_seeds = claim.get("over_seeds")
    return [
        name,
        _accuracy(real),
        _accuracy(synthetic),
        f"{100 * claim['gap']:.2f}",
        "n/a (real at chance)" if ratio is None else f"{ratio:.3f}",
        _over_seeds(over_seeds["ratio"]) if over_seeds else "one seed",
    ]


def _over_seeds(summary: dict) -> str:
    return f"{summary['mean']:.3f} ± {summary['std']:.3f} (n={summary['n']})"


def _headline_rows(text: str) -> list[list[str]]:
    """The body rows of the table between the markers, as lists of stripped cells."""
    assert _BEGIN in text and _END in text, f"README.md lacks the {_BEGIN} ... {_END} markers"
    block = text.split(_BEGIN, 1)[1].split(_END, 1)[0]
    lines = [line.strip() for line in block.splitlines() if line.strip().startswith("|")]
    assert len(lines) >= 3, "the headline table needs a header, a separator and a row"
    assert re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[1]), f"not a separator row: {lines[1]}"
    return [[cell.strip().strip("`*") for cell in line.strip("|").split("|")] for line in lines[2:]]


@pytest.fixture(scope="module")
def report() -> dict:
    with open(REPORT, encoding="utf-8") as file:
        return json.load(file)


@pytest.fixture(scope="module")
def rows() -> list[list[str]]:
    return _headline_rows(README.read_text(encoding="utf-8"))


def test_headline_table_has_the_headline_set(rows):
    assert HEADLINE_SET in [row[0] for row in rows]


def test_every_headline_number_equals_the_report(rows, report):
    for row in rows:
        name = row[0]
        assert name in report["claim"], f"README row {name!r} is not a verification set of {REPORT}"
        assert row == _expected_row(report, name), (
            f"README.md's headline row for {name} differs from {REPORT.relative_to(REPO)}"
        )


def test_the_report_ratio_is_the_ratio_of_its_accuracies(report):
    # The README's ratio column is the report's `ratio_above_chance`; check that it is what the
    # README says it is, (acc_syn - 50) / (acc_real - 50), from the report's own accuracies.
    for name, claim in report["claim"].items():
        real = report["verification"]["real"][name]["accuracy_mean"]
        synthetic = report["verification"]["synthetic"][name]["accuracy_mean"]
        assert claim["ratio_above_chance"] == pytest.approx((synthetic - 0.5) / (real - 0.5))
        assert claim["gap"] == pytest.approx(real - synthetic)


def test_parser_reads_a_table_and_rejects_a_wrong_number():
    report = {
        "claim": {
            "heldout@300": {
                "gap": 0.061,
                "ratio_above_chance": 0.8379,
                "over_seeds": {"ratio": {"mean": 0.84012, "std": 0.0071, "n": 3}},
            }
        },
        "verification": {
            "real": {"heldout@300": {"accuracy_mean": 0.8773, "accuracy_std": 0.0118}},
            "synthetic": {"heldout@300": {"accuracy_mean": 0.8163, "accuracy_std": 0.0083}},
        },
    }
    table = "\n".join(
        [
            _BEGIN + " -->",
            "| set | real | synthetic | gap | ratio | over seeds |",
            "|---|---|---|---|---|---|",
            "| **heldout@300** | 87.73 ± 1.18 | 81.63 ± 0.83 | 6.10 | **0.838** "
            "| 0.840 ± 0.007 (n=3) |",
            _END,
        ]
    )
    (row,) = _headline_rows(table)
    assert row == _expected_row(report, "heldout@300")
    (wrong,) = _headline_rows(table.replace("81.63", "81.64"))
    assert wrong != _expected_row(report, "heldout@300")
