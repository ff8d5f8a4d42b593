"""PyTorch twin of `diffusion_jax.models.unet.UNet`, the peer that benchmarks measure JAX against.

Same architecture, same parameter count, same module and attribute names (NCHW instead of NHWC),
so `load_jax_params` copies a JAX model's weights across and both compute the same function.
Benchmarks only: it needs the optional `torch` extra.
"""

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

GROUP_NORM_EPSILON = 1e-5


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """[cos(t w_k), sin(t w_k)], w_k = max_period^(-k / (dim/2)): the JAX `sinusoidal_embedding`."""
    half = dim // 2
    frequencies = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    angles = t.float()[:, None] * frequencies[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def group_norm(channels: int, num_groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups, channels, eps=GROUP_NORM_EPSILON)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)


def zero_init(module: nn.Module) -> nn.Module:
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class ResBlock(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, emb_dim: int, *, num_groups: int, dropout: float
    ):
        super().__init__()
        self.norm_in = group_norm(in_channels, num_groups)
        self.conv_in = conv3x3(in_channels, out_channels)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels)
        self.norm_out = group_norm(out_channels, num_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv_out = zero_init(conv3x3(out_channels, out_channels))
        self.skip = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1)
            if in_channels != out_channels
            else None
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(F.silu(self.norm_in(x)))
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm_out(h) * (1 + scale) + shift
        h = self.conv_out(self.dropout(F.silu(h)))
        return h + (x if self.skip is None else self.skip(x))


class AttentionBlock(nn.Module):
    def __init__(
        self, channels: int, head_channels: int, *, token_dim: int | None, num_groups: int
    ):
        super().__init__()
        self.num_heads = channels // head_channels
        self.norm = group_norm(channels, num_groups)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.token_kv = nn.Linear(token_dim, 2 * channels) if token_dim is not None else None
        self.proj_out = zero_init(nn.Linear(channels, channels))

    def _split_heads(self, a: torch.Tensor) -> torch.Tensor:
        batch, length, _ = a.shape
        return a.reshape(batch, length, self.num_heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
        batch, channels, height, width = x.shape
        positions = self.norm(x).flatten(2).transpose(1, 2)
        q, k, v = map(self._split_heads, self.qkv(positions).chunk(3, dim=-1))
        if tokens is not None:
            token_k, token_v = map(self._split_heads, self.token_kv(tokens).chunk(2, dim=-1))
            k = torch.cat([k, token_k], dim=2)
            v = torch.cat([v, token_v], dim=2)
        attended = F.scaled_dot_product_attention(q, k, v)
        attended = attended.transpose(1, 2).reshape(batch, height * width, channels)
        return x + self.proj_out(attended).transpose(1, 2).reshape(batch, channels, height, width)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv3x3(channels, channels, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class ResAttentionBlock(nn.Module):
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
    ):
        super().__init__()
        self.res = ResBlock(
            in_channels, out_channels, emb_dim, num_groups=num_groups, dropout=dropout
        )
        self.attention = (
            AttentionBlock(out_channels, head_channels, token_dim=token_dim, num_groups=num_groups)
            if attention
            else None
        )

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, tokens: torch.Tensor | None
    ) -> torch.Tensor:
        h = self.res(x, emb)
        return h if self.attention is None else self.attention(h, tokens)


class TorchUNet(nn.Module):
    """The JAX UNet's architecture in PyTorch; takes NCHW images. Arguments as the JAX `UNet`'s
    (its constructor validates them; this twin assumes a configuration it accepted)."""

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
    ):
        super().__init__()
        self.base_channels = base_channels
        self.stem_block = 2 if stem == "space_to_depth" else 1
        self.num_cond_tokens = num_cond_tokens if cross_attention else 0
        emb_dim = 4 * base_channels
        token_dim = emb_dim if cross_attention else None

        self.time_mlp = nn.Sequential(
            nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.cond_mlp = nn.Sequential(
            nn.Linear(cond_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.null_cond = nn.Parameter(torch.randn(cond_dim) / math.sqrt(cond_dim))
        self.cond_tokens = (
            nn.Linear(cond_dim, num_cond_tokens * emb_dim) if cross_attention else None
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
            )

        self.stem = conv3x3(in_channels * self.stem_block**2, base_channels)
        size = image_size // self.stem_block
        channels = base_channels
        skip_channels = [channels]
        self.encoder, self.downsamples = nn.ModuleList(), nn.ModuleList()
        for level, mult in enumerate(channel_mults):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(block(channels, base_channels * mult, size))
                channels = base_channels * mult
                skip_channels.append(channels)
            self.encoder.append(blocks)
            if level < len(channel_mults) - 1:
                self.downsamples.append(Downsample(channels))
                skip_channels.append(channels)
                size //= 2

        self.middle = ResAttentionBlock(
            channels,
            channels,
            emb_dim,
            attention=True,
            head_channels=head_channels,
            token_dim=token_dim,
            num_groups=num_groups,
            dropout=dropout,
        )
        self.middle_res = ResBlock(
            channels, channels, emb_dim, num_groups=num_groups, dropout=dropout
        )

        self.decoder, self.upsamples = nn.ModuleList(), nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(block(channels + skip_channels.pop(), base_channels * mult, size))
                channels = base_channels * mult
            self.decoder.append(blocks)
            if level > 0:
                self.upsamples.append(Upsample(channels))
                size *= 2

        self.head_norm = group_norm(channels, num_groups)
        self.head = zero_init(conv3x3(channels, out_channels * self.stem_block**2))

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        cond_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [B, C, H, W], t [B] integer, cond [B, cond_dim], cond_mask bool [B] or None."""
        if cond_mask is not None:
            cond = torch.where(cond_mask[:, None], cond, self.null_cond)
        emb = self.time_mlp(sinusoidal_embedding(t, self.base_channels)) + self.cond_mlp(cond)
        tokens = (
            self.cond_tokens(cond).reshape(cond.shape[0], self.num_cond_tokens, -1)
            if self.cond_tokens is not None
            else None
        )

        h = self.stem(F.pixel_unshuffle(x, self.stem_block) if self.stem_block > 1 else x)
        skips = [h]
        for level, blocks in enumerate(self.encoder):
            for block in blocks:
                h = block(h, emb, tokens)
                skips.append(h)
            if level < len(self.downsamples):
                h = self.downsamples[level](h)
                skips.append(h)

        h = self.middle(h, emb, tokens)
        h = self.middle_res(h, emb)

        for level, blocks in enumerate(self.decoder):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb, tokens)
            if level < len(self.upsamples):
                h = self.upsamples[level](h)

        out = self.head(F.silu(self.head_norm(h)))
        return F.pixel_shuffle(out, self.stem_block) if self.stem_block > 1 else out


def torch_name(jax_path: Sequence[str | int]) -> str:
    """Maps a JAX parameter path to the twin's parameter name.

    nnx.Sequential keeps its layers under `layers`; Flax calls weights `kernel` (Linear, Conv)
    and `scale` (GroupNorm) where PyTorch says `weight`.
    """
    renamed = {"kernel": "weight", "scale": "weight"}
    parts = [str(part) for part in jax_path if part != "layers"]
    parts[-1] = renamed.get(parts[-1], parts[-1])
    return ".".join(parts)


def load_jax_params(
    model: TorchUNet, jax_params: Mapping[tuple[str | int, ...], np.ndarray]
) -> None:
    """Copies JAX UNet parameters, keyed by their nnx path, into `model`.

    Layouts: conv kernels HWIO -> OIHW, linear kernels [in, out] -> [out, in], vectors as is.
    Every parameter of `model` must be given exactly once.
    """
    torch_params = dict(model.named_parameters())
    converted = {torch_name(path): value for path, value in jax_params.items()}
    if converted.keys() != torch_params.keys():
        raise ValueError(
            "parameter names differ; only in JAX: "
            f"{sorted(converted.keys() - torch_params.keys())}, only in torch: "
            f"{sorted(torch_params.keys() - converted.keys())}"
        )
    layouts = {4: (3, 2, 0, 1), 2: (1, 0), 1: (0,)}
    with torch.no_grad():
        for name, value in converted.items():
            tensor = torch.tensor(np.transpose(value, layouts[value.ndim]))
            if tensor.shape != torch_params[name].shape:
                raise ValueError(
                    f"{name}: JAX shape {value.shape} does not match torch shape "
                    f"{tuple(torch_params[name].shape)}"
                )
            torch_params[name].copy_(tensor)
