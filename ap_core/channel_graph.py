"""The channel groups of a network, traced from Torch-Pruning's dependency graph rather than read from its name.

A group is the output channels of one conv/linear that can be removed on their own, with the norms (and the
activations after them) those channels pass; `channel_layout` also says whether the net is a plain chain, which
the channel methods' defaults follow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner.function import BatchnormPruner

from ap_core.masks import PRUNABLE_TYPES

NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)
_LAYER_TYPES = (*NORM_TYPES, *PRUNABLE_TYPES)


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


def find_channel_groups(model: nn.Module, example: torch.Tensor) -> list[ChannelGroup]:
    """The model's independently removable channel groups, in module order."""
    return channel_layout(model, example).groups


def channel_layout(model: nn.Module, example: torch.Tensor) -> ChannelLayout:
    """The channel groups of `model` as its dependency graph couples them (one trace)."""
    modules = dict(model.named_modules())
    names = {id(m): name for name, m in modules.items()}
    order = {name: i for i, name in enumerate(modules)}
    roots = [name for name, m in modules.items() if isinstance(m, PRUNABLE_TYPES)][:-1]  # never the classifier
    graph = dependency_graph(model, example)
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


def dependency_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's graph of which channels depend on which, traced on `example` without moving BatchNorm."""
    custom = {type(m): _BiaslessNormPruner() for m in model.modules() if isinstance(m, NORM_TYPES) and m.bias is None}
    with _eval_mode(model), torch.enable_grad():  # the graph is traced through autograd
        return tp.DependencyGraph().build_dependency(model, example_inputs=example, customized_pruners=custom)
