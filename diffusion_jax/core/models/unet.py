"""Identity-conditioned ADM UNet (Dhariwal & Nichol 2021; Nichol & Dhariwal 2021) in Flax NNX.

The network predicts a tensor shaped like its input image x_t (epsilon, v or x_0: the loss
decides) from x_t, the integer timestep t and a unit identity embedding c:

    emb    = MLP_t(sinusoid(t)) + MLP_c(c')       c' = c where cond_mask, else the learned null c_0
    tokens = Linear(c') reshaped to [num_cond_tokens, 4 * base_channels]   (cross-attention only)

emb drives the scale-shift normalisation of every residual block; the attention blocks attend
over the feature map's positions and, with `cross_attention`, over the identity tokens too.

Pure-function use (the model holds parameters only, no RNG state, so this is all its state):

    model.train()                                   # or model.eval(): fixed in the graphdef
    graphdef, params = nnx.split(model, nnx.Param)

    @jax.jit
    def apply(params, x, t, cond, cond_mask, dropout_key):
        model = nnx.merge(graphdef, params)
        return model(x, t, cond, cond_mask, rngs=nnx.Rngs(dropout=dropout_key))

Train/eval mode is a static attribute, so `train()`/`eval()` must come before `nnx.split`; the
two modes give two graphdefs and two compilations.
"""

from collections.abc import Sequence

import einops
import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from diffusion_jax.core.models.layers import (
    AttentionBlock,
    Downsample,
    ResBlock,
    Upsample,
    conv3x3,
    depth_to_space,
    group_norm,
    sinusoidal_embedding,
    space_to_depth,
)

STEMS = ("conv", "space_to_depth")
SPACE_TO_DEPTH_BLOCK = 2


class ResAttentionBlock(nnx.Module):
    """A `ResBlock`, followed by an `AttentionBlock` at the resolutions that have attention."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        *,
        attention: bool,
        head_channels: int,
        token_dim: int | None,
        num_groups: int,
        dropout: float,
        dtype: DTypeLike,
        param_dtype: DTypeLike,
        rngs: nnx.Rngs,
    ):
        precision = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.res = ResBlock(
            in_channels, out_channels, emb_dim, num_groups=num_groups, dropout=dropout, **precision
        )
        self.attention = (
            AttentionBlock(
                out_channels, head_channels, token_dim=token_dim, num_groups=num_groups, **precision
            )
            if attention
            else None
        )

    def __call__(
        self,
        x: jax.Array,
        emb: jax.Array,
        tokens: jax.Array | None,
        *,
        rngs: nnx.Rngs | None,
    ) -> jax.Array:
        h = self.res(x, emb, rngs=rngs)
        return h if self.attention is None else self.attention(h, tokens)


class UNet(nnx.Module):
    """ADM UNet conditioned on a timestep and an identity embedding, NHWC.

    Encoder: per level, `num_res_blocks` residual(+attention) blocks at width
    base_channels * channel_mults[level], then a stride-2 downsample (except at the last level).
    Middle: residual, attention, residual. Decoder: per level, `num_res_blocks + 1` blocks, each
    fed the previous output concatenated with the matching encoder activation, then a
    nearest-neighbour upsample (except at the top level). Head: GroupNorm, SiLU, zero-initialised
    3x3 convolution, so the untrained network outputs zeros.

    Attributes of note: `null_cond` (nnx.Param [cond_dim]) is the learned condition used where
    `cond_mask` is False; `deterministic` is switched by `train()`/`eval()` with the dropouts.
    """

    def __init__(
        self,
        *,
        image_size: int,
        in_channels: int = 3,
        out_channels: int = 3,
        base_channels: int,
        channel_mults: Sequence[int],
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        head_channels: int,
        dropout: float = 0.0,
        cond_dim: int = 512,
        cross_attention: bool = False,
        num_cond_tokens: int = 4,
        stem: str = "conv",
        num_groups: int = 32,
        dtype: DTypeLike = jnp.float32,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the network; every argument is validated with a ValueError naming it.

        Args:
          image_size: height = width of the input images; divisible by 2^(len(channel_mults)-1),
            and by twice that with the space-to-depth stem.
          in_channels, out_channels: channels of the input image and of the prediction.
          base_channels: width of the first level; the embedding width is 4 * base_channels.
          channel_mults: width multiplier per level, from the top (full resolution) down.
          num_res_blocks: residual blocks per encoder level (the decoder has one more).
          attention_resolutions: feature-map sizes (height) at which blocks get attention.
          head_channels: width of one attention head; it divides every attended width.
          dropout: dropout rate inside the residual blocks, active in train mode only.
          cond_dim: width of the identity embedding.
          cross_attention: attention blocks also attend to `num_cond_tokens` identity tokens.
          num_cond_tokens: number of identity tokens; used only with cross_attention.
          stem: "conv" (3x3 convolution at full resolution) or "space_to_depth" (pixel-unshuffle
            by 2, then the convolution; the head ends with the matching depth-to-space), which
            runs the whole network at half resolution for 4x fewer FLOPs.
          num_groups: GroupNorm groups; divides every width.
          dtype: compute dtype, e.g. jnp.bfloat16.
          param_dtype: storage dtype of the parameters.
          rngs: initialisation keys (a `params` stream).
        """
        _validate_config(
            image_size=image_size,
            in_channels=in_channels,
            out_channels=out_channels,
            base_channels=base_channels,
            channel_mults=channel_mults,
            num_res_blocks=num_res_blocks,
            attention_resolutions=attention_resolutions,
            head_channels=head_channels,
            dropout=dropout,
            cond_dim=cond_dim,
            cross_attention=cross_attention,
            num_cond_tokens=num_cond_tokens,
            stem=stem,
            num_groups=num_groups,
        )
        self.image_size = image_size
        self.in_channels = in_channels
        self.base_channels = base_channels
        self.cond_dim = cond_dim
        self.dropout_rate = dropout
        self.deterministic = False
        precision = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        emb_dim = 4 * base_channels
        token_dim = emb_dim if cross_attention else None
        self.stem_block = SPACE_TO_DEPTH_BLOCK if stem == "space_to_depth" else 1
        stem_area = self.stem_block**2

        self.time_mlp = nnx.Sequential(
            nnx.Linear(base_channels, emb_dim, **precision),
            nnx.silu,
            nnx.Linear(emb_dim, emb_dim, **precision),
        )
        self.cond_mlp = nnx.Sequential(
            nnx.Linear(cond_dim, emb_dim, **precision),
            nnx.silu,
            nnx.Linear(emb_dim, emb_dim, **precision),
        )
        # About unit norm, like the identity embeddings it stands in for.
        self.null_cond = nnx.Param(
            jax.random.normal(rngs.params(), (cond_dim,), param_dtype) / jnp.sqrt(cond_dim)
        )
        self.num_cond_tokens = num_cond_tokens if cross_attention else 0
        self.cond_tokens = (
            nnx.Linear(cond_dim, num_cond_tokens * emb_dim, **precision)
            if cross_attention
            else None
        )

        def block(in_ch: int, out_ch: int, size: int) -> ResAttentionBlock:
            return ResAttentionBlock(
                in_ch,
                out_ch,
                emb_dim,
                attention=size in attention_resolutions,
                head_channels=head_channels,
                token_dim=token_dim,
                num_groups=num_groups,
                dropout=dropout,
                **precision,
            )

        self.stem = conv3x3(in_channels * stem_area, base_channels, **precision)
        size = image_size // self.stem_block
        channels = base_channels
        skip_channels = [channels]
        encoder, downsamples = [], []
        for level, mult in enumerate(channel_mults):
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(block(channels, base_channels * mult, size))
                channels = base_channels * mult
                skip_channels.append(channels)
            encoder.append(nnx.List(blocks))
            if level < len(channel_mults) - 1:
                downsamples.append(Downsample(channels, **precision))
                skip_channels.append(channels)
                size //= 2
        self.encoder = nnx.List(encoder)
        self.downsamples = nnx.List(downsamples)

        self.middle = ResAttentionBlock(
            channels,
            channels,
            emb_dim,
            attention=True,
            head_channels=head_channels,
            token_dim=token_dim,
            num_groups=num_groups,
            dropout=dropout,
            **precision,
        )
        self.middle_res = ResBlock(
            channels, channels, emb_dim, num_groups=num_groups, dropout=dropout, **precision
        )

        decoder, upsamples = [], []
        for level, mult in reversed(list(enumerate(channel_mults))):
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(block(channels + skip_channels.pop(), base_channels * mult, size))
                channels = base_channels * mult
            decoder.append(nnx.List(blocks))
            if level > 0:
                upsamples.append(Upsample(channels, **precision))
                size *= 2
        self.decoder = nnx.List(decoder)
        self.upsamples = nnx.List(upsamples)

        self.head_norm = group_norm(channels, num_groups, **precision)
        self.head = conv3x3(channels, out_channels * stem_area, zero_init=True, **precision)

    def __call__(
        self,
        x: jax.Array,
        t: jax.Array,
        cond: jax.Array,
        cond_mask: jax.Array | None = None,
        *,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """Predicts from a noisy batch.

        Args:
          x: noisy images [B, image_size, image_size, in_channels].
          t: integer timesteps [B].
          cond: identity embeddings [B, cond_dim], unit-normalised by the caller.
          cond_mask: bool [B]; False replaces that example's cond by `null_cond`. None: all True.
          rngs: a `dropout` stream (e.g. `nnx.Rngs(dropout=key)`); required in train mode when
            dropout > 0, ignored in eval mode.

        Returns:
          [B, image_size, image_size, out_channels] in x's dtype.
        """
        self._check_inputs(x, t, cond, cond_mask)
        if not self.deterministic and self.dropout_rate > 0 and rngs is None:
            raise ValueError(
                f"rngs=None, but the UNet is in train mode with dropout={self.dropout_rate}: pass "
                "rngs=nnx.Rngs(dropout=key), or call model.eval() for deterministic outputs"
            )
        if cond_mask is not None:
            cond = jnp.where(cond_mask[:, None], cond, self.null_cond[...])
        emb = self.time_mlp(sinusoidal_embedding(t, self.base_channels)) + self.cond_mlp(cond)
        tokens = (
            einops.rearrange(self.cond_tokens(cond), "b (n d) -> b n d", n=self.num_cond_tokens)
            if self.cond_tokens is not None
            else None
        )

        h = self.stem(space_to_depth(x, self.stem_block) if self.stem_block > 1 else x)
        skips = [h]
        for level, blocks in enumerate(self.encoder):
            for block in blocks:
                h = block(h, emb, tokens, rngs=rngs)
                skips.append(h)
            if level < len(self.downsamples):
                h = self.downsamples[level](h)
                skips.append(h)

        h = self.middle(h, emb, tokens, rngs=rngs)
        h = self.middle_res(h, emb, rngs=rngs)

        for level, blocks in enumerate(self.decoder):
            for block in blocks:
                h = block(jnp.concatenate([h, skips.pop()], axis=-1), emb, tokens, rngs=rngs)
            if level < len(self.upsamples):
                h = self.upsamples[level](h)

        out = self.head(nnx.silu(self.head_norm(h)))
        if self.stem_block > 1:
            out = depth_to_space(out, self.stem_block)
        return out.astype(x.dtype)

    def _check_inputs(
        self, x: jax.Array, t: jax.Array, cond: jax.Array, cond_mask: jax.Array | None
    ) -> None:
        expected_x = (self.image_size, self.image_size, self.in_channels)
        if x.ndim != 4 or x.shape[1:] != expected_x:
            raise ValueError(f"x.shape={x.shape}, expected [B, {', '.join(map(str, expected_x))}]")
        batch = x.shape[0]
        if t.shape != (batch,) or not jnp.issubdtype(t.dtype, jnp.integer):
            raise ValueError(
                f"t must be integer [{batch}], got t.shape={t.shape} t.dtype={t.dtype}"
            )
        if cond.shape != (batch, self.cond_dim):
            raise ValueError(f"cond.shape={cond.shape}, expected [{batch}, {self.cond_dim}]")
        if cond_mask is not None and (cond_mask.shape != (batch,) or cond_mask.dtype != jnp.bool_):
            raise ValueError(
                f"cond_mask must be bool [{batch}], got shape={cond_mask.shape} "
                f"dtype={cond_mask.dtype}"
            )


def feature_map_sizes(image_size: int, num_levels: int, stem: str) -> tuple[int, ...]:
    """Heights of the feature maps at each level, from the top; the stem may halve the first."""
    top = image_size // (SPACE_TO_DEPTH_BLOCK if stem == "space_to_depth" else 1)
    return tuple(top // 2**level for level in range(num_levels))


def _validate_config(
    *,
    image_size: int,
    in_channels: int,
    out_channels: int,
    base_channels: int,
    channel_mults: Sequence[int],
    num_res_blocks: int,
    attention_resolutions: Sequence[int],
    head_channels: int,
    dropout: float,
    cond_dim: int,
    cross_attention: bool,
    num_cond_tokens: int,
    stem: str,
    num_groups: int,
) -> None:
    positive = {
        "image_size": image_size,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "base_channels": base_channels,
        "num_res_blocks": num_res_blocks,
        "head_channels": head_channels,
        "cond_dim": cond_dim,
        "num_groups": num_groups,
    }
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {name}={value}")
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got stem={stem!r}")
    if not channel_mults or min(channel_mults) < 1:
        raise ValueError(
            f"channel_mults must be positive integers, got channel_mults={channel_mults}"
        )
    if base_channels % 2:
        raise ValueError(
            f"base_channels={base_channels} must be even (it is the sinusoidal embedding width)"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got dropout={dropout}")
    if cross_attention and num_cond_tokens < 1:
        raise ValueError(
            f"cross_attention needs num_cond_tokens >= 1, got num_cond_tokens={num_cond_tokens}"
        )

    stem_factor = SPACE_TO_DEPTH_BLOCK if stem == "space_to_depth" else 1
    divisor = 2 ** (len(channel_mults) - 1) * stem_factor
    if image_size % divisor:
        raise ValueError(
            f"image_size={image_size} must be divisible by {divisor} "
            f"(2^(len(channel_mults)-1), times {stem_factor} for stem={stem!r})"
        )

    widths = [base_channels] + [base_channels * m for m in channel_mults]
    for width in widths:
        if width % num_groups:
            raise ValueError(f"num_groups={num_groups} must divide every channel width {widths}")

    sizes = feature_map_sizes(image_size, len(channel_mults), stem)
    for size in attention_resolutions:
        if size not in sizes:
            raise ValueError(
                f"attention_resolutions={tuple(attention_resolutions)}: {size} is not a "
                f"feature-map size of this UNet; the sizes are {sizes}"
            )
    attended_widths = {
        base_channels * mult
        for mult, size in zip(channel_mults, sizes, strict=True)
        if size in attention_resolutions
    }
    attended_widths.add(base_channels * channel_mults[-1])  # the middle block always attends
    for width in sorted(attended_widths):
        if width % head_channels:
            raise ValueError(
                f"head_channels={head_channels} must divide every attended width "
                f"{sorted(attended_widths)}"
            )
