"""MobileNetV2 (Sandler et al. 2018), CIFAR variant as in the common CIFAR ports: the stem conv and the
first stride-2 stage use stride 1, so 32x32 inputs reach the head at 4x4 instead of 1x1.

Differences from the paper, on purpose: activations are nn.ReLU (not ReLU6) so every activation in the zoo is
a ReLU; no dropout; the head pools adaptively, so any input size works. Residuals only where the paper has
them (stride 1 and equal channels); the t=1 block has no expansion conv (as in torchvision).
"""

import torch
from torch import nn

from ap_core.models.base import MODELS, image_shape, init_relu_net

_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280
# (expansion t, output channels c, blocks n, stride of the first block s); the second stage's stride is 1.
_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU, 1x1 linear projection-BN; residual when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [nn.Conv2d(in_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class MobileNetV2Cifar(nn.Module):
    """3x3 stem, inverted-residual stages, 1x1 conv to 1280 channels, GAP, Linear."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, _STEM_CHANNELS, 3, padding=1, bias=False),
            nn.BatchNorm2d(_STEM_CHANNELS),
            nn.ReLU(),
        ]
        channels = _STEM_CHANNELS
        for expansion, out_channels, blocks, stride in _STAGES:
            for index in range(blocks):
                block_stride = stride if index == 0 else 1
                layers.append(InvertedResidual(channels, out_channels, block_stride, expansion))
                channels = out_channels
        layers += [
            nn.Conv2d(channels, _HEAD_CHANNELS, 1, bias=False),
            nn.BatchNorm2d(_HEAD_CHANNELS),
            nn.ReLU(),
        ]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(_HEAD_CHANNELS, num_classes)
        init_relu_net(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@MODELS.register("mobilenetv2")
def mobilenetv2(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return MobileNetV2Cifar(num_classes, image_shape("mobilenetv2", input_shape)[0])
