"""Tests for condition dropout (CFG + IDiff-Face's partial dropout) and random identity tables."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.core.models.conditioning import condition_dropout, random_identity_embeddings

# A measured fraction must lie within this many binomial standard deviations of its rate.
NUM_STD = 5.0


def _binomial_tolerance(p: float, n: int) -> float:
    return NUM_STD * np.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def dropout_fn():
    return jax.jit(condition_dropout, static_argnames=("p_uncond", "partial_dropout"))


@pytest.mark.parametrize("p_uncond", [0.1, 0.5])
def test_uncond_rate_is_respected(dropout_fn, p_uncond):
    batch = 20_000
    _, cond_mask = dropout_fn(
        jax.random.key(0), jnp.ones((batch, 4)), p_uncond=p_uncond, partial_dropout=0.0
    )
    assert cond_mask.dtype == jnp.bool_ and cond_mask.shape == (batch,)
    dropped = 1.0 - float(np.mean(np.asarray(cond_mask)))
    assert abs(dropped - p_uncond) < _binomial_tolerance(p_uncond, batch)


def test_uncond_rate_extremes(dropout_fn):
    cond = jnp.ones((64, 4))
    _, never = dropout_fn(jax.random.key(0), cond, p_uncond=0.0, partial_dropout=0.0)
    _, always = dropout_fn(jax.random.key(0), cond, p_uncond=1.0, partial_dropout=0.0)
    assert np.all(np.asarray(never)) and not np.any(np.asarray(always))


@pytest.mark.parametrize("partial_dropout", [0.25, 0.5])
def test_partial_dropout_zeroes_the_stated_fraction_and_rescales_the_rest(
    dropout_fn, partial_dropout
):
    rng = np.random.default_rng(0)
    # Entries bounded away from zero, so a zero in the output can only come from the dropout.
    cond = rng.uniform(0.5, 1.5, size=(500, 64)) * rng.choice([-1.0, 1.0], size=(500, 64))
    out, _ = dropout_fn(
        jax.random.key(1),
        jnp.asarray(cond, jnp.float32),
        p_uncond=0.0,
        partial_dropout=partial_dropout,
    )
    out = np.asarray(out, np.float64)
    zeroed = out == 0.0
    assert abs(zeroed.mean() - partial_dropout) < _binomial_tolerance(partial_dropout, cond.size)
    # Each example gets its own pattern: rows do not share one mask.
    assert len({row.tobytes() for row in zeroed}) > 400
    np.testing.assert_allclose(out[~zeroed], cond[~zeroed] / (1.0 - partial_dropout), rtol=1e-6)


def test_no_partial_dropout_leaves_cond_unchanged_and_same_key_repeats(dropout_fn):
    cond = jax.random.normal(jax.random.key(2), (16, 8))
    out, mask = dropout_fn(jax.random.key(3), cond, p_uncond=0.5, partial_dropout=0.0)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(cond))
    out_again, mask_again = dropout_fn(jax.random.key(3), cond, p_uncond=0.5, partial_dropout=0.0)
    np.testing.assert_array_equal(np.asarray(mask), np.asarray(mask_again))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(out_again))


@pytest.mark.parametrize(
    "cond_shape, p_uncond, partial_dropout, message",
    [
        ((4, 8), 1.5, 0.0, "p_uncond=1.5"),
        ((4, 8), -0.1, 0.0, "p_uncond=-0.1"),
        ((4, 8), 0.1, 1.0, "partial_dropout=1.0"),
        ((8,), 0.1, 0.0, r"cond.shape=\(8,\)"),
    ],
)
def test_condition_dropout_rejects_bad_arguments(cond_shape, p_uncond, partial_dropout, message):
    with pytest.raises(ValueError, match=message):
        condition_dropout(
            jax.random.key(0),
            jnp.ones(cond_shape),
            p_uncond=p_uncond,
            partial_dropout=partial_dropout,
        )


def test_random_identity_embeddings_are_unit_deterministic_and_isotropic():
    table = random_identity_embeddings(4096, 8, seed=7)
    assert table.shape == (4096, 8) and table.dtype == jnp.float32
    rows = np.asarray(table, np.float64)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=-1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(random_identity_embeddings(4096, 8, seed=7)), rows)
    assert not np.allclose(np.asarray(random_identity_embeddings(4096, 8, seed=8)), rows)
    # Uniform on the sphere S^(d-1): mean 0 and second moment I / d. Each entry of the sample
    # second moment has standard deviation at most sqrt(E[x_i^2 x_j^2] / n) <= sqrt(3 / (d^2 n)).
    n, d = rows.shape
    np.testing.assert_allclose(rows.mean(axis=0), 0.0, atol=NUM_STD / np.sqrt(d * n))
    np.testing.assert_allclose(rows.T @ rows / n, np.eye(d) / d, atol=NUM_STD * np.sqrt(3 / n) / d)


@pytest.mark.parametrize(
    "num_identities, dim, message", [(0, 8, "num_identities=0"), (4, 0, "dim=0")]
)
def test_random_identity_embeddings_reject_bad_sizes(num_identities, dim, message):
    with pytest.raises(ValueError, match=message):
        random_identity_embeddings(num_identities, dim, seed=0)
