"""The verification metrics against hand-worked cases, brute force and analytic answers."""

import json
import math

import numpy as np
import pytest

from diffusion_jax.core import figures
from diffusion_jax.tasks.evaluation import verification


def test_ten_fold_accuracy_on_a_hand_worked_example():
    # One genuine (G) and one impostor (I) pair per fold, given as squared distances d = 2 - 2cos
    # off insightface's 0.01 grid, so no rounding decides a comparison:
    #   folds 0-5: G 0.405, I 1.405    fold 6: G 0.405, I 0.805
    #   folds 7-8: G 1.005, I 1.405    fold 9: G 1.605, I 0.805
    # Correct decisions (same iff d < t) of all 20 pairs, by the interval holding t:
    #   t <= 0.405: 0 G + 10 I = 10      A = (0.405, 0.805]: 7 G + 10 I = 17
    #   (0.805, 1.005]: 7 + 8 = 15       B = (1.005, 1.405]: 9 G + 8 I = 17
    #   (1.405, 1.605]: 9 + 0 = 9        t > 1.605: 10 + 0 = 10
    # Holding out a fold removes its pairs' contributions:
    #   folds 0-5 (right in A and B): A 15 = B 15, tie -> first grid point of A, t = 0.41;
    #             the held-out pair is right at 0.41 for both -> accuracy 1.
    #   fold 6 (I 0.805 right only in A): A 15 < B 16 -> t = 1.01; I 0.805 < 1.01 -> 0.5.
    #   folds 7-8 (G 1.005 right only in B): A 16 > B 15 -> t = 0.41; G 1.005 rejected -> 0.5.
    #   fold 9 (I 0.805 right only in A, G 1.605 wrong in both): A 16 < B 17 -> t = 1.01;
    #             G rejected and I accepted -> 0.
    # Mean 7.5 / 10 = 0.75; population variance (6 * 0.25^2 + 3 * 0.25^2 + 0.75^2) / 10 = 0.1125.
    genuine = [0.405] * 7 + [1.005] * 2 + [1.605]
    impostor = [1.405] * 6 + [0.805, 1.405, 1.405, 0.805]
    distances = np.array([d for pair in zip(genuine, impostor) for d in pair])
    similarities = 1.0 - distances / 2.0
    is_same = np.tile([True, False], 10)
    folds = np.repeat(np.arange(10), 2)

    accuracies, thresholds = verification.ten_fold_accuracy(similarities, is_same, folds)

    np.testing.assert_array_equal(accuracies, [1, 1, 1, 1, 1, 1, 0.5, 0.5, 0.5, 0])
    # Cosine thresholds 1 - t/2: 0.795 for t = 0.41, 0.495 for t = 1.01.
    np.testing.assert_allclose(thresholds, [0.795] * 6 + [0.495, 0.795, 0.795, 0.495], atol=1e-12)
    result = verification.evaluate_verification(similarities, is_same, folds)
    assert result.accuracy_mean == pytest.approx(0.75)
    assert result.accuracy_std == pytest.approx(math.sqrt(0.1125))


def insightface_style_ten_fold(embeddings_a, embeddings_b, is_same, folds):
    """A plain re-statement of insightface's calculate_roc loop (no PCA): distances from the
    embeddings themselves, every threshold tried one by one."""
    distances = np.sum(np.square(embeddings_a - embeddings_b), axis=1)
    thresholds = np.arange(0, 4, 0.01)
    accuracies = []
    for k in range(10):
        train, test = folds != k, folds == k
        train_accuracy = [np.mean((distances[train] < t) == is_same[train]) for t in thresholds]
        t = thresholds[np.argmax(train_accuracy)]
        accuracies.append(np.mean((distances[test] < t) == is_same[test]))
    return np.array(accuracies)


def test_ten_fold_accuracy_matches_a_brute_force_reimplementation():
    rng = np.random.default_rng(0)
    num_pairs = 300
    is_same = rng.random(num_pairs) < 0.5
    anchors = rng.normal(size=(num_pairs, 16))
    # Genuine partners are noisy copies, impostors independent: the accuracy is neither 0.5 nor 1.
    partners = np.where(is_same[:, None], anchors + 1.2 * rng.normal(size=anchors.shape), 0.0)
    partners += np.where(is_same[:, None], 0.0, rng.normal(size=anchors.shape))
    anchors /= np.linalg.norm(anchors, axis=1, keepdims=True)
    partners /= np.linalg.norm(partners, axis=1, keepdims=True)
    folds = np.repeat(np.arange(10), num_pairs // 10)

    accuracies, _ = verification.ten_fold_accuracy(
        np.sum(anchors * partners, axis=1), is_same, folds
    )

    expected = insightface_style_ten_fold(anchors, partners, is_same, folds)
    np.testing.assert_array_equal(accuracies, expected)
    assert 0.6 < accuracies.mean() < 0.95


def test_perfectly_separable_pairs_score_perfectly():
    rng = np.random.default_rng(1)
    is_same = np.tile([True, False], 5000)
    similarities = np.where(is_same, rng.uniform(0.6, 1.0, 10000), rng.uniform(-0.3, 0.4, 10000))
    folds = np.repeat(np.arange(10), 1000)

    result = verification.evaluate_verification(similarities, is_same, folds)

    np.testing.assert_array_equal(result.fold_accuracies, np.ones(10))
    assert (result.accuracy_mean, result.accuracy_std) == (1.0, 0.0)
    assert result.auc == 1.0 and result.eer == 0.0 and result.best_accuracy == 1.0
    # The EER and best thresholds accept from the lowest genuine similarity.
    assert result.eer_threshold == result.best_threshold == similarities[is_same].min()
    assert [p.tar for p in result.tar_at_far] == [1.0, 1.0, None]  # 5,000 impostors < 1e4
    # The most permissive point within the target: 50 and 5 of the 5,000 impostors accepted.
    assert [p.far for p in result.tar_at_far] == [0.01, 0.001, None]


def test_roc_and_auc_match_brute_force_counts_with_ties():
    rng = np.random.default_rng(2)
    is_same = rng.random(400) < 0.3
    # Rounded scores make ties within and across classes.
    similarities = np.round(rng.normal(np.where(is_same, 0.5, 0.0), 0.4), 1)

    roc = verification.roc_curve(similarities, is_same)

    distinct = np.unique(similarities)[::-1]
    np.testing.assert_array_equal(roc.thresholds, np.concatenate([[np.inf], distinct]))
    np.testing.assert_array_equal(
        roc.true_accepts, [np.sum(similarities[is_same] >= t) for t in roc.thresholds]
    )
    np.testing.assert_array_equal(
        roc.false_accepts, [np.sum(similarities[~is_same] >= t) for t in roc.thresholds]
    )
    # AUC = P(genuine > impostor) + P(genuine == impostor) / 2 (Mann-Whitney).
    genuine, impostor = similarities[is_same, None], similarities[None, ~is_same]
    mann_whitney = np.mean(genuine > impostor) + 0.5 * np.mean(genuine == impostor)
    assert roc.auc == pytest.approx(mann_whitney, abs=1e-12)


def test_equal_error_rate_of_two_gaussians_matches_the_analytic_value():
    # Equal-variance Gaussians with d' = (0.6 - 0.2) / 0.1 = 4: the threshold halfway between
    # the means gives FAR = FRR = Phi(-d'/2) = Phi(-2) = 0.02275.
    rng = np.random.default_rng(3)
    num = 20000
    similarities = np.concatenate([rng.normal(0.6, 0.1, num), rng.normal(0.2, 0.1, num)])
    is_same = np.arange(2 * num) < num

    eer, threshold = verification.equal_error_rate(verification.roc_curve(similarities, is_same))

    analytic = 0.5 * math.erfc(2.0 / math.sqrt(2.0))
    standard_error = math.sqrt(analytic * (1 - analytic) / num)  # ~0.001
    assert abs(eer - analytic) < 4 * standard_error
    assert threshold == pytest.approx(0.4, abs=0.01)


def test_equal_error_rate_interpolates_between_operating_points():
    # Scores 0.9 G, 0.8 I, 0.7 G, 0.6 I. Operating points (FAR, FRR):
    # inf (0, 1), 0.9 (0, 0.5), 0.8 (0.5, 0.5), ... The first with FAR >= FRR is 0.8, where both
    # are 0.5 exactly: the interpolation ends on it.
    roc = verification.roc_curve(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0], bool))
    assert verification.equal_error_rate(roc) == (0.5, 0.8)
    # Scores 0.9 G, 0.8 G, 0.7 I, 0.6 G, 0.5 I, 0.4 I (3 G, 3 I). Points (FAR, FRR):
    # 0.8 (0, 1/3), 0.7 (1/3, 1/3) -> crossing exactly at 1/3 with threshold 0.7.
    roc = verification.roc_curve(
        np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4]), np.array([1, 1, 0, 1, 0, 0], bool)
    )
    eer, threshold = verification.equal_error_rate(roc)
    assert (eer, threshold) == (pytest.approx(1 / 3), 0.7)
    # Scores 0.9 G, 0.5 G, 0.5 I, 0.1 I: points inf (0, 1), 0.9 (0, 1/2), 0.5 (1/2, 0). The
    # segment from (0, 1/2) to (1/2, 0) meets FAR = FRR halfway, at 1/4.
    roc = verification.roc_curve(np.array([0.9, 0.5, 0.5, 0.1]), np.array([1, 1, 0, 0], bool))
    assert verification.equal_error_rate(roc) == (0.25, 0.5)


def test_tar_at_far_takes_the_most_permissive_point_within_the_target():
    # 200 impostors at 0.000, 0.001, ..., 0.199; FAR <= 1e-2 allows 2 false accepts, i.e.
    # thresholds above 0.197. The lowest such data threshold is the genuine 0.1975, which accepts
    # impostors 0.198 and 0.199 (FAR = 0.01 exactly) and 6 of the 10 genuine pairs.
    impostor = np.arange(200) / 1000
    genuine = np.array([0.5] * 5 + [0.1975, 0.1965, 0.1955, 0.0, 0.0])
    similarities = np.concatenate([genuine, impostor])
    is_same = np.arange(210) < 10
    roc = verification.roc_curve(similarities, is_same)

    point = verification.tar_at_far(roc, 1e-2)

    assert (point.tar, point.far, point.threshold) == (0.6, 0.01, 0.1975)
    # 200 impostors cannot measure a FAR of 1e-3: at least 1,000 are needed.
    assert verification.tar_at_far(roc, 1e-3) == verification.TarAtFar(1e-3, None, None, None)
    assert [verification.min_impostors(t) for t in (1e-2, 1e-3, 1e-4, 1e-5)] == [
        100,
        1000,
        10000,
        100000,
    ]
    with pytest.raises(ValueError, match="FAR target must lie in \\(0, 1\\), got 0"):
        verification.tar_at_far(roc, 0)


def test_best_accuracy_is_the_best_single_threshold():
    # Scores 0.9 G, 0.8 I, 0.7 G, 0.6 G, 0.5 I: accepting >= 0.6 is wrong only on 0.8 (4/5);
    # accepting >= 0.9 is wrong on 0.7 and 0.6 (3/5).
    roc = verification.roc_curve(
        np.array([0.9, 0.8, 0.7, 0.6, 0.5]), np.array([1, 0, 1, 1, 0], bool)
    )
    assert verification.best_accuracy(roc) == (0.8, 0.6)


def test_to_json_holds_only_json_types():
    rng = np.random.default_rng(4)
    is_same = np.tile([True, False], 1000)
    similarities = rng.normal(np.where(is_same, 0.5, 0.1), 0.2)
    folds = np.repeat(np.arange(10), 200)
    result = verification.evaluate_verification(similarities, is_same, folds)

    encoded = result.to_json()

    assert json.loads(json.dumps(encoded, allow_nan=False)) == encoded
    assert encoded["num_pairs"] == 2000 and encoded["num_impostor"] == 1000
    assert encoded["accuracy_mean"] == pytest.approx(np.mean(encoded["fold_accuracies"]))
    assert [p["far_target"] for p in encoded["tar_at_far"]] == [1e-2, 1e-3, 1e-4]
    assert encoded["tar_at_far"][1]["tar"] is not None and encoded["tar_at_far"][2]["tar"] is None
    assert "roc" not in encoded


@pytest.mark.parametrize(
    "similarities, is_same, folds, message",
    [
        ([0.1, 0.2, 0.3], [True, False], [0, 1], r"similarities \(3,\) and is_same \(2,\)"),
        ([0.1, 0.2], [True, False], [0, 1, 1], r"folds \(3,\) must be \[N\] with N = 2"),
        ([0.1, np.nan], [True, False], [0, 1], "1 similarities are not finite.*pair 1: nan"),
        ([0.1, 0.2], [True, True], [0, 1], "got 2 genuine and 0 impostor pairs"),
        ([0.1, 0.2], [False, False], [0, 1], "got 0 genuine and 2 impostor pairs"),
        ([0.1, 0.2], [1, 0], [0, 1], "is_same must be boolean, got dtype int64"),
        ([0.1, 0.2, 0.3], [True, False, True], [0, 2, 2], r"fold 1 has no pairs \(folds are 0..2"),
        ([0.1, 0.2], [True, False], [0, 0], "at least 2 folds"),
        ([0.1, 0.2], [True, False], [-1, 0], "got fold -1"),
    ],
)
def test_refuses_inputs_it_cannot_score(similarities, is_same, folds, message):
    with pytest.raises(ValueError, match=message):
        verification.evaluate_verification(
            np.array(similarities), np.array(is_same), np.array(folds)
        )


def test_roc_figure_is_written(tmp_path):
    rng = np.random.default_rng(5)
    is_same = np.tile([True, False], 3000)
    folds = np.repeat(np.arange(10), 600)
    results = {
        name: verification.evaluate_verification(
            rng.normal(np.where(is_same, mean, 0.0), 0.15), is_same, folds
        )
        for name, mean in (("real-trained", 0.6), ("synthetic-trained", 0.4))
    }
    path = tmp_path / "roc.png"

    pixels = figures.save_figure(verification.roc_figure(results), str(path))

    assert path.stat().st_size > 0
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    # 5.5 x 4.5 inches at save_figure's canvas dpi (the figure's own, 100).
    assert pixels.shape[:2] == (450, 550)
    assert pixels.std() > 0  # something was drawn
