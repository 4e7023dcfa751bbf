"""The network a trial prunes: model, mask, reference states and optimizer, kept consistent through every removal.

Two kinds of removal exist. Element removal turns mask entries off (weight methods, AP). Channel removal
(channel methods) physically deletes output channels with Torch-Pruning's dependency graph, so the BatchNorm
and the consumers' input channels go too. After a channel removal every tensor that mirrors a parameter (mask,
reference states, theta_start, optimizer moments) is cut by the same kept indices, and every "% remaining" stays
relative to the dense totals fixed when the net was built. The channel groups come from `ap_core.channel_graph`,
the removal itself and the kept indices from `ap_core.channel_removal`.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from ap_core.channel_graph import ChannelGroup, channel_layout, find_channel_groups
from ap_core.channel_removal import ChannelRemoval, IndexMap, cut, cut_state, kept_indices, remove_channels
from ap_core.masks import Mask, MaskedParameters, named_weights


class Reference(StrEnum):
    """The states a net keeps to go back to or compare with; the values are the checkpoint's keys."""

    INIT = "init"  # the weights at initialisation (rewind_init's restart point)
    REWIND = "rewind"  # the weights before step k of cycle 0 (rewind_iteration's restart point)
    START = "start"  # theta_start: the prunable weights as the cycle's training began (AP's "change" baseline)


@dataclass(frozen=True)
class Remaining:
    """What is left of the dense net, each in percent of the dense count."""

    weights: float
    params: float
    channels: float
    flops: float


@dataclass(frozen=True)
class DenseTotals:
    weights: int
    params: int
    channels: int
    flops: float


def compiled(model: nn.Module, mode: str) -> nn.Module:
    """What training and evaluation call: `model` itself, or torch.compile's wrapper around it (same parameters)."""
    return model if mode == "off" else torch.compile(model, mode=mode)


class PrunableNet:
    """A model with its mask, reference states, optimizer and the dense totals, changed only through removals.

    References are full state dicts (INIT, REWIND) or prunable-weight dicts (START, theta_start); each is
    cut with the model at every channel removal. `removals` logs every channel removal event, so a checkpoint can
    rebuild the architecture by replaying them on a freshly built dense model.
    """

    def __init__(
        self,
        model: nn.Module,
        mask: Mask,
        example: torch.Tensor,
        make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
        channel_groups: Sequence[ChannelGroup] = (),
        channels_last: bool = False,
        compile_mode: str = "off",
    ) -> None:
        self.model = model
        self.compile_mode = compile_mode
        self.forward_module = compiled(model, compile_mode)
        self.channels_last = channels_last  # Torch-Pruning rebuilds weights contiguous: restore the format after
        self.example = example
        self.make_optimizer = make_optimizer
        self.channel_groups = list(channel_groups)
        self.references: dict[Reference, dict[str, torch.Tensor]] = {}
        self.removals: list[dict[str, list[int]]] = []
        self._flops: float | None = None
        self.mask = mask
        self.masked = MaskedParameters(model, mask)
        self.optimizer = make_optimizer(model)
        self.dense = DenseTotals(
            weights=mask.total(),
            params=sum(p.numel() for p in model.parameters()),
            channels=self.channels(),
            flops=self.flops(),
        )

    # ---- measurements -----------------------------------------------------------------------------------------

    def channels(self) -> int:
        """Output channels of the removable channel groups."""
        params = dict(self.model.named_parameters())
        return sum(params[f"{g.root}.weight"].shape[0] for g in self.channel_groups)

    def flops(self) -> float:
        """Multiply-accumulates of one forward pass on one input, as executed (masked weights still cost).

        Counted on a copy of the model, so only after a channel removal: nothing else changes it.
        """
        if self._flops is None:
            macs, _ = tp.utils.count_ops_and_params(self.model, self.example)
            self._flops = float(macs)
        return self._flops

    @functools.cached_property
    def plain(self) -> bool:
        """Whether the net is a plain chain (no shortcut, no concatenation): the methods' defaults follow it."""
        return channel_layout(self.model, self.example).plain

    def remaining(self) -> Remaining:
        params = sum(p.numel() for p in self.model.parameters()) - (self.mask.total() - self.mask.alive())
        return Remaining(
            weights=100.0 * (self.mask.alive() / self.dense.weights) if self.dense.weights else 100.0,
            params=100.0 * params / self.dense.params,
            channels=100.0 * self.channels() / self.dense.channels if self.dense.channels else 100.0,
            flops=100.0 * self.flops() / self.dense.flops if self.dense.flops else 100.0,
        )

    def snapshot(self, key: Reference) -> None:
        """Keep the model's whole state as reference `key` (INIT, REWIND), a copy that later training leaves alone."""
        self.references[key] = copy.deepcopy(self.model.state_dict())

    def weights(self) -> dict[str, torch.Tensor]:
        """The prunable weights (detached), keyed like the mask."""
        return named_weights(self.model, self.mask)

    # ---- element removal ----------------------------------------------------------------------------------------

    def set_mask(self, mask: Mask) -> None:
        """Adopt `mask` and zero what it prunes, in the weights and in the optimizer's moments."""
        self.mask = mask
        self.masked = MaskedParameters(self.model, mask)
        self.masked.mask_weights()
        self.masked.clear_optimizer_state(self.optimizer)

    def new_optimizer(self) -> None:
        self.optimizer = self.make_optimizer(self.model)

    # ---- channel removal ----------------------------------------------------------------------------------------

    def remove_channels(self, removal: ChannelRemoval) -> int:
        """Physically remove channels; returns how many. Mask, references and optimizer state follow."""
        removal = {root: sorted(int(i) for i in idxs) for root, idxs in removal.items() if len(idxs)}
        if not removal:
            return 0
        index_map = kept_indices(self.model, removal, self.example)
        params = dict(self.model.named_parameters())
        moments = {name: self.optimizer.state.get(p, {}) for name, p in params.items()}
        self._remove(removal)
        self.references = {key: cut_state(state, index_map) for key, state in self.references.items()}
        self.mask = Mask(cut_state(dict(self.mask.items()), index_map))
        self.optimizer = self._moved_optimizer(moments, index_map)
        self.masked = MaskedParameters(self.model, self.mask)
        return sum(len(v) for v in removal.values())

    def _remove(self, removal: ChannelRemoval) -> None:
        remove_channels(self.model, removal, self.example)
        if self.compile_mode != "off":
            # Start the new shapes from a clean cache: otherwise every removal adds a graph until torch.compile's
            # recompile limit silently falls back to eager.
            torch.compiler.reset()
            self.forward_module = compiled(self.model, self.compile_mode)
        self._flops = None
        if any(g.concatenated for g in self.channel_groups):  # offsets move as earlier groups lose channels
            self.channel_groups = find_channel_groups(self.model, self.example)
        else:
            params = dict(self.model.named_parameters())
            self.channel_groups = [g.narrowed(params[f"{g.root}.weight"].shape[0]) for g in self.channel_groups]
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.removals.append({k: [int(i) for i in v] for k, v in removal.items()})

    def _moved_optimizer(self, moments: Mapping[str, Mapping[str, Any]], index_map: IndexMap) -> torch.optim.Optimizer:
        """A fresh optimizer over the new parameters, carrying each parameter's cut state (momentum, moments)."""
        optimizer = self.make_optimizer(self.model)
        for name, param in self.model.named_parameters():
            state = moments.get(name, {})
            if state:
                optimizer.state[param] = {
                    k: cut(v, index_map[name]) if isinstance(v, torch.Tensor) and v.dim() and name in index_map else v
                    for k, v in state.items()
                }
        return optimizer

    def load_state(
        self,
        removals: Sequence[Mapping[str, Sequence[int]]],
        model_state: Mapping[str, torch.Tensor],
        optimizer_state: Mapping[str, Any],
        mask: Mask,
        references: Mapping[str, dict[str, torch.Tensor]],
    ) -> None:
        """Restore a checkpoint on this freshly built (dense) net: replay its removals to rebuild the architecture,
        then load the weights, optimizer state, mask and references."""
        for removal in removals:
            self._remove(removal)
        self.model.load_state_dict(model_state)
        self.optimizer = self.make_optimizer(self.model)
        self.optimizer.load_state_dict(optimizer_state)
        self.mask = mask
        self.masked = MaskedParameters(self.model, mask)
        self.references = {Reference(key): state for key, state in references.items()}
