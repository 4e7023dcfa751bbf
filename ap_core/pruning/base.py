"""The registry and the shared selection routine of the pruning methods."""

from collections.abc import Callable, Mapping

import torch

from ap_core.masks import Mask
from ap_core.registry import Registry

PruneFn = Callable[[Mapping[str, torch.Tensor], Mask, int, torch.Generator], dict[str, torch.Tensor]]

METHODS: Registry[PruneFn] = Registry("pruning method")


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


def named_weights(model: torch.nn.Module, mask: Mask) -> dict[str, torch.Tensor]:
    """The model's prunable weights (detached), keyed like the mask."""
    params = dict(model.named_parameters())
    return {name: params[name].detach() for name in mask}
