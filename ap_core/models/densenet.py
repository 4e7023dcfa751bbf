"""DenseNet-40 (Huang et al. 2017) for CIFAR: growth rate k=12, three dense blocks of 12 BN-ReLU-Conv3x3
layers, no bottleneck, transitions without compression (theta=1.0), ~1.0M parameters.

The stem is a 3x3 conv with 16 channels, as in the paper for DenseNets without bottleneck. A transition's
2x2 average pool is left out when the map is already below 2x2, so small inputs (8x8 digits) work.
"""

import torch
from torch import nn

from ap_core.models.base import MODELS, image_shape, init_relu_net

_GROWTH = 12
_LAYERS_PER_BLOCK = 12
_BLOCKS = 3
_STEM_CHANNELS = 16


class DenseLayer(nn.Module):
    """BN-ReLU-Conv3x3 producing `growth` new feature maps, concatenated onto its input."""

    def __init__(self, in_channels: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(in_channels, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(self.relu(self.bn(x)))], dim=1)


def _transition(channels: int, pool: bool) -> nn.Sequential:
    """BN-ReLU-Conv1x1 keeping the channel count, then a 2x2 average pool if the map is large enough."""
    layers: list[nn.Module] = [
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 1, bias=False),
    ]
    if pool:
        layers.append(nn.AvgPool2d(2))
    return nn.Sequential(*layers)


class DenseNetCifar(nn.Module):
    """Stem conv, dense blocks separated by transitions, final BN-ReLU, GAP, Linear."""

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        super().__init__()
        in_channels, height, width = input_shape
        self.conv = nn.Conv2d(in_channels, _STEM_CHANNELS, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        channels = _STEM_CHANNELS
        for block in range(_BLOCKS):
            for _ in range(_LAYERS_PER_BLOCK):
                stages.append(DenseLayer(channels, _GROWTH))
                channels += _GROWTH
            if block < _BLOCKS - 1:
                pool = min(height, width) >= 2
                stages.append(_transition(channels, pool))
                if pool:
                    height, width = height // 2, width // 2
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_relu_net(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.features(self.conv(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


@MODELS.register("densenet40")
def densenet40(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return DenseNetCifar(num_classes, image_shape("densenet40", input_shape))
