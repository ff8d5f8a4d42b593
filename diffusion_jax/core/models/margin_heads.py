"""Margin-based softmax heads for training face recognisers (insightface's combined margin).

Embeddings x_i and class centres w_j are L2-normalised, so the classifier sees only the cosine
cos(theta_ij) = <x_i, w_j> / (|x_i| |w_j|). For example i with label y_i the logits are

    z_ij = s * cos(theta_ij)                           j != y_i
    z_iy = s * (cos(m1 * theta_iy + m2) - m3)          j == y_i

(ArcFace, Deng et al. 2019; insightface's `margin_softmax`): m1 is SphereFace's multiplicative
angular margin, m2 ArcFace's additive angular margin, m3 CosFace's additive cosine margin, and
m = (1, 0, 0) gives the normalised softmax of NormFace. Training minimises the cross entropy of
softmax(z_i) against y_i.

cos(m1 * theta + m2) stops decreasing in theta once m1 * theta + m2 passes pi. Past that point,
theta > theta_0 = (pi - m2) / m1, the target cosine is instead

    cos(theta) - sin(theta_0) * (pi - theta_0),

a fixed cosine margin: the first-order effect of the angular margin at theta_0, which is
pi - theta_0, on cos(theta) there. It starts below -1 whenever pi - theta_0 <= pi/2 (every
ArcFace margin m2 <= pi/2), so the target cosine keeps decreasing in theta across theta_0. For
ArcFace (m1 = 1) this is insightface's rule `cos(theta) - sin(pi - m2) * m2`, used where
cos(theta) <= cos(pi - m2) by arcface_torch's `CombinedMarginLoss` from March to December 2022;
extending it to m1 != 1 is this module's choice. Since December 2022 arcface_torch evaluates
cos(theta + m2) without the fallback, under `torch.no_grad`, so its gradient with respect to the
cosine is the constant s; here gradients are exact.

Cosines are clipped to [-1 + 1e-6, 1 - 1e-6] before arccos, so d(theta)/d(cos) stays finite;
the pure CosFace/NormFace case (m1 = 1, m2 = 0) takes no arccos and needs no clip.
"""

import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.typing import DTypeLike

# (m1, m2, m3). ArcFace and CosFace: arcface_torch's configs (its MXNet predecessor and the
# CosFace paper use m3 = 0.35). Combined: the MXNet `sample_config.py` default.
MARGIN_PRESETS: dict[str, tuple[float, float, float]] = {
    "arcface": (1.0, 0.5, 0.0),
    "cosface": (1.0, 0.0, 0.4),
    "combined": (1.0, 0.3, 0.2),
}

COSINE_CLIP = 1e-6  # arccos sees cosines in [-1 + COSINE_CLIP, 1 - COSINE_CLIP]
NORM_EPSILON = 1e-12  # floor of the norm in L2 normalisation, as torch's F.normalize


def margins_for(
    head: str, m1: float | None = None, m2: float | None = None, m3: float | None = None
) -> tuple[float, float, float]:
    """(m1, m2, m3) of the preset `head` (a key of MARGIN_PRESETS); given margins override it.

    Raises:
      ValueError: if `head` is not a preset name, or the resulting margins are invalid.
    """
    if head not in MARGIN_PRESETS:
        raise ValueError(
            f"unknown margin head {head!r}; valid names: {', '.join(sorted(MARGIN_PRESETS))}"
        )
    overrides = (m1, m2, m3)
    margins = tuple(
        float(given) if given is not None else preset
        for given, preset in zip(overrides, MARGIN_PRESETS[head])
    )
    _check_margins(*margins)
    return margins


def _check_margins(m1: float, m2: float, m3: float) -> None:
    if not m1 > 0:
        raise ValueError(f"m1 must be positive, got m1={m1}")
    if not 0 <= m2 < math.pi:
        raise ValueError(f"m2 must be in [0, pi), got m2={m2}")
    if not math.isfinite(m3):
        raise ValueError(f"m3 must be finite, got m3={m3}")


def _check_scale(scale: float) -> None:
    if not scale > 0:
        raise ValueError(f"scale must be positive, got scale={scale}")


def margin_logits(
    cosines: jax.Array, labels: jax.Array, *, scale: float, m1: float, m2: float, m3: float
) -> jax.Array:
    """Scaled logits with the combined margin on each example's target class (see module doc).

    Args:
      cosines: [B, C] cosines between normalised embeddings and class centres, any float dtype.
      labels: int [B], the target class of each example, in [0, C).
      scale: s, the inverse temperature (insightface: 64).
      m1, m2, m3: the margins, Python floats (static under jax.jit).

    Returns:
      float32 [B, C]: s * cos for non-target classes, s * (margin target cosine) for the target.
    """
    _check_scale(scale)
    _check_margins(m1, m2, m3)
    cosines = cosines.astype(jnp.float32)
    target = jnp.take_along_axis(cosines, labels[:, None], axis=-1)[:, 0]
    if m1 == 1.0 and m2 == 0.0:
        target_with_margin = target - m3
    else:
        theta = jnp.arccos(jnp.clip(target, -1.0 + COSINE_CLIP, 1.0 - COSINE_CLIP))
        angle = m1 * theta + m2
        theta_0 = (math.pi - m2) / m1
        fallback = target - math.sin(theta_0) * (math.pi - theta_0)
        target_with_margin = jnp.where(angle <= math.pi, jnp.cos(angle), fallback) - m3
    is_target = labels[:, None] == jnp.arange(cosines.shape[-1])[None, :]
    return scale * jnp.where(is_target, target_with_margin[:, None], cosines)


def margin_softmax_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example cross entropy, float32 [B], of softmax(logits) [B, C] against int labels [B]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def _l2_normalize(x: jax.Array, axis: int) -> jax.Array:
    norm = jnp.linalg.norm(x, axis=axis, keepdims=True)
    return x / jnp.maximum(norm, NORM_EPSILON)


class MarginSoftmaxHead(nnx.Module):
    """Normalised linear classifier with the combined margin; the training head of a recogniser.

    `kernel` (nnx.Param [embedding_dim, num_classes]) holds one class centre per column, drawn
    from N(0, 0.01^2) as in arcface_torch's PartialFC; columns and embeddings are L2-normalised at
    every use, so only their directions matter. Normalisation runs in float32; the cosine matmul
    runs in `dtype` with float32 accumulation.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        *,
        scale: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.5,
        m3: float = 0.0,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the head; invalid scale or margins raise a ValueError naming them.

        Args:
          embedding_dim: width D of the embeddings.
          num_classes: number of identities C.
          scale, m1, m2, m3: s and the margins of `margin_logits` (default: ArcFace, s = 64).
          dtype: compute dtype of the cosine matmul, e.g. jnp.bfloat16.
          param_dtype: storage dtype of `kernel`.
          rngs: initialisation keys (a `params` stream).
        """
        _check_scale(scale)
        _check_margins(m1, m2, m3)
        self.scale = scale
        self.m1, self.m2, self.m3 = m1, m2, m3
        self.dtype = dtype
        self.kernel = nnx.Param(
            0.01 * jax.random.normal(rngs.params(), (embedding_dim, num_classes), param_dtype)
        )

    def cosines(self, embeddings: jax.Array) -> jax.Array:
        """float32 [B, num_classes] cosines of embeddings [B, embedding_dim], without margin."""
        x = _l2_normalize(embeddings.astype(jnp.float32), axis=-1)
        w = _l2_normalize(self.kernel[...].astype(jnp.float32), axis=0)
        return jnp.matmul(
            x.astype(self.dtype), w.astype(self.dtype), preferred_element_type=jnp.float32
        )

    def __call__(self, embeddings: jax.Array, labels: jax.Array) -> jax.Array:
        """Training logits, float32 [B, num_classes]: `margin_logits` of the cosines."""
        return margin_logits(
            self.cosines(embeddings), labels, scale=self.scale, m1=self.m1, m2=self.m2, m3=self.m3
        )
