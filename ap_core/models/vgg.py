"""CIFAR VGG with BatchNorm, as in OpenLTH: 3x3 conv-BN-ReLU stacks and 4 max pools (32x32 -> 2x2),
then global average pooling and a single Linear classifier (no 4096-unit hidden layers, no dropout).

For inputs smaller than 32x32 a max pool is left out when the feature map is already below 2x2, so e.g.
8x8 digits keep 1x1 maps through the last stage instead of failing.
"""

import torch
from torch import nn

from ap_core.models.base import MODELS, image_shape, init_relu_net

# (channels, convs) per stage; a 2x2 max pool sits between consecutive stages (4 pools: 32x32 -> 2x2).
Plan = tuple[tuple[int, int], ...]
_PLANS: dict[str, Plan] = {
    "vgg16": ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)),
    "vgg19": ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4)),
    # A narrow VGG for the offline smoke presets of the channel methods (about 0.3M parameters).
    "vgg_small": ((32, 2), (64, 2), (128, 2)),
}


class VGG(nn.Module):
    """Stages of 3x3 conv-BN-ReLU from `plan` with max pools between them, GAP, Linear."""

    def __init__(self, plan: Plan, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        super().__init__()
        channels, height, width = input_shape
        layers: list[nn.Module] = []
        for stage, (out_channels, convs) in enumerate(plan):
            if stage > 0 and min(height, width) >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            for _ in range(convs):
                layers += [
                    nn.Conv2d(channels, out_channels, 3, padding=1, bias=False),
                    nn.BatchNorm2d(out_channels),
                    nn.ReLU(),
                ]
                channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_relu_net(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@MODELS.register("vgg16")
def vgg16(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return VGG(_PLANS["vgg16"], num_classes, image_shape("vgg16", input_shape))


@MODELS.register("vgg19")
def vgg19(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return VGG(_PLANS["vgg19"], num_classes, image_shape("vgg19", input_shape))


@MODELS.register("vgg_small")
def vgg_small(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return VGG(_PLANS["vgg_small"], num_classes, image_shape("vgg_small", input_shape))
