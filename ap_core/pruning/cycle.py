"""One pruning step of an iterative schedule: method X, optionally with AP, with an exact total."""

from collections.abc import Mapping

import torch

from ap_core.masks import Mask
from ap_core.pruning.ap import ap_select
from ap_core.pruning.base import PruneRequest, removed_count, weight_method


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
) -> Mask:
    """The mask for pruning cycle `cycle` (1-based) of element method `method` from the previous cycle's trained
    `weights`.

    Without AP, X removes everything down to the target. With AP, AP takes round(p_ap * alive) of that total
    among the survivors of X, and X prunes any shortfall (too few negative candidates) so the total stays exact.
    """
    prune_method = weight_method(method)
    gen = generator if generator is not None else torch.Generator().manual_seed(cycle)

    def prune_fn(current: Mask, count: int) -> dict[str, torch.Tensor]:
        return prune_method.select(PruneRequest(weights, current, count, gen)).weights

    n_alive = mask.alive()
    n_total = max(0, n_alive - target_alive(mask.total(), prune_rate, cycle))
    n_ap = min(round(ap_rate * n_alive), n_total) if ap_rate else 0

    mask = mask.prune(prune_fn(mask, n_total - n_ap))
    if n_ap:
        ap_removal = ap_select(weights, start_weights, mask, n_ap, ap_score, ap_candidates)
        mask = mask.prune(ap_removal)
        shortfall = n_ap - removed_count(ap_removal)
        if shortfall:
            mask = mask.prune(prune_fn(mask, shortfall))
    return mask
