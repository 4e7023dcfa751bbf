"""One pruning step of an iterative schedule: method X, optionally with AP, with an exact total."""

from collections.abc import Mapping

import torch

from ap_core.masks import Mask
from ap_core.pruning.ap import ap_select
from ap_core.pruning.base import PruneRequest, WeightMethod, removed_count, weight_method


def target_alive(total: int, prune_rate: float, cycle: int) -> int:
    """Alive weights after `cycle` pruning steps: round(total * (1-p)^cycle).

    Aiming every cycle at this target (instead of pruning round(p * alive) again and again) keeps the density
    within half a weight of (1-p)^k however many cycles run.
    """
    return round(total * (1.0 - prune_rate) ** cycle)


def prune_cycle(
    method: str,
    weights: Mapping[str, torch.Tensor],
    start_weights: Mapping[str, torch.Tensor],
    mask: Mask,
    cycle: int,
    prune_rate: float,
    ap_rate: float | None = None,
    ap_score: str = "change",
    ap_candidates: str = "negative",
    generator: torch.Generator | None = None,
    ap_scope: str = "global",
) -> Mask:
    """The mask for pruning cycle `cycle` (1-based) of element method `method` from the previous cycle's trained
    `weights`.

    Without AP, X removes everything down to the target. With AP, AP takes round(p_ap * alive) of that total
    among the survivors of X, and X prunes any shortfall (too few negative candidates) so the total stays exact.

    `ap_scope` "global" picks AP's share across all layers (as the official code does), which moves pruning
    between layers; "layer" keeps X's allocation: each layer loses exactly what X alone would take from it, AP
    taking its proportional share of that inside the layer.
    """
    prune_method = weight_method(method)
    gen = generator if generator is not None else torch.Generator().manual_seed(cycle)

    def prune_fn(current: Mask, count: int) -> dict[str, torch.Tensor]:
        return prune_method.select(PruneRequest(weights, current, count, gen)).weights

    n_alive = mask.alive()
    n_total = max(0, n_alive - target_alive(mask.total(), prune_rate, cycle))
    n_ap = min(round(ap_rate * n_alive), n_total) if ap_rate else 0

    if n_ap and ap_scope == "layer":
        return _per_layer(prune_method, weights, start_weights, mask, n_total, n_ap, ap_score, ap_candidates, gen)
    mask = mask.prune(prune_fn(mask, n_total - n_ap))
    if n_ap:
        ap_removal = ap_select(weights, start_weights, mask, n_ap, ap_score, ap_candidates)
        mask = mask.prune(ap_removal)
        shortfall = n_ap - removed_count(ap_removal)
        if shortfall:
            mask = mask.prune(prune_fn(mask, shortfall))
    return mask


def _per_layer(
    prune_method: WeightMethod,
    weights: Mapping[str, torch.Tensor],
    start_weights: Mapping[str, torch.Tensor],
    mask: Mask,
    n_total: int,
    n_ap: int,
    ap_score: str,
    ap_candidates: str,
    generator: torch.Generator,
) -> Mask:
    """AP inside X's per-layer allocation: per layer, X alone's count, of which AP takes its share first."""
    x_alone = prune_method.select(PruneRequest(weights, mask, n_total, generator)).weights
    removal = {}
    for name, chosen in x_alone.items():
        layer_total = int(chosen.sum())
        layer = Mask({name: mask[name]})
        layer_weights = {name: weights[name]}
        ap_removal = ap_select(
            layer_weights, start_weights, layer, round(layer_total * n_ap / n_total), ap_score, ap_candidates
        )
        layer = layer.prune(ap_removal)
        rest = layer_total - removed_count(ap_removal)
        x_removal = prune_method.select(PruneRequest(layer_weights, layer, rest, generator)).weights
        removal[name] = ap_removal[name] | x_removal[name]
    return mask.prune(removal)
