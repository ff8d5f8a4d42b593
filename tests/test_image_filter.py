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
