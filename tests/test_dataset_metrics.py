"""Dataset measures against hand-checkable cases."""

import numpy as np
import pytest

from diffusion_jax.tasks.evaluation import dataset_metrics
from diffusion_jax.tasks.evaluation.frechet_distance import frechet_distance


def test_identical_images_have_zero_diversity_and_opposite_ones_the_maximum():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    same = np.stack([image] * 4)
    labels = np.array([0, 0, 1, 1])
    assert dataset_metrics.pixel_diversity(same, labels) == 0.0
    black_white = np.stack([np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)] * 2)
    assert dataset_metrics.pixel_diversity(black_white, labels) == pytest.approx(1.0)
    # RMS of a difference of 51 / 255 = 0.2 everywhere, in one identity; the other identical.
    shifted = np.stack([image // 2, image // 2 + 51, image, image])
    assert dataset_metrics.pixel_diversity(shifted, labels) == pytest.approx(0.1)


def test_embedding_diversity_is_one_minus_the_mean_pairwise_cosine():
    unit = np.eye(3)
    same = np.stack([unit[0]] * 3 + [unit[1]] * 2)
    labels = np.array([0, 0, 0, 1, 1])
    assert dataset_metrics.embedding_diversity(same, labels) == pytest.approx(0.0)
    # Identity 0: three orthogonal vectors (diversity 1); identity 1: cos 0.6 (diversity 0.4).
    second = np.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0]])
    embeddings = np.concatenate([unit, second])
    assert dataset_metrics.embedding_diversity(embeddings, labels) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="no identity has 2"):
        dataset_metrics.embedding_diversity(unit, np.array([0, 1, 2]))


def test_pairs_are_capped_without_changing_an_exact_answer():
    embeddings = np.tile(np.eye(4)[:1], (60, 1))
    labels = np.zeros(60, int)
    assert dataset_metrics.embedding_diversity(embeddings, labels, max_pairs_per_identity=10) == 0.0


def test_identity_centres_and_nearest_reference():
    embeddings = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 0, 1.0]])
    labels, centres = dataset_metrics.identity_centres(embeddings, np.array([5, 5, 7, 7]))
    np.testing.assert_array_equal(labels, [5, 7])
    np.testing.assert_allclose(centres, [[2**-0.5, 2**-0.5, 0], [0, 0, 1]])
    references = np.array([[1.0, 0, 0], [0, 0.6, 0.8]])
    nearest = dataset_metrics.nearest_reference(centres, references, thresholds=(0.5, 0.75))
    assert nearest["max"] == pytest.approx(0.8)  # identity 7 against the second reference
    assert nearest["mean"] == pytest.approx((2**-0.5 + 0.8) / 2)
    assert nearest["fraction_above"] == {"0.5": 1.0, "0.75": 0.5}


def test_two_separated_gaussians_have_the_frechet_distance_of_their_means():
    # Equal covariances: FD = |mu_a - mu_b|^2 exactly in the limit; 4,000 samples each.
    rng = np.random.default_rng(1)
    a = rng.normal(size=(4000, 3))
    b = rng.normal(size=(4000, 3)) + np.array([3.0, 4.0, 0.0])
    assert frechet_distance(a, b) == pytest.approx(25.0, abs=0.2)


def test_photometry_of_hand_checkable_images():
    grey = np.full((4, 4, 3), 102, np.uint8)  # 0.4 everywhere
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    half = np.zeros((4, 4, 3), np.uint8)
    half[:2] = 255  # luma 1 on half of the pixels, 0 on the rest
    measures = dataset_metrics.photometry(np.stack([grey, red, half]))
    brightness, contrast, saturation = ([0.4, 0.299, 0.5], [0.0, 0.0, 0.5], [0.0, 1.0, 0.0])
    for name, values in (
        ("brightness", brightness),
        ("contrast", contrast),
        ("saturation", saturation),
    ):
        assert measures[name]["mean"] == pytest.approx(np.mean(values))
        assert measures[name]["std"] == pytest.approx(np.std(values))
    # Chunked: the same numbers when the images span several chunks.
    many = np.concatenate([np.stack([grey, red, half])] * 700)  # 2,100 images, 3 chunks
    chunked = dataset_metrics.photometry(many)
    for name in measures:
        assert chunked[name] == pytest.approx(measures[name])
    with pytest.raises(ValueError, match="uint8"):
        dataset_metrics.photometry(np.zeros((1, 2, 2, 3), np.float32))
