"""Which generated images of an identity are kept: judge consistency, leakage of a training
image, and near-duplicates.

Each identity's images are embedded by a judge encoder J (not the conditioning one). Its
reference for image x is the renormalised sum of the judge embeddings of the identity's
first-round images other than x (leave-one-out, so an image does not vouch for itself; a
redrawn image was not in the first round, so its reference is all of them):

    r(x) = sum_{k : x_k^(0) != x} J(x_k^(0)) / || . ||,     s(x) = cos(J(x), r(x)).

With t(x) = max_j cos(J(x), J(y_j)) the cosine to the nearest real training image y_j (the
images the diffusion model learned from; `training_images`), images are judged in order (first
round by image index, then each redraw round by image index), and x is

    "low_similarity"       if s(x) < min_similarity,
    "near_training_image"  else if t(x) > max_training_image_similarity (the image-level leakage
                           check; off when max_training_image_similarity >= 1, CHECK_OFF),
    "near_style_source"    else if the image started from a real style image (`style_sources`)
                           and its judge cosine to that image's identity exceeds
                           max_style_similarity (None: no style, no check),
    "duplicate"            else if cos(J(x), J(y)) > max_duplicate_similarity for an image y of
                           the identity kept before it,
    "kept"                 otherwise.

With the leakage check off the decisions are those of the filter without it, whatever t(x). The
decisions are a deterministic function of the embeddings.
"""

import numpy as np

DECISIONS = ("kept", "low_similarity", "near_training_image", "near_style_source", "duplicate")
CHECK_OFF = 1.0  # max_training_image_similarity at or above it: no image is rejected as leaked


class IdentityFilter:
    """The decisions for one identity, given its first-round judge embeddings [K, D] (K >= 2)."""

    def __init__(
        self,
        first_round: np.ndarray,
        *,
        min_similarity: float,
        max_duplicate_similarity: float,
        max_training_image_similarity: float = CHECK_OFF,
        max_style_similarity: float | None = None,
    ):
        first_round = np.asarray(first_round, np.float64)
        if first_round.ndim != 2 or len(first_round) < 2:
            raise ValueError(
                f"the filter needs at least 2 first-round embeddings, got shape {first_round.shape}"
            )
        self._first_round = first_round
        self._total = first_round.sum(axis=0)
        self._kept: list[np.ndarray] = []
        self.min_similarity = min_similarity
        self.max_duplicate_similarity = max_duplicate_similarity
        self.max_training_image_similarity = max_training_image_similarity
        self.max_style_similarity = max_style_similarity

    def similarity(self, embedding: np.ndarray, image_index: int, attempt: int) -> float:
        """s(x) for the image of `image_index` drawn at `attempt` (0: the first round)."""
        reference = self._total - (self._first_round[image_index] if attempt == 0 else 0.0)
        norm = np.linalg.norm(reference)
        embedding = np.asarray(embedding, np.float64)
        embedding_norm = max(np.linalg.norm(embedding), 1e-12)
        return float(embedding @ reference / max(norm, 1e-12) / embedding_norm)

    @property
    def checks_training_images(self) -> bool:
        return self.max_training_image_similarity < CHECK_OFF

    def decide(
        self,
        embedding: np.ndarray,
        image_index: int,
        attempt: int,
        training_similarity: float | None = None,
        style_similarity: float | None = None,
    ) -> tuple[str, float, float]:
        """(decision, s(x), largest cosine to an image kept before it, -1 when none) for the
        next image in judging order, given t(x) (`training_similarity`, needed when the leakage
        check is on) and its style similarity (`style_similarity`, needed when
        max_style_similarity is set); a kept image joins the comparison set."""
        embedding = np.asarray(embedding, np.float64)
        similarity = self.similarity(embedding, image_index, attempt)
        unit = embedding / max(np.linalg.norm(embedding), 1e-12)
        nearest = max((float(unit @ kept) for kept in self._kept), default=-1.0)
        if similarity < self.min_similarity:
            return "low_similarity", similarity, nearest
        if self.checks_training_images:
            if training_similarity is None:
                raise ValueError("the leakage check needs the image's nearest training cosine")
            if training_similarity > self.max_training_image_similarity:
                return "near_training_image", similarity, nearest
        if self.max_style_similarity is not None:
            if style_similarity is None:
                raise ValueError("the style check needs the image's style similarity")
            if style_similarity > self.max_style_similarity:
                return "near_style_source", similarity, nearest
        if nearest > self.max_duplicate_similarity:
            return "duplicate", similarity, nearest
        self._kept.append(unit)
        return "kept", similarity, nearest
