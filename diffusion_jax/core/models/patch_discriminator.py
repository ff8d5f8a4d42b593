"""PatchGAN discriminator (pix2pix; taming-transformers' NLayerDiscriminator) in Flax NNX, NHWC.

    h = LeakyReLU(Conv4x4_stride2(x))                         base_channels, with bias
    h = LeakyReLU(GroupNorm(Conv4x4_stride_n(h)))             n = 1..num_layers; no bias;
                                                              base_channels * min(2^n, 8);
                                                              stride 2, except 1 for the last
    logits = Conv4x4_stride1(h)                               1 channel, with bias

LeakyReLU has slope 0.2. Every convolution pads one pixel on each side (PyTorch's padding=1, as
taming; flax's "SAME" would pad a 4x4 kernel unevenly), so a stride-2 convolution maps a side
H to floor(H / 2) and a stride-1 one to H - 1: the logit map has side
floor(H / 2^num_layers) - 2, each logit judging a patch of 16, 34 or 70 pixels for num_layers =
1, 2 or 3 (70: pix2pix's "70x70 PatchGAN"). For the faces of this project:

    input side         32     64     112
    num_layers = 2    6x6  14x14   26x26
    num_layers = 3    2x2    6x6   12x12

so num_layers = 2 suits 32x32 (patches about the image's size) and 3 suits 64x64 and up.

Normalisation: GroupNorm where taming has BatchNorm. BatchNorm carries running averages (state
beyond the parameters, and a train/eval switch) and in training normalises each image by the
statistics of its batch, so its logits depend on the other images in the batch; taming passes real
and reconstructed images in separate calls, each normalised by its own statistics. GroupNorm
normalises each image by itself: the module's whole state is its parameters, and the logits do
not depend on the batch or on how it is sharded. (Spectral normalisation, the other common choice,
keeps power-iteration vectors as state.) Its statistics span the whole image, so a logit sees
pixels outside its patch through them, as with BatchNorm in training.

Initialisation follows taming's `weights_init` for the convolutions: kernels from N(0, 0.02^2),
biases 0. GroupNorm starts at scale 1 and shift 0 (taming draws BatchNorm scales from
N(1, 0.02^2)). The parameter count equals taming's for the same widths: 2,765,633 for
base_channels=64, num_layers=3.
"""

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from diffusion_jax.core.models.layers import group_norm

LEAKY_RELU_SLOPE = 0.2
KERNEL_INIT_STD = 0.02  # taming's weights_init
MAX_WIDTH_MULTIPLIER = 8


def _conv4x4(
    in_channels: int,
    out_channels: int,
    *,
    strides: int,
    use_bias: bool,
    dtype: DTypeLike,
    param_dtype: DTypeLike,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    return nnx.Conv(
        in_channels,
        out_channels,
        kernel_size=(4, 4),
        strides=strides,
        padding=((1, 1), (1, 1)),
        use_bias=use_bias,
        kernel_init=nnx.initializers.normal(KERNEL_INIT_STD),
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


class PatchDiscriminator(nnx.Module):
    """images [B, H, W, in_channels] in [-1, 1] -> float32 logits [B, h, w, 1] (module docstring).

    Attributes: conv_in; convs[n - 1] and norms[n - 1] for n = 1..num_layers; conv_out.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        base_channels: int = 64,
        num_layers: int = 3,
        num_groups: int = 32,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the discriminator; bad arguments raise a ValueError naming them.

        Args:
          in_channels: channels of the images.
          base_channels: width of the first convolution; layer n has base_channels * min(2^n, 8).
          num_layers: normalised convolutions; all but the last halve height and width.
          num_groups: GroupNorm groups; must divide every normalised width.
          dtype: compute dtype; the logits are returned in float32.
          param_dtype: storage dtype of the parameters.
          rngs: initialisation keys (a `params` stream).
        """
        if min(in_channels, base_channels, num_layers, num_groups) < 1:
            raise ValueError(
                "in_channels, base_channels, num_layers and num_groups must be positive, got "
                f"{in_channels}, {base_channels}, {num_layers}, {num_groups}"
            )
        widths = [base_channels * min(2**n, MAX_WIDTH_MULTIPLIER) for n in range(num_layers + 1)]
        if any(width % num_groups for width in widths[1:]):
            raise ValueError(
                f"num_groups={num_groups} must divide every normalised width {widths[1:]}"
            )
        self.in_channels = in_channels
        self.num_layers = num_layers
        precision = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.conv_in = _conv4x4(in_channels, widths[0], strides=2, use_bias=True, **precision)
        self.convs = nnx.List(
            _conv4x4(
                widths[n - 1],
                widths[n],
                strides=1 if n == num_layers else 2,
                use_bias=False,
                **precision,
            )
            for n in range(1, num_layers + 1)
        )
        self.norms = nnx.List(group_norm(width, num_groups, **precision) for width in widths[1:])
        self.conv_out = _conv4x4(widths[-1], 1, strides=1, use_bias=True, **precision)

    def __call__(self, images: jax.Array) -> jax.Array:
        """images [B, H, W, in_channels] -> logits [B, floor(H / 2^L) - 2, ..., 1], L = num_layers.

        H and W must be at least 3 * 2^L, so that the logit map is not empty.
        """
        min_side = 3 * 2**self.num_layers
        layout_ok = images.ndim == 4 and images.shape[-1] == self.in_channels
        if not layout_ok or min(images.shape[1:3]) < min_side:
            raise ValueError(
                f"images.shape={images.shape}, expected [B, H, W, {self.in_channels}] with H, W "
                f">= {min_side} (num_layers={self.num_layers})"
            )
        h = nnx.leaky_relu(self.conv_in(images), LEAKY_RELU_SLOPE)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = nnx.leaky_relu(norm(conv(h)), LEAKY_RELU_SLOPE)
        return self.conv_out(h).astype(jnp.float32)
