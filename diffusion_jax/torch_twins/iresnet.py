"""A PyTorch IResNet with the module names of insightface's arcface_torch backbones.

Written from the published layer layout (conv1, bn1, prelu, layer1..layerN of IBasicBlocks with
bn1, conv1, bn2, prelu, conv2, bn3 and downsample.0/1, then bn2, dropout, fc, features), so its
`state_dict()` has the published keys; it is generalised to any depths, widths, stem width and
input resolution so the small variant has a twin too. The reference of the arcface converter's
tests and the PyTorch peer of the encoder benchmark. Needs the optional `torch` extra: tests
import it after `pytest.importorskip("torch")`.
"""

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

EPSILON = 1e-5


class IBasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, downsample: bool):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=EPSILON)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=EPSILON)
        self.prelu = nn.PReLU(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels, eps=EPSILON)
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels, eps=EPSILON),
            )
            if downsample
            else None
        )

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class TorchIResNet(nn.Module):
    """NCHW in, [B, embedding_dim] out; `features.weight` is fixed at 1 as in arcface_torch."""

    def __init__(
        self,
        depths: Sequence[int],
        widths: Sequence[int],
        stem_channels: int,
        input_resolution: int,
        embedding_dim: int,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels, eps=EPSILON)
        self.prelu = nn.PReLU(stem_channels)
        channels = stem_channels
        for stage, (depth, width) in enumerate(zip(depths, widths, strict=True)):
            blocks = [IBasicBlock(channels, width, stride=2, downsample=True)]
            blocks += [
                IBasicBlock(width, width, stride=1, downsample=False) for _ in range(1, depth)
            ]
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
            channels = width
        self.num_stages = len(depths)
        final_size = input_resolution // 2 ** len(depths)
        self.bn2 = nn.BatchNorm2d(channels, eps=EPSILON)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(channels * final_size**2, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=EPSILON)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def forward(self, x):
        x = self.prelu(self.bn1(self.conv1(x)))
        for stage in range(self.num_stages):
            x = getattr(self, f"layer{stage + 1}")(x)
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


def build(architecture: dict[str, Any]) -> TorchIResNet:
    """The twin of `IResNet(**architecture)` (the dict of `iresnet_architecture`)."""
    return TorchIResNet(
        depths=architecture["depths"],
        widths=architecture["widths"],
        stem_channels=architecture["stem_channels"],
        input_resolution=architecture["input_resolution"],
        embedding_dim=architecture["embedding_dim"],
        dropout=architecture["dropout"],
    )


def randomise_(model: TorchIResNet, seed: int) -> TorchIResNet:
    """Draws every BN statistic, BN affine parameter and PReLU slope at random (in place) so
    that each matters to the output, and puts the model in eval mode. features.weight stays 1."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(tensor, low, high):
        tensor.copy_(low + (high - low) * torch.rand(tensor.shape, generator=generator))

    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                uniform(module.running_mean, -0.5, 0.5)
                uniform(module.running_var, 0.5, 2.0)
                uniform(module.bias, -0.5, 0.5)
                if name != "features":
                    uniform(module.weight, 0.5, 1.5)
            elif isinstance(module, nn.PReLU):
                uniform(module.weight, -0.5, 0.5)
            elif isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(
                    torch.randn(module.weight.shape, generator=generator) / fan_in**0.5
                )
                if module.bias is not None:
                    uniform(module.bias, -0.1, 0.1)
    return model.eval()
