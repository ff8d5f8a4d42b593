"""levers.json: one row per lever run, from the report.json and manifest.json beside this file.

    python docs/experiments/2026-12-06-validation-levers/summarize.py

Each folder NAME/ here holds a run's report/report.json and generated/manifest.json copied
verbatim; the rows take the validation numbers (where settings are chosen) and, for the record,
the test ones.
"""

import json
import pathlib

HERE = pathlib.Path(__file__).parent


def row(folder: pathlib.Path) -> dict:
    report = json.loads((folder / "report.json").read_text())
    manifest = json.loads((folder / "manifest.json").read_text())
    generated = report["dataset"]["generated"]
    leakage = (report["dataset"].get("nearest_training_image") or {}).get("generated") or {}
    claim = report["claim"]
    return {
        "run": folder.name,
        "validation_ratio": claim["validation@300"]["ratio_above_chance"],
        "validation_ratio_over_folds": claim["validation@300"]["ratio_over_folds"],
        "validation_accuracy": {
            kind: report["verification"][kind]["validation@300"]["accuracy_mean"]
            for kind in ("real", "synthetic")
        },
        "test_ratio": claim["test@300"]["ratio_above_chance"],
        "genuine_similarity": generated["separation"]["genuine_mean"],
        "impostor_similarity": generated["separation"]["impostor_mean"],
        "d_prime": generated["separation"]["d_prime"],
        "embedding_diversity": generated["embedding_diversity"],
        "judge_frechet_distance": report["dataset"]["judge_frechet_distance"],
        "nearest_real_identity": generated["nearest_real_identity"],
        "real_nearest_other_identity_mean": (
            report["dataset"]["real"]["nearest_other_identity_mean"]
        ),
        "nearest_training_image": leakage,
        "decisions": manifest["counts"]["decisions"],
        "plan": {
            key: manifest["plan"]["generate"].get(key)
            for key in ("style_source", "style_strength", "max_training_image_similarity")
        },
        "sample": manifest["plan"].get("sample"),
    }


def main() -> None:
    rows = [row(folder) for folder in sorted(HERE.iterdir()) if (folder / "manifest.json").exists()]
    (HERE / "levers.json").write_text(json.dumps(rows, indent=2) + "\n")
    for r in rows:
        print(
            f"{r['run']:>16}  val ratio {r['validation_ratio']:.3f}  genuine "
            f"{r['genuine_similarity']:.3f}  d' {r['d_prime']:.2f}  diversity "
            f"{r['embedding_diversity']:.3f}  FD {r['judge_frechet_distance']:.4f}  nearest real "
            f"{r['nearest_real_identity']['mean']:.3f}"
        )


if __name__ == "__main__":
    main()
