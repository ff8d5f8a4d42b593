"""Identity consistency of generated faces: does a sample show the identity it was asked for?

The diffusion model is conditioned on c_i = E(r_i), the conditioning encoder E's embedding of a
real "source" image r_i of identity i; it draws samples x_ij. A judge encoder J with different
weights (another seed, or another recogniser) grades them, so the generator is not graded by the
network that conditioned it. With unit embeddings and cos(a, b) = <a, b>:

    judge_similarity    mean_ij cos(J(x_ij), J(r_i))            the headline
    judge_impostor      mean_{ij, k != i} cos(J(x_ij), J(r_k))  the same for other identities
    judge_real_genuine  mean_i cos(J(r'_i), J(r_i)), r'_i another real image of i: what real
                        photographs of one person reach under this judge (the ceiling)
    judge_rank1         fraction of samples whose most similar source under J is their own
                        identity (1-of-N identification over the N identities)
    condition_similarity  mean_ij cos(E(x_ij), c_i): the conditioning encoder's own view
                        (self-graded, optimistic; shown for comparison)

Judge and conditioning embeddings are taken without flip augmentation.
"""

import dataclasses
from collections.abc import Callable

import jax
import numpy as np
import tqdm

from diffusion_jax.tasks.recognition.embeddings import EmbeddingExtractor


@dataclasses.dataclass(frozen=True)
class IdentityConsistency:
    num_identities: int
    samples_per_identity: int
    judge_similarity_mean: float
    judge_similarity_std: float
    judge_impostor_mean: float
    judge_real_genuine_mean: float
    judge_rank1: float
    condition_similarity_mean: float

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def generate_for_conditions(
    sample_fn: Callable[[jax.Array, jax.Array], jax.Array],
    conditions: np.ndarray,
    samples_per_identity: int,
    rng: jax.Array,
    batch_size: int,
    description: str = "Sampling",
) -> np.ndarray:
    """Samples [N, K, H, W, 3] in [-1, 1]: K images per condition row, in fixed-size batches
    (the last one padded), batch b drawn from fold_in(rng, b), with a progress bar.
    `sample_fn(cond, rng)`. The same conditions, K, rng and batch size give each batch the same
    key, so with `make_sample_fn` image k of row i starts from the same x_T whatever the sampler,
    its steps or its guidance."""
    repeated = np.repeat(np.asarray(conditions, np.float32), samples_per_identity, axis=0)
    images = []
    starts = range(0, len(repeated), batch_size)
    batches = tqdm.tqdm(starts, desc=description, unit="batch", disable=jax.process_index() > 0)
    for index, start in enumerate(batches):
        chunk = repeated[start : start + batch_size]
        padded = np.zeros((batch_size, chunk.shape[1]), np.float32)
        padded[: len(chunk)] = chunk
        images.append(np.asarray(sample_fn(padded, jax.random.fold_in(rng, index)))[: len(chunk)])
    images = np.concatenate(images)
    return images.reshape((len(conditions), samples_per_identity) + images.shape[1:])


def _check_identities(num_identities: int) -> None:
    if num_identities < 2:
        raise ValueError("identity consistency needs at least 2 identities (for the impostors)")


def identity_consistency(
    samples: np.ndarray,
    source_images: np.ndarray,
    second_images: np.ndarray,
    conditions: np.ndarray,
    *,
    conditioning: EmbeddingExtractor,
    judge: EmbeddingExtractor,
) -> IdentityConsistency:
    """The measures of the module docstring for samples [N, K, H, W, 3] of N identities whose
    conditions [N, D] are the conditioning encoder's embeddings of source_images [N, H, W, 3];
    second_images [N, H, W, 3] are other real images of the same identities."""
    num_identities, samples_per_identity = samples.shape[:2]
    if not len(source_images) == len(second_images) == len(conditions) == num_identities:
        raise ValueError(
            f"samples are of {num_identities} identities but there are {len(source_images)} "
            f"source images, {len(second_images)} second images and {len(conditions)} conditions"
        )
    _check_identities(num_identities)
    flat_samples = samples.reshape((-1,) + samples.shape[2:])
    judged_samples = judge.embed_arrays(flat_samples, description="Judging samples")
    self_graded = conditioning.embed_arrays(flat_samples, description="Self-grading samples")
    return consistency_of_embeddings(
        judged_samples.reshape(num_identities, samples_per_identity, -1),
        judge.embed_arrays(source_images, description="Judging sources"),
        judge.embed_arrays(second_images, description="Judging second images"),
        self_graded.reshape(num_identities, samples_per_identity, -1),
        conditions,
    )


def consistency_of_embeddings(
    judged_samples: np.ndarray,
    judged_sources: np.ndarray,
    judged_seconds: np.ndarray,
    self_graded: np.ndarray,
    conditions: np.ndarray,
) -> IdentityConsistency:
    """`identity_consistency` from the embeddings: unit judge embeddings of the samples [N, K, D]
    (J(x_ij)), of the sources [N, D] (J(r_i)) and of the second images [N, D] (J(r'_i)), and the
    conditioning encoder's embeddings of the samples [N, K, D] (E(x_ij)) with the conditions
    [N, D] (c_i)."""
    num_identities, samples_per_identity = judged_samples.shape[:2]
    _check_identities(num_identities)
    # similarity[i, j, k] = cos(J(x_ij), J(r_k))
    similarity = np.einsum("ijd,kd->ijk", judged_samples, judged_sources)
    own = similarity[np.arange(num_identities), :, np.arange(num_identities)]  # [N, K]
    others = ~np.eye(num_identities, dtype=bool)[:, None, :]  # [N, 1, N]
    rank1 = np.argmax(similarity, axis=-1) == np.arange(num_identities)[:, None]
    return IdentityConsistency(
        num_identities=int(num_identities),
        samples_per_identity=int(samples_per_identity),
        judge_similarity_mean=float(own.mean()),
        judge_similarity_std=float(own.std()),
        judge_impostor_mean=float(similarity[np.broadcast_to(others, similarity.shape)].mean()),
        judge_real_genuine_mean=float(np.sum(judged_seconds * judged_sources, axis=-1).mean()),
        judge_rank1=float(rank1.mean()),
        condition_similarity_mean=float(np.einsum("ijd,id->ij", self_graded, conditions).mean()),
    )
