"""The standard zoos by name: `tv:<name>` is any torchvision classification model, `timm:<name>` any timm model
(with the optional extra `pip install 'ap-sweeps[timm]'`).

Each is built untrained with the zoo's own initialisation (the same torch seed gives the same weights; nothing is
downloaded), at the zoo's published architecture (dropout included), then traced so that it keeps the conventions
of `ap_core.models`: every ReLU / ReLU6 / GELU call is its own out-of-place module (`activation_calls`). Its
prunable layers and channel groups are then found by the same rules as for our own models. torchvision and timm are
imported when a zoo name is first resolved, never to list the models.
"""

from __future__ import annotations

from torch import nn

from ap_core.errors import ConfigError
from ap_core.models.activation_calls import one_module_per_call
from ap_core.models.base import MODELS, ModelFactory, image_shape

# torchvision builders whose class takes the input size (a ViT's position embedding is sized by it).
_SIZED_MODULES = ("torchvision.models.vision_transformer",)


@MODELS.register_prefix("tv", "any torchvision classification model (see torchvision.models.list_models())")
def torchvision_model(name: str) -> ModelFactory:
    """The factory of torchvision classification model `name`; a ConfigError naming the valid ones otherwise."""
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ConfigError(
            f"unknown model 'tv:{name}': torchvision has no classification model {name!r}; valid: "
            "torchvision.models.list_models(module=torchvision.models)"
        )
    builder = torchvision.models.get_model_builder(name)

    def build(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
        channels, height, _ = image_shape(f"tv:{name}", input_shape)
        if channels != 3:
            raise ConfigError(f"model 'tv:{name}' takes 3-channel images; got input_shape {input_shape!r}")
        sized = {"image_size": height} if builder.__module__ in _SIZED_MODULES else {}
        return one_module_per_call(builder(weights=None, num_classes=num_classes, **sized), f"tv:{name}")

    return build


@MODELS.register_prefix("timm", "any timm model, when timm is installed (see timm.list_models())")
def timm_model(name: str) -> ModelFactory:
    """The factory of timm model `name`; a ConfigError when timm is missing or has no such model."""
    try:
        import timm
    except ImportError:
        raise ConfigError(f"model 'timm:{name}' needs timm: pip install 'ap-sweeps[timm]'") from None
    if not timm.is_model(name):
        raise ConfigError(f"unknown model 'timm:{name}': timm has no model {name!r}; valid: timm.list_models()")

    def build(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
        from timm.layers import get_notrace_functions, get_notrace_modules

        channels, _, _ = image_shape(f"timm:{name}", input_shape)
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=channels)
        return one_module_per_call(model, f"timm:{name}", get_notrace_modules(), get_notrace_functions())

    return build
