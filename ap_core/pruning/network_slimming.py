"""Network Slimming (Liu et al. 2017), the baseline RNI and DemP compare to.

Train with an L1 term on every BatchNorm scale (gamma starts at 0.5), then remove the channels with the smallest
|gamma| under one global threshold at the requested channel ratio, keeping a few per layer, and fine-tune.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ap_core.errors import ConfigError
from ap_core.hooks import CycleContext, TrainingHook
from ap_core.pruning.base import PruneRequest, Removal, register_method
from ap_core.pruning.channels import (
    ChannelMethod,
    add_l1_subgradient,
    channels_to_target,
    family,
    group_scales,
    lowest_channels,
    norm_scales,
)

# The paper's sparsity strength per architecture family.
DEFAULT_SPARSITY = {"vgg": 1e-4, "resnet": 1e-5}


@dataclass(frozen=True)
class SlimmingHparams:
    channel_ratio: float = field(default=0.5, metadata={"help": "share of the prunable channels removed"})
    sparsity: float | None = field(
        default=None, metadata={"help": "L1 strength s on BatchNorm scales (default: 1e-4 VGG, 1e-5 ResNet)"}
    )
    bn_init: float = field(default=0.5, metadata={"help": "initial BatchNorm scale"})
    min_channels: int = field(default=3, metadata={"help": "channels every layer keeps"})

    def validate(self) -> None:
        if not 0 < self.channel_ratio < 1:
            raise ConfigError(f"channel_ratio {self.channel_ratio} must be in the open interval (0, 1)")
        if self.sparsity is not None and self.sparsity < 0:
            raise ConfigError(f"sparsity {self.sparsity} must be >= 0")
        if self.min_channels < 1:
            raise ConfigError(f"min_channels {self.min_channels} must be >= 1")


class SparsityHook(TrainingHook):
    """s * sign(gamma) added to every BatchNorm scale's gradient."""

    def __init__(self, model: nn.Module, strength: float) -> None:
        self.scales = norm_scales(model)
        self.strength = strength

    def after_backward(self, step: int) -> None:
        add_l1_subgradient(self.scales, self.strength)


@register_method("network_slimming")
class NetworkSlimming(ChannelMethod):
    Hparams = SlimmingHparams

    def prepare(self, model: nn.Module, hparams: Any) -> None:
        for gamma in norm_scales(model):
            gamma.data.fill_(hparams.bn_init)

    def hooks(self, context: CycleContext) -> list[TrainingHook]:
        if context.cycle > 0:  # fine-tuning runs without the sparsity term
            return []
        hp = context.hparams
        strength = hp.sparsity if hp.sparsity is not None else DEFAULT_SPARSITY[family(context.config.model)]
        return [SparsityHook(context.net.model, strength)]

    def select(self, request: PruneRequest) -> Removal:
        hp = request.hparams
        importance = {root: gamma.abs() for root, gamma in group_scales(request.net).items()}
        count = channels_to_target(request.net, hp.channel_ratio)
        return Removal(channels=lowest_channels(importance, count, hp.min_channels))
