"""Frechet distance between two sets of features, each summarised by a Gaussian (FID's formula).

With means mu_a, mu_b and covariances S_a, S_b of the two sets (Heusel et al. 2017),

    FD = |mu_a - mu_b|^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^(1/2)).

FID takes the features from Inception-v3; this project uses the judge encoder's embeddings, which
measure how the generated faces are distributed in identity space against real faces (no
Inception weights can be downloaded here, and they know nothing of identity). The numbers are
therefore not comparable with published FIDs, only between models judged by the same encoder on
the same real set, with the same number of samples (the estimate is biased upwards for few
samples).

Tr((S_a S_b)^(1/2)) is computed without a general matrix square root: with R = S_a^(1/2) (the
symmetric root, from an eigendecomposition), S_a S_b is similar to the symmetric positive
semi-definite R S_b R, so the trace is the sum of the square roots of R S_b R's eigenvalues
(negative round-off clipped to 0). Everything runs in float64.
"""

import numpy as np


def gaussian_moments(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], covariance [D, D]) of features [N, D]; the covariance Bessel-corrected, as in
    FID's reference code."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be [N >= 2, D], got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance_of_moments(
    mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray
) -> float:
    """FD of the module docstring between N(mean_a, cov_a) and N(mean_b, cov_b)."""
    root_a = _symmetric_sqrt(cov_a)
    product_eigenvalues = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_sqrt = np.sum(np.sqrt(np.clip(product_eigenvalues, 0.0, None)))
    squared_mean_distance = float(np.sum(np.square(mean_a - mean_b)))
    return squared_mean_distance + float(np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FD between the Gaussians fitted to features_a [N_a, D] and features_b [N_b, D]."""
    features_a, features_b = np.asarray(features_a), np.asarray(features_b)
    if features_a.shape[1:] != features_b.shape[1:]:
        raise ValueError(
            f"features of different dimensions: {features_a.shape} and {features_b.shape}"
        )
    return frechet_distance_of_moments(*gaussian_moments(features_a), *gaussian_moments(features_b))
