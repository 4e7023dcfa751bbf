"""CIFAR ResNets (He et al. 2016, sec. 4.2): depth 6n+2, three stages of n basic blocks at 16/32/64 channels.

Shortcuts that change shape use option B (1x1 conv + BN) instead of the paper's parameter-free option A
(zero padding): it adds ~2.7k parameters (resnet20: 0.272M instead of 0.270M) and keeps every path made of
ordinary prunable convs. Pooling is adaptive, so any input size works (8x8 digits end at 2x2).
"""

import torch
from torch import nn

from ap_core.models.base import MODELS, image_shape, init_relu_net

_STAGE_WIDTHS = (16, 32, 64)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut; ReLU after the first conv and after the sum."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = (
            nn.Identity()
            if stride == 1 and in_channels == out_channels
            else nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """3x3 stem, three stages (the first block of stages 2 and 3 halves the resolution), GAP, Linear."""

    def __init__(self, depth: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        blocks_per_stage = (depth - 2) // 6
        self.conv = nn.Conv2d(in_channels, _STAGE_WIDTHS[0], 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(_STAGE_WIDTHS[0])
        self.relu = nn.ReLU()
        blocks: list[nn.Module] = []
        channels = _STAGE_WIDTHS[0]
        for stage, width in enumerate(_STAGE_WIDTHS):
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(channels, width, stride))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_relu_net(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


@MODELS.register("resnet20")
def resnet20(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return ResNetCifar(20, num_classes, image_shape("resnet20", input_shape)[0])


@MODELS.register("resnet32")
def resnet32(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return ResNetCifar(32, num_classes, image_shape("resnet32", input_shape)[0])


@MODELS.register("resnet56")
def resnet56(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return ResNetCifar(56, num_classes, image_shape("resnet56", input_shape)[0])
