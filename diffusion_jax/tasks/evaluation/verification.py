"""Face verification: is each pair of faces the same person? Accuracy, ROC, TAR@FAR and EER.

Input: one cosine similarity per pair (of unit embeddings, flip-augmented or not upstream),
is_same bool [N], and fold int [N] in 0..K-1 (LFW's pairs.txt folds, or 10 contiguous blocks
for InsightFace's .bin files; see `evaluation.verification_sets`). What is computed:

  10-fold accuracy   insightface's protocol (recognition/arcface_torch/eval/verification.py),
                     so the numbers compare with published LFW / CFP-FP / AgeDB-30 tables. It
                     works on the squared distance of unit embeddings, d = |e1 - e2|^2 = 2 - 2 cos,
                     predicts "same" iff d < t, and tries t in np.arange(0, 4, 0.01). For each
                     fold it takes the t with the most correct decisions on the other folds (the
                     first, i.e. smallest, t on ties, as np.argmax does) and applies it to the
                     held-out fold. We report the fold accuracies, their mean and their
                     population standard deviation (np.std), as insightface prints them. In cosine
                     terms a pair is accepted iff cos > 1 - t/2 (strictly); fold thresholds are
                     given as that cosine, 1 - t/2. We compute d as 2 - 2 cos in float64, which
                     equals insightface's d up to rounding, so the two agree except for a pair
                     whose d lies within rounding of a grid point.
  ROC                over all pairs, in cosine similarity: a pair is accepted iff cos >= threshold;
                     one operating point per distinct similarity, plus (0, 0) at threshold +inf.
                     FAR (false-accept rate, FPR) = accepted impostors / impostors, TAR (TPR)
                     = accepted genuine pairs / genuine pairs. AUC by the trapezoid rule, which
                     equals P(genuine similarity > impostor similarity) with ties counted half.
  TAR@FAR            for each target: the TAR of the most permissive ROC operating point whose
                     FAR <= target (no interpolation), with that point's FAR and threshold. Given
                     only when there are at least 1/target impostor pairs; with fewer, FAR <= target
                     allows no false accept at all and the number is not an estimate of the TAR
                     at that FAR (LFW's 3,000 impostor pairs support 1e-3 but not 1e-4).
                     This is not insightface's "VAL@FAR" log line (per-fold, thresholds linearly
                     interpolated in FAR) nor its IJB table (the ROC point nearest the target,
                     possibly above it); with millions of impostors the three agree closely.
  EER                where FAR = FRR (= 1 - TAR): the crossing of the ROC, linearly interpolated
                     between its operating points, with the line TAR = 1 - FAR. Its threshold is
                     that of the first operating point (from the strictest) with FAR >= FRR.
  best accuracy      the highest accuracy of one threshold chosen on all pairs (optimistic: it
                     is tuned on the pairs it is scored on), and that threshold (the strictest
                     on ties).
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

# insightface's grid of thresholds on the squared distance d = 2 - 2 cos.
DISTANCE_THRESHOLDS = np.arange(0.0, 4.0, 0.01)
DEFAULT_FAR_TARGETS = (1e-2, 1e-3, 1e-4)


def _check_pairs(similarities: np.ndarray, is_same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 similarities and bool is_same, both [N]; refuses what the metrics cannot score."""
    similarities = np.asarray(similarities, dtype=np.float64)
    is_same = np.asarray(is_same)
    if similarities.ndim != 1 or is_same.ndim != 1 or len(similarities) != len(is_same):
        raise ValueError(
            f"similarities {similarities.shape} and is_same {is_same.shape} must both be [N]"
        )
    if is_same.dtype != bool:
        raise ValueError(f"is_same must be boolean, got dtype {is_same.dtype}")
    bad = np.flatnonzero(~np.isfinite(similarities))
    if len(bad):
        raise ValueError(
            f"{len(bad)} similarities are not finite, the first at pair {bad[0]}: "
            f"{similarities[bad[0]]}"
        )
    if not is_same.any() or is_same.all():
        raise ValueError(
            f"verification needs genuine and impostor pairs; got {int(is_same.sum())} genuine "
            f"and {int((~is_same).sum())} impostor pairs"
        )
    return similarities, is_same


def _check_folds(folds: np.ndarray, num_pairs: int) -> np.ndarray:
    folds = np.asarray(folds)
    if folds.shape != (num_pairs,):
        raise ValueError(f"folds {folds.shape} must be [N] with N = {num_pairs} pairs")
    if not np.issubdtype(folds.dtype, np.integer):
        raise ValueError(f"folds must be integers, got dtype {folds.dtype}")
    if folds.min() < 0:
        raise ValueError(f"folds must be in 0..K-1, got fold {folds.min()}")
    sizes = np.bincount(folds)
    if len(sizes) < 2:
        raise ValueError("cross-validation needs at least 2 folds, got only fold 0")
    empty = np.flatnonzero(sizes == 0)
    if len(empty):
        raise ValueError(f"fold {empty[0]} has no pairs (folds are 0..{len(sizes) - 1})")
    return folds


def _correct_decisions(distances: np.ndarray, is_same: np.ndarray) -> np.ndarray:
    """[len(DISTANCE_THRESHOLDS)] int: how many pairs each threshold decides right (same iff
    d < t): genuine pairs below t plus impostor pairs at or above it."""
    genuine = np.sort(distances[is_same])
    impostor = np.sort(distances[~is_same])
    accepted_genuine = np.searchsorted(genuine, DISTANCE_THRESHOLDS, side="left")
    accepted_impostor = np.searchsorted(impostor, DISTANCE_THRESHOLDS, side="left")
    return accepted_genuine + (len(impostor) - accepted_impostor)


def ten_fold_accuracy(
    similarities: np.ndarray, is_same: np.ndarray, folds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """insightface's K-fold verification accuracy (K = 10 for the standard sets).

    Returns the accuracy on each held-out fold [K] and the threshold each fold used [K], as a
    cosine similarity (a pair is accepted iff its similarity is strictly above it).
    """
    similarities, is_same = _check_pairs(similarities, is_same)
    folds = _check_folds(folds, len(similarities))
    distances = 2.0 - 2.0 * similarities
    num_folds = folds.max() + 1
    # Correct-decision counts add over disjoint sets of pairs, so the count on the other folds
    # is the total minus the held-out fold's.
    per_fold = np.stack(
        [_correct_decisions(distances[folds == k], is_same[folds == k]) for k in range(num_folds)]
    )
    others = per_fold.sum(axis=0) - per_fold
    # Every training split has the same number of pairs at every threshold, so the most correct
    # decisions is the highest accuracy; np.argmax takes the first maximum, as insightface does.
    best = np.argmax(others, axis=1)
    fold_sizes = np.bincount(folds)
    accuracies = per_fold[np.arange(num_folds), best] / fold_sizes
    return accuracies, 1.0 - DISTANCE_THRESHOLDS[best] / 2.0


@dataclasses.dataclass(frozen=True)
class RocCurve:
    """Operating points over all pairs, from the strictest (accept nothing) to accepting all.

    A pair is accepted at point m iff its similarity >= thresholds[m]; thresholds[0] = +inf.
    """

    thresholds: np.ndarray  # float64 [M + 1], decreasing
    true_accepts: np.ndarray  # int [M + 1], accepted genuine pairs, nondecreasing
    false_accepts: np.ndarray  # int [M + 1], accepted impostor pairs, nondecreasing
    num_genuine: int
    num_impostor: int

    @property
    def tar(self) -> np.ndarray:
        """True-accept rate (TPR) at each operating point."""
        return self.true_accepts / self.num_genuine

    @property
    def far(self) -> np.ndarray:
        """False-accept rate (FPR) at each operating point."""
        return self.false_accepts / self.num_impostor

    @property
    def auc(self) -> float:
        """Area under TAR(FAR), trapezoid rule."""
        far, tar = self.far, self.tar
        return float(np.sum(np.diff(far) * (tar[1:] + tar[:-1]) / 2.0))


def roc_curve(similarities: np.ndarray, is_same: np.ndarray) -> RocCurve:
    """The ROC of all pairs: one operating point per distinct similarity, plus accept-nothing."""
    similarities, is_same = _check_pairs(similarities, is_same)
    order = np.argsort(similarities)[::-1]
    descending = similarities[order]
    genuine_so_far = np.cumsum(is_same[order])
    # The last index of each run of equal similarities: a threshold accepts whole runs.
    run_ends = np.flatnonzero(np.append(descending[1:] != descending[:-1], True))
    true_accepts = genuine_so_far[run_ends]
    false_accepts = run_ends + 1 - true_accepts
    return RocCurve(
        thresholds=np.concatenate([[np.inf], descending[run_ends]]),
        true_accepts=np.concatenate([[0], true_accepts]),
        false_accepts=np.concatenate([[0], false_accepts]),
        num_genuine=int(true_accepts[-1]),
        num_impostor=int(false_accepts[-1]),
    )


@dataclasses.dataclass(frozen=True)
class TarAtFar:
    """The TAR at a FAR target; tar, far and threshold are None when there are fewer than
    `min_impostors(far_target)` impostor pairs."""

    far_target: float
    tar: float | None
    far: float | None  # the FAR actually reached, <= far_target
    threshold: float | None  # cosine; accept iff similarity >= threshold


def min_impostors(far_target: float) -> int:
    """The fewest impostor pairs for which a TAR at `far_target` is reported: 1 / far_target."""
    if not 0.0 < far_target < 1.0:
        raise ValueError(f"a FAR target must lie in (0, 1), got {far_target}")
    return math.ceil(round(1.0 / far_target, 9))


def tar_at_far(roc: RocCurve, far_target: float) -> TarAtFar:
    """The TAR of the most permissive operating point with FAR <= far_target (no interpolation)."""
    if roc.num_impostor < min_impostors(far_target):
        return TarAtFar(far_target, None, None, None)
    # FAR is nondecreasing along the curve: the last point at or below the target accepts most.
    point = np.searchsorted(roc.far, far_target, side="right") - 1
    return TarAtFar(
        far_target=far_target,
        tar=float(roc.tar[point]),
        far=float(roc.far[point]),
        threshold=float(roc.thresholds[point]),
    )


def equal_error_rate(roc: RocCurve) -> tuple[float, float]:
    """(EER, threshold): where the linearly interpolated ROC meets FAR = FRR (see the module
    docstring); the threshold is that of the first operating point with FAR >= FRR."""
    far, frr = roc.far, 1.0 - roc.tar
    # FAR >= FRR compared exactly, in counts: fa / impostors >= (genuine - ta) / genuine. The first
    # point has FAR 0 < FRR 1 and the last FAR 1 >= FRR 0, so the crossing lies between them.
    false_rejects = roc.num_genuine - roc.true_accepts
    end = int(np.argmax(roc.false_accepts * roc.num_genuine >= false_rejects * roc.num_impostor))
    gap_before = frr[end - 1] - far[end - 1]  # > 0
    gap_after = frr[end] - far[end]  # <= 0
    fraction = gap_before / (gap_before - gap_after)
    eer = far[end - 1] + fraction * (far[end] - far[end - 1])
    return float(eer), float(roc.thresholds[end])


def best_accuracy(roc: RocCurve) -> tuple[float, float]:
    """(accuracy, threshold) of the single threshold that is right on the most pairs."""
    correct = roc.true_accepts + (roc.num_impostor - roc.false_accepts)
    point = int(np.argmax(correct))
    accuracy = correct[point] / (roc.num_genuine + roc.num_impostor)
    return float(accuracy), float(roc.thresholds[point])


def _json_float(value: float | None) -> float | None:
    """JSON has no infinities: an infinite threshold (accept nothing) is written as null."""
    return None if value is None or not math.isfinite(value) else float(value)


@dataclasses.dataclass(frozen=True)
class VerificationResult:
    num_pairs: int
    num_genuine: int
    num_impostor: int
    fold_accuracies: np.ndarray  # [K], insightface's protocol
    fold_thresholds: np.ndarray  # [K] cosine; accept iff similarity > threshold
    accuracy_mean: float
    accuracy_std: float  # population std over folds (np.std), as insightface reports it
    roc: RocCurve
    auc: float
    eer: float
    eer_threshold: float
    best_accuracy: float  # one threshold tuned and scored on all pairs
    best_threshold: float  # accept iff similarity >= threshold
    tar_at_far: tuple[TarAtFar, ...]

    def to_json(self) -> dict:
        """Everything but the ROC curve (for plots), as JSON types only; +inf becomes None."""
        return {
            "num_pairs": self.num_pairs,
            "num_genuine": self.num_genuine,
            "num_impostor": self.num_impostor,
            "fold_accuracies": [float(a) for a in self.fold_accuracies],
            "fold_thresholds": [float(t) for t in self.fold_thresholds],
            "accuracy_mean": self.accuracy_mean,
            "accuracy_std": self.accuracy_std,
            "auc": self.auc,
            "eer": self.eer,
            "eer_threshold": self.eer_threshold,
            "best_accuracy": self.best_accuracy,
            "best_threshold": _json_float(self.best_threshold),
            "tar_at_far": [
                {
                    "far_target": point.far_target,
                    "tar": point.tar,
                    "far": point.far,
                    "threshold": _json_float(point.threshold),
                }
                for point in self.tar_at_far
            ],
        }


def evaluate_verification(
    similarities: np.ndarray,
    is_same: np.ndarray,
    folds: np.ndarray,
    far_targets: Sequence[float] = DEFAULT_FAR_TARGETS,
) -> VerificationResult:
    """All of the module's metrics for one set of scored pairs."""
    fold_accuracies, fold_thresholds = ten_fold_accuracy(similarities, is_same, folds)
    roc = roc_curve(similarities, is_same)
    eer, eer_threshold = equal_error_rate(roc)
    accuracy, threshold = best_accuracy(roc)
    return VerificationResult(
        num_pairs=roc.num_genuine + roc.num_impostor,
        num_genuine=roc.num_genuine,
        num_impostor=roc.num_impostor,
        fold_accuracies=fold_accuracies,
        fold_thresholds=fold_thresholds,
        accuracy_mean=float(np.mean(fold_accuracies)),
        accuracy_std=float(np.std(fold_accuracies)),
        roc=roc,
        auc=roc.auc,
        eer=eer,
        eer_threshold=eer_threshold,
        best_accuracy=accuracy,
        best_threshold=threshold,
        tar_at_far=tuple(tar_at_far(roc, target) for target in far_targets),
    )


def roc_figure(results: Mapping[str, VerificationResult]) -> plt.Figure:
    """ROC curves (TAR against FAR on a log axis), one per named result."""
    figure, axis = plt.subplots(figsize=(5.5, 4.5))
    for name, result in results.items():
        label = (
            f"{name}: acc {100 * result.accuracy_mean:.2f}% ± {100 * result.accuracy_std:.2f}, "
            f"AUC {result.auc:.4f}"
        )
        axis.plot(result.roc.far, result.roc.tar, linewidth=1.2, label=label)
    # The smallest nonzero FAR any curve can reach sets the left edge.
    most_impostors = max(result.num_impostor for result in results.values())
    left = 10.0 ** math.floor(math.log10(1.0 / most_impostors))
    chance = np.geomspace(left, 1.0, 50)
    axis.plot(chance, chance, color="0.6", linestyle=":", linewidth=1, label="chance")
    axis.set_xscale("log")
    axis.set_xlim(left, 1.0)
    axis.set_ylim(0.0, 1.01)
    axis.set_xlabel("False accept rate (FAR)")
    axis.set_ylabel("True accept rate (TAR)")
    axis.set_title("Verification ROC")
    axis.grid(True, which="major", linestyle="--", linewidth=0.5)
    axis.legend(loc="lower right", fontsize=7)
    figure.tight_layout()
    return figure
