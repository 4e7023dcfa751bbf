"""Activate-While-Pruning (AP): prune negative weights that changed least during the cycle's training.

Removing negative inputs raises pre-activations, so fewer ReLUs sit at zero (de-sparsification). See
shared/spec/ap.md; `score` and `candidates` are the paper's ablation switches.
"""

from collections.abc import Mapping

import torch
from torch import nn

from ap_core.masks import Mask
from ap_core.pruning.base import alive_on, named_weights, select_lowest


def ap_select(
    weights: Mapping[str, torch.Tensor],
    start_weights: Mapping[str, torch.Tensor],
    mask: Mask,
    count: int,
    score: str = "change",
    candidates: str = "negative",
) -> dict[str, torch.Tensor]:
    """Pick up to `count` alive weights for AP; fewer when there are fewer candidates.

    score: "change" ranks by |theta_T - theta_start| (AP), "magnitude" by |theta_T| (ablation).
    candidates: "negative" considers only theta_T < 0 (AP), "all" every alive weight (ablation).
    """
    if score not in ("change", "magnitude"):
        raise ValueError(f"unknown AP score {score!r}; valid: change, magnitude")
    if candidates not in ("negative", "all"):
        raise ValueError(f"unknown AP candidates {candidates!r}; valid: negative, all")
    alive = alive_on(mask, weights)
    scores, eligible = {}, {}
    for n, w in weights.items():
        scores[n] = (w - start_weights[n].to(w.device)).abs() if score == "change" else w.abs()
        eligible[n] = alive[n] & (w < 0) if candidates == "negative" else alive[n]
    return select_lowest(scores, eligible, count)


def ap_prune(
    model: nn.Module,
    mask: Mask,
    start_state: Mapping[str, torch.Tensor],
    fraction: float,
    score: str = "change",
    candidates: str = "negative",
) -> Mask:
    """AP alone: prune `round(fraction * alive)` weights of `model` (or all candidates, if fewer)."""
    weights = named_weights(model, mask)
    count = round(fraction * mask.alive())
    return mask.prune(ap_select(weights, start_state, mask, count, score, candidates))
