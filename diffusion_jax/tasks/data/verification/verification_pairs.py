"""LFW-style verification pairs: identity-disjoint folds of matched and mismatched image pairs.

The protocol of LFW "view 2" (Huang et al. 2007): the images are split into 10 folds with
mutually exclusive identities; each fold holds N matched pairs (two images of one identity) and
N mismatched pairs (images of two identities). A verifier picks its threshold on 9 folds and is
scored on the 10th, ten times. Here no image appears twice within a fold unless the fold has
fewer than 4N images.
"""

from __future__ import annotations

import dataclasses

import numpy as np

NUM_FOLDS = 10


@dataclasses.dataclass(frozen=True)
class VerificationPairs:
    """2 * pairs_per_fold * num_folds pairs, fold by fold, matched before mismatched in a fold.

    index_a, index_b: positions of the two images in the labelled set; is_same: whether they
    show one identity; fold: the fold of each pair.
    """

    index_a: np.ndarray
    index_b: np.ndarray
    is_same: np.ndarray
    fold: np.ndarray


class _FoldImages:
    """The images of one fold's identities, handed out unused ones first."""

    def __init__(self, labels: np.ndarray, identities: np.ndarray, rng: np.random.Generator):
        self._images = {int(i): np.flatnonzero(labels == i) for i in identities}
        self._unused = {i: set(images.tolist()) for i, images in self._images.items()}
        self._rng = rng

    def identities_by_unused(self, min_images: int) -> list[int]:
        """Identities with at least `min_images` images, most unused images first (random
        tie-break)."""
        eligible = [i for i, images in self._images.items() if len(images) >= min_images]
        tie_break = dict(zip(eligible, self._rng.random(len(eligible))))
        return sorted(eligible, key=lambda i: (-len(self._unused[i]), tie_break[i]))

    def take(self, identity: int, count: int) -> list[int]:
        """`count` distinct images of `identity`, unused ones first, each picked at random."""
        shuffled = self._rng.permutation(self._images[identity]).tolist()
        unused = self._unused[identity]
        chosen = ([i for i in shuffled if i in unused] + [i for i in shuffled if i not in unused])[
            :count
        ]
        unused.difference_update(chosen)
        return chosen


def make_verification_pairs(
    labels: np.ndarray, *, pairs_per_fold: int, seed: int, num_folds: int = NUM_FOLDS
) -> VerificationPairs:
    """Verification pairs over images with identity `labels` [N] (any integers).

    Identities are shuffled into `num_folds` folds of near-equal size. Within a fold, a matched
    pair takes two images of the identity with the most unused images, a mismatched pair one
    image of each of the two identities with the most unused images: images are used evenly,
    and none repeats within a fold that has 4 * pairs_per_fold images spread evenly over its
    identities. Deterministic given `seed`.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be a 1-D integer array, got dtype {labels.dtype} and shape {labels.shape}"
        )
    if pairs_per_fold < 1:
        raise ValueError(f"pairs_per_fold must be >= 1, got {pairs_per_fold}")
    if num_folds < 1:
        raise ValueError(f"num_folds must be >= 1, got {num_folds}")
    identities, counts = np.unique(labels, return_counts=True)
    if len(identities) < 2 * num_folds:
        raise ValueError(
            f"labels must hold at least 2 identities per fold ({2 * num_folds}) for mismatched "
            f"pairs, got {len(identities)}"
        )
    rng = np.random.default_rng(seed)
    folds = np.array_split(rng.permutation(identities), num_folds)
    index_a, index_b, is_same, fold = [], [], [], []
    for fold_index, fold_identities in enumerate(folds):
        if counts[np.isin(identities, fold_identities)].max() < 2:
            raise ValueError(
                f"fold {fold_index} has no identity with two images to form a matched pair"
            )
        images = _FoldImages(labels, fold_identities, rng)
        for _ in range(pairs_per_fold):
            first, second = images.take(images.identities_by_unused(min_images=2)[0], 2)
            index_a.append(first)
            index_b.append(second)
        for _ in range(pairs_per_fold):
            first, second = images.identities_by_unused(min_images=1)[:2]
            index_a += images.take(first, 1)
            index_b += images.take(second, 1)
        is_same += [True] * pairs_per_fold + [False] * pairs_per_fold
        fold += [fold_index] * (2 * pairs_per_fold)
    return VerificationPairs(
        index_a=np.asarray(index_a, np.int64),
        index_b=np.asarray(index_b, np.int64),
        is_same=np.asarray(is_same),
        fold=np.asarray(fold, np.int32),
    )
