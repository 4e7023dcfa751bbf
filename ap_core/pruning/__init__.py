"""Pruning methods (one module each, one signature) and AP, which rides along with any of them.

A method is `fn(weights, mask, count, generator) -> removal`: given the current weights and mask it picks exactly
`count` alive weights to remove (fewer only when fewer are alive) and returns one boolean tensor per layer.
Counts rather than fractions keep the cycle totals exact when AP takes its share.
"""

import torch
from torch import nn

from ap_core.masks import Mask
from ap_core.pruning import global_magnitude, layerwise_magnitude, random  # noqa: F401  (register methods)
from ap_core.pruning.ap import ap_prune, ap_select
from ap_core.pruning.base import METHODS, PruneFn, named_weights, removed_count
from ap_core.pruning.cycle import prune_cycle, target_alive

__all__ = [
    "METHODS",
    "PruneFn",
    "ap_prune",
    "ap_select",
    "named_weights",
    "prune",
    "prune_cycle",
    "removed_count",
    "target_alive",
]


def prune(
    method: str,
    model: nn.Module,
    mask: Mask,
    fraction: float,
    generator: torch.Generator | None = None,
) -> Mask:
    """Prune `round(fraction * alive)` of the alive weights of `model` with `method`; returns the new mask."""
    weights = named_weights(model, mask)
    count = round(fraction * mask.alive())
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    return mask.prune(METHODS.get(method)(weights, mask, count, gen))
