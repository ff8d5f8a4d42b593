"""The Frechet distance against its closed forms and a general matrix square root."""

import numpy as np
import pytest
import scipy.linalg

from diffusion_jax.tasks.evaluation.frechet_distance import (
    frechet_distance,
    frechet_distance_of_moments,
    gaussian_moments,
)


def random_covariance(rng: np.random.Generator, dim: int) -> np.ndarray:
    factor = rng.normal(size=(dim, dim))
    return factor @ factor.T / dim + 0.1 * np.eye(dim)


def test_diagonal_covariances_give_the_closed_form():
    mean_a, mean_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var_a, var_b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    got = frechet_distance_of_moments(mean_a, np.diag(var_a), mean_b, np.diag(var_b))
    np.testing.assert_allclose(got, expected, rtol=1e-12)  # 5 + 1 + 1 + 4 = 11
    assert expected == 11.0


def test_non_commuting_covariances_match_scipys_matrix_square_root():
    rng = np.random.default_rng(0)
    mean_a, mean_b = rng.normal(size=16), rng.normal(size=16)
    cov_a, cov_b = random_covariance(rng, 16), random_covariance(rng, 16)
    trace_sqrt = np.trace(scipy.linalg.sqrtm(cov_a @ cov_b)).real
    expected = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b) - 2 * trace_sqrt
    np.testing.assert_allclose(
        frechet_distance_of_moments(mean_a, cov_a, mean_b, cov_b), expected, rtol=1e-9
    )


def test_identical_sets_are_at_distance_zero_and_the_distance_is_symmetric():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(500, 8)), rng.normal(loc=0.5, size=(300, 8))
    assert abs(frechet_distance(a, a)) < 1e-9
    np.testing.assert_allclose(frechet_distance(a, b), frechet_distance(b, a), rtol=1e-9)
    assert frechet_distance(a, b) > 1.0  # the mean shift alone contributes 8 * 0.5^2 = 2


def test_moments_are_the_bessel_corrected_ones():
    features = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]])
    mean, cov = gaussian_moments(features)
    np.testing.assert_allclose(mean, [2.0, 2.0])
    np.testing.assert_allclose(cov, [[4.0, 3.0], [3.0, 3.0]])


@pytest.mark.parametrize("shape", [(1, 4), (5,)])
def test_too_few_or_flat_features_are_refused(shape):
    with pytest.raises(ValueError, match="features must be"):
        gaussian_moments(np.zeros(shape))


def test_features_of_different_dimensions_are_refused():
    with pytest.raises(ValueError, match="different dimensions"):
        frechet_distance(np.zeros((3, 4)), np.zeros((3, 5)))
