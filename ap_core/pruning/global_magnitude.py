"""Global magnitude pruning (GP): remove the smallest |w| across all prunable layers at once."""

from collections.abc import Mapping

import torch

from ap_core.masks import Mask
from ap_core.pruning.base import alive_on, register_weight_method, select_lowest


@register_weight_method("global_magnitude")
def global_magnitude(
    weights: Mapping[str, torch.Tensor], mask: Mask, count: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    return select_lowest({n: w.abs() for n, w in weights.items()}, alive_on(mask, weights), count)
