"""IResNet, the face-recognition backbone of ArcFace (Deng et al. 2019), in Flax NNX, NHWC.

The layout is exactly that of insightface's `arcface_torch` backbones, so their weights port
(see `diffusion_jax/convert/arcface_torch.py`):

    stem   h = PReLU(BN(Conv3x3(x)))                                     stem_channels, stride 1
    stage  IBasicBlock x depth[s], width widths[s]; the first block halves H and W
    block  out = BN(Conv3x3_stride(PReLU(BN(Conv3x3(BN(x)))))) + skip(x)
           skip = BN(Conv1x1_stride(x)) on the first block of a stage, else the identity
    head   e = BN_features(Linear(Dropout(flatten(BN(h)))))              [B, embedding_dim]

Convolutions have no bias; PReLU has one slope per channel; BN_features has a bias but its scale
is fixed at 1 (arcface_torch freezes it at 1), so it has no scale parameter here. Every BN uses
epsilon 1e-5 and momentum 0.9 (PyTorch's momentum 0.1; in training flax averages the biased
batch variance where PyTorch averages the unbiased one, a factor n / (n - 1)). The stages end at
resolution input_resolution / 2^len(depths) (7x7 for 112x112 inputs and four stages).
Initialisation is flax's default: a BN follows every convolution and the Linear layer, so in train
mode the output does not depend on the scale of their initial weights (up to BN's epsilon).

Architectures (`iresnet_architecture`): iresnet18/34/50/100 are arcface_torch's (widths 64, 128,
256, 512; 24.0M, 34.1M, 43.6M, 65.2M parameters at 112x112). iresnet_small (blocks 1, 2, 2, 1;
widths 16, 32, 64, 128) is for a 2-core CPU at 32x32: 0.66M parameters, 0.26M of them in fc.

Flatten order: `flatten` turns the last feature map [B, H, W, C] into [B, H*W*C] in (h, w, c)
order, while PyTorch flattens NCHW in (c, h, w) order; the converter permutes the rows of the
Linear kernel accordingly, so the two networks compute the same function.

Inputs are RGB in [-1, 1], insightface's normalisation (x / 255 - 0.5) / 0.5 of 8-bit pixels.
The output is the un-normalised embedding (what arcface_torch returns); normalise it to unit
length for cosine similarities.

Train/eval mode: `model.train()` / `model.eval()` switch the BatchNorms (batch statistics vs
running averages) and the dropout. The module holds no RNG state: the dropout key is passed at
call time, so `nnx.split(model, nnx.Param, nnx.BatchStat)` is all its state. In train mode a call
updates the running averages in place (read them back with `nnx.split` after a jitted step).
"""

from collections.abc import Sequence
from typing import Any

import einops
import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

IRESNET_NAMES = ("iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet_small")

BATCH_NORM_EPSILON = 1e-5
BATCH_NORM_MOMENTUM = 0.9  # flax's decay of the running averages: PyTorch's momentum 0.1
PRELU_INIT = 0.25  # PyTorch's nn.PReLU default slope

_ARCFACE_WIDTHS = (64, 128, 256, 512)
_ARCFACE_STEM_CHANNELS = 64
# Blocks per stage of the published networks, and of the small one.
_DEPTHS = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
    "iresnet_small": (1, 2, 2, 1),
}
_SMALL_WIDTHS = (16, 32, 64, 128)
_SMALL_STEM_CHANNELS = 16


def iresnet_architecture(
    name: str, *, input_resolution: int = 112, embedding_dim: int = 512, dropout: float = 0.0
) -> dict[str, Any]:
    """The keyword arguments of IResNet for `name`; only JSON types (ints, floats, lists, str)."""
    if name not in _DEPTHS:
        raise ValueError(f"Unknown IResNet {name!r}; choose one of {IRESNET_NAMES}")
    small = name == "iresnet_small"
    return {
        "depths": list(_DEPTHS[name]),
        "widths": list(_SMALL_WIDTHS if small else _ARCFACE_WIDTHS),
        "stem_channels": _SMALL_STEM_CHANNELS if small else _ARCFACE_STEM_CHANNELS,
        "input_resolution": input_resolution,
        "embedding_dim": embedding_dim,
        "dropout": float(dropout),
    }


class PReLU(nnx.Module):
    """Parametric ReLU with one learned slope a per channel (last axis): max(x, 0) + a min(x, 0)."""

    def __init__(self, channels: int, *, dtype: DTypeLike, param_dtype: DTypeLike):
        self.negative_slope = nnx.Param(jnp.full((channels,), PRELU_INIT, param_dtype))
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        slope = self.negative_slope[...].astype(self.dtype)
        return jnp.where(x >= 0, x, slope * x)


def _batch_norm(
    channels: int,
    *,
    use_scale: bool = True,
    dtype: DTypeLike,
    param_dtype: DTypeLike,
    rngs: nnx.Rngs,
) -> nnx.BatchNorm:
    return nnx.BatchNorm(
        channels,
        momentum=BATCH_NORM_MOMENTUM,
        epsilon=BATCH_NORM_EPSILON,
        use_scale=use_scale,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


def _conv(
    in_channels: int,
    out_channels: int,
    *,
    kernel_size: int,
    strides: int = 1,
    dtype: DTypeLike,
    param_dtype: DTypeLike,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """Bias-free convolution padded by kernel_size // 2 on every side (PyTorch's padding)."""
    pad = kernel_size // 2
    return nnx.Conv(
        in_channels,
        out_channels,
        kernel_size=(kernel_size, kernel_size),
        strides=strides,
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


class IBasicBlock(nnx.Module):
    """out = bn3(conv2(prelu(bn2(conv1(bn1(x)))))) + skip(x); conv2 and the skip carry the stride.

    skip(x) = downsample_bn(downsample_conv(x)) when `downsample`, else x (which then needs
    in_channels == out_channels and stride 1).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        strides: int,
        downsample: bool,
        dtype: DTypeLike,
        param_dtype: DTypeLike,
        rngs: nnx.Rngs,
    ):
        precision = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.bn1 = _batch_norm(in_channels, **precision)
        self.conv1 = _conv(in_channels, out_channels, kernel_size=3, **precision)
        self.bn2 = _batch_norm(out_channels, **precision)
        self.prelu = PReLU(out_channels, dtype=dtype, param_dtype=param_dtype)
        self.conv2 = _conv(out_channels, out_channels, kernel_size=3, strides=strides, **precision)
        self.bn3 = _batch_norm(out_channels, **precision)
        if downsample:
            self.downsample_conv = _conv(
                in_channels, out_channels, kernel_size=1, strides=strides, **precision
            )
            self.downsample_bn = _batch_norm(out_channels, **precision)
        else:
            self.downsample_conv = self.downsample_bn = None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        skip = x if self.downsample_conv is None else self.downsample_bn(self.downsample_conv(x))
        return h + skip


class IResNet(nnx.Module):
    """IResNet embedding network (see the module docstring for the layout and conventions).

    Attributes mirror arcface_torch's names: conv1, bn1, prelu (stem); stages[s][b] (torch's
    layer{s+1}.{b}); bn2, dropout, fc, features (head). `deterministic` is switched with the
    dropout by `train()` / `eval()`.
    """

    def __init__(
        self,
        *,
        depths: Sequence[int],
        widths: Sequence[int],
        stem_channels: int,
        input_resolution: int,
        embedding_dim: int,
        dropout: float,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the network; bad arguments raise a ValueError naming them.

        Args:
          depths: IBasicBlocks per stage.
          widths: channels per stage, as many as depths; every stage halves height and width.
          stem_channels: channels of the stem convolution.
          input_resolution: height = width of the input images, divisible by 2^len(depths).
          embedding_dim: width of the embedding.
          dropout: dropout rate before the Linear layer, active in train mode only.
          dtype: compute dtype, e.g. jnp.bfloat16; the embedding is returned in float32.
          param_dtype: storage dtype of the parameters.
          rngs: initialisation keys (a `params` stream).
        """
        _validate_architecture(
            depths=depths,
            widths=widths,
            stem_channels=stem_channels,
            input_resolution=input_resolution,
            embedding_dim=embedding_dim,
            dropout=dropout,
        )
        self.input_resolution = input_resolution
        self.embedding_dim = embedding_dim
        self.dropout_rate = dropout
        self.deterministic = False
        precision = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}

        self.conv1 = _conv(3, stem_channels, kernel_size=3, **precision)
        self.bn1 = _batch_norm(stem_channels, **precision)
        self.prelu = PReLU(stem_channels, dtype=dtype, param_dtype=param_dtype)

        stages = []
        channels = stem_channels
        for depth, width in zip(depths, widths, strict=True):
            blocks = [
                IBasicBlock(
                    channels if index == 0 else width,
                    width,
                    strides=2 if index == 0 else 1,
                    downsample=index == 0,
                    **precision,
                )
                for index in range(depth)
            ]
            stages.append(nnx.List(blocks))
            channels = width
        self.stages = nnx.List(stages)

        final_size = input_resolution // 2 ** len(depths)
        self.bn2 = _batch_norm(channels, **precision)
        self.dropout = nnx.Dropout(dropout)
        self.fc = nnx.Linear(channels * final_size**2, embedding_dim, **precision)
        self.features = _batch_norm(embedding_dim, use_scale=False, **precision)

    def __call__(self, images: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """images [B, input_resolution, input_resolution, 3] RGB in [-1, 1] -> [B, embedding_dim]
        un-normalised embeddings (the 'features' BN output, as arcface_torch returns), float32.

        rngs: a `dropout` stream (e.g. `nnx.Rngs(dropout=key)`); required in train mode when
        dropout > 0, ignored in eval mode.
        """
        if not self.deterministic and self.dropout_rate > 0 and rngs is None:
            raise ValueError(
                f"rngs=None, but the IResNet is in train mode with dropout={self.dropout_rate}: "
                "pass rngs=nnx.Rngs(dropout=key), or call model.eval() for deterministic outputs"
            )
        h = self.stage_features(images)[-1]
        h = einops.rearrange(self.bn2(h), "b h w c -> b (h w c)")
        h = self.fc(self.dropout(h, rngs=rngs))
        return self.features(h).astype(jnp.float32)

    def stage_features(self, images: jax.Array) -> list[jax.Array]:
        """The feature maps after the stem and after each stage, in the compute dtype:
        [B, R, R, stem_channels], then [B, R / 2^(s+1), R / 2^(s+1), widths[s]] for each stage s,
        with R = input_resolution. The last one is what the head of `__call__` reads.

        Images are as for `__call__`; the BatchNorms follow the train/eval mode as there.
        """
        expected = (self.input_resolution, self.input_resolution, 3)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(
                f"images.shape={images.shape}, expected [B, {', '.join(map(str, expected))}]"
            )
        h = self.prelu(self.bn1(self.conv1(images)))
        features = [h]
        for blocks in self.stages:
            for block in blocks:
                h = block(h)
            features.append(h)
        return features


def _validate_architecture(
    *,
    depths: Sequence[int],
    widths: Sequence[int],
    stem_channels: int,
    input_resolution: int,
    embedding_dim: int,
    dropout: float,
) -> None:
    if not depths or len(depths) != len(widths):
        raise ValueError(
            f"depths and widths need one entry per stage, got depths={list(depths)} "
            f"widths={list(widths)}"
        )
    if min(depths) < 1 or min(widths) < 1:
        raise ValueError(
            f"depths and widths must be positive, got depths={list(depths)} widths={list(widths)}"
        )
    for name, value in {"stem_channels": stem_channels, "embedding_dim": embedding_dim}.items():
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {name}={value}")
    divisor = 2 ** len(depths)
    if input_resolution < divisor or input_resolution % divisor:
        raise ValueError(
            f"input_resolution={input_resolution} must be a positive multiple of {divisor} "
            f"(each of the {len(depths)} stages halves it)"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got dropout={dropout}")
