"""A PyTorch AutoencoderKL with the module names of diffusers' `AutoencoderKL`.

Written from diffusers' published layout (encoder.conv_in, encoder.down_blocks[i].resnets[j]
with norm1, conv1, norm2, conv2, conv_shortcut, encoder.down_blocks[i].downsamplers.0.conv,
{encoder,decoder}.mid_block.resnets.{0,1} and .attentions.0 with group_norm, to_q, to_k, to_v,
to_out.0, conv_norm_out, conv_out, quant_conv, post_quant_conv, decoder.up_blocks[i] with
upsamplers.0.conv), so its `state_dict()` has diffusers' keys. It is built from a diffusers
config.json dict, as diffusers builds its model. The attention is written out (softmax of
q k^T / sqrt(C)), not taken from a library kernel. The reference of the AutoencoderKL converter's
tests. Needs the optional `torch` extra: tests import it after `pytest.importorskip("torch")`.
"""

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

EPSILON = 1e-6


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=EPSILON)


class ResnetBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = _group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _group_norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (x if self.conv_shortcut is None else self.conv_shortcut(x))


class Attention(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = _group_norm(channels, groups)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])

    def forward(self, x):
        batch, channels, height, width = x.shape
        h = self.group_norm(x).flatten(2).transpose(1, 2)  # [B, H*W, C]
        q, k, v = self.to_q(h), self.to_k(h), self.to_v(h)
        weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(channels), dim=-1)
        h = self.to_out[0](weights @ v)
        return x + h.transpose(1, 2).reshape(batch, channels, height, width)


class UNetMidBlock2D(nn.Module):
    def __init__(self, channels: int, groups: int, add_attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, groups) for _ in range(2)])
        self.attentions = nn.ModuleList([Attention(channels, groups) if add_attention else None])

    def forward(self, x):
        x = self.resnets[0](x)
        if self.attentions[0] is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Downsample2D(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample2D(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _resnets(in_channels: int, out_channels: int, num_layers: int, groups: int) -> nn.ModuleList:
    return nn.ModuleList(
        [
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups)
            for i in range(num_layers)
        ]
    )


class DownEncoderBlock2D(nn.Module):
    def __init__(self, in_channels, out_channels, num_layers, groups, add_downsample):
        super().__init__()
        self.resnets = _resnets(in_channels, out_channels, num_layers, groups)
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels)]) if add_downsample else None

    def forward(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.downsamplers is None else self.downsamplers[0](x)


class UpDecoderBlock2D(nn.Module):
    def __init__(self, in_channels, out_channels, num_layers, groups, add_upsample):
        super().__init__()
        self.resnets = _resnets(in_channels, out_channels, num_layers, groups)
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None

    def forward(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.upsamplers is None else self.upsamplers[0](x)


class Encoder(nn.Module):
    def __init__(self, in_channels, latent_channels, widths, layers, groups, attention):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        inputs = [widths[0], *widths[:-1]]
        self.down_blocks = nn.ModuleList(
            [
                DownEncoderBlock2D(block_in, block_out, layers, groups, i < len(widths) - 1)
                for i, (block_in, block_out) in enumerate(zip(inputs, widths, strict=True))
            ]
        )
        self.mid_block = UNetMidBlock2D(widths[-1], groups, attention)
        self.conv_norm_out = _group_norm(widths[-1], groups)
        self.conv_out = nn.Conv2d(widths[-1], 2 * latent_channels, 3, padding=1)

    def forward(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(x))))


class Decoder(nn.Module):
    def __init__(self, out_channels, latent_channels, widths, layers, groups, attention):
        super().__init__()
        reversed_widths = list(reversed(widths))
        self.conv_in = nn.Conv2d(latent_channels, reversed_widths[0], 3, padding=1)
        self.mid_block = UNetMidBlock2D(reversed_widths[0], groups, attention)
        inputs = [reversed_widths[0], *reversed_widths[:-1]]
        self.up_blocks = nn.ModuleList(
            [
                UpDecoderBlock2D(block_in, block_out, layers + 1, groups, i < len(widths) - 1)
                for i, (block_in, block_out) in enumerate(zip(inputs, reversed_widths, strict=True))
            ]
        )
        self.conv_norm_out = _group_norm(widths[0], groups)
        self.conv_out = nn.Conv2d(widths[0], out_channels, 3, padding=1)

    def forward(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class TorchAutoencoderKL(nn.Module):
    """NCHW; `encode` gives (mean, logvar) with logvar clamped to [-30, 20], as diffusers does."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        widths = list(config["block_out_channels"])
        latent_channels = config["latent_channels"]
        shared = {
            "latent_channels": latent_channels,
            "widths": widths,
            "layers": config["layers_per_block"],
            "groups": config["norm_num_groups"],
            "attention": config.get("mid_block_add_attention", True),
        }
        self.encoder = Encoder(in_channels=config["in_channels"], **shared)
        self.decoder = Decoder(out_channels=config["out_channels"], **shared)
        self.quant_conv = (
            nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1)
            if config.get("use_quant_conv", True)
            else None
        )
        self.post_quant_conv = (
            nn.Conv2d(latent_channels, latent_channels, 1)
            if config.get("use_post_quant_conv", True)
            else None
        )

    def encode(self, x):
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = torch.chunk(moments, 2, dim=1)
        return mean, torch.clamp(logvar, -30.0, 20.0)

    def decode(self, z):
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)


def diffusers_config(**overrides: Any) -> dict[str, Any]:
    """A diffusers AutoencoderKL config.json for the tiny test autoencoder, with `overrides`."""
    config = {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": "0.31.0",
        "act_fn": "silu",
        "block_out_channels": [8, 16],
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 1,
        "norm_num_groups": 4,
        "sample_size": 16,
        "scaling_factor": 0.5,
        "force_upcast": True,
    }
    config.update(overrides)
    return config


def randomise_(model: TorchAutoencoderKL, seed: int) -> TorchAutoencoderKL:
    """Draws every weight at random (in place), GroupNorm affines included so that they matter,
    and puts the model in eval mode."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(tensor, low, high):
        tensor.copy_(low + (high - low) * torch.rand(tensor.shape, generator=generator))

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.GroupNorm):
                uniform(module.weight, 0.5, 1.5)
                uniform(module.bias, -0.5, 0.5)
            elif isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(
                    torch.randn(module.weight.shape, generator=generator) / fan_in**0.5
                )
                uniform(module.bias, -0.1, 0.1)
    return model.eval()
