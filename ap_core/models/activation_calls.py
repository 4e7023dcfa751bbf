"""One activation module per activation call, for networks written without that convention (the zoos').

The dead-neuron rate and the dead-unit count hook activation modules (`ap_core.dnr`): a module called several times
per forward (torchvision's ResNet blocks call one `self.relu` two or three times) would mix its calls in one count,
and a functional call (`F.relu(x)`) would be missed. `one_module_per_call` traces the network with torch.fx and
gives every such call a module of its own, named after the one it copies (`layer1.0.relu_1`) or, for a functional
call, after its graph node. Parameter and buffer names stay as they were, so the zoo's state dicts still load.
Activations are made out-of-place: a hook must see the outputs before a later in-place op overwrites them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import fx, nn

from ap_core.dnr import ACTIVATIONS
from ap_core.errors import ConfigError

# Functional activations (and tensor methods) -> the module that stands in for them.
_FUNCTIONS: dict[object, Callable[[fx.Node], nn.Module]] = {
    F.relu: lambda node: nn.ReLU(),
    torch.relu: lambda node: nn.ReLU(),
    torch.relu_: lambda node: nn.ReLU(),
    F.relu6: lambda node: nn.ReLU6(),
    F.gelu: lambda node: nn.GELU(approximate=node.kwargs.get("approximate", "none")),
}
_METHODS: dict[str, Callable[[fx.Node], nn.Module]] = {"relu": _FUNCTIONS[F.relu], "relu_": _FUNCTIONS[F.relu]}


class _Tracer(fx.Tracer):
    """torch.fx's tracer, keeping the modules and functions a zoo marks untraceable as single calls."""

    def __init__(self, leaf_modules: tuple[type, ...], autowrap_functions: tuple[Callable, ...]) -> None:
        super().__init__(autowrap_functions=autowrap_functions)
        self.leaf_modules = leaf_modules

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, self.leaf_modules) or super().is_leaf_module(module, qualified_name)


def one_module_per_call(
    model: nn.Module,
    name: str,
    leaf_modules: Iterable[type] = (),
    autowrap_functions: Iterable[Callable] = (),
) -> nn.Module:
    """`model` as an fx GraphModule in which every ReLU / ReLU6 / GELU call is its own out-of-place module."""
    tracer = _Tracer(tuple(leaf_modules), tuple(autowrap_functions))
    try:
        graph = tracer.trace(model)
    except Exception as err:  # whatever fx cannot follow in a model's forward is the same user-facing problem
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"model {name!r} cannot be traced by torch.fx ({reason[:200]})") from None
    traced = fx.GraphModule(model, graph, type(model).__name__)
    called: set[str] = set()
    for node in traced.graph.nodes:
        if node.op == "call_module" and isinstance(module := traced.get_submodule(node.target), ACTIVATIONS):
            if hasattr(module, "inplace"):
                module.inplace = False
            if node.target in called:
                node.target = _add_module(traced, node.target, copy.deepcopy(module))
            called.add(node.target)
        elif (node.op == "call_function" and node.target in _FUNCTIONS) or (
            node.op == "call_method" and node.target in _METHODS
        ):
            make = _FUNCTIONS[node.target] if node.op == "call_function" else _METHODS[node.target]
            module = make(node)
            node.op, node.target = "call_module", _add_module(traced, node.name, module)
            node.args, node.kwargs = (node.args[0],), {}
    traced.recompile()
    return traced


def _add_module(root: nn.Module, like: str, module: nn.Module) -> str:
    """Add `module` beside the module path `like` under the first free name `<leaf>_<k>`; returns its path."""
    parent, _, leaf = like.rpartition(".")
    owner = root.get_submodule(parent)
    index = 1
    while hasattr(owner, f"{leaf}_{index}"):
        index += 1
    owner.add_module(f"{leaf}_{index}", module)
    return f"{parent}.{leaf}_{index}" if parent else f"{leaf}_{index}"
