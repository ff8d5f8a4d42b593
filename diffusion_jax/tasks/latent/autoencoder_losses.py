"""Training losses of the KL autoencoder of latent diffusion (Rombach et al. 2022): pure functions.

The encoder maps images x [B, H, W, C] in [-1, 1] to a diagonal Gaussian posterior
q(z | x) = N(mu, diag(sigma^2)), given as (mu, log sigma^2); the decoder maps a sample z to x_hat.
The autoencoder's step minimises

    L_AE = mean_b [ l1_b + w_p P_b + w_kl KL_b ] + gate(step) w_adv G
    l1_b = mean_{h,w,c} |x - x_hat|
    KL_b = KL(q(z | x_b) || N(0, I)) = 0.5 sum_{latent dims} (mu^2 + sigma^2 - 1 - log sigma^2)
    P_b  = the identity perceptual distance between x_b and x_hat_b (below)
    G    = -mean D(x_hat)                                   the hinge GAN's generator loss

and the discriminator D's step minimises

    L_D = gate(step) 0.5 (mean relu(1 - D(x)) + mean relu(1 + D(x_hat))),

the hinge loss halved as in taming-transformers' `hinge_d_loss`, with
gate(step) = 1 if step >= discriminator_start_step else 0 (latent-diffusion's `disc_start`: the
autoencoder learns to reconstruct before the discriminator and its gradient join in). Means over
the logits run over the batch and the logit map's positions.

Reductions, and latent-diffusion's weights in these units. Its `LPIPSWithDiscriminator` sums the
reconstruction term over the H W C pixels and averages it over the batch; here it is averaged over
pixels too, so the KL weight of that code maps to w_kl = kl_weight / (H W C) (its 1e-6 at
256x256x3 is 5.1e-12 here) while w_p carries over. It also divides the reconstruction term by a
learned exp(s) and adds s per pixel; here s stays at 0, its initial value. That changes only the
balance of reconstruction against KL (and against the adversarial weight).

Identity perceptual distance. LPIPS (Zhang et al. 2018) compares activations of a pretrained
VGG at five layers: each position's feature vector is scaled to unit L2 norm over channels, the
squared difference is weighted per channel by learned non-negative weights, averaged over
positions and summed over layers. No pretrained VGG or LPIPS weights can be downloaded here, and
faces call for features that know identity, so P uses the stages of the project's frozen face
recogniser (`IResNet.stage_features`) with every channel weight 1 (LPIPS's unlearned "baseline"
variant) and a weighted mean over the L layers, a_l = 1 / L by default:

    P = sum_l a_l mean_{h,w} sum_c (u_l(x) - u_l(x_hat))^2,   u_l = f_l / sqrt(|f_l|^2 + eps^2)

Each position contributes 2 (1 - cos) of its two feature vectors, in [0, 4]; eps = 1e-10 is
LPIPS's, moved under the square root so the gradient stays finite at f_l = 0.

Adversarial weight. w_adv is a fixed number (`config.autoencoder.discriminator_weight`).
taming-transformers instead rescales it every step by |grad_W L_rec| / |grad_W G| at the
decoder's last layer W; that balance is not implemented here.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from diffusion_jax.core.models.iresnet import IResNet
from diffusion_jax.tasks.recognition.embeddings import resize_to

FeatureFn = Callable[[jax.Array], Sequence[jax.Array]]

FEATURE_NORM_EPSILON = 1e-10  # LPIPS's `normalize_tensor` epsilon


def kl_to_standard_normal(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, diag(exp(logvar))) || N(0, I)) per example, float32 [B]: summed over every
    latent dimension, 0.5 * sum(mean^2 + exp(logvar) - 1 - logvar) (latent-diffusion's
    `DiagonalGaussianDistribution.kl`). Average over the batch outside.

    Any clamp of logvar (latent-diffusion clips it to [-30, 20]) belongs where the posterior is
    formed, in the encoder.
    """
    mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
    kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    return jnp.sum(kl, axis=tuple(range(1, kl.ndim)))


def l1_reconstruction(reconstruction: jax.Array, images: jax.Array) -> jax.Array:
    """Per-example mean absolute error over pixels and channels, float32 [B]."""
    error = jnp.abs(reconstruction.astype(jnp.float32) - images.astype(jnp.float32))
    return jnp.mean(error, axis=tuple(range(1, error.ndim)))


def _unit_channels(features: jax.Array) -> jax.Array:
    features = features.astype(jnp.float32)
    squared_norm = jnp.sum(jnp.square(features), axis=-1, keepdims=True)
    return features * jax.lax.rsqrt(squared_norm + FEATURE_NORM_EPSILON**2)


def identity_perceptual_loss(
    feature_fn: FeatureFn,
    reconstruction: jax.Array,
    images: jax.Array,
    layer_weights: Sequence[float] | None = None,
) -> jax.Array:
    """The identity perceptual distance P (module docstring) per example, float32 [B].

    Args:
      feature_fn: images [B, H, W, C] -> L feature maps [B, h_l, w_l, c_l] of a frozen encoder
        (e.g. `frozen_identity_features(encoder)`); it must treat examples independently.
      reconstruction, images: [B, H, W, C], as feature_fn takes them.
      layer_weights: a_l, one per feature map; default 1 / L each.
    """
    reconstruction_features = feature_fn(reconstruction)
    image_features = feature_fn(images)
    num_layers = len(image_features)
    if layer_weights is None:
        layer_weights = [1.0 / num_layers] * num_layers
    if len(layer_weights) != num_layers:
        raise ValueError(
            f"layer_weights has {len(layer_weights)} entries for {num_layers} feature maps"
        )
    loss = jnp.zeros(images.shape[0], jnp.float32)
    for weight, fake, real in zip(
        layer_weights, reconstruction_features, image_features, strict=True
    ):
        squared_distance = jnp.sum(jnp.square(_unit_channels(fake) - _unit_channels(real)), -1)
        loss += weight * jnp.mean(squared_distance, axis=tuple(range(1, squared_distance.ndim)))
    return loss


def frozen_identity_features(encoder: IResNet) -> FeatureFn:
    """images -> `encoder.stage_features` of the images resized to its input resolution, in eval
    mode (BatchNorm running averages, left unchanged) and with the encoder's state behind
    stop_gradient, so no gradient reaches its weights.

    Build it inside the jitted step from an encoder passed in as an argument: its weights are then
    inputs of the compiled program rather than constants folded into it.
    """
    graphdef, state = nnx.split(encoder)

    def features(images: jax.Array) -> list[jax.Array]:
        frozen = nnx.merge(graphdef, jax.lax.stop_gradient(state))
        frozen.eval()
        return frozen.stage_features(resize_to(images, frozen.input_resolution))

    return features


def hinge_discriminator_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """0.5 * (mean relu(1 - logits_real) + mean relu(1 + logits_fake)), a float32 scalar.

    Halved as taming's `hinge_d_loss`, so its settings (disc_factor, learning rate) carry over.
    """
    real = jnp.mean(jax.nn.relu(1.0 - logits_real.astype(jnp.float32)))
    fake = jnp.mean(jax.nn.relu(1.0 + logits_fake.astype(jnp.float32)))
    return 0.5 * (real + fake)


def generator_adversarial_loss(logits_fake: jax.Array) -> jax.Array:
    """-mean(logits_fake), a float32 scalar: the hinge GAN's generator loss."""
    return -jnp.mean(logits_fake.astype(jnp.float32))


def adversarial_gate(step: int | jax.Array, discriminator_start_step: int) -> jax.Array:
    """1.0 from `discriminator_start_step` on, 0.0 before (float32 scalar; step may be traced)."""
    return jnp.where(jnp.asarray(step) >= discriminator_start_step, 1.0, 0.0).astype(jnp.float32)


def autoencoder_loss(
    reconstruction: jax.Array,
    images: jax.Array,
    mean: jax.Array,
    logvar: jax.Array,
    *,
    kl_weight: float,
    feature_fn: FeatureFn | None = None,
    perceptual_weight: float | None = None,
    logits_fake: jax.Array | None = None,
    adversarial_weight: float | jax.Array | None = None,
    step: int | jax.Array = 0,
    discriminator_start_step: int = 0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """L_AE of the module docstring, averaged over the batch, and its terms as metrics.

    Args:
      reconstruction: x_hat [B, H, W, C], the decoder's output for a posterior sample.
      images: x [B, H, W, C].
      mean, logvar: the posterior's parameters, [B, ...latent dims].
      kl_weight: w_kl.
      feature_fn, perceptual_weight: the frozen encoder of P and w_p, given together or not at
        all (no perceptual term).
      logits_fake, adversarial_weight: D(x_hat) and w_adv, given together or not at all (no
        adversarial term).
      step, discriminator_start_step: the gate of the adversarial term.

    Returns:
      (L_AE, metrics): float32 scalars; metrics holds "loss", "l1", "kl" and, with their terms,
      "perceptual", "generator_adversarial" and "adversarial_weight" (w_adv times the gate).
    """
    if (feature_fn is None) != (perceptual_weight is None):
        raise ValueError("feature_fn and perceptual_weight must be given together, or neither")
    if (logits_fake is None) != (adversarial_weight is None):
        raise ValueError("logits_fake and adversarial_weight must be given together, or neither")
    metrics = {
        "l1": jnp.mean(l1_reconstruction(reconstruction, images)),
        "kl": jnp.mean(kl_to_standard_normal(mean, logvar)),
    }
    total = metrics["l1"] + kl_weight * metrics["kl"]
    if feature_fn is not None:
        perceptual = identity_perceptual_loss(feature_fn, reconstruction, images)
        metrics["perceptual"] = jnp.mean(perceptual)
        total += perceptual_weight * metrics["perceptual"]
    if logits_fake is not None:
        metrics["generator_adversarial"] = generator_adversarial_loss(logits_fake)
        metrics["adversarial_weight"] = adversarial_weight * adversarial_gate(
            step, discriminator_start_step
        )
        total += metrics["adversarial_weight"] * metrics["generator_adversarial"]
    metrics["loss"] = total
    return total, metrics


def discriminator_loss(
    logits_real: jax.Array,
    logits_fake: jax.Array,
    *,
    step: int | jax.Array,
    discriminator_start_step: int,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """L_D of the module docstring and metrics ("discriminator_loss" ungated, mean logits).

    logits_fake are D's logits on the reconstructions with their gradient stopped
    (`jax.lax.stop_gradient(x_hat)`), so this step trains D alone.
    """
    hinge = hinge_discriminator_loss(logits_real, logits_fake)
    metrics = {
        "discriminator_loss": hinge,
        "logits_real": jnp.mean(logits_real.astype(jnp.float32)),
        "logits_fake": jnp.mean(logits_fake.astype(jnp.float32)),
    }
    return adversarial_gate(step, discriminator_start_step) * hinge, metrics
