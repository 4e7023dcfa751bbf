"""Layer-wise magnitude pruning (LP): every layer loses the same share of its alive weights."""

from collections.abc import Mapping

import torch

from ap_core.masks import Mask
from ap_core.pruning.base import alive_on, register_weight_method, select_lowest


def split_count(count: int, alive: Mapping[str, int]) -> dict[str, int]:
    """Share `count` among layers in proportion to their alive weights (largest remainder), summing exactly."""
    total = sum(alive.values())
    if total == 0:
        return dict.fromkeys(alive, 0)
    quotas = {n: count * a / total for n, a in alive.items()}
    shares = {n: int(q) for n, q in quotas.items()}
    leftover = count - sum(shares.values())
    by_remainder = sorted(alive, key=lambda n: (-(quotas[n] - shares[n]), list(alive).index(n)))
    for n in by_remainder[:leftover]:
        shares[n] += 1
    return shares


@register_weight_method("layerwise_magnitude")
def layerwise_magnitude(
    weights: Mapping[str, torch.Tensor], mask: Mask, count: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    alive = alive_on(mask, weights)
    shares = split_count(count, {n: int(a.sum()) for n, a in alive.items()})
    removal = {}
    for n, w in weights.items():
        removal.update(select_lowest({n: w.abs()}, {n: alive[n]}, shares[n]))
    return removal
