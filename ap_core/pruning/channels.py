"""What the channel methods share: what a network must have for them, BatchNorm scales read through the traced
channel groups, a global ranking with a per-layer floor, and an L1 term on BatchNorm scales."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ap_core.channel_graph import NORM_TYPES, ChannelGroup
from ap_core.dnr import NONNEGATIVE_ACTIVATIONS
from ap_core.errors import ConfigError
from ap_core.network import PrunableNet
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
    """A method that removes whole channels of the net's channel groups, ranked or tested at their BatchNorm.

    Which networks it can prune follows their structure, not their name: each channel must pass a BatchNorm (and,
    with `needs_relu`, DemP's dead-unit test, a ReLU-like unit after it), checked on the model's layers when the
    config is validated and on the traced channel groups when the trial builds its net.
    """

    removes_channels = True
    needs_relu = False

    def check_model(self, model: str, name: str) -> None:
        layers = probe_layers(model)
        if not any(issubclass(kind, NORM_TYPES) for kind in layers):
            raise ConfigError(
                f"method {name} reads channels at their BatchNorm scale; model {model!r} has no BatchNorm layer"
            )
        if self.needs_relu and not any(issubclass(kind, NONNEGATIVE_ACTIVATIONS) for kind in layers):
            raise ConfigError(f"method {name} removes channels that never fire; model {model!r} has no ReLU-like unit")

    def check_network(self, net: PrunableNet, name: str) -> None:
        """Raise a ConfigError when no traced channel group passes what this method reads."""
        if not norm_groups(net, self.needs_relu):
            missing = "a BatchNorm and then a ReLU-like unit" if self.needs_relu else "a BatchNorm"
            raise ConfigError(f"method {name} found no removable channel group of this network that passes {missing}")


@functools.cache
def probe_layers(model: str) -> frozenset[type]:
    """The layer types of `model` (built once per process for a small image; its structure, not its size)."""
    from ap_core.models.base import build_model

    with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave the caller's stream alone
        return frozenset(type(m) for m in build_model(model, 10, (3, 32, 32)).modules())


def norm_groups(net: PrunableNet, relu: bool = False) -> list[ChannelGroup]:
    """The groups whose channels pass a norm (with an activation; a ReLU-like one at every site when `relu`)."""
    modules = dict(net.model.named_modules())
    return [
        g
        for g in net.channel_groups
        if g.norm is not None
        and g.activation is not None
        and (not relu or all(_nonnegative(modules, site.activation) for site in g.sites))
    ]


def _nonnegative(modules: dict[str, nn.Module], activation: str | None) -> bool:
    return activation is not None and isinstance(modules[activation], NONNEGATIVE_ACTIVATIONS)


def group_scales(net: PrunableNet) -> dict[str, torch.Tensor]:
    """Each channel group's scale at its first norm (gamma, or RNI's pre-sigmoid w), keyed by the group root."""
    modules = dict(net.model.named_modules())
    return {g.root: modules[g.norm].weight.detach()[list(g.sites[0].index)] for g in norm_groups(net)}


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
