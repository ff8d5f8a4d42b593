"""The generation job's filter: leave-one-out judge similarity, near-duplicates, and order."""

import numpy as np
import pytest

from diffusion_jax.tasks.generation.image_filter import IdentityFilter


def unit(vector) -> np.ndarray:
    vector = np.asarray(vector, np.float64)
    return vector / np.linalg.norm(vector)


def test_similarity_is_to_the_other_first_round_images():
    first_round = np.stack([unit([1, 0, 0]), unit([0, 1, 0]), unit([1, 1, 0])])
    rule = IdentityFilter(first_round, min_similarity=0.0, max_duplicate_similarity=0.99)
    # Image 0 against the normalised sum of images 1 and 2: (0, 1, 0) + (1, 1, 0)/sqrt(2).
    reference = unit(first_round[1] + first_round[2])
    assert rule.similarity(first_round[0], 0, 0) == pytest.approx(first_round[0] @ reference)
    # A redraw (attempt 1) of image 0 is compared with all three first-round images.
    redraw = unit([0, 0, 1] + np.array([0.1, 0.1, 0]))
    assert rule.similarity(redraw, 0, 1) == pytest.approx(redraw @ unit(first_round.sum(0)))


def test_decisions_follow_the_rule_in_judging_order():
    a, b = unit([1, 0.05, 0]), unit([1, -0.05, 0])
    outlier = unit([0, 0, 1])
    first_round = np.stack([a, b, a, outlier])
    rule = IdentityFilter(first_round, min_similarity=0.5, max_duplicate_similarity=0.999)
    assert rule.decide(a, 0, 0)[0] == "kept"
    assert rule.decide(b, 1, 0)[0] == "kept"  # cos(a, b) = 0.995 < 0.999
    decision, similarity, nearest = rule.decide(a, 2, 0)
    assert decision == "duplicate" and nearest == pytest.approx(1.0)
    decision, similarity, _ = rule.decide(outlier, 3, 0)
    assert decision == "low_similarity" and similarity < 0.5
    # A rejected image does not join the comparison set; a kept redraw does.
    assert rule.decide(unit([1, 0, 0.3]), 3, 1)[0] == "kept"


def test_one_image_cannot_be_judged():
    with pytest.raises(ValueError, match="at least 2"):
        IdentityFilter(np.ones((1, 4)), min_similarity=0.3, max_duplicate_similarity=0.9)


def test_an_image_near_a_training_image_is_rejected_after_low_similarity_before_duplicate():
    a = unit([1, 0.05, 0])
    first_round = np.stack([a, unit([1, -0.05, 0]), a, unit([0, 0, 1])])
    rule = IdentityFilter(
        first_round,
        min_similarity=0.5,
        max_duplicate_similarity=0.999,
        max_training_image_similarity=0.9,
    )
    assert rule.decide(a, 0, 0, training_similarity=0.95)[0] == "near_training_image"
    assert rule.decide(a, 0, 1, training_similarity=0.9)[0] == "kept"  # at the threshold: kept
    # A duplicate of a kept image that is also near a training image: the leakage is named.
    assert rule.decide(a, 2, 0, training_similarity=0.95)[0] == "near_training_image"
    assert rule.decide(a, 2, 1, training_similarity=0.1)[0] == "duplicate"
    # Low similarity comes first.
    assert rule.decide(unit([0, 0, 1]), 3, 0, training_similarity=0.99)[0] == "low_similarity"
    with pytest.raises(ValueError, match="nearest training cosine"):
        rule.decide(a, 1, 0)


def test_the_training_image_check_off_changes_no_decision():
    rng = np.random.default_rng(0)
    first_round = np.stack([unit(v) for v in rng.normal(size=(6, 5)) + [3, 0, 0, 0, 0]])
    redraws = [unit(v) for v in rng.normal(size=(6, 5)) + [1, 0, 0, 0, 0]]
    order = [(e, k, 0) for k, e in enumerate(first_round)] + [
        (e, k, 1) for k, e in enumerate(redraws)
    ]
    training = rng.uniform(-1, 1.0000001, size=len(order))  # 1 + 1e-7: an exact copy in float32
    settings = {"min_similarity": 0.6, "max_duplicate_similarity": 0.9}
    without = IdentityFilter(first_round, **settings)
    off = IdentityFilter(first_round, **settings, max_training_image_similarity=1.0)
    assert not off.checks_training_images
    expected = [without.decide(e, k, a) for e, k, a in order]
    assert [off.decide(e, k, a, t) for (e, k, a), t in zip(order, training)] == expected
    assert {decision for decision, _, _ in expected} >= {"kept", "low_similarity"}
