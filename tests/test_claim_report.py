"""The claim's numbers and their spread (`claim_report.claim_of`), against direct computation."""

import types

import numpy as np
import pytest

from diffusion_jax.tasks.evaluation.claim_report import claim_of, ratio_above_chance


def result(fold_accuracies):
    folds = np.asarray(fold_accuracies, np.float64)
    return types.SimpleNamespace(fold_accuracies=folds, accuracy_mean=float(folds.mean()))


def test_ratio_above_chance_is_the_share_of_the_real_accuracy_above_one_half():
    assert ratio_above_chance(0.8, 0.9) == pytest.approx(0.75)
    assert ratio_above_chance(0.9, 0.9) == pytest.approx(1.0)
    assert ratio_above_chance(0.7, 0.5) is None


def test_the_claim_of_one_seed_has_its_fold_spread():
    real = [0.9, 0.8, 0.85, 0.95, 0.9, 0.88, 0.92, 0.86, 0.5, 0.9]  # one fold at chance
    synthetic = [0.8, 0.7, 0.8, 0.85, 0.8, 0.8, 0.9, 0.8, 0.6, 0.75]
    verification = {"real": {"test@3": result(real)}, "synthetic": {"test@3": result(synthetic)}}
    claim = claim_of(verification, {2: ("real", "synthetic")})["test@3"]
    assert claim["gap"] == pytest.approx(np.mean(real) - np.mean(synthetic))
    assert claim["ratio_above_chance"] == pytest.approx(
        (np.mean(synthetic) - 0.5) / (np.mean(real) - 0.5)
    )
    per_fold = [(s - 0.5) / (r - 0.5) for s, r in zip(synthetic, real) if r != 0.5]
    assert claim["ratio_over_folds"]["n"] == 9  # the fold with the real one at chance left out
    assert claim["ratio_over_folds"]["mean"] == pytest.approx(np.mean(per_fold))
    assert claim["ratio_over_folds"]["std"] == pytest.approx(np.std(per_fold, ddof=1))
    assert "over_seeds" not in claim


def test_the_claim_over_seeds_pairs_each_seeds_real_and_synthetic_recognisers():
    rng = np.random.default_rng(0)
    seeds = {2: ("real", "synthetic"), 3: ("real_seed3", "synthetic_seed3"), 4: ("r4", "s4")}
    verification = {
        name: {"validation@3": result(0.7 + 0.25 * rng.random(10))}
        for pair in seeds.values()
        for name in pair
    }
    claim = claim_of(verification, seeds)["validation@3"]
    accuracy = {name: verification[name]["validation@3"].accuracy_mean for name in verification}
    ratios = [(accuracy[s] - 0.5) / (accuracy[r] - 0.5) for r, s in seeds.values()]
    over_seeds = claim["over_seeds"]
    assert over_seeds["seeds"] == [2, 3, 4]
    assert over_seeds["ratio_per_seed"] == pytest.approx(ratios)
    assert over_seeds["ratio"]["mean"] == pytest.approx(np.mean(ratios))
    assert over_seeds["ratio"]["std"] == pytest.approx(np.std(ratios, ddof=1))
    assert over_seeds["real_accuracy"]["mean"] == pytest.approx(
        np.mean([accuracy[r] for r, _ in seeds.values()])
    )
    # The headline numbers stay those of the recognizers stage's seed, the first.
    assert claim["ratio_above_chance"] == pytest.approx(ratios[0])
