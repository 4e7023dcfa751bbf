"""Physical channel removal, and the kept indices by which every tensor that mirrors a parameter is cut alike.

Torch-Pruning deletes the channels (and the BatchNorm entries and consumers' input channels that depend on them);
`kept_indices` says which entries of each parameter survive, so a mask, a reference state or an optimizer moment
shaped like that parameter can follow with `cut`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from ap_core.channel_graph import dependency_graph

# A removal event: per channel group root, the channel indices to remove (relative to the net at that moment).
ChannelRemoval = Mapping[str, Sequence[int]]
# Per tensor name, the kept indices along dim 0 and dim 1 (None: that dim is untouched).
IndexMap = dict[str, tuple[torch.Tensor | None, torch.Tensor | None]]


def remove_channels(model: nn.Module, removal: ChannelRemoval, example: torch.Tensor) -> None:
    """Physically remove `removal`'s channels (and everything that depends on them) from `model`, in place."""
    modules = dict(model.named_modules())
    graph = dependency_graph(model, example)
    for root, idxs in removal.items():
        if len(idxs):
            module = modules[root]
            pruner = graph.get_pruner_of_module(module).prune_out_channels
            graph.get_pruning_group(module, pruner, idxs=[int(i) for i in idxs]).prune()


def kept_indices(model: nn.Module, removal: ChannelRemoval, example: torch.Tensor) -> IndexMap:
    """Which entries of each parameter and buffer survive `removal`, along dims 0 and 1.

    Worked out on a float64 copy whose tensors hold their own (row, column) positions, cut by the same removal:
    the positions that survive are the kept indices. Any tensor shaped like a parameter can then be cut alike.
    """
    probe = copy.deepcopy(model).double()
    shapes = {}
    with torch.no_grad():
        for name, tensor in _float_tensors(probe):
            shapes[name] = tensor.shape
            tensor.copy_(_positions(tensor.shape))
    remove_channels(probe, removal, example.double())
    result: IndexMap = {}
    for name, tensor in _float_tensors(probe):
        old = shapes[name]
        if tensor.shape == old:
            continue
        grid = tensor.detach().reshape(*tensor.shape[:2], -1)[..., 0] if tensor.dim() > 1 else tensor.detach()
        if tensor.dim() == 1:
            result[name] = (grid.long(), None)
            continue
        rows = (grid[:, 0] // old[1]).long()
        cols = (grid[0, :] % old[1]).long()
        result[name] = (
            rows if tensor.shape[0] != old[0] else None,
            cols if tensor.shape[1] != old[1] else None,
        )
    return result


def _float_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and tensor.dim() > 0:
            yield name, tensor


def _positions(shape: torch.Size) -> torch.Tensor:
    rows = torch.arange(shape[0], dtype=torch.float64)
    if len(shape) == 1:
        return rows
    codes = rows[:, None] * shape[1] + torch.arange(shape[1], dtype=torch.float64)[None, :]
    return codes.reshape(*shape[:2], *([1] * (len(shape) - 2))).expand(shape)


def cut(tensor: torch.Tensor, kept: tuple[torch.Tensor | None, torch.Tensor | None]) -> torch.Tensor:
    """`tensor` (shaped like the parameter `kept` was worked out for) cut to the kept indices."""
    for dim, index in enumerate(kept):
        if index is not None:
            tensor = tensor.index_select(dim, index.to(tensor.device))
    return tensor


def cut_state(state: Mapping[str, torch.Tensor], index_map: IndexMap) -> dict[str, torch.Tensor]:
    return {name: cut(t, index_map[name]) if name in index_map else t for name, t in state.items()}
