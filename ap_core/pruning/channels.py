"""What the channel (structured) methods share: the contract, BatchNorm scales, a global ranking with a per-layer
floor, and an L1 term on BatchNorm scales."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ap_core.errors import ConfigError
from ap_core.network import NORM_TYPES, ChannelGroup, PrunableNet
from ap_core.pruning.base import PruningMethod, Removal


@dataclass(frozen=True)
class RatioHparams:
    """Options of the methods that cut a requested share of the channels at once (Network Slimming, RNI)."""

    channel_ratio: float = field(default=0.5, metadata={"help": "share of the prunable channels removed"})
    min_channels: int = field(default=3, metadata={"help": "channels every layer keeps"})

    def validate(self) -> None:
        if not 0 < self.channel_ratio < 1:
            raise ConfigError(f"channel_ratio {self.channel_ratio} must be in the open interval (0, 1)")
        if self.min_channels < 1:
            raise ConfigError(f"min_channels {self.min_channels} must be >= 1")


class ChannelMethod(PruningMethod):
    """A method that removes whole channels of the net's channel groups (each must end in a BatchNorm)."""

    removes_channels = True

    def check_model(self, model: str, name: str) -> None:
        if model not in channel_models():
            raise ConfigError(
                f"method {name} removes conv-BatchNorm-ReLU channels, which model {model!r} does not have in the "
                f"form the method's papers prune; valid: {', '.join(channel_models())}"
            )


def channel_models() -> list[str]:
    """The VGG and ResNet families: the networks the channel methods' papers prune."""
    from ap_core.models import MODELS

    return [name for name in MODELS.names() if name.startswith(("vgg", "resnet"))]


def family(model: str) -> str:
    """`vgg` or `resnet`: the architecture family whose published defaults a method uses."""
    return "vgg" if model.startswith("vgg") else "resnet"


def norm_groups(net: PrunableNet) -> list[ChannelGroup]:
    return [g for g in net.channel_groups if g.norm is not None and g.activation is not None]


def group_scales(net: PrunableNet) -> dict[str, torch.Tensor]:
    """Each channel group's BatchNorm scale parameter (gamma, or RNI's pre-sigmoid w), keyed by the group root."""
    modules = dict(net.model.named_modules())
    return {g.root: modules[g.norm].weight.detach() for g in norm_groups(net)}


def norm_scales(model: nn.Module) -> list[torch.Tensor]:
    """Every BatchNorm scale parameter of the model (the L1 and RNI's regulariser cover all of them)."""
    return [m.weight for m in model.modules() if isinstance(m, NORM_TYPES) and m.weight is not None]


def channels_to_target(net: PrunableNet, ratio: float) -> int:
    """How many channels to remove so that `ratio` of the dense net's prunable channels are gone."""
    return max(0, net.channels() - round((1.0 - ratio) * net.dense.channels))


def select_by_ratio(net: PrunableNet, importance: Mapping[str, torch.Tensor], hparams: RatioHparams) -> Removal:
    """The least important channels under one global ranking, down to `channel_ratio` of the dense channels."""
    count = channels_to_target(net, hparams.channel_ratio)
    return Removal(channels=lowest_channels(importance, count, hparams.min_channels))


def lowest_channels(importance: Mapping[str, torch.Tensor], count: int, floor: int) -> dict[str, list[int]]:
    """The `count` least important channels over all groups (a global threshold), keeping `floor` per group.

    Ties go to the earlier group, then the lower index, so the choice is deterministic.
    """
    entries = sorted(
        (float(value), order, index, root)
        for order, (root, values) in enumerate(importance.items())
        for index, value in enumerate(values.float().cpu().tolist())
    )
    left = {root: len(values) for root, values in importance.items()}
    removal: dict[str, list[int]] = {root: [] for root in importance}
    for _, _, index, root in entries:
        if count == 0:
            break
        if left[root] > floor:
            removal[root].append(index)
            left[root] -= 1
            count -= 1
    return {root: sorted(idxs) for root, idxs in removal.items() if idxs}


@torch.no_grad()
def add_l1_subgradient(scales: list[torch.Tensor], strength: float) -> None:
    """grad += strength * sign(gamma): the L1 term on BatchNorm scales, without a second backward pass."""
    if strength:
        for gamma in scales:
            if gamma.grad is not None:
                gamma.grad.add_(torch.sign(gamma), alpha=strength)
