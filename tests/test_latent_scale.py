"""The latent scale: streaming moments against one-shot NumPy, Stable Diffusion's convention."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.tasks.latent.latent_scale import LatentMoments, estimate_latent_scale


def test_streaming_over_uneven_batches_matches_numpy():
    rng = np.random.default_rng(0)
    # Mean / std = 1e7: the naive sum(z^2) - n mean^2 would cancel 14 of float64's 16 digits.
    batches = [1e6 + 0.1 * rng.normal(size=shape) for shape in [(1, 4, 4, 4), (7, 4, 4, 4)]]
    batches += [1e6 + 0.1 * rng.normal(size=(n, 8, 8, 4)) for n in (2, 13, 5)]
    batches.append(np.float64(1e6 + 0.1 * rng.normal()))  # a single element
    moments = LatentMoments()
    for batch in batches:
        moments = moments.update(batch)
    everything = np.concatenate([np.ravel(batch) for batch in batches])
    assert moments.count == everything.size
    np.testing.assert_allclose(moments.mean, everything.mean(), rtol=1e-12)
    np.testing.assert_allclose(moments.std(), everything.std(ddof=1), rtol=1e-6)
    np.testing.assert_allclose(moments.scale(), 1.0 / everything.std(ddof=1), rtol=1e-6)


def test_merge_is_order_free_and_the_empty_moments_are_its_identity():
    rng = np.random.default_rng(1)
    a, b, c = (LatentMoments.of(rng.normal(loc, 2.0, n)) for loc, n in [(0, 10), (5, 3), (-2, 40)])
    left, right = a.merge(b).merge(c), c.merge(a.merge(b))
    np.testing.assert_allclose([left.mean, left.m2], [right.mean, right.m2], rtol=1e-12)
    assert left.count == right.count == 53
    assert LatentMoments().merge(a) == a == a.merge(LatentMoments())


def test_scale_of_gaussian_latents_with_std_five_is_a_fifth():
    latents = 5.0 * np.random.default_rng(2).normal(size=(64, 8, 8, 4))  # 16,384 elements
    scale = estimate_latent_scale(jnp.asarray(latents, jnp.float32))
    # The sample std of n = 16,384 draws has relative standard error 1 / sqrt(2 n) = 0.55%.
    assert abs(scale - 0.2) < 0.2 * 4 * 0.0055
    np.testing.assert_allclose(scale, 1.0 / latents.std(ddof=1), rtol=1e-6)


def test_the_mean_is_removed_and_bessels_correction_applied():
    """As PyTorch's `z.flatten().std()`: [1, 3] has std sqrt(2) around its mean 2."""
    assert estimate_latent_scale(np.array([[1.0], [3.0]])) == pytest.approx(1.0 / math.sqrt(2.0))


@pytest.mark.parametrize(
    "latents, message",
    [
        (np.zeros((0, 4, 4, 4)), r"latents are empty \(shape \(0, 4, 4, 4\)\)"),
        (np.array([1.0, np.nan, np.inf, 2.0]), "latents hold 2 non-finite values of 4"),
        (np.full((2, 3), 0.5), "all 6 latent elements equal 0.5: no scale"),
        (np.array([1.0]), "the std needs at least 2 latent elements, got 1"),
    ],
)
def test_bad_latents_raise(latents, message):
    with pytest.raises(ValueError, match=message):
        estimate_latent_scale(latents)


def test_no_moments_have_no_scale():
    with pytest.raises(ValueError, match="at least 2 latent elements, got 0"):
        LatentMoments().scale()
