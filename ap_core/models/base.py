"""The model registry and the helpers every architecture module shares (shapes, He initialisation)."""

import math
from collections.abc import Callable, Sequence

from torch import nn

from ap_core.errors import ConfigError
from ap_core.models.pretrained import load_pretrained
from ap_core.registry import Registry

ModelFactory = Callable[[int, tuple[int, ...]], nn.Module]

MODELS: Registry[ModelFactory] = Registry("model")


def build_model(name: str, num_classes: int, input_shape: Sequence[int], weights: str = "") -> nn.Module:
    """Look `name` up and build it for `num_classes` outputs and inputs of shape (C, H, W) or (F,), untrained or,
    given a state-dict file `weights`, with its weights (`ap_core.models.pretrained.load_pretrained`)."""
    factory = MODELS.get(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes must be an integer >= 2; got {num_classes!r}")
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else ()
    if len(shape) not in (1, 3) or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ConfigError(f"input_shape must be (C, H, W) or (F,) with positive integers; got {input_shape!r}")
    model = factory(num_classes, shape)
    if weights:
        load_pretrained(model, weights)
    return model


def image_shape(model: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) of an image input; conv nets and the ViT cannot take a flat feature vector."""
    if len(input_shape) != 3:
        raise ConfigError(f"model {model!r} needs an image input_shape (C, H, W); got {input_shape!r}")
    channels, height, width = input_shape
    return channels, height, width


def flat_features(input_shape: tuple[int, ...]) -> int:
    """Input size of a model that flattens whatever it is given (MLPs)."""
    return math.prod(input_shape)


def init_relu_net(model: nn.Module) -> None:
    """He init for ReLU nets: kaiming normal (fan_out for convs, fan_in for linears), zero biases,
    BatchNorm at identity."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
        else:
            continue
        if module.bias is not None:
            nn.init.zeros_(module.bias)
