"""The identity sampler: the separation guarantee and the reference (leakage) threshold on
thousands of identities, determinism, a clear error when the sphere is full, and the same rule
applied to given candidates."""

import jax
import numpy as np
import pytest

from diffusion_jax.tasks.generation.sphere_sampling import (
    max_similarity_to,
    random_unit_vectors,
    sample_separated_identities,
    select_separated,
)


def off_diagonal_max(vectors: np.ndarray) -> float:
    similarity = vectors.astype(np.float64) @ vectors.T.astype(np.float64)
    np.fill_diagonal(similarity, -np.inf)
    return float(similarity.max())


def plain_greedy(candidates: np.ndarray, num: int, threshold: float) -> np.ndarray:
    """The acceptance rule written as a loop over candidates, in float64."""
    accepted = []
    for candidate in candidates.astype(np.float64):
        if all(candidate @ other <= threshold for other in accepted):
            accepted.append(candidate)
        if len(accepted) == num:
            break
    return np.stack(accepted)


def test_thousands_of_identities_are_unit_and_pairwise_separated():
    # 3000 random directions in 128 dimensions come as close as 0.47 (std 0.09), so candidates
    # are rejected and the guarantee is exercised, not met by chance.
    identities, drawn = sample_separated_identities(
        3000, 128, seed=0, max_similarity=0.3, block_size=1024
    )
    assert identities.shape == (3000, 128)
    np.testing.assert_allclose(np.linalg.norm(identities, axis=1), 1.0, rtol=1e-5)
    assert off_diagonal_max(identities) <= 0.3 + 1e-6
    assert drawn > 3000  # candidates were rejected
    unfiltered = np.asarray(random_unit_vectors(jax.random.key(0), 3000, 128))
    assert off_diagonal_max(unfiltered) > 0.4  # what no separation gives


def test_the_blocked_device_version_accepts_what_a_plain_loop_accepts():
    # Small blocks, so acceptance runs across blocks and within them.
    identities, drawn = sample_separated_identities(
        30, 10, seed=7, max_similarity=0.4, block_size=16
    )
    candidates = np.concatenate(
        [
            np.asarray(random_unit_vectors(jax.random.fold_in(jax.random.key(7), b), 16, 10))
            for b in range(drawn // 16)
        ]
    )
    np.testing.assert_allclose(identities, plain_greedy(candidates, 30, 0.4), rtol=1e-6)
    assert drawn > 2 * 16  # several blocks


def test_no_identity_comes_close_to_a_reference():
    references = np.asarray(random_unit_vectors(jax.random.key(5), 1000, 128))
    identities, drawn = sample_separated_identities(
        2000, 128, seed=1, references=references, max_reference_similarity=0.25, block_size=512
    )
    assert drawn > 2000
    nearest, index = max_similarity_to(identities, references, block_size=300)
    brute = identities.astype(np.float64) @ references.T.astype(np.float64)
    np.testing.assert_allclose(nearest, brute.max(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(index, brute.argmax(axis=1))
    assert nearest.max() <= 0.25 + 1e-6
    assert off_diagonal_max(identities) <= 0.3 + 1e-6
    unfiltered = np.asarray(random_unit_vectors(jax.random.key(1), 2000, 128))
    assert max_similarity_to(unfiltered, references)[0].max() > 0.3


def test_the_same_seed_gives_the_same_identities_and_another_seed_others():
    first, _ = sample_separated_identities(500, 64, seed=3, block_size=256)
    again, _ = sample_separated_identities(500, 64, seed=3, block_size=256)
    other, _ = sample_separated_identities(500, 64, seed=4, block_size=256)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_the_first_accepted_identities_do_not_depend_on_how_many_are_asked_for():
    few, _ = sample_separated_identities(100, 64, seed=2, block_size=256)
    many, _ = sample_separated_identities(400, 64, seed=2, block_size=256)
    np.testing.assert_array_equal(few, many[:100])


def test_a_full_sphere_is_reported_with_how_many_fit():
    with pytest.raises(ValueError, match=r"Placed only \d+ of 1000 identities .* in 3 dimensions"):
        sample_separated_identities(1000, 3, seed=0, max_similarity=0.3, block_size=256)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_identities": 0}, "must be positive"),
        ({"max_similarity": 1.5}, "max_similarity must lie in"),
        ({"references": np.zeros((4, 5))}, r"references must be \[M, 8\]"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    arguments = {"num_identities": 10, "dim": 8, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        sample_separated_identities(**arguments)


def test_given_candidates_are_selected_by_the_same_rule_as_a_plain_loop():
    # Clustered candidates (30 directions, each with 40 noisy copies), so most are rejected,
    # across blocks (block 256) and within them; a reference direction is excluded entirely.
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(30, 48))
    candidates = np.repeat(centres, 40, axis=0) + 0.4 * rng.normal(size=(1200, 48))
    candidates = rng.permutation(candidates / np.linalg.norm(candidates, axis=1, keepdims=True))
    references = centres[:1] / np.linalg.norm(centres[:1])
    chosen = select_separated(
        candidates,
        20,
        max_similarity=0.5,
        references=references,
        max_reference_similarity=0.6,
        block_size=256,
    )
    allowed = candidates[(candidates @ references.T).max(axis=1) <= 0.6]
    expected = plain_greedy(allowed, 20, 0.5)
    np.testing.assert_allclose(candidates[chosen], expected, rtol=1e-6)
    assert np.all(np.diff(chosen) > 0)
    assert off_diagonal_max(candidates[chosen]) <= 0.5 + 1e-6
    with pytest.raises(ValueError, match=r"Only \d+ of 1200 candidates"):
        select_separated(candidates, 40, max_similarity=0.5, block_size=256)


def test_gaussian_candidates_follow_the_training_centres_mean_and_covariance():
    from diffusion_jax.tasks.generation.identity_sources import gaussian_candidates

    rng = np.random.default_rng(0)
    # Centres in a 3-D subspace of R^16, around a mean far from the origin.
    basis = np.linalg.qr(rng.standard_normal((16, 4)))[0]
    mean = 5.0 * basis[:, 3]
    centres = mean + rng.standard_normal((50, 3)) * [1.0, 0.5, 0.2] @ basis[:, :3].T
    found = gaussian_candidates(centres, 20_000, seed=1)
    np.testing.assert_allclose(np.linalg.norm(found, axis=1), 1.0, atol=1e-5)
    # Every candidate lies in the span of the centres (an isotropic draw would not).
    outside = found - found @ basis @ basis.T
    assert np.abs(outside).max() < 1e-5
    # Scaled back to the mean's length the draws have the centres' mean and covariance.
    scale = (mean @ mean) / (found @ mean)
    unnormalised = found * scale[:, None]  # y / |y| * |y|, since y . mean = |mean|^2 exactly
    np.testing.assert_allclose(unnormalised.mean(0), centres.mean(0), atol=0.03)
    np.testing.assert_allclose(np.cov(unnormalised.T), np.cov(centres.T), atol=0.03)
    np.testing.assert_array_equal(found, gaussian_candidates(centres, 20_000, seed=1))
    assert not np.array_equal(found[:5], gaussian_candidates(centres, 5, seed=2))
    with pytest.raises(ValueError, match="at least 2 training identity centres"):
        gaussian_candidates(centres[:1], 5, seed=0)
