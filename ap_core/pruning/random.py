"""Random pruning: a uniformly random subset of the alive weights (the sanity-check baseline)."""

from collections.abc import Mapping

import torch

from ap_core.masks import Mask
from ap_core.pruning.base import alive_on, register_weight_method, select_lowest


@register_weight_method("random")
def random_pruning(
    weights: Mapping[str, torch.Tensor], mask: Mask, count: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    # Scores are drawn on the generator's device (CPU by default) so the choice is identical on every device.
    scores = {
        n: torch.rand(w.shape, generator=generator, device=generator.device).to(w.device) for n, w in weights.items()
    }
    return select_lowest(scores, alive_on(mask, weights), count)
