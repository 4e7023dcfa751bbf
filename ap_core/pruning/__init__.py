"""Pruning methods (one module each, one contract: `ap_core.pruning.base`) and AP, which rides along with any
(`ap_core.pruning.cycle.prune_step`).

Element methods (GP, LP, random) pick exactly `count` alive weights; counts rather than fractions keep the cycle
totals exact when AP takes its share. Channel methods (Network Slimming, RNI, DemP) remove whole channels.
"""

import torch
from torch import nn

from ap_core.masks import Mask
from ap_core.pruning import (  # noqa: F401  (register methods)
    demp,
    global_magnitude,
    layerwise_magnitude,
    network_slimming,
    random,
    rni,
)
from ap_core.pruning.ap import ap_prune, ap_select
from ap_core.pruning.base import (
    METHODS,
    PruneRequest,
    PruningMethod,
    Removal,
    named_weights,
    removed_count,
    weight_method,
    weight_methods,
)
from ap_core.pruning.cycle import prune_cycle, prune_step, target_alive

__all__ = [
    "METHODS",
    "PruneRequest",
    "PruningMethod",
    "Removal",
    "ap_prune",
    "ap_select",
    "named_weights",
    "prune",
    "prune_cycle",
    "prune_step",
    "removed_count",
    "target_alive",
    "weight_method",
    "weight_methods",
]


def prune(
    method: str,
    model: nn.Module,
    mask: Mask,
    fraction: float,
    generator: torch.Generator | None = None,
) -> Mask:
    """Prune `round(fraction * alive)` of the alive weights of `model` with element method `method`; returns the
    new mask."""
    pruning = weight_method(method)
    weights = named_weights(model, mask)
    count = round(fraction * mask.alive())
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    request = PruneRequest(weights, weights, mask, count, gen, pruning.hparams({}, method))
    return mask.prune(pruning.propose(request).weights)
