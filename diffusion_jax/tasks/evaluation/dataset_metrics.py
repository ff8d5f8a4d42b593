"""Measures of a labelled face dataset, generated or real, under a judge encoder J.

For images x with identity labels and unit judge embeddings e = J(x):

    identity separation   the identity report (`identity_report`): genuine and impostor cosine
                          similarity distributions, their EER and d'
    embedding diversity   mean over identities of the mean over pairs of its images of
                          1 - cos(e_a, e_b): 0 when an identity's images embed alike
    pixel diversity       mean over identities of the mean over pairs of its images of the RMS
                          pixel difference sqrt(mean((x_a - x_b)^2)), pixels in [0, 1]: 0 for
                          identical images
    nearest reference     for each identity, the largest cosine between its centre (renormalised
                          mean embedding) and the centre of any reference identity (for generated
                          data: the real training identities, the leakage measure); mean, max and
                          the fraction above each threshold
    Frechet distance      FID's formula on judge embeddings (`frechet_distance`), against a
                          reference set
    photometry            per image, with pixels in [0, 1] and luma y = 0.299 R + 0.587 G +
                          0.114 B: brightness mean(y), contrast std(y), saturation mean of
                          max(R, G, B) - min(R, G, B); their mean and standard deviation over
                          the images (how much lighting and colour vary across the dataset)

Pairs within an identity are all used up to `max_pairs_per_identity` (then the first ones of a
fixed shuffle), so the cost stays linear in the number of images.
"""

import numpy as np

from diffusion_jax.tasks.data.sources.image_decoding import LUMA_WEIGHTS


def _pairs(count: int, max_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    first, second = np.triu_indices(count, k=1)
    if len(first) > max_pairs:
        chosen = rng.permutation(len(first))[:max_pairs]
        first, second = first[chosen], second[chosen]
    return first, second


def _per_identity_mean(values_of_identity, labels: np.ndarray) -> float:
    """Mean over identities with 2 or more images of `values_of_identity(indices)`."""
    means = []
    for label in np.unique(labels):
        indices = np.flatnonzero(labels == label)
        if len(indices) >= 2:
            means.append(values_of_identity(indices))
    if not means:
        raise ValueError("no identity has 2 or more images")
    return float(np.mean(means))


def embedding_diversity(
    embeddings: np.ndarray, labels: np.ndarray, *, max_pairs_per_identity: int = 1000, seed: int = 0
) -> float:
    """The embedding diversity of the module docstring."""
    embeddings = np.asarray(embeddings, np.float64)
    rng = np.random.default_rng(seed)

    def diversity(indices):
        first, second = _pairs(len(indices), max_pairs_per_identity, rng)
        return np.mean(1.0 - np.sum(embeddings[indices[first]] * embeddings[indices[second]], -1))

    return _per_identity_mean(diversity, np.asarray(labels))


def pixel_diversity(
    images: np.ndarray, labels: np.ndarray, *, max_pairs_per_identity: int = 1000, seed: int = 0
) -> float:
    """The pixel diversity of the module docstring for uint8 images [N, H, W, C]."""
    if np.asarray(images).dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {np.asarray(images).dtype}")
    rng = np.random.default_rng(seed)

    def diversity(indices):
        first, second = _pairs(len(indices), max_pairs_per_identity, rng)
        a = images[indices[first]].astype(np.float64) / 255.0
        b = images[indices[second]].astype(np.float64) / 255.0
        return np.mean(np.sqrt(np.mean(np.square(a - b), axis=(1, 2, 3))))

    return _per_identity_mean(diversity, np.asarray(labels))


def identity_centres(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct labels [K], renormalised mean embedding of each [K, D])."""
    labels = np.asarray(labels)
    distinct = np.unique(labels)
    sums = np.stack(
        [np.asarray(embeddings, np.float64)[labels == label].sum(0) for label in distinct]
    )
    return distinct, sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)


def nearest_reference(
    centres: np.ndarray, reference_centres: np.ndarray, thresholds=(0.3, 0.5, 0.7)
) -> dict:
    """The nearest-reference measure of the module docstring, as JSON."""
    nearest = (np.asarray(centres, np.float64) @ np.asarray(reference_centres, np.float64).T).max(
        axis=1
    )
    return {
        "mean": float(nearest.mean()),
        "max": float(nearest.max()),
        "fraction_above": {str(t): float(np.mean(nearest > t)) for t in thresholds},
    }


PHOTOMETRY_CHUNK = 1024  # images converted to float64 at a time


def photometry(images: np.ndarray) -> dict:
    """The photometry of the module docstring for uint8 images [N, H, W, 3], as JSON:
    {"brightness" | "contrast" | "saturation": {"mean": ..., "std": ...}}."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    per_image = {"brightness": [], "contrast": [], "saturation": []}
    for start in range(0, len(images), PHOTOMETRY_CHUNK):  # float64 of 20,000 112x112 is 6 GB
        x = images[start : start + PHOTOMETRY_CHUNK].astype(np.float64) / 255.0
        luma = x @ LUMA_WEIGHTS.astype(np.float64)
        per_image["brightness"].append(luma.mean(axis=(1, 2)))
        per_image["contrast"].append(luma.std(axis=(1, 2)))
        per_image["saturation"].append((x.max(axis=-1) - x.min(axis=-1)).mean(axis=(1, 2)))
    return {
        name: {"mean": float(np.concatenate(v).mean()), "std": float(np.concatenate(v).std())}
        for name, v in per_image.items()
    }
