"""How well a labelled set of unit embeddings [N, D] separates its identities.

For a face dataset (real, or generated from identity embeddings), embedded by a recogniser:

  genuine pairs    two different embeddings with the same label; impostor pairs: different labels.
                   When a kind has at most `max_pairs` pairs, all of them are scored. Otherwise
                   `max_pairs` pairs are drawn uniformly, with replacement, from all pairs of that
                   kind (from a NumPy generator seeded by `seed`, so a report is reproducible).
                   Similarities are computed in blocks of pairs, never as an N x N matrix.
  separation       of the two cosine-similarity distributions: the EER (as in `verification`, on
                   the scored pairs) and d' = |mu_g - mu_i| / sqrt((var_g + var_i) / 2), with
                   population variances.
  nearest identity each identity's centroid is the mean of its embeddings, renormalised; for
                   each identity, the cosine similarity of its centroid to the nearest other
                   centroid. For each threshold t, the fraction of identities whose nearest other
                   centroid lies strictly above t: if t is the recogniser's verification threshold,
                   these identities' average faces would be taken for another identity's, so the
                   fraction counts near-duplicate identities (for generated data: identities that
                   collapsed onto one another, or onto the same face).

The nearest-centroid search is blocked over rows too; its cost grows as identities^2 x D. On a
2-core CPU a report on 100,000 512-d embeddings of 2,000 identities takes about 2 s, and one on
50,000 identities about 1.5 minutes.
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from diffusion_jax.tasks.evaluation import verification

UNIT_NORM_TOLERANCE = 1e-3
PAIR_BLOCK = 8192  # pairs whose similarities are computed at once
CENTROID_BLOCK_ELEMENTS = 1 << 23  # float64 entries (64 MiB) of a block of centroid similarities


@dataclasses.dataclass(frozen=True)
class _Identities:
    """Embedding indices grouped by identity: the embeddings of identity c, the one labelled
    labels[c], are order[starts[c] : starts[c] + counts[c]]."""

    labels: np.ndarray  # [C] the distinct labels, sorted
    order: np.ndarray  # [N] embedding indices sorted by identity
    starts: np.ndarray  # [C]
    counts: np.ndarray  # [C]


def _group(labels: np.ndarray) -> _Identities:
    distinct, identity = np.unique(labels, return_inverse=True)
    counts = np.bincount(identity)
    return _Identities(
        labels=distinct,
        order=np.argsort(identity, kind="stable"),
        starts=np.cumsum(counts) - counts,
        counts=counts,
    )


def _all_genuine_pairs(groups: _Identities) -> tuple[np.ndarray, np.ndarray]:
    first, second = [], []
    for start, count in zip(groups.starts, groups.counts):
        members = groups.order[start : start + count]
        i, j = np.triu_indices(count, k=1)
        first.append(members[i])
        second.append(members[j])
    return np.concatenate(first), np.concatenate(second)


def _all_impostor_pairs(groups: _Identities) -> tuple[np.ndarray, np.ndarray]:
    """Each identity's members paired with every member of the identities after it."""
    first, second = [], []
    for start, count in zip(groups.starts, groups.counts):
        members, later = groups.order[start : start + count], groups.order[start + count :]
        first.append(np.repeat(members, len(later)))
        second.append(np.tile(later, count))
    return np.concatenate(first), np.concatenate(second)


def _sample_genuine_pairs(
    groups: _Identities, num: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`num` ordered pairs uniform over ordered genuine pairs (hence over unordered ones)."""
    counts = groups.counts
    weights = counts * (counts - 1.0)
    identity = rng.choice(len(counts), size=num, p=weights / weights.sum())
    a = rng.integers(0, counts[identity])
    b = rng.integers(0, counts[identity] - 1)
    b += b >= a  # a different member of the same identity
    start = groups.starts[identity]
    return groups.order[start + a], groups.order[start + b]


def _sample_impostor_pairs(
    groups: _Identities, num: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`num` ordered pairs uniform over ordered impostor pairs: the first embedding weighted by
    how many embeddings have another label, the second uniform among those."""
    counts, starts = groups.counts, groups.starts
    total = len(groups.order)
    weights = counts * (total - counts.astype(np.float64))
    identity = rng.choice(len(counts), size=num, p=weights / weights.sum())
    a = rng.integers(0, counts[identity])
    # A position among the total - count sorted embeddings outside the identity's own block.
    other = rng.integers(0, total - counts[identity])
    other += counts[identity] * (other >= starts[identity])
    return groups.order[starts[identity] + a], groups.order[other]


def _pair_similarities(embeddings: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    similarities = np.empty(len(first), np.float64)
    for begin in range(0, len(first), PAIR_BLOCK):
        end = begin + PAIR_BLOCK
        similarities[begin:end] = np.einsum(
            "pd,pd->p", embeddings[first[begin:end]], embeddings[second[begin:end]]
        )
    return similarities


def _centroids(embeddings: np.ndarray, groups: _Identities) -> np.ndarray:
    sums = np.stack(
        [
            embeddings[groups.order[start : start + count]].sum(axis=0, dtype=np.float64)
            for start, count in zip(groups.starts, groups.counts)
        ]
    )
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    cancelled = np.flatnonzero(norms[:, 0] == 0)
    if len(cancelled):
        raise ValueError(f"identity {cancelled[0]}'s embeddings sum to zero: it has no centroid")
    return sums / norms


def _nearest_other_similarity(centroids: np.ndarray) -> np.ndarray:
    """[C]: each centroid's cosine similarity to its nearest other centroid."""
    num = len(centroids)
    rows = max(1, CENTROID_BLOCK_ELEMENTS // num)
    nearest = np.empty(num, np.float64)
    for begin in range(0, num, rows):
        block = centroids[begin : begin + rows] @ centroids.T
        block[np.arange(len(block)), begin + np.arange(len(block))] = -np.inf
        nearest[begin : begin + rows] = block.max(axis=1)
    return nearest


def _check_embeddings(embeddings: np.ndarray, labels: np.ndarray) -> None:
    if embeddings.ndim != 2 or labels.shape != (len(embeddings),):
        raise ValueError(
            f"embeddings {embeddings.shape} must be [N, D] and labels {labels.shape} must be [N]"
        )
    if not np.issubdtype(embeddings.dtype, np.floating):
        raise ValueError(f"embeddings must be floating point, got dtype {embeddings.dtype}")
    norms = np.sqrt(np.einsum("nd,nd->n", embeddings, embeddings))  # no [N, D] temporary
    bad = np.flatnonzero(~(np.abs(norms - 1.0) <= UNIT_NORM_TOLERANCE))  # NaN norms are bad too
    if len(bad):
        raise ValueError(
            f"embeddings must be unit vectors (norm within {UNIT_NORM_TOLERANCE} of 1); "
            f"{len(bad)} are not, the first is row {bad[0]} with norm {norms[bad[0]]}"
        )


@dataclasses.dataclass(frozen=True)
class IdentityReport:
    num_embeddings: int
    num_identities: int
    num_genuine_pairs: int  # in the whole set; the scored ones are len(genuine_similarities)
    num_impostor_pairs: int
    genuine_mean: float
    genuine_std: float
    impostor_mean: float
    impostor_std: float
    eer: float
    eer_threshold: float
    d_prime: float  # +inf when both distributions are single points
    nearest_identity_mean: float
    nearest_identity_std: float
    nearest_identity_max: float
    nearest_identity_thresholds: tuple[float, ...]
    nearest_identity_fraction_above: tuple[float, ...]  # one per threshold
    genuine_similarities: np.ndarray  # [scored genuine pairs]
    impostor_similarities: np.ndarray  # [scored impostor pairs]
    nearest_identity_similarities: np.ndarray  # [identities], one per identity_labels
    identity_labels: np.ndarray  # [identities] the distinct labels, sorted

    def to_json(self) -> dict:
        """The summaries as JSON types (no raw arrays); an infinite d' is written as null."""
        return {
            "num_embeddings": self.num_embeddings,
            "num_identities": self.num_identities,
            "num_genuine_pairs": self.num_genuine_pairs,
            "num_impostor_pairs": self.num_impostor_pairs,
            "num_genuine_scored": len(self.genuine_similarities),
            "num_impostor_scored": len(self.impostor_similarities),
            "genuine_mean": self.genuine_mean,
            "genuine_std": self.genuine_std,
            "impostor_mean": self.impostor_mean,
            "impostor_std": self.impostor_std,
            "eer": self.eer,
            "eer_threshold": self.eer_threshold,
            "d_prime": self.d_prime if math.isfinite(self.d_prime) else None,
            "nearest_identity_mean": self.nearest_identity_mean,
            "nearest_identity_std": self.nearest_identity_std,
            "nearest_identity_max": self.nearest_identity_max,
            "nearest_identity_fraction_above": [
                {"threshold": threshold, "fraction": fraction}
                for threshold, fraction in zip(
                    self.nearest_identity_thresholds, self.nearest_identity_fraction_above
                )
            ],
        }


def d_prime(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """|mu_g - mu_i| / sqrt((var_g + var_i) / 2), population variances; +inf if both are 0."""
    spread = math.sqrt((np.var(genuine) + np.var(impostor)) / 2.0)
    gap = abs(float(np.mean(genuine) - np.mean(impostor)))
    return gap / spread if spread > 0 else math.inf


def identity_report(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    thresholds: Sequence[float] = (0.3, 0.5, 0.7),
    max_pairs: int = 200_000,
    seed: int = 0,
) -> IdentityReport:
    """The identity report of unit `embeddings` [N, D] labelled by `labels` [N]."""
    embeddings, labels = np.asarray(embeddings), np.asarray(labels)
    _check_embeddings(embeddings, labels)
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be positive, got {max_pairs}")
    groups = _group(labels)
    if len(groups.counts) < 2:
        raise ValueError(f"an identity report needs 2 or more identities, got {len(groups.counts)}")
    num_genuine = int(np.sum(groups.counts * (groups.counts - 1) // 2))
    if num_genuine == 0:
        raise ValueError(f"no identity has 2 or more embeddings among {len(labels)}")
    num_impostor = len(labels) * (len(labels) - 1) // 2 - num_genuine

    rng = np.random.default_rng(seed)
    if num_genuine <= max_pairs:
        genuine_pairs = _all_genuine_pairs(groups)
    else:
        genuine_pairs = _sample_genuine_pairs(groups, max_pairs, rng)
    if num_impostor <= max_pairs:
        impostor_pairs = _all_impostor_pairs(groups)
    else:
        impostor_pairs = _sample_impostor_pairs(groups, max_pairs, rng)
    genuine = _pair_similarities(embeddings, *genuine_pairs)
    impostor = _pair_similarities(embeddings, *impostor_pairs)

    roc = verification.roc_curve(
        np.concatenate([genuine, impostor]),
        np.concatenate([np.ones(len(genuine), bool), np.zeros(len(impostor), bool)]),
    )
    eer, eer_threshold = verification.equal_error_rate(roc)
    nearest = _nearest_other_similarity(_centroids(embeddings, groups))
    return IdentityReport(
        num_embeddings=len(labels),
        num_identities=len(groups.counts),
        num_genuine_pairs=num_genuine,
        num_impostor_pairs=num_impostor,
        genuine_mean=float(np.mean(genuine)),
        genuine_std=float(np.std(genuine)),
        impostor_mean=float(np.mean(impostor)),
        impostor_std=float(np.std(impostor)),
        eer=eer,
        eer_threshold=eer_threshold,
        d_prime=d_prime(genuine, impostor),
        nearest_identity_mean=float(np.mean(nearest)),
        nearest_identity_std=float(np.std(nearest)),
        nearest_identity_max=float(np.max(nearest)),
        nearest_identity_thresholds=tuple(float(t) for t in thresholds),
        nearest_identity_fraction_above=tuple(float(np.mean(nearest > t)) for t in thresholds),
        genuine_similarities=genuine,
        impostor_similarities=impostor,
        nearest_identity_similarities=nearest,
        identity_labels=groups.labels,
    )


def similarity_histogram_figure(reports: Mapping[str, IdentityReport]) -> plt.Figure:
    """Genuine and impostor similarity densities, one panel per named report."""
    figure, axes = plt.subplots(
        1, len(reports), figsize=(4.0 * len(reports), 3.2), squeeze=False, sharey=True
    )
    for axis, (name, report) in zip(axes[0], reports.items()):
        bins = np.linspace(-1.0, 1.0, 101)
        for kind, similarities in (
            ("genuine", report.genuine_similarities),
            ("impostor", report.impostor_similarities),
        ):
            axis.hist(
                np.clip(similarities, -1.0, 1.0),  # rounding can put identical faces at 1 + 1e-7
                bins=bins,
                density=True,
                alpha=0.55,
                label=f"{kind} ({len(similarities):,} pairs)",
            )
        axis.set_title(f"{name}\nEER {100 * report.eer:.2f}%, d' {report.d_prime:.2f}", fontsize=9)
        axis.set_xlabel("cosine similarity")
        axis.legend(fontsize=7)
    axes[0, 0].set_ylabel("density")
    figure.tight_layout()
    return figure
