"""Model zoo: every architecture a config can name, built by `build_model(name, num_classes, input_shape)`.

Conventions every model keeps, because pruning and activation code elsewhere relies on them:
- the first prunable module (Conv/Linear) in `named_modules()` order is the input layer and the last is
  the classifier, so "keep first/last dense" can be decided from module order alone;
- every activation is its own nn.ReLU / nn.GELU instance, called exactly once per forward, so forward
  hooks see each activation layer separately;
- He initialisation, no dropout, and the same torch seed gives the same weights.

The zoos (`tv:<name>`, `timm:<name>`, `ap_core.models.zoo`) keep their own initialisation and dropout and are
traced into the activation convention; any model can start from a state-dict file (`build_model(..., weights=)`).
"""

from ap_core.models import densenet, lenet, mlp, mobilenetv2, resnet_cifar, vgg, vit, zoo  # noqa: F401  (register)
from ap_core.models.base import MODELS, build_model

__all__ = ["MODELS", "build_model"]
