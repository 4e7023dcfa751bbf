"""The contract every pruning method keeps, the method registry, and the shared selection routine.

A method is one module with one class: it declares its own typed `Hparams` (set per trial with `method_options`),
and its one entry point `propose(request) -> Removal` sees the network (weights, mask, reference states, and in a
trial the net's channel groups and a window of training images) and returns the weights and/or channels to remove.
It may adjust the freshly built model (`prepare`), the optimizer's parameter groups, and hand the training loop
hooks for any cycle (regularisers, noise, removal during training), which the loop calls without knowing the
method. AP is applied to every proposal in one place (`ap_core.pruning.cycle.prune_step`). See
docs/adding-a-method.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ap_core.errors import ConfigError
from ap_core.masks import Mask, named_weights  # noqa: F401  (named_weights: re-exported for methods)
from ap_core.registry import Registry
from ap_core.typed_values import coerce_setting

if TYPE_CHECKING:
    from ap_core.hooks import CycleContext, TrainingHook
    from ap_core.network import PrunableNet

ChooseWeights = Callable[[Mapping[str, torch.Tensor], Mask, int, torch.Generator], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class NoHparams:
    """A method without options."""

    def validate(self) -> None:
        pass


@dataclass(frozen=True)
class PruneRequest:
    """What a method sees when a pruning cycle begins.

    `weights` are the prunable weights as trained, `start` the same weights as the cycle began (theta_start),
    `mask` the alive ones. A method that follows the prune rate removes exactly `count` alive weights (the cycle
    works the count out so the totals stay exact), drawing any randomness from `generator`; one that decides its
    own amount (the channel methods) ignores `count`. `cycle` is the trial's view of the cycle (the net with its
    channel groups, the data window through `fired_units()`); only `ap_core.prune` on a bare model leaves it out.
    """

    weights: Mapping[str, torch.Tensor]
    start: Mapping[str, torch.Tensor]
    mask: Mask
    count: int
    generator: torch.Generator
    hparams: Any
    cycle: CycleContext | None = None

    def trial_cycle(self, method: str) -> CycleContext:
        """The trial's cycle, or a ConfigError saying that `method` only runs inside a trial."""
        if self.cycle is None:
            raise ConfigError(f"method {method} reads the network and its data: run it in a trial (ap-trial)")
        return self.cycle


@dataclass
class Removal:
    """What to remove: weights by mask and/or channels by index; the net applies either the same way."""

    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    channels: dict[str, list[int]] = field(default_factory=dict)


class PruningMethod:
    """Base of every method: no options, no model changes, one optimizer group, no hooks.

    `removes_channels` says which budget the method works to: False, it removes exactly the cycle's count of
    weights (prune_rate, cycles and AP's share of that count apply); True, it decides its own amount of channels
    (from its hparams or from the training), and AP takes its own share of what is left.
    """

    Hparams: type = NoHparams
    removes_channels = False
    # Whether the method (its `prepare`, param groups or cycle-0 hooks) shapes the dense cycle 0; if not, trials
    # that differ only in their method train the same cycle 0 (`ap_core.cycle_keys`).
    shapes_dense_training = True
    # Hparams that act only when the method prunes: trials that differ only in them share the dense cycle 0.
    pruning_only_hparams: tuple[str, ...] = ()

    def check_model(self, model: str, name: str) -> None:
        """Raise a ConfigError when this method cannot prune model `model` (checked with the config)."""

    def check_network(self, net: PrunableNet, name: str) -> None:
        """Raise a ConfigError when this method cannot prune the traced `net` (checked when a trial builds it)."""

    def hparams(self, options: Mapping[str, Any], name: str) -> Any:
        """The method's typed hparams from `options`; a ConfigError naming any unknown or bad option."""
        valid = {f.name for f in dataclasses.fields(self.Hparams)}
        for key in options:
            if key not in valid:
                raise ConfigError(
                    f"unknown option {key!r} for method {name}; valid: {', '.join(sorted(valid)) or 'none'}"
                )
        values = {k: coerce_setting(self.Hparams, k, v) for k, v in options.items()}
        hparams = self.Hparams(**values)
        hparams.validate()
        return hparams

    def prepare(self, model: nn.Module, hparams: Any) -> None:
        """Adjust the freshly built model before its initial state is recorded."""

    def param_groups(self, model: nn.Module, hparams: Any) -> list[dict[str, Any]] | None:
        """Optimizer parameter groups (with an `lr_scale` and optional `weight_decay`); None: one group."""
        return None

    def hooks(self, context: CycleContext) -> list[TrainingHook]:
        """Training hooks for the cycle `context` describes."""
        return []

    def propose(self, request: PruneRequest) -> Removal:
        raise NotImplementedError


class WeightMethod(PruningMethod):
    """An element method from a selection function `choose(weights, mask, count, generator) -> removal` of exactly
    `count` alive weights (fewer only when fewer are alive)."""

    shapes_dense_training = False  # it acts only when pruning

    def __init__(self, choose: ChooseWeights) -> None:
        self.choose = choose

    def propose(self, request: PruneRequest) -> Removal:
        return Removal(weights=self.choose(request.weights, request.mask, request.count, request.generator))


METHODS: Registry[PruningMethod] = Registry("pruning method")


def weight_method(name: str) -> PruningMethod:
    """The method `name` that removes single weights; a ConfigError for a channel method."""
    method = METHODS.get(name)
    if method.removes_channels:
        raise ConfigError(f"method {name!r} removes channels, not single weights; valid: {', '.join(weight_methods())}")
    return method


def weight_methods() -> list[str]:
    """Names of the methods that remove single weights."""
    return [name for name in METHODS.names() if not METHODS.get(name).removes_channels]


def register_method(name: str) -> Callable[[type[PruningMethod]], type[PruningMethod]]:
    """Register an instance of the decorated method class as `name`."""

    def decorator(cls: type[PruningMethod]) -> type[PruningMethod]:
        METHODS.register(name)(cls())
        return cls

    return decorator


def register_weight_method(name: str) -> Callable[[ChooseWeights], ChooseWeights]:
    """Register a selection function as the element method `name`."""

    def decorator(fn: ChooseWeights) -> ChooseWeights:
        METHODS.register(name)(WeightMethod(fn))
        return fn

    return decorator


def select_lowest(
    scores: Mapping[str, torch.Tensor], eligible: Mapping[str, torch.Tensor], count: int
) -> dict[str, torch.Tensor]:
    """Mark the `count` eligible entries with the lowest score across all layers.

    Ties go to the entry that comes first in layer order, then in flat index order (a stable sort), so the
    selection is deterministic on every device.
    """
    names = list(scores)
    flat = torch.cat([torch.where(eligible[n], scores[n].float(), torch.inf).flatten() for n in names])
    count = min(count, int(sum(int(eligible[n].sum()) for n in names)))
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if count > 0:
        order = torch.sort(flat, stable=True).indices[:count]
        chosen[order] = True
    removal, offset = {}, 0
    for n in names:
        size = scores[n].numel()
        removal[n] = chosen[offset : offset + size].view_as(scores[n])
        offset += size
    return removal


def removed_count(removal: Mapping[str, torch.Tensor]) -> int:
    return int(sum(int(r.sum()) for r in removal.values()))


def alive_on(mask: Mask, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The mask's tensors on the weights' devices."""
    return {n: mask[n].to(weights[n].device) for n in weights}
