"""Identity consistency of samples against hand-checkable cases, with stand-in encoders whose
embedding of an image is its normalised pixel vector."""

import jax
import numpy as np
import pytest

from diffusion_jax.tasks.evaluation.identity_consistency import (
    generate_for_conditions,
    identity_consistency,
)


class PixelEncoder:
    """Embeds an image as its flattened pixels, unit-normalised (duck-types EmbeddingExtractor)."""

    def embed_arrays(self, images: np.ndarray, **unused) -> np.ndarray:
        flat = np.asarray(images, np.float64).reshape(len(images), -1)
        return flat / np.linalg.norm(flat, axis=-1, keepdims=True)


def orthogonal_faces(count: int) -> np.ndarray:
    """`count` images [count, 2, 2, 3] with one bright pixel each: pairwise orthogonal."""
    images = np.zeros((count, 2 * 2 * 3))
    images[np.arange(count), np.arange(count)] = 1.0
    return images.reshape(count, 2, 2, 3)


def test_perfect_copies_of_the_sources_are_fully_consistent():
    sources = orthogonal_faces(3)
    samples = np.repeat(sources[:, None], 2, axis=1)  # [3, 2, ...]: each sample is its source
    encoder = PixelEncoder()
    conditions = encoder.embed_arrays(sources)
    result = identity_consistency(
        samples, sources, sources, conditions, conditioning=encoder, judge=encoder
    )
    assert result.judge_similarity_mean == pytest.approx(1.0)
    assert result.judge_similarity_std == pytest.approx(0.0)
    assert result.judge_impostor_mean == pytest.approx(0.0)  # orthogonal identities
    assert result.judge_real_genuine_mean == pytest.approx(1.0)
    assert result.judge_rank1 == 1.0
    assert result.condition_similarity_mean == pytest.approx(1.0)


def test_a_hand_worked_mixture():
    # Identity 0's samples: one equals source 0, one is the 45-degree mix of sources 0 and 1
    # (cos 1/sqrt(2) to both). Identity 1's samples: both equal source 0 (the wrong identity).
    sources = orthogonal_faces(2)
    mix = (sources[0] + sources[1]) / 2
    samples = np.stack([np.stack([sources[0], mix]), np.stack([sources[0], sources[0]])])
    encoder = PixelEncoder()
    result = identity_consistency(
        samples,
        sources,
        sources,
        encoder.embed_arrays(sources),
        conditioning=encoder,
        judge=encoder,
    )
    root_half = 1 / np.sqrt(2)
    own = np.array([1.0, root_half, 0.0, 0.0])  # cos(J(x_ij), J(r_i))
    others = np.array([0.0, root_half, 1.0, 1.0])  # cos(J(x_ij), J(r_k)), k != i
    assert result.judge_similarity_mean == pytest.approx(own.mean())
    assert result.judge_similarity_std == pytest.approx(own.std())
    assert result.judge_impostor_mean == pytest.approx(others.mean())
    # Rank 1: (0, 0) right; (0, 1) ties, argmax takes source 0, right; (1, *) wrong.
    assert result.judge_rank1 == pytest.approx(0.5)


def test_mismatched_counts_are_refused():
    sources = orthogonal_faces(3)
    samples = np.repeat(sources[:, None], 2, axis=1)
    encoder = PixelEncoder()
    with pytest.raises(ValueError, match="3 identities but there are 2 source images"):
        identity_consistency(
            samples,
            sources[:2],
            sources,
            encoder.embed_arrays(sources),
            conditioning=encoder,
            judge=encoder,
        )


def test_generation_repeats_each_condition_and_pads_the_last_batch():
    calls = []

    def sample_fn(cond, rng):  # an "image" [B, 1, 1, 1] holding its condition
        calls.append(cond.shape)
        return cond[:, :, None, None]

    conditions = np.arange(3, dtype=np.float32)[:, None] + 1.0  # [3, 1]: 1, 2, 3
    samples = generate_for_conditions(sample_fn, conditions, 2, jax.random.key(0), batch_size=4)
    assert samples.shape == (3, 2, 1, 1, 1)
    np.testing.assert_array_equal(samples[..., 0, 0, 0], [[1, 1], [2, 2], [3, 3]])
    assert calls == [(4, 1), (4, 1)]  # 6 samples in two batches of 4, the last padded
