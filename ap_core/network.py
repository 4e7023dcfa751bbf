"""The network a trial prunes: model, mask, reference states and optimizer, kept consistent through every removal.

Two kinds of removal exist. Element removal turns mask entries off (weight methods, AP). Channel removal
(channel methods) physically deletes output channels with Torch-Pruning's dependency graph, so the BatchNorm
and the consumers' input channels go too. After a channel removal every tensor that mirrors a parameter (mask,
reference states, theta_start, optimizer moments) is cut by the same kept indices, and every "% remaining" stays
relative to the dense totals fixed when the net was built.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner.function import BatchnormPruner

from ap_core.masks import PRUNABLE_TYPES, Mask, MaskedParameters, named_weights

NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)
_LAYER_TYPES = (*NORM_TYPES, *PRUNABLE_TYPES)
# A removal event: per channel group root, the channel indices to remove (relative to the net at that moment).
ChannelRemoval = Mapping[str, Sequence[int]]
# Per tensor name, the kept indices along dim 0 and dim 1 (None: that dim is untouched).
IndexMap = dict[str, tuple[torch.Tensor | None, torch.Tensor | None]]


class Reference(StrEnum):
    """The states a net keeps to go back to or compare with; the values are the checkpoint's keys."""

    INIT = "init"  # the weights at initialisation (rewind_init's restart point)
    REWIND = "rewind"  # the weights before step k of cycle 0 (rewind_iteration's restart point)
    START = "start"  # theta_start: the prunable weights as the cycle's training began (AP's "change" baseline)


@dataclass(frozen=True)
class NormSite:
    """A norm (and the activation it feeds) that the group's channels pass: root channel j is its channel index[j].

    Concatenations (DenseNet) put a group's channels at an offset of a later norm; in a plain chain index is 0..n-1.
    """

    norm: str
    activation: str | None
    index: tuple[int, ...]


@dataclass(frozen=True)
class ChannelGroup:
    """Output channels that can be removed on their own: `root` (conv/linear), with the norms they pass.

    Found from the dependency graph, whatever the network's name: a root qualifies when removing its output
    channels touches no other conv/linear output except depthwise convs fed by it (MobileNetV2's expand and
    depthwise pair), so residual streams (a shortcut and every block's last conv share channels) are excluded; the
    classifier never qualifies. `sites` are the norms the channels pass after the group's last conv, in module
    order: one right after it in a plain chain, every later BN-ReLU that reads them after a concatenation.
    """

    root: str
    sites: tuple[NormSite, ...] = ()

    @property
    def norm(self) -> str | None:
        """The first norm the channels pass (whose scale ranks them), or None."""
        return self.sites[0].norm if self.sites else None

    @property
    def activation(self) -> str | None:
        return self.sites[0].activation if self.sites else None

    def narrowed(self, width: int) -> ChannelGroup:
        """This group of a plain chain after its root kept `width` channels (positions 0..width-1 everywhere)."""
        kept = tuple(range(width))
        return ChannelGroup(self.root, tuple(dataclasses.replace(site, index=kept) for site in self.sites))

    @property
    def concatenated(self) -> bool:
        """Whether later layers read these channels among others' (a concatenation), at positions that move."""
        return len(self.sites) > 1 or any(site.index != tuple(range(len(site.index))) for site in self.sites)


@dataclass(frozen=True)
class ChannelLayout:
    """The removable channel groups and whether the net is a plain chain (no shortcut, no concatenation)."""

    groups: list[ChannelGroup]
    plain: bool


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


def find_channel_groups(model: nn.Module, example: torch.Tensor) -> list[ChannelGroup]:
    """The model's independently removable channel groups, in module order."""
    return channel_layout(model, example).groups


def channel_layout(model: nn.Module, example: torch.Tensor) -> ChannelLayout:
    """The channel groups of `model` as its dependency graph couples them (one trace)."""
    modules = dict(model.named_modules())
    names = {id(m): name for name, m in modules.items()}
    order = {name: i for i, name in enumerate(modules)}
    roots = [name for name, m in modules.items() if isinstance(m, PRUNABLE_TYPES)][:-1]  # never the classifier
    graph = _dependency_graph(model, example)
    producers = _producers(model, example)
    groups, plain = [], True
    for root in roots:
        module = modules[root]
        width = module.weight.shape[0]
        pruner = graph.get_pruner_of_module(module).prune_out_channels
        coupling = graph.get_pruning_group(module, pruner, idxs=list(range(width)))
        coupled = [
            names[id(dep.target.module)]
            for dep, _ in coupling
            if isinstance(dep.target.module, PRUNABLE_TYPES) and dep.handler.__name__ == "prune_out_channels"
        ]
        if any(name != root and not _depthwise(modules[name]) for name in coupled):
            plain = False  # a shortcut's sum: its channels are not this root's alone
            continue
        last = max(coupled, key=order.__getitem__)
        sites: dict[str, NormSite] = {}
        for item in coupling.items:
            if not isinstance(item.dep.target.module, NORM_TYPES):
                continue
            norm = names[id(item.dep.target.module)]
            if order[norm] > order[last] and norm not in sites:
                position = dict(zip(item.root_idxs, item.idxs, strict=True))
                activation = next(
                    (n for n, p in producers.items() if p == norm and not isinstance(modules[n], _LAYER_TYPES)),
                    None,
                )
                sites[norm] = NormSite(norm, activation, tuple(position[j] for j in range(width)))
        group = ChannelGroup(root, tuple(sorted(sites.values(), key=lambda site: order[site.norm])))
        plain = plain and not group.concatenated
        groups.append(group)
    return ChannelLayout(groups, plain)


def _depthwise(module: nn.Module) -> bool:
    """A conv that filters each channel on its own (its output channel i is its input channel i)."""
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def _producers(model: nn.Module, example: torch.Tensor) -> dict[str, str]:
    """For each module whose input is exactly another module's output, that producer's name (one traced forward)."""
    outputs: dict[int, tuple[str, torch.Tensor]] = {}
    produced_by: dict[str, str] = {}

    def hook(name: str):
        def record(_module: nn.Module, inputs: tuple, output: Any) -> None:
            if inputs and isinstance(inputs[0], torch.Tensor) and id(inputs[0]) in outputs:
                produced_by.setdefault(name, outputs[id(inputs[0])][0])
            if isinstance(output, torch.Tensor):
                outputs[id(output)] = (name, output)  # the reference keeps ids unique during the trace

        return record

    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]
    handles = [m.register_forward_hook(hook(n)) for n, m in leaves]
    try:
        with _eval_mode(model), torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return produced_by


class _eval_mode:
    """Eval mode for tracing (BatchNorm statistics must not move), restoring the previous mode after."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.training = self.model.training
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.training)


class _BiaslessNormPruner(BatchnormPruner):
    """Torch-Pruning's BatchNorm pruner for norms without a shift (RNI's bounded BatchNorm)."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = sorted(set(range(layer.num_features)) - set(idxs))
        layer.num_features = len(keep)
        layer.running_mean = layer.running_mean.data[keep]
        layer.running_var = layer.running_var.data[keep]
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
        return layer

    prune_in_channels = prune_out_channels


def _dependency_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    custom = {type(m): _BiaslessNormPruner() for m in model.modules() if isinstance(m, NORM_TYPES) and m.bias is None}
    with _eval_mode(model), torch.enable_grad():  # the graph is traced through autograd
        return tp.DependencyGraph().build_dependency(model, example_inputs=example, customized_pruners=custom)


def remove_channels(model: nn.Module, removal: ChannelRemoval, example: torch.Tensor) -> None:
    """Physically remove `removal`'s channels (and everything that depends on them) from `model`, in place."""
    modules = dict(model.named_modules())
    graph = _dependency_graph(model, example)
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
