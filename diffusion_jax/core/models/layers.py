"""Building blocks of the ADM diffusion UNet (Dhariwal & Nichol 2021), in NHWC layout.

Every block takes `dtype` (the compute dtype) and `param_dtype` (the storage dtype of its
parameters) and passes them to its Flax layers. Group normalisation uses epsilon 1e-5, the
PyTorch default that ADM's `GroupNorm32` inherits, so weights port between the two frameworks.
"""

import functools
import math

import einops
import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

GROUP_NORM_EPSILON = 1e-5


def sinusoidal_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Embeds timesteps as sinusoids of geometrically spaced frequencies (ADM convention).

    With half = dim / 2 and w_k = max_period^(-k / half) for k = 0..half-1:
        emb(t) = [cos(t w_0), ..., cos(t w_{half-1}), sin(t w_0), ..., sin(t w_{half-1})].

    Args:
      t: timesteps, shape [B], integer or float.
      dim: embedding width; must be even.
      max_period: the longest period, reached by the lowest frequency.

    Returns:
      float32 [B, dim].
    """
    if dim % 2:
        raise ValueError(f"dim must be even, got dim={dim}")
    half = dim // 2
    frequencies = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = t.astype(jnp.float32)[:, None] * frequencies[None, :]
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def space_to_depth(x: jax.Array, block: int) -> jax.Array:
    """[B, H, W, C] -> [B, H/block, W/block, C*block^2], channels ordered (c, p, q).

    The order of PyTorch's pixel_unshuffle: input channel c at offset (p, q) goes to c*block^2 +
    p*block + q.
    """
    return einops.rearrange(x, "b (h p) (w q) c -> b h w (c p q)", p=block, q=block)


def depth_to_space(x: jax.Array, block: int) -> jax.Array:
    """Inverse of `space_to_depth`: [B, H, W, C*block^2] -> [B, H*block, W*block, C]."""
    return einops.rearrange(x, "b h w (c p q) -> b (h p) (w q) c", p=block, q=block)


def group_norm(
    channels: int,
    num_groups: int,
    *,
    epsilon: float = GROUP_NORM_EPSILON,
    dtype: DTypeLike,
    param_dtype: DTypeLike,
    rngs: nnx.Rngs,
) -> nnx.GroupNorm:
    """GroupNorm with a learned per-channel affine transform; statistics are reduced in float32."""
    return nnx.GroupNorm(
        channels,
        num_groups=num_groups,
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


def conv3x3(
    in_channels: int,
    out_channels: int,
    *,
    strides: int = 1,
    zero_init: bool = False,
    dtype: DTypeLike,
    param_dtype: DTypeLike,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """3x3 convolution padded by one pixel on every side (PyTorch's `padding=1`).

    A zero-initialised convolution makes the residual branch it closes start as the identity.
    """
    zero_kwargs = {"kernel_init": nnx.initializers.zeros_init()} if zero_init else {}
    return nnx.Conv(
        in_channels,
        out_channels,
        kernel_size=(3, 3),
        strides=strides,
        padding=((1, 1), (1, 1)),
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
        **zero_kwargs,
    )


class ResBlock(nnx.Module):
    """Residual block with scale-shift conditioning on an embedding (ADM's `use_scale_shift_norm`).

        h = Conv3x3(SiLU(GroupNorm(x)))
        [scale, shift] = Linear(SiLU(emb))
        h = GroupNorm(h) * (1 + scale) + shift
        out = Skip(x) + Conv3x3_0(Dropout(SiLU(h)))

    Skip is the identity when the channel count is unchanged and a 1x1 convolution otherwise;
    Conv3x3_0 is zero-initialised, so the block starts as Skip.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        *,
        num_groups: int,
        dropout: float,
        dtype: DTypeLike,
        param_dtype: DTypeLike,
        rngs: nnx.Rngs,
    ):
        precision = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.norm_in = group_norm(in_channels, num_groups, **precision)
        self.conv_in = conv3x3(in_channels, out_channels, **precision)
        self.emb_proj = nnx.Linear(emb_dim, 2 * out_channels, **precision)
        self.norm_out = group_norm(out_channels, num_groups, **precision)
        self.dropout = nnx.Dropout(dropout)
        self.conv_out = conv3x3(out_channels, out_channels, zero_init=True, **precision)
        self.skip = (
            nnx.Conv(in_channels, out_channels, kernel_size=(1, 1), **precision)
            if in_channels != out_channels
            else None
        )

    def __call__(self, x: jax.Array, emb: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """x: [B, H, W, C_in]; emb: [B, emb_dim]; rngs: a `dropout` stream, needed in train mode."""
        h = self.conv_in(nnx.silu(self.norm_in(x)))
        scale, shift = jnp.split(self.emb_proj(nnx.silu(emb))[:, None, None, :], 2, axis=-1)
        h = self.norm_out(h) * (1 + scale) + shift
        h = self.conv_out(self.dropout(nnx.silu(h), rngs=rngs))
        return h + (x if self.skip is None else self.skip(x))


class AttentionBlock(nnx.Module):
    """Multi-head attention over the feature map's positions, optionally also over condition tokens.

        q, k, v = Linear(GroupNorm(x)) at each of the H*W positions
        (cross-attention) k, v += Linear(tokens), appended after the positions' keys and values
        out = x + Linear_0(concat_heads(softmax(q k^T / sqrt(head_channels)) v))

    Appending the tokens' keys and values lets each position attend to the image and to the
    condition in one softmax, as in GLIDE's ADM variant. Linear_0 is zero-initialised, so the
    block starts as the identity.
    """

    def __init__(
        self,
        channels: int,
        head_channels: int,
        *,
        token_dim: int | None,
        num_groups: int,
        dtype: DTypeLike,
        param_dtype: DTypeLike,
        rngs: nnx.Rngs,
    ):
        """token_dim: width of the condition tokens to cross-attend to, None for self-attention."""
        if channels % head_channels:
            raise ValueError(
                f"head_channels={head_channels} must divide the attention width {channels}"
            )
        precision = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.num_heads = channels // head_channels
        self.norm = group_norm(channels, num_groups, **precision)
        self.qkv = nnx.Linear(channels, 3 * channels, **precision)
        self.token_kv = (
            nnx.Linear(token_dim, 2 * channels, **precision) if token_dim is not None else None
        )
        self.proj_out = nnx.Linear(
            channels, channels, kernel_init=nnx.initializers.zeros_init(), **precision
        )

    def __call__(self, x: jax.Array, tokens: jax.Array | None = None) -> jax.Array:
        """x: [B, H, W, C]; tokens: [B, T, token_dim], given exactly when built with token_dim."""
        if (tokens is None) != (self.token_kv is None):
            raise ValueError(
                "tokens must be given exactly when the block was built with token_dim; "
                f"got tokens={'None' if tokens is None else tokens.shape}"
            )
        height, width = x.shape[1:3]
        split_heads = functools.partial(_split_heads, num_heads=self.num_heads)
        positions = einops.rearrange(self.norm(x), "b h w c -> b (h w) c")
        q, k, v = map(split_heads, jnp.split(self.qkv(positions), 3, axis=-1))
        if tokens is not None:
            token_k, token_v = map(split_heads, jnp.split(self.token_kv(tokens), 2, axis=-1))
            k = jnp.concatenate([k, token_k], axis=1)
            v = jnp.concatenate([v, token_v], axis=1)
        attended = jax.nn.dot_product_attention(q, k, v)
        attended = einops.rearrange(attended, "b (h w) n d -> b h w (n d)", h=height, w=width)
        return x + self.proj_out(attended)


def _split_heads(a: jax.Array, num_heads: int) -> jax.Array:
    return einops.rearrange(a, "b l (n d) -> b l n d", n=num_heads)


class Downsample(nnx.Module):
    """Halves height and width with a 3x3 convolution of stride 2."""

    def __init__(self, channels: int, *, dtype: DTypeLike, param_dtype: DTypeLike, rngs: nnx.Rngs):
        self.conv = conv3x3(
            channels, channels, strides=2, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)


class Upsample(nnx.Module):
    """Doubles height and width: nearest-neighbour upsampling, then a 3x3 convolution."""

    def __init__(self, channels: int, *, dtype: DTypeLike, param_dtype: DTypeLike, rngs: nnx.Rngs):
        self.conv = conv3x3(channels, channels, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))
