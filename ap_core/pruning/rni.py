"""RNI, Receding Neuron Importances (Suteu & Guo 2022, arXiv 2204.06404).

Every BatchNorm becomes a bounded one, y = sigmoid(w) * x_hat with no shift, so a channel's importance sigmoid(w)
lies in (0, 1). A receding regulariser R(w) = s (1 - ln s), s = sigmoid(w + b), pushes unimportant channels
further down while leaving important ones alone; the importances become bimodal and one global threshold removes
the requested share of channels (at least `min_channels` per layer; ResNets only inside their blocks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ap_core.errors import ConfigError
from ap_core.hooks import CycleContext, TrainingHook
from ap_core.pruning.base import PruneRequest, Removal, register_method
from ap_core.pruning.channels import ChannelMethod, RatioHparams, group_scales, select_by_ratio

# The authors' settings (alpha, b): VGG's for plain chains, ResNet's for nets with shortcuts or concatenations.
REGULARISER_PLAIN, REGULARISER_BRANCHED = (1e-3, 3.0), (1e-4, 0.0)


class BoundedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose scale is sigmoid(w), w ~ N(0, 1), and which has no shift."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.register_parameter("bias", None)
        nn.init.normal_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            torch.sigmoid(self.weight),
            None,
            self.training,
            self.momentum,
            self.eps,
        )


def receding_penalty(w: torch.Tensor, b: float) -> torch.Tensor:
    """R(w) = s (1 - ln s), s = sigmoid(w + b); dR/dw = -s (1 - s) ln s >= 0, largest near w + b = -1.18."""
    s = torch.sigmoid(w + b)
    return s * (1 - torch.log(s))


@dataclass(frozen=True)
class RNIHparams(RatioHparams):
    alpha: float | None = field(
        default=None,
        metadata={"help": "regulariser strength (default: 1e-3 plain chains, 1e-4 with shortcuts/concats)"},
    )
    b: float | None = field(
        default=None, metadata={"help": "regulariser shift (default: 3 plain chains, 0 with shortcuts/concats)"}
    )
    bn_lr_scale: float = field(default=10.0, metadata={"help": "LR multiplier of the BatchNorm scales"})

    def validate(self) -> None:
        super().validate()
        if self.alpha is not None and not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise ConfigError(f"alpha {self.alpha} must be a number >= 0")
        if self.b is not None and not math.isfinite(self.b):
            raise ConfigError(f"b {self.b} must be a finite number")
        if not (math.isfinite(self.bn_lr_scale) and self.bn_lr_scale > 0):
            raise ConfigError(f"bn_lr_scale {self.bn_lr_scale} must be a number > 0")


class RecedingHook(TrainingHook):
    """Adds alpha * dR/dw to every bounded BatchNorm scale's gradient (looked up each step: a removal replaces
    them)."""

    def __init__(self, model: nn.Module, alpha: float, b: float) -> None:
        self.model = model
        self.alpha, self.b = alpha, b

    def after_backward(self, step: int) -> None:
        scales = [m.weight for m in self.model.modules() if isinstance(m, BoundedBatchNorm2d)]
        penalty = sum(receding_penalty(w, self.b).sum() for w in scales)
        (self.alpha * penalty).backward()


@register_method("rni")
class RecedingNeuronImportances(ChannelMethod):
    Hparams = RNIHparams
    pruning_only_hparams = ("channel_ratio", "min_channels")  # cycle 0 is the regularised training

    def prepare(self, model: nn.Module, hparams: Any) -> None:
        """Swap every BatchNorm2d for a bounded one (in module order, so the N(0, 1) draws are reproducible)."""
        for name, module in list(model.named_modules()):
            if type(module) is nn.BatchNorm2d:
                parent_name, _, child = name.rpartition(".")
                parent = model.get_submodule(parent_name)
                setattr(parent, child, BoundedBatchNorm2d(module.num_features, module.eps, module.momentum))

    def param_groups(self, model: nn.Module, hparams: Any) -> list[dict[str, Any]]:
        scales = {id(m.weight) for m in model.modules() if isinstance(m, BoundedBatchNorm2d)}
        params = list(model.parameters())
        return [
            {"params": [p for p in params if id(p) not in scales], "lr_scale": 1.0},
            {
                "params": [p for p in params if id(p) in scales],
                "lr_scale": hparams.bn_lr_scale,
                "weight_decay": 0.0,
            },
        ]

    def hooks(self, context: CycleContext) -> list[TrainingHook]:
        if context.cycle > 0:  # fine-tuning runs without the regulariser
            return []
        alpha, b = self.regulariser(context.hparams, context.net.plain)
        return [RecedingHook(context.net.model, alpha, b)]

    @staticmethod
    def regulariser(hparams: RNIHparams, plain: bool) -> tuple[float, float]:
        alpha, b = REGULARISER_PLAIN if plain else REGULARISER_BRANCHED
        return (hparams.alpha if hparams.alpha is not None else alpha, hparams.b if hparams.b is not None else b)

    def propose(self, request: PruneRequest) -> Removal:
        net = request.trial_cycle("rni").net
        importance = {root: torch.sigmoid(w) for root, w in group_scales(net).items()}
        return select_by_ratio(net, importance, request.hparams)
