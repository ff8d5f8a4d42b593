"""The KL autoencoder of latent diffusion (Rombach et al. 2022) in Flax NNX, NHWC.

The layout is exactly that of diffusers' `AutoencoderKL`, so Stable Diffusion's VAE and the other
diffusers VAEs port (see `diffusion_jax/convert/autoencoder_kl.py`). With C = block_out_channels
and L = layers_per_block:

    encoder  h = Conv3x3(x) -> DownEncoderBlock per C[i] -> MidBlock
             moments = Conv3x3(SiLU(GN(h)))                             2 * latent_channels
    quant    [mean, logvar] = Conv1x1(moments)   (quant_conv, if use_quant_conv)
             logvar clipped to [-30, 20], as diffusers' DiagonalGaussianDistribution does
    sample   z = mean + exp(logvar / 2) * eps,  eps ~ N(0, I)
    decoder  h = Conv3x3(Conv1x1(z))   (the 1x1 is post_quant_conv, if use_post_quant_conv)
             -> MidBlock -> UpDecoderBlock per reversed C[i] -> Conv3x3(SiLU(GN(h)))

    ResnetBlock       out = shortcut(x) + Conv3x3(SiLU(GN(Conv3x3(SiLU(GN(x))))))
                      shortcut: a 1x1 convolution when the channel count changes, else x
    DownEncoderBlock  L ResnetBlocks; then, on all but the last block, a 3x3 convolution of
                      stride 2 after padding one row at the bottom and one column at the right
    UpDecoderBlock    L + 1 ResnetBlocks; then, on all but the last block, nearest-neighbour 2x
                      upsampling and a 3x3 convolution
    MidBlock          ResnetBlock, SelfAttention (if mid_block_add_attention), ResnetBlock
    SelfAttention     out = x + Linear_o(softmax(q k^T / sqrt(C)) v), one head,
                      q, k, v = Linear(GN(x)) at each of the H*W positions

Every GroupNorm (GN) has epsilon 1e-6, diffusers' value for the VAE (PyTorch's default is 1e-5).
Images [B, H, W, in_channels] in [-1, 1] map to latents [B, H/f, W/f, latent_channels], with the
downsampling factor f = 2^(len(block_out_channels) - 1); H and W must be multiples of f.

Names: the module tree has diffusers' attribute names, so a parameter's path joined with dots is
its diffusers state-dict key, with `weight` for kernel and scale (`downsamplers`, `upsamplers` and
`to_out` are one-element lists, as in diffusers).

Sizes (`autoencoder_architecture`): Stable Diffusion's VAE, C = (128, 256, 512, 512), L = 2,
4 latent channels, 32 groups, has 83.65M parameters. For the 2-core CPU demo at 32x32, with L = 1,
4 latent channels and 8 groups (GFLOP: XLA's cost analysis of one 32x32 image, encode + decode):
    C = (32, 64)          f = 2   0.66M parameters   0.17 + 0.34 GFLOP   latents 16x16x4
    C = (32, 64, 64)      f = 4   0.95M parameters   0.10 + 0.29 GFLOP   latents 8x8x4
    C = (32, 64, 64, 64)  f = 8   1.25M parameters   0.09 + 0.29 GFLOP   latents 4x4x4

The model holds parameters only (no batch statistics, no dropout, no RNG state): the sampling key
is passed to `__call__`, and `nnx.split(model, nnx.Param)` is all its state.
"""

from collections.abc import Sequence
from typing import Any

import einops
import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from diffusion_jax.core.models.layers import Upsample, conv3x3, group_norm

GROUP_NORM_EPSILON = 1e-6
LOGVAR_MIN = -30.0
LOGVAR_MAX = 20.0


def autoencoder_architecture(
    *,
    block_out_channels: Sequence[int],
    layers_per_block: int,
    latent_channels: int,
    norm_num_groups: int,
    in_channels: int = 3,
    out_channels: int = 3,
    use_quant_conv: bool = True,
    use_post_quant_conv: bool = True,
    mid_block_add_attention: bool = True,
) -> dict[str, Any]:
    """The keyword arguments of AutoencoderKL (without dtypes and rngs); only JSON types.

    The names are those of diffusers' config.json.
    """
    return {
        "in_channels": int(in_channels),
        "out_channels": int(out_channels),
        "block_out_channels": [int(channels) for channels in block_out_channels],
        "layers_per_block": int(layers_per_block),
        "latent_channels": int(latent_channels),
        "norm_num_groups": int(norm_num_groups),
        "use_quant_conv": bool(use_quant_conv),
        "use_post_quant_conv": bool(use_post_quant_conv),
        "mid_block_add_attention": bool(mid_block_add_attention),
    }


def sample_latents(rng: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """z = mean + exp(logvar / 2) * eps with eps ~ N(0, I): a draw from N(mean, exp(logvar))."""
    eps = jax.random.normal(rng, mean.shape, mean.dtype)
    return mean + jnp.exp(0.5 * logvar) * eps


def _group_norm(channels: int, num_groups: int, **precision: Any) -> nnx.GroupNorm:
    """diffusers' GroupNorm (epsilon 1e-6, not the UNet's 1e-5)."""
    return group_norm(channels, num_groups, epsilon=GROUP_NORM_EPSILON, **precision)


def _conv1x1(in_channels: int, out_channels: int, **precision: Any) -> nnx.Conv:
    return nnx.Conv(in_channels, out_channels, kernel_size=(1, 1), **precision)


class ResnetBlock(nnx.Module):
    """diffusers' ResnetBlock2D without a time embedding (see the module docstring)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        num_groups: int,
        dtype: DTypeLike,
        param_dtype: DTypeLike,
        rngs: nnx.Rngs,
    ):
        precision = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.norm1 = _group_norm(in_channels, num_groups, **precision)
        self.conv1 = conv3x3(in_channels, out_channels, **precision)
        self.norm2 = _group_norm(out_channels, num_groups, **precision)
        self.conv2 = conv3x3(out_channels, out_channels, **precision)
        self.conv_shortcut = (
            _conv1x1(in_channels, out_channels, **precision)
            if in_channels != out_channels
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv1(nnx.silu(self.norm1(x)))
        h = self.conv2(nnx.silu(self.norm2(h)))
        return h + (x if self.conv_shortcut is None else self.conv_shortcut(x))


class SelfAttention(nnx.Module):
    """Single-head self-attention over the H*W positions, with a residual connection."""

    def __init__(
        self,
        channels: int,
        *,
        num_groups: int,
        dtype: DTypeLike,
        param_dtype: DTypeLike,
        rngs: nnx.Rngs,
    ):
        precision = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.group_norm = _group_norm(channels, num_groups, **precision)
        self.to_q = nnx.Linear(channels, channels, **precision)
        self.to_k = nnx.Linear(channels, channels, **precision)
        self.to_v = nnx.Linear(channels, channels, **precision)
        self.to_out = nnx.List([nnx.Linear(channels, channels, **precision)])

    def __call__(self, x: jax.Array) -> jax.Array:
        height, width = x.shape[1:3]
        positions = einops.rearrange(self.group_norm(x), "b h w c -> b (h w) 1 c")
        attended = jax.nn.dot_product_attention(
            self.to_q(positions), self.to_k(positions), self.to_v(positions)
        )
        attended = einops.rearrange(attended, "b (h w) 1 c -> b h w c", h=height, w=width)
        return x + self.to_out[0](attended)


class MidBlock(nnx.Module):
    """ResnetBlock, SelfAttention (when `add_attention`), ResnetBlock, at constant width."""

    def __init__(
        self,
        channels: int,
        *,
        add_attention: bool,
        num_groups: int,
        dtype: DTypeLike,
        param_dtype: DTypeLike,
        rngs: nnx.Rngs,
    ):
        precision = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.resnets = nnx.List(
            [ResnetBlock(channels, channels, num_groups=num_groups, **precision) for _ in range(2)]
        )
        self.attentions = nnx.List(
            [SelfAttention(channels, num_groups=num_groups, **precision)] if add_attention else []
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.resnets[0](x)
        for attention in self.attentions:
            h = attention(h)
        return self.resnets[1](h)


class AsymmetricDownsample(nnx.Module):
    """Halves H and W: a 3x3 convolution of stride 2 after padding one row at the bottom and one
    column at the right (diffusers' Downsample2D with padding=0, as its VAE encoder uses)."""

    def __init__(self, channels: int, *, dtype: DTypeLike, param_dtype: DTypeLike, rngs: nnx.Rngs):
        self.conv = nnx.Conv(
            channels,
            channels,
            kernel_size=(3, 3),
            strides=2,
            padding=((0, 1), (0, 1)),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)


class DownEncoderBlock(nnx.Module):
    """`num_resnets` ResnetBlocks, then an AsymmetricDownsample when `downsample`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        num_resnets: int,
        downsample: bool,
        num_groups: int,
        dtype: DTypeLike,
        param_dtype: DTypeLike,
        rngs: nnx.Rngs,
    ):
        precision = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.resnets = nnx.List(
            [
                ResnetBlock(
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    num_groups=num_groups,
                    **precision,
                )
                for i in range(num_resnets)
            ]
        )
        self.downsamplers = nnx.List(
            [AsymmetricDownsample(out_channels, **precision)] if downsample else []
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in [*self.resnets, *self.downsamplers]:
            x = block(x)
        return x


class UpDecoderBlock(nnx.Module):
    """`num_resnets` ResnetBlocks, then a nearest-neighbour 2x Upsample when `upsample`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        num_resnets: int,
        upsample: bool,
        num_groups: int,
        dtype: DTypeLike,
        param_dtype: DTypeLike,
        rngs: nnx.Rngs,
    ):
        precision = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.resnets = nnx.List(
            [
                ResnetBlock(
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    num_groups=num_groups,
                    **precision,
                )
                for i in range(num_resnets)
            ]
        )
        self.upsamplers = nnx.List([Upsample(out_channels, **precision)] if upsample else [])

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in [*self.resnets, *self.upsamplers]:
            x = block(x)
        return x


class Encoder(nnx.Module):
    """images [B, H, W, in_channels] -> moments [B, H/f, W/f, 2 * latent_channels]."""

    def __init__(
        self,
        *,
        in_channels: int,
        latent_channels: int,
        block_out_channels: Sequence[int],
        layers_per_block: int,
        num_groups: int,
        mid_block_add_attention: bool,
        dtype: DTypeLike,
        param_dtype: DTypeLike,
        rngs: nnx.Rngs,
    ):
        precision = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        groups = {"num_groups": num_groups}
        self.conv_in = conv3x3(in_channels, block_out_channels[0], **precision)
        inputs = [block_out_channels[0], *block_out_channels[:-1]]
        last = len(block_out_channels) - 1
        self.down_blocks = nnx.List(
            [
                DownEncoderBlock(
                    block_in,
                    block_out,
                    num_resnets=layers_per_block,
                    downsample=i != last,
                    **groups,
                    **precision,
                )
                for i, (block_in, block_out) in enumerate(
                    zip(inputs, block_out_channels, strict=True)
                )
            ]
        )
        width = block_out_channels[-1]
        self.mid_block = MidBlock(
            width, add_attention=mid_block_add_attention, **groups, **precision
        )
        self.conv_norm_out = _group_norm(width, num_groups, **precision)
        self.conv_out = conv3x3(width, 2 * latent_channels, **precision)

    def __call__(self, images: jax.Array) -> jax.Array:
        h = self.conv_in(images)
        for block in self.down_blocks:
            h = block(h)
        h = self.mid_block(h)
        return self.conv_out(nnx.silu(self.conv_norm_out(h)))


class Decoder(nnx.Module):
    """latents [B, h, w, latent_channels] -> images [B, h*f, w*f, out_channels]."""

    def __init__(
        self,
        *,
        out_channels: int,
        latent_channels: int,
        block_out_channels: Sequence[int],
        layers_per_block: int,
        num_groups: int,
        mid_block_add_attention: bool,
        dtype: DTypeLike,
        param_dtype: DTypeLike,
        rngs: nnx.Rngs,
    ):
        precision = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        groups = {"num_groups": num_groups}
        widths = list(reversed(block_out_channels))
        self.conv_in = conv3x3(latent_channels, widths[0], **precision)
        self.mid_block = MidBlock(
            widths[0], add_attention=mid_block_add_attention, **groups, **precision
        )
        inputs = [widths[0], *widths[:-1]]
        last = len(widths) - 1
        self.up_blocks = nnx.List(
            [
                UpDecoderBlock(
                    block_in,
                    block_out,
                    num_resnets=layers_per_block + 1,
                    upsample=i != last,
                    **groups,
                    **precision,
                )
                for i, (block_in, block_out) in enumerate(zip(inputs, widths, strict=True))
            ]
        )
        self.conv_norm_out = _group_norm(widths[-1], num_groups, **precision)
        self.conv_out = conv3x3(widths[-1], out_channels, **precision)

    def __call__(self, latents: jax.Array) -> jax.Array:
        h = self.mid_block(self.conv_in(latents))
        for block in self.up_blocks:
            h = block(h)
        return self.conv_out(nnx.silu(self.conv_norm_out(h)))


class AutoencoderKL(nnx.Module):
    """Encoder, Gaussian posterior and decoder (see the module docstring); NHWC, images in
    [-1, 1]. `dtype` is the compute dtype, `param_dtype` the storage dtype of the parameters."""

    def __init__(
        self,
        *,
        block_out_channels: Sequence[int],
        layers_per_block: int,
        latent_channels: int,
        norm_num_groups: int,
        in_channels: int = 3,
        out_channels: int = 3,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        _check_architecture(block_out_channels, layers_per_block, norm_num_groups)
        precision = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        shared = {
            "latent_channels": latent_channels,
            "block_out_channels": tuple(block_out_channels),
            "layers_per_block": layers_per_block,
            "num_groups": norm_num_groups,
            "mid_block_add_attention": mid_block_add_attention,
        }
        self.downsampling_factor = 2 ** (len(block_out_channels) - 1)
        self.latent_channels = latent_channels
        self.encoder = Encoder(in_channels=in_channels, **shared, **precision)
        self.decoder = Decoder(out_channels=out_channels, **shared, **precision)
        moments = 2 * latent_channels
        self.quant_conv = _conv1x1(moments, moments, **precision) if use_quant_conv else None
        self.post_quant_conv = (
            _conv1x1(latent_channels, latent_channels, **precision) if use_post_quant_conv else None
        )

    def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """images [B, H, W, in_channels] -> (mean, logvar), each [B, H/f, W/f, latent_channels];
        logvar is clipped to [LOGVAR_MIN, LOGVAR_MAX]."""
        height, width = images.shape[1:3]
        if height % self.downsampling_factor or width % self.downsampling_factor:
            raise ValueError(
                f"Images of {height}x{width} do not divide by the downsampling factor "
                f"{self.downsampling_factor}"
            )
        moments = self.encoder(images)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, latents: jax.Array) -> jax.Array:
        """latents [B, h, w, latent_channels] -> images [B, h*f, w*f, out_channels]."""
        if self.post_quant_conv is not None:
            latents = self.post_quant_conv(latents)
        return self.decoder(latents)

    def __call__(self, images: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(reconstruction, mean, logvar): the decoding of z = `sample_latents(rng, mean, logvar)`,
        a draw from the posterior of `images`."""
        mean, logvar = self.encode(images)
        return self.decode(sample_latents(rng, mean, logvar)), mean, logvar


def _check_architecture(
    block_out_channels: Sequence[int], layers_per_block: int, norm_num_groups: int
) -> None:
    if not block_out_channels:
        raise ValueError("block_out_channels must name at least one block")
    if layers_per_block < 1:
        raise ValueError(f"layers_per_block must be at least 1, got {layers_per_block}")
    indivisible = [channels for channels in block_out_channels if channels % norm_num_groups]
    if indivisible:
        raise ValueError(
            f"norm_num_groups={norm_num_groups} must divide every entry of block_out_channels="
            f"{list(block_out_channels)}; it does not divide {indivisible}"
        )
