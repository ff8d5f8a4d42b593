"""Tests for the combined-margin softmax heads against a float64 NumPy implementation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from diffusion_jax.core.models.margin_heads import (
    MARGIN_PRESETS,
    MarginSoftmaxHead,
    margin_logits,
    margin_softmax_loss,
    margins_for,
)

SCALE = 64.0
# The module docstring's clip of cosines before arccos, at the float32 bounds the module uses:
# near |cos| = 1 a cosine error d moves theta by about d / theta, so the rounding matters.
CLIP_LOW, CLIP_HIGH = float(np.float32(-1.0 + 1e-6)), float(np.float32(1.0 - 1e-6))
# (m1, m2, m3): the presets, a SphereFace-style multiplicative margin, and all three at once.
MARGINS = [*MARGIN_PRESETS.values(), (1.35, 0.0, 0.0), (2.0, 0.2, 0.1)]


def reference_logits(cosines, labels, *, scale, m1, m2, m3):
    """The module docstring's formula, element by element in float64."""
    logits = scale * np.asarray(cosines, np.float64)
    for i, label in enumerate(labels):
        c = float(cosines[i, label])
        if m1 == 1.0 and m2 == 0.0:
            target = c - m3
        else:
            theta = math.acos(min(max(c, CLIP_LOW), CLIP_HIGH))
            if m1 * theta + m2 <= math.pi:
                target = math.cos(m1 * theta + m2) - m3
            else:
                theta_0 = (math.pi - m2) / m1
                target = c - math.sin(theta_0) * (math.pi - theta_0) - m3
        logits[i, label] = scale * target
    return logits


def edge_case_cosines(m1, m2, num_classes=7, seed=0):
    """Random float32 cosines whose target entries cover +-1, the clip and both sides of the
    point where m1 * theta + m2 reaches pi."""
    rng = np.random.default_rng(seed)
    targets = [1.0, -1.0, 1.0 - 1e-7, -1.0 + 1e-7, 1.0 - 1e-4, 0.0, 0.5, -0.5]
    if (math.pi - m2) / m1 < math.pi:
        boundary = math.cos((math.pi - m2) / m1)
        # 1e-3 off the boundary, so float32 rounding cannot move a point across it.
        targets += [boundary + 1e-3, boundary - 1e-3, (boundary - 1.0) / 2]
    targets += list(rng.uniform(-1.0, 1.0, 24))
    batch = len(targets)
    labels = rng.integers(0, num_classes, batch)
    cosines = rng.uniform(-1.0, 1.0, (batch, num_classes))
    cosines[np.arange(batch), labels] = targets
    cosines[0, (labels[0] + 1) % num_classes] = -1.0  # non-target classes at the edges too
    cosines[1, (labels[1] + 1) % num_classes] = 1.0
    return cosines.astype(np.float32), labels.astype(np.int32)


@pytest.mark.parametrize("margins", MARGINS, ids=str)
def test_logits_match_float64_reference(margins):
    m1, m2, m3 = margins
    cosines, labels = edge_case_cosines(m1, m2)
    logits = margin_logits(cosines, labels, scale=SCALE, m1=m1, m2=m2, m3=m3)
    expected = reference_logits(cosines, labels, scale=SCALE, m1=m1, m2=m2, m3=m3)
    assert logits.dtype == jnp.float32 and logits.shape == cosines.shape
    # float32 arccos and cos, scaled by 64: a few float32 ulps of 64 (7.6e-6 each).
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=0, atol=1e-6 * SCALE)


def test_arcface_fallback_is_insightfaces_rule():
    """Past theta = pi - m2 the ArcFace target is s * (cos - sin(pi - m2) * m2), and a target
    just inside that boundary is s * cos(theta + m2)."""
    m2 = 0.5
    boundary = math.cos(math.pi - m2)
    cosines = np.full((2, 3), 0.25, np.float32)
    cosines[0, 1] = boundary - 0.05
    cosines[1, 2] = boundary + 0.05
    labels = np.array([1, 2], np.int32)
    logits = np.asarray(margin_logits(cosines, labels, scale=SCALE, m1=1.0, m2=m2, m3=0.0))
    outside, inside = float(cosines[0, 1]), float(cosines[1, 2])
    np.testing.assert_allclose(
        logits[0, 1], SCALE * (outside - math.sin(math.pi - m2) * m2), atol=1e-4
    )
    np.testing.assert_allclose(logits[1, 2], SCALE * math.cos(math.acos(inside) + m2), atol=1e-4)


@pytest.mark.parametrize("margins", MARGINS, ids=str)
def test_margin_lowers_the_target_logit_and_leaves_the_others(margins):
    m1, m2, m3 = margins
    cosines, labels = edge_case_cosines(m1, m2, seed=1)
    logits = np.asarray(margin_logits(cosines, labels, scale=SCALE, m1=m1, m2=m2, m3=m3))
    plain = SCALE * cosines
    is_target = np.arange(cosines.shape[1])[None, :] == labels[:, None]
    np.testing.assert_array_equal(logits[~is_target], plain[~is_target])
    assert np.all(logits[is_target] < plain[is_target])


@pytest.mark.parametrize("margins", MARGINS, ids=str)
def test_target_logit_never_rises_with_the_angle(margins):
    """Across theta_0, where the fallback takes over, the target logit keeps decreasing."""
    m1, m2, m3 = margins
    theta = np.linspace(0.0, math.pi, 4001)
    cosines = np.stack([np.cos(theta), np.zeros_like(theta)], axis=1).astype(np.float32)
    labels = np.zeros(len(theta), np.int32)
    target = np.asarray(margin_logits(cosines, labels, scale=SCALE, m1=m1, m2=m2, m3=m3))[:, 0]
    assert np.all(np.diff(target) <= 1e-6 * SCALE)


def test_zero_margin_is_the_scaled_normalised_softmax():
    cosines, labels = edge_case_cosines(1.0, 0.0)
    logits = margin_logits(cosines, labels, scale=SCALE, m1=1.0, m2=0.0, m3=0.0)
    np.testing.assert_array_equal(np.asarray(logits), SCALE * cosines)

    head = MarginSoftmaxHead(16, 7, scale=SCALE, m1=1.0, m2=0.0, m3=0.0, rngs=nnx.Rngs(0))
    embeddings = np.random.default_rng(2).normal(size=(len(labels), 16))
    z = SCALE * normalised_dot(embeddings, np.asarray(head.kernel[...], np.float64))
    z -= z.max(axis=1, keepdims=True)
    log_softmax = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    expected = -log_softmax[np.arange(len(labels)), labels]
    loss = margin_softmax_loss(head(jnp.asarray(embeddings, jnp.float32), labels), labels)
    assert loss.shape == (len(labels),)
    np.testing.assert_allclose(np.asarray(loss), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("margins", MARGINS, ids=str)
def test_gradients_are_finite_at_plus_and_minus_one(margins):
    m1, m2, m3 = margins
    cosines = np.array([[1.0, -1.0, 0.3], [-1.0, 1.0, -1.0], [1.0, 1.0, 1.0]], np.float32)
    labels = np.array([0, 0, 2], np.int32)

    def mean_loss(cosines):
        logits = margin_logits(cosines, labels, scale=SCALE, m1=m1, m2=m2, m3=m3)
        return margin_softmax_loss(logits, labels).mean()

    loss, grads = jax.value_and_grad(mean_loss)(jnp.asarray(cosines))
    assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(grads)))


def test_bfloat16_cosines_are_computed_in_float32():
    m1, m2, m3 = MARGIN_PRESETS["combined"]
    cosines, labels = edge_case_cosines(m1, m2)
    low = jnp.asarray(cosines, jnp.bfloat16)
    logits = margin_logits(low, labels, scale=SCALE, m1=m1, m2=m2, m3=m3)
    expected = reference_logits(
        np.asarray(low.astype(jnp.float32)), labels, scale=SCALE, m1=m1, m2=m2, m3=m3
    )
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=0, atol=1e-6 * SCALE)


def normalised_dot(embeddings, kernel):
    x = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    w = kernel / np.linalg.norm(kernel, axis=0, keepdims=True)
    return x @ w


def test_head_cosines_are_the_normalised_dot_product():
    head = MarginSoftmaxHead(32, 1000, rngs=nnx.Rngs(0))
    kernel = np.asarray(head.kernel[...], np.float64)
    assert kernel.shape == (32, 1000)
    # N(0, 0.01^2) init: the sample std of 32,000 draws is within 3% of 0.01 with high odds.
    assert abs(kernel.std() - 0.01) < 3e-4 and abs(kernel.mean()) < 3e-4
    # Rows of very different norms: only their directions may matter.
    rng = np.random.default_rng(3)
    embeddings = rng.normal(size=(6, 32)) * np.array([1e-3, 0.1, 1.0, 10.0, 1e3, 1.0])[:, None]
    cosines = head.cosines(jnp.asarray(embeddings, jnp.float32))
    assert cosines.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(cosines), normalised_dot(embeddings, kernel), atol=1e-6)


def test_head_applies_its_margins_to_its_cosines():
    head = MarginSoftmaxHead(8, 5, scale=30.0, m1=1.0, m2=0.3, m3=0.2, rngs=nnx.Rngs(1))
    embeddings = jnp.asarray(np.random.default_rng(4).normal(size=(4, 8)), jnp.bfloat16)
    labels = jnp.array([0, 4, 2, 2])
    logits = head(embeddings, labels)
    expected = margin_logits(head.cosines(embeddings), labels, scale=30.0, m1=1.0, m2=0.3, m3=0.2)
    assert logits.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(expected))


def test_jitted_training_of_the_head_separates_five_classes():
    num_classes, per_class, dim, steps = 5, 16, 16, 300
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(num_classes, dim))
    labels = np.repeat(np.arange(num_classes), per_class).astype(np.int32)
    embeddings = centres[labels] + 0.5 * rng.normal(size=(len(labels), dim))
    embeddings, labels = jnp.asarray(embeddings, jnp.float32), jnp.asarray(labels)

    head = MarginSoftmaxHead(dim, num_classes, rngs=nnx.Rngs(0))  # ArcFace, s = 64
    graphdef, params = nnx.split(head, nnx.Param)
    optimizer = optax.adam(1e-2)

    def accuracy(params):
        cosines = nnx.merge(graphdef, params).cosines(embeddings)
        return jnp.mean(jnp.argmax(cosines, axis=-1) == labels)

    def loss_fn(params):
        logits = nnx.merge(graphdef, params)(embeddings, labels)
        return margin_softmax_loss(logits, labels).mean()

    @jax.jit
    def train(params):
        def step(carry, _):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, _), losses = jax.lax.scan(
            step, (params, optimizer.init(params)), None, length=steps
        )
        return params, losses

    initial_accuracy = float(accuracy(params))
    params, losses = train(params)
    assert initial_accuracy < 0.6
    assert float(accuracy(params)) == 1.0
    assert float(losses[-1]) < 0.1 * float(losses[0])


def test_presets_and_overrides():
    assert margins_for("arcface") == (1.0, 0.5, 0.0)
    assert margins_for("cosface") == (1.0, 0.0, 0.4)
    assert margins_for("combined") == (1.0, 0.3, 0.2)
    assert margins_for("arcface", m2=0.3) == (1.0, 0.3, 0.0)
    assert margins_for("cosface", m1=1.35, m3=0.35) == (1.35, 0.0, 0.35)


def test_unknown_preset_names_the_valid_ones():
    with pytest.raises(ValueError, match="'arcfce'.*valid names: arcface, combined, cosface"):
        margins_for("arcfce")


@pytest.mark.parametrize(
    "margins, message",
    [
        ((0.0, 0.5, 0.0), "m1 must be positive"),
        ((1.0, -0.1, 0.0), r"m2 must be in \[0, pi\)"),
        ((1.0, 3.2, 0.0), r"m2 must be in \[0, pi\)"),
        ((1.0, 0.5, math.nan), "m3 must be finite"),
    ],
)
def test_invalid_margins_raise(margins, message):
    m1, m2, m3 = margins
    with pytest.raises(ValueError, match=message):
        margins_for("arcface", m1=m1, m2=m2, m3=m3)
    with pytest.raises(ValueError, match=message):
        MarginSoftmaxHead(4, 3, m1=m1, m2=m2, m3=m3, rngs=nnx.Rngs(0))


def test_non_positive_scale_raises():
    with pytest.raises(ValueError, match="scale must be positive"):
        margin_logits(jnp.zeros((1, 3)), jnp.zeros((1,), jnp.int32), scale=0.0, m1=1, m2=0, m3=0)
    with pytest.raises(ValueError, match="scale must be positive"):
        MarginSoftmaxHead(4, 3, scale=-1.0, rngs=nnx.Rngs(0))
