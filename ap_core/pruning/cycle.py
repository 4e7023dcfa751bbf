"""One pruning step: the method's proposal, then AP's share, through one code path for every method."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import torch

from ap_core.masks import Mask
from ap_core.pruning.ap import ap_select
from ap_core.pruning.base import PruneRequest, PruningMethod, removed_count, weight_method
from ap_core.settings import APSettings

# Applies a proposal's channels to the net and returns the request as the net stands after (weights, theta_start
# and mask cut by the same kept indices).
ApplyChannels = Callable[[Mapping[str, Sequence[int]]], PruneRequest]


def target_alive(total: int, prune_rate: float, cycle: int) -> int:
    """Alive weights after `cycle` pruning steps: round(total * (1-p)^cycle).

    Aiming every cycle at this target (instead of pruning round(p * alive) again and again) keeps the density
    within half a weight of (1-p)^k however many cycles run.
    """
    return round(total * (1.0 - prune_rate) ** cycle)


def prune_step(method: PruningMethod, request: PruneRequest, ap: APSettings, apply_channels: ApplyChannels) -> Mask:
    """The mask after one cycle's removal: what `method` proposes, then, when `ap` is enabled, AP's share.

    A method that follows the prune rate gets `request.count` less AP's share, round(p_ap * alive); AP takes its
    share among the survivors and the method prunes any shortfall (too few negative candidates), so the total stays
    exact. A method that decides its own amount (channels) goes first, and AP then takes its own share of the
    weights left inside the remaining structure.

    `ap.scope` "global" picks AP's share across all layers (as the official code does), which moves pruning
    between layers; "layer" keeps the method's allocation: each layer loses exactly what the method alone would
    take from it, AP taking its proportional share of that inside the layer.
    """
    follows_count = not method.removes_channels
    n_ap = min(round(ap.rate * request.mask.alive()), request.count) if ap.enabled and follows_count else 0
    if n_ap and ap.scope == "layer":
        return _per_layer(method, request, ap, n_ap)
    proposal = method.propose(dataclasses.replace(request, count=request.count - n_ap))
    if proposal.channels:
        request = apply_channels(proposal.channels)
    mask = request.mask.prune(proposal.weights)
    if ap.enabled and not follows_count:
        n_ap = round(ap.rate * mask.alive())
    if n_ap:
        ap_removal = ap_select(request.weights, request.start, mask, n_ap, ap.score, ap.candidates)
        mask = mask.prune(ap_removal)
        shortfall = n_ap - removed_count(ap_removal) if follows_count else 0
        if shortfall:
            mask = mask.prune(method.propose(dataclasses.replace(request, mask=mask, count=shortfall)).weights)
    return mask


def _per_layer(method: PruningMethod, request: PruneRequest, ap: APSettings, n_ap: int) -> Mask:
    """AP inside the method's per-layer allocation: per layer, the method alone's count, of which AP takes its
    share first."""
    alone = method.propose(request).weights
    removal = {}
    for name, chosen in alone.items():
        layer_total = int(chosen.sum())
        layer = Mask({name: request.mask[name]})
        layer_weights = {name: request.weights[name]}
        share = round(layer_total * n_ap / request.count)
        ap_removal = ap_select(layer_weights, request.start, layer, share, ap.score, ap.candidates)
        layer = layer.prune(ap_removal)
        rest = layer_total - removed_count(ap_removal)
        layer_request = dataclasses.replace(request, weights=layer_weights, mask=layer, count=rest)
        removal[name] = ap_removal[name] | method.propose(layer_request).weights[name]
    return request.mask.prune(removal)


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
    `weights`, outside a trial: `prune_step` with the count down to the cycle's target."""
    pruning = weight_method(method)
    gen = generator if generator is not None else torch.Generator().manual_seed(cycle)
    count = max(0, mask.alive() - target_alive(mask.total(), prune_rate, cycle))
    request = PruneRequest(weights, start_weights, mask, count, gen, pruning.hparams({}, method))
    ap = APSettings(True, ap_rate, ap_score, ap_candidates, ap_scope) if ap_rate else APSettings()
    return prune_step(pruning, request, ap, _weights_only)


def _weights_only(removal: Mapping[str, Sequence[int]]) -> PruneRequest:
    raise ValueError(f"an element method proposed channels {sorted(removal)}")
