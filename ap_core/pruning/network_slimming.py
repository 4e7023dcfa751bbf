"""Network Slimming (Liu et al. 2017), the baseline RNI and DemP compare to.

Train with an L1 term on every BatchNorm scale (gamma starts at 0.5), then remove the channels with the smallest
|gamma| under one global threshold at the requested channel ratio, keeping a few per layer, and fine-tune.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ap_core.errors import ConfigError
from ap_core.hooks import CycleContext, TrainingHook
from ap_core.pruning.base import PruneRequest, Removal, register_method
from ap_core.pruning.channels import (
    ChannelMethod,
    RatioHparams,
    add_l1_subgradient,
    group_scales,
    norm_scales,
    select_by_ratio,
)

# The paper's sparsity strength: 1e-4 for plain chains (VGG), 1e-5 for nets with shortcuts or concatenations
# (ResNet, DenseNet); the net's traced structure picks one.
SPARSITY_PLAIN, SPARSITY_BRANCHED = 1e-4, 1e-5


@dataclass(frozen=True)
class SlimmingHparams(RatioHparams):
    sparsity: float | None = field(
        default=None,
        metadata={
            "help": "L1 strength s on BatchNorm scales (default: 1e-4 plain chains, 1e-5 with shortcuts/concats)"
        },
    )
    bn_init: float = field(default=0.5, metadata={"help": "initial BatchNorm scale"})

    def validate(self) -> None:
        super().validate()
        if self.sparsity is not None and not (math.isfinite(self.sparsity) and self.sparsity >= 0):
            raise ConfigError(f"sparsity {self.sparsity} must be a number >= 0")
        if not (math.isfinite(self.bn_init) and self.bn_init > 0):
            raise ConfigError(f"bn_init {self.bn_init} must be a number > 0")


class SparsityHook(TrainingHook):
    """s * sign(gamma) added to every BatchNorm scale's gradient (looked up each step: a removal replaces them)."""

    def __init__(self, model: nn.Module, strength: float) -> None:
        self.model = model
        self.strength = strength

    def after_backward(self, step: int) -> None:
        add_l1_subgradient(norm_scales(self.model), self.strength)


@register_method("network_slimming")
class NetworkSlimming(ChannelMethod):
    Hparams = SlimmingHparams
    pruning_only_hparams = ("channel_ratio", "min_channels")  # cycle 0 is the regularised training

    def prepare(self, model: nn.Module, hparams: Any) -> None:
        for gamma in norm_scales(model):
            gamma.data.fill_(hparams.bn_init)

    def hooks(self, context: CycleContext) -> list[TrainingHook]:
        if context.cycle > 0:  # fine-tuning runs without the sparsity term
            return []
        hp = context.hparams
        default = SPARSITY_PLAIN if context.net.plain else SPARSITY_BRANCHED
        strength = hp.sparsity if hp.sparsity is not None else default
        return [SparsityHook(context.net.model, strength)]

    def propose(self, request: PruneRequest) -> Removal:
        net = request.trial_cycle("network_slimming").net
        importance = {root: gamma.abs() for root, gamma in group_scales(net).items()}
        return select_by_ratio(net, importance, request.hparams)
