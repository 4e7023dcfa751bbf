"""LeNet-300-100 (MLP) and LeNet-5 (conv net), the classic MNIST pruning baselines (LeCun et al. 1998;
Han et al. 2015)."""

import torch
from torch import nn

from ap_core.models.base import MODELS, flat_features, image_shape, init_relu_net
from ap_core.models.mlp import MLP

_CONV_CHANNELS = (6, 16)
_HIDDEN = (120, 84)
_KERNEL = 5


class LeNet5(nn.Module):
    """conv5x5(6)-ReLU-pool, conv5x5(16)-ReLU-pool, FC 120-ReLU, FC 84-ReLU, FC classifier (max pools, ReLU).

    The first conv pads by 2, so 28x28 MNIST gets the classic 32x32 geometry (16x5x5 = 400 features into
    FC 120, 61,706 parameters). Smaller inputs are handled at construction instead of by adaptive pooling:
    the second conv also pads by 2 when its input is below 6x6 and pools are left out below 2x2, and FC 120
    is sized to whatever map remains (8x8 digits: 16x2x2; 32x32 CIFAR: 16x6x6).
    """

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        super().__init__()
        in_channels, height, width = input_shape
        layers: list[nn.Module] = []
        for index, channels in enumerate(_CONV_CHANNELS):
            padding = 2 if index == 0 or min(height, width) < 6 else 0
            layers += [nn.Conv2d(in_channels, channels, _KERNEL, padding=padding), nn.ReLU()]
            height, width = height + 2 * padding - _KERNEL + 1, width + 2 * padding - _KERNEL + 1
            if min(height, width) >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            in_channels = channels
        layers.append(nn.Flatten())
        features = in_channels * height * width
        for hidden in _HIDDEN:
            layers += [nn.Linear(features, hidden), nn.ReLU()]
            features = hidden
        layers.append(nn.Linear(features, num_classes))
        self.layers = nn.Sequential(*layers)
        init_relu_net(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@MODELS.register("lenet300_100")
def lenet300_100(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return MLP(flat_features(input_shape), (300, 100), num_classes)


@MODELS.register("lenet5")
def lenet5(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return LeNet5(num_classes, image_shape("lenet5", input_shape))
