"""The method registry, the contract every pruning method keeps, and the shared selection routine.

A method is an object with one entry point, `select(request) -> Removal`: it sees the network (weights, mask,
BatchNorm scales, a window of training images) and returns the weights and/or channels to remove. It declares its
own typed `Hparams` (set per trial with `method_options`), may adjust the freshly built model (`prepare`) and the
optimizer's parameter groups, and may hand the training loop hooks for any cycle (regularisers, noise, removal
during training), which the loop calls without knowing the method.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ap_core.config import coerce_setting
from ap_core.errors import ConfigError
from ap_core.masks import Mask, named_weights  # noqa: F401  (named_weights: re-exported for methods)
from ap_core.registry import Registry

if TYPE_CHECKING:
    from ap_core.hooks import CycleContext, TrainingHook
    from ap_core.network import PrunableNet

SelectFn = Callable[[Mapping[str, torch.Tensor], Mask, int, torch.Generator], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class NoHparams:
    """A method without options."""

    def validate(self) -> None:
        pass


@dataclass
class PruneRequest:
    """What a method sees when a pruning cycle begins.

    Element methods read `weights`, `mask` and remove exactly `count` alive weights (the cycle works the count out so
    the totals stay exact), drawing any randomness from `generator`. Channel methods read the network (`net`: its
    channel groups and BatchNorm scales) and `context` (the eval window) and decide their own amount from `hparams`.
    """

    weights: Mapping[str, torch.Tensor]
    mask: Mask
    count: int
    generator: torch.Generator
    hparams: Any = None
    net: PrunableNet | None = None
    context: CycleContext | None = None


@dataclass
class Removal:
    """What to remove: weights by mask (element methods) and/or channels by index (channel methods)."""

    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    channels: dict[str, list[int]] = field(default_factory=dict)


class PruningMethod:
    """Base of every method: no options, no model changes, one optimizer group, no hooks."""

    Hparams: type = NoHparams
    structured = False  # removes whole channels (True) or single weights (False)

    def check_model(self, model: str, name: str) -> None:
        """Raise a ConfigError when this method cannot prune model `model`."""

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

    def select(self, request: PruneRequest) -> Removal:
        raise NotImplementedError


class WeightMethod(PruningMethod):
    """An element method: a selection function `fn(weights, mask, count, generator) -> removal` of exactly
    `count` alive weights (fewer only when fewer are alive)."""

    def __init__(self, choose: SelectFn) -> None:
        self.choose = choose

    def select(self, request: PruneRequest) -> Removal:
        return Removal(weights=self.choose(request.weights, request.mask, request.count, request.generator))


METHODS: Registry[PruningMethod] = Registry("pruning method")


def weight_method(name: str) -> PruningMethod:
    """The element method `name`; a ConfigError for a channel method."""
    method = METHODS.get(name)
    if method.structured:
        raise ConfigError(f"method {name!r} removes channels, not single weights; valid: {', '.join(weight_methods())}")
    return method


def weight_methods() -> list[str]:
    """Names of the element (unstructured) methods."""
    return [name for name in METHODS.names() if not METHODS.get(name).structured]


def register_method(name: str) -> Callable[[type[PruningMethod]], type[PruningMethod]]:
    """Register an instance of the decorated method class as `name`."""

    def decorator(cls: type[PruningMethod]) -> type[PruningMethod]:
        METHODS.register(name)(cls())
        return cls

    return decorator


def register_weight_method(name: str) -> Callable[[SelectFn], SelectFn]:
    """Register a selection function as the element method `name`."""

    def decorator(fn: SelectFn) -> SelectFn:
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
