"""Autoencoder losses against float64 NumPy closed forms and hand-computed values; the IResNet's
stage features that the identity perceptual loss reads."""

import einops
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffusion_jax.core.models.iresnet import IResNet
from diffusion_jax.tasks.latent import autoencoder_losses as losses
from diffusion_jax.tasks.recognition.embeddings import resize_to

TINY_IRESNET = {
    "depths": [1, 1],
    "widths": [8, 16],
    "stem_channels": 8,
    "input_resolution": 16,
    "embedding_dim": 8,
    "dropout": 0.0,
}


def gaussian_posterior(seed: int, shape=(3, 4, 4, 2)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape).astype(np.float32), rng.uniform(-3, 2, shape).astype(np.float32)


def images(seed: int, shape=(2, 16, 16, 3)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


# -- KL and L1 ----------------------------------------------------------------------------------


def test_kl_matches_the_float64_closed_form():
    mean, logvar = gaussian_posterior(0)
    m, v = mean.astype(np.float64), logvar.astype(np.float64)
    expected = 0.5 * np.sum(m**2 + np.exp(v) - 1.0 - v, axis=(1, 2, 3))
    kl = losses.kl_to_standard_normal(jnp.asarray(mean), jnp.asarray(logvar))
    assert kl.shape == (3,) and kl.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(kl), expected, rtol=1e-5)


def test_kl_matches_a_monte_carlo_estimate():
    """KL = E_q[log q(z) - log p(z)], estimated from 400,000 float64 samples of q."""
    mean, logvar = np.array([[0.8, -1.5, 0.0]]), np.array([[-1.0, 0.5, 1.5]])
    std = np.exp(0.5 * logvar)
    z = mean + std * np.random.default_rng(1).normal(size=(400_000, 3))
    log_q = -0.5 * (((z - mean) / std) ** 2 + logvar + np.log(2 * np.pi))
    log_p = -0.5 * (z**2 + np.log(2 * np.pi))
    log_ratio = np.sum(log_q - log_p, axis=1)
    standard_error = log_ratio.std() / np.sqrt(len(log_ratio))
    kl = float(losses.kl_to_standard_normal(jnp.asarray(mean), jnp.asarray(logvar))[0])
    assert abs(kl - log_ratio.mean()) < 4 * standard_error
    assert standard_error < 0.01 * kl  # the check is a sharp one


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    zeros = jnp.zeros((2, 3, 3, 4))
    np.testing.assert_array_equal(losses.kl_to_standard_normal(zeros, zeros), [0.0, 0.0])
    assert float(losses.kl_to_standard_normal(zeros.at[0, 0, 0, 0].set(0.1), zeros)[0]) > 0
    assert float(losses.kl_to_standard_normal(zeros, zeros.at[1, 2, 2, 3].set(-0.1))[1]) > 0


def test_kl_gradients_are_the_closed_form():
    """d KL / d mean = mean and d KL / d logvar = (exp(logvar) - 1) / 2, element by element."""
    mean, logvar = gaussian_posterior(2)
    grad_mean, grad_logvar = jax.grad(
        lambda m, v: losses.kl_to_standard_normal(m, v).sum(), argnums=(0, 1)
    )(jnp.asarray(mean), jnp.asarray(logvar))
    np.testing.assert_allclose(grad_mean, mean, rtol=1e-6)
    expected = 0.5 * (np.exp(logvar.astype(np.float64)) - 1.0)
    np.testing.assert_allclose(grad_logvar, expected, rtol=1e-5, atol=1e-7)


def test_l1_is_the_per_example_mean_absolute_error_in_float32():
    x, y = images(3), images(4)
    l1 = losses.l1_reconstruction(jnp.asarray(x, jnp.bfloat16), jnp.asarray(y))
    x64 = np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32), np.float64)
    assert l1.dtype == jnp.float32 and l1.shape == (2,)
    np.testing.assert_allclose(l1, np.abs(x64 - y).mean(axis=(1, 2, 3)), rtol=1e-6)


# -- Identity perceptual loss -------------------------------------------------------------------

PROJECTIONS = [np.random.default_rng(5).normal(size=(3, c)).astype(np.float32) for c in (6, 4)]


def toy_features(x: jax.Array) -> list[jax.Array]:
    """Two per-position feature maps: a 16x16x6 one and a pooled 8x8x4 one."""
    pooled = einops.reduce(x, "b (h p) (w q) c -> b h w c", "mean", p=2, q=2)
    return [jnp.tanh(x @ PROJECTIONS[0]), pooled @ PROJECTIONS[1]]


def reference_perceptual(x: np.ndarray, y: np.ndarray, weights=(0.5, 0.5)) -> np.ndarray:
    """The module docstring's P in float64, from the same features."""
    total = np.zeros(len(x))
    for weight, a, b in zip(weights, toy_features(x), toy_features(y)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        a /= np.linalg.norm(a, axis=-1, keepdims=True)
        b /= np.linalg.norm(b, axis=-1, keepdims=True)
        total += weight * ((a - b) ** 2).sum(axis=-1).mean(axis=(1, 2))
    return total


def test_perceptual_loss_matches_the_float64_formula():
    x, y = images(6), images(7)
    loss = losses.identity_perceptual_loss(toy_features, jnp.asarray(x), jnp.asarray(y))
    assert loss.shape == (2,) and loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, reference_perceptual(x, y), rtol=1e-5)
    weighted = losses.identity_perceptual_loss(toy_features, x, y, layer_weights=[2.0, 0.25])
    np.testing.assert_allclose(weighted, reference_perceptual(x, y, (2.0, 0.25)), rtol=1e-5)


def test_perceptual_loss_is_zero_only_for_identical_images():
    x = images(8)
    np.testing.assert_allclose(losses.identity_perceptual_loss(toy_features, x, x), 0.0, atol=1e-7)
    nearby = x.copy()
    nearby[1, 3, 5] += 0.1  # one pixel of the second image
    loss = np.asarray(losses.identity_perceptual_loss(toy_features, nearby, x))
    assert loss[0] < 1e-7 < loss[1]


def test_perceptual_loss_ignores_a_positive_scale_per_position():
    """Channel normalisation removes any positive per-position factor, even one that differs
    between the two images."""

    def rescaled_features(x: jax.Array) -> list[jax.Array]:
        return [f * jnp.exp(3.0 * f.sum(-1, keepdims=True)) for f in toy_features(x)]

    x, y = images(9), images(10)
    np.testing.assert_allclose(
        losses.identity_perceptual_loss(rescaled_features, x, y),
        losses.identity_perceptual_loss(toy_features, x, y),
        rtol=1e-5,
    )


def test_perceptual_loss_wants_one_weight_per_feature_map():
    with pytest.raises(ValueError, match="layer_weights has 3 entries for 2 feature maps"):
        losses.identity_perceptual_loss(toy_features, images(0), images(1), [1.0, 1.0, 1.0])


def random_value(path: tuple, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A plausible trained value for the IResNet variable at `path`: He-scaled kernels, BatchNorm
    affines and running averages away from their initial (1, 0) and (0, 1)."""
    name = path[-1]
    if name == "kernel":
        return rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
    if name in ("scale", "var"):
        return rng.uniform(0.5, 2.0, shape)
    if name == "negative_slope":
        return rng.uniform(0.1, 0.4, shape)
    return 0.2 * rng.normal(size=shape)  # biases and running means


@pytest.fixture(scope="module")
def encoder() -> IResNet:
    """A tiny IResNet in train mode holding random weights and running averages, drawn with NumPy
    into an abstract model: no initialisation to compile."""
    abstract = nnx.eval_shape(lambda: IResNet(**TINY_IRESNET, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(11)
    filled = [
        (path, v.replace(random_value(path, v.get_value().shape, rng).astype(np.float32)))
        for path, v in nnx.to_flat_state(state)
    ]
    model = nnx.merge(graphdef, nnx.from_flat_state(filled))
    model.train()
    return model


@nnx.jit
def eval_mode_features(model: IResNet, x: jax.Array) -> tuple[list[jax.Array], jax.Array]:
    """An eval-mode copy's stage features of x and its embedding."""
    model = nnx.clone(model)
    model.eval()
    return model.stage_features(x), model(x)


def test_stage_features_shapes_and_the_head_reads_the_last_one(encoder):
    x = jnp.asarray(images(12))
    features, embeddings = eval_mode_features(encoder, x)
    assert [f.shape for f in features] == [(2, 16, 16, 8), (2, 8, 8, 8), (2, 4, 4, 16)]
    model = nnx.clone(encoder)
    model.eval()
    flat = einops.rearrange(model.bn2(features[-1]), "b h w c -> b (h w c)")
    np.testing.assert_allclose(model.features(model.fc(flat)), embeddings, rtol=1e-5, atol=1e-5)


def test_frozen_features_are_eval_mode_features_of_resized_images(encoder):
    x = jnp.asarray(images(13, shape=(2, 32, 32, 3)))
    stats_before = jax.tree.map(np.array, nnx.state(encoder, nnx.BatchStat))
    features = nnx.jit(lambda model, x: losses.frozen_identity_features(model)(x))(encoder, x)
    jax.tree.map(np.testing.assert_array_equal, nnx.state(encoder, nnx.BatchStat), stats_before)
    assert not encoder.deterministic  # the encoder itself stays in train mode
    expected, _ = eval_mode_features(encoder, resize_to(x, 16))
    for got, want in zip(features, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_perceptual_gradient_reaches_the_reconstruction_but_not_the_frozen_encoder(encoder):
    x, reconstruction = jnp.asarray(images(14)), jnp.asarray(images(15))

    def mean_loss(model, reconstruction, freeze):
        if freeze:
            feature_fn = losses.frozen_identity_features(model)
        else:
            model.eval()
            feature_fn = model.stage_features
        return losses.identity_perceptual_loss(feature_fn, reconstruction, x).mean()

    # Jitted: on CPU one compilation of the encoder is faster than eager op-by-op dispatch.
    grad = nnx.jit(nnx.grad(mean_loss, argnums=(0, 1)), static_argnums=2)
    encoder_grads, reconstruction_grads = grad(nnx.clone(encoder), reconstruction, True)
    assert all(np.all(leaf == 0) for leaf in jax.tree.leaves(encoder_grads))
    assert np.abs(np.asarray(reconstruction_grads)).sum() > 0
    unfrozen_grads, _ = grad(nnx.clone(encoder), reconstruction, False)  # the contrast
    assert any(np.any(leaf != 0) for leaf in jax.tree.leaves(unfrozen_grads))


# -- Adversarial terms --------------------------------------------------------------------------

LOGITS_REAL = np.array([2.0, 0.5, -1.0], np.float32)
LOGITS_FAKE = np.array([[-2.0, 0.0], [1.5, -0.5]], np.float32)


def test_hinge_losses_against_hand_values():
    # relu(1 - real) = (0, 0.5, 2), mean 5/6; relu(1 + fake) = (0, 1, 2.5, 0.5), mean 1.
    d_loss = losses.hinge_discriminator_loss(LOGITS_REAL, LOGITS_FAKE)
    np.testing.assert_allclose(d_loss, 0.5 * (5 / 6 + 1.0), rtol=1e-6)
    np.testing.assert_allclose(losses.generator_adversarial_loss(LOGITS_FAKE), 0.25, rtol=1e-6)
    # Confident and right on both sides: no loss.
    assert float(losses.hinge_discriminator_loss(np.full(3, 1.5), np.full(3, -1.0))) == 0.0


def test_gate_opens_at_the_start_step_also_when_traced():
    gate = jax.jit(losses.adversarial_gate, static_argnums=1)
    assert [float(gate(step, 100)) for step in (0, 99, 100, 5000)] == [0.0, 0.0, 1.0, 1.0]
    assert float(losses.adversarial_gate(0, 0)) == 1.0


# -- The combined losses ------------------------------------------------------------------------


def test_autoencoder_loss_combines_the_terms_with_their_weights():
    x, reconstruction = images(17), images(18)
    mean, logvar = gaussian_posterior(19, shape=(2, 4, 4, 2))
    logits_fake = np.random.default_rng(20).normal(size=(2, 2, 2, 1)).astype(np.float32)
    loss_fn = jax.jit(
        lambda step, weight: losses.autoencoder_loss(
            reconstruction, x, mean, logvar,
            kl_weight=1e-3,
            feature_fn=toy_features, perceptual_weight=0.7,
            logits_fake=logits_fake, adversarial_weight=weight,
            step=step, discriminator_start_step=10,
        )
    )  # fmt: skip
    l1 = np.abs(reconstruction.astype(np.float64) - x).mean()
    m, v = mean.astype(np.float64), logvar.astype(np.float64)
    kl = (0.5 * (m**2 + np.exp(v) - 1 - v)).sum(axis=(1, 2, 3)).mean()
    perceptual = reference_perceptual(reconstruction, x).mean()
    generator = -logits_fake.astype(np.float64).mean()
    without_adversarial = l1 + 1e-3 * kl + 0.7 * perceptual

    total, metrics = loss_fn(9, 0.5)
    np.testing.assert_allclose(total, without_adversarial, rtol=1e-5)
    expected_metrics = {
        "loss": without_adversarial,
        "l1": l1,
        "kl": kl,
        "perceptual": perceptual,
        "generator_adversarial": generator,
        "adversarial_weight": 0.0,
    }
    assert metrics.keys() == expected_metrics.keys()
    for name, value in expected_metrics.items():
        np.testing.assert_allclose(metrics[name], value, rtol=1e-5, err_msg=name)

    total, metrics = loss_fn(10, 0.5)
    np.testing.assert_allclose(total, without_adversarial + 0.5 * generator, rtol=1e-5)
    assert float(metrics["adversarial_weight"]) == 0.5


def test_autoencoder_loss_without_optional_terms_is_l1_plus_weighted_kl():
    x, reconstruction = images(21), images(22)
    mean, logvar = gaussian_posterior(23, shape=(2, 2, 2, 4))
    total, metrics = losses.autoencoder_loss(reconstruction, x, mean, logvar, kl_weight=0.1)
    assert set(metrics) == {"loss", "l1", "kl"}
    np.testing.assert_allclose(total, metrics["l1"] + 0.1 * metrics["kl"], rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"feature_fn": toy_features}, "feature_fn and perceptual_weight must be given together"),
        ({"perceptual_weight": 1.0}, "feature_fn and perceptual_weight must be given together"),
        ({"logits_fake": np.zeros((2, 1))}, "logits_fake and adversarial_weight must be given"),
        ({"adversarial_weight": 0.5}, "logits_fake and adversarial_weight must be given"),
    ],
)
def test_autoencoder_loss_wants_its_optional_terms_whole(kwargs, message):
    mean, logvar = gaussian_posterior(24, shape=(2, 2, 2, 4))
    with pytest.raises(ValueError, match=message):
        losses.autoencoder_loss(images(0), images(1), mean, logvar, kl_weight=0.1, **kwargs)


def test_discriminator_loss_is_gated_hinge():
    for step, gate in [(4, 0.0), (5, 1.0)]:
        loss, metrics = losses.discriminator_loss(
            LOGITS_REAL, LOGITS_FAKE, step=step, discriminator_start_step=5
        )
        np.testing.assert_allclose(loss, gate * 0.5 * (5 / 6 + 1.0), rtol=1e-6)
        np.testing.assert_allclose(metrics["discriminator_loss"], 0.5 * (5 / 6 + 1.0), rtol=1e-6)
        np.testing.assert_allclose(
            [metrics["logits_real"], metrics["logits_fake"]], [0.5, -0.25], rtol=1e-6
        )
