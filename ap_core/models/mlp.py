"""Fully connected ReLU nets on the flattened input; `mlp` is the small one for tiny inputs (8x8 digits)."""

import torch
from torch import nn

from ap_core.models.base import MODELS, flat_features, init_relu_net


class MLP(nn.Module):
    """Flatten, then Linear-ReLU for each hidden width, then a Linear classifier."""

    def __init__(self, in_features: int, hidden: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.Linear(in_features, width), nn.ReLU()]
            in_features = width
        layers.append(nn.Linear(in_features, num_classes))
        self.layers = nn.Sequential(*layers)
        init_relu_net(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@MODELS.register("mlp")
def mlp(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return MLP(flat_features(input_shape), (256, 128), num_classes)
