"""Dead-neuron measurement: dynamic DNR (element-wise) and dead units (channel-level).

Counting runs in forward hooks on the device and accumulates into device tensors; callers read the totals back
once (per epoch), so measuring adds no host-device synchronisation per batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ap_core.replicas import ALONE, Replicas

# ReLU-family outputs are >= 0, so "dead" (== 0) is the complement of count_nonzero; for the others (GELU) an
# output <= 0 counts as dead, as ap.md specifies.
NONNEGATIVE_ACTIVATIONS = (nn.ReLU, nn.ReLU6)
ACTIVATIONS = (*NONNEGATIVE_ACTIVATIONS, nn.GELU)


def activation_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, ACTIVATIONS)}


@dataclass
class DeadRate:
    """Dead fraction of activation outputs, over all activation layers and per layer."""

    dnr: float
    layers: dict[str, float]


class DeadNeuronCounter:
    """Counts outputs equal to 0 (<= 0 for non-ReLU activations) of every activation layer while enabled.

    Each hook counts alive outputs as sign(relu-output).sum() in float32 (on CPU several times faster than
    count_nonzero, exact for up to 2^24 alive outputs per layer and batch, a relative error below 1e-7 beyond) and adds
    it in place into that layer's float64 counter on the model's device; dead = seen - alive is worked out on the
    host at read time. Outputs seen are counted in Python ints when eager (the cheapest), and in device tensors when
    a torch.compile'd forward traces the hook: there a Python number would be guarded on and recompile every batch.
    Counters are zeroed in place, never replaced, for the same reason.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = activation_layers(model)
        self.enabled = False
        device = next(model.parameters()).device
        # Per activation layer, the alive outputs since the last reset: a float64 scalar on the model's device.
        self.alive_counts = [torch.zeros((), dtype=torch.float64, device=device) for _ in self.layers]
        self._seen_traced = [torch.zeros((), dtype=torch.float64, device=device) for _ in self.layers]
        self._seen = [0] * len(self.layers)
        self._handles = [
            module.register_forward_hook(self._hook(index, isinstance(module, NONNEGATIVE_ACTIVATIONS)))
            for index, module in enumerate(self.layers.values())
        ]

    def _hook(self, index: int, nonnegative: bool):
        def count(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            if not self.enabled:
                return
            # Detached, counting stays out of autograd: otherwise every batch's graph is chained into the counter.
            values = output.detach()
            positive = values if nonnegative else values.clamp(min=0)
            self.alive_counts[index].add_(positive.sign().sum(dtype=torch.float32))
            if torch.compiler.is_compiling():
                self._seen_traced[index].add_(values.numel())
            else:
                self._seen[index] += values.numel()

        return count

    def reset(self) -> None:
        if self.layers:
            torch._foreach_zero_(self.alive_counts + self._seen_traced)
        self._seen = [0] * len(self.layers)

    def read(self, replicas: Replicas = ALONE) -> DeadRate:
        """Dead rates since the last reset, over every replica's batches (one device->host copy)."""
        n = len(self.layers)
        counts = []
        if n:
            eager = torch.tensor(self._seen, dtype=torch.float64, device=self.alive_counts[0].device)
            totals = torch.cat([torch.stack(self.alive_counts + self._seen_traced), eager])
            replicas.sum_([totals])
            counts = totals.tolist()
        alive = [round(a) for a in counts[:n]]
        seen = [round(eager) + round(traced) for traced, eager in zip(counts[n : 2 * n], counts[2 * n :], strict=True)]
        dead = [s - a for s, a in zip(seen, alive, strict=True)]
        layers = {name: (d / s if s else 0.0) for name, d, s in zip(self.layers, dead, seen, strict=True)}
        total = sum(seen)
        return DeadRate(dnr=sum(dead) / total if total else 0.0, layers=layers)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@torch.no_grad()
def measure_dnr(model: nn.Module, batches: Iterable[torch.Tensor]) -> DeadRate:
    """Element-wise dead-neuron rate of `model` (in its current train/eval mode) over `batches` of inputs."""
    counter = DeadNeuronCounter(model)
    counter.enabled = True
    try:
        for x in batches:
            model(x)
        return counter.read()
    finally:
        counter.remove()


def _unit_dim(output: torch.Tensor) -> int:
    """Channel axis: dim 1 for (N, C, ...) conv maps and (N, F) features, the last for (N, tokens, D)."""
    return -1 if output.dim() == 3 else 1


@dataclass
class DeadUnits:
    """Units (channels / features) whose output was dead for every sample and position of a window."""

    dead: int
    total: int
    layers: dict[str, int]


@torch.no_grad()
def fired_units(model: nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per activation layer, which units (channels / features) fired (> 0) at least once over `batches`, in eval
    mode: the window DemP and the dead-unit count look at."""
    layers = activation_layers(model)
    fired: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            dim = _unit_dim(output) % output.dim()
            reduce_dims = [d for d in range(output.dim()) if d != dim]
            any_alive = (output > 0).amax(dim=reduce_dims) if reduce_dims else output > 0
            fired[name] = fired[name] | any_alive if name in fired else any_alive

        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in layers.items()]
    was_training = model.training
    model.eval()
    try:
        for x in batches:
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return fired


def count_dead_units(model: nn.Module, batches: Iterable[torch.Tensor]) -> DeadUnits:
    """DemP's channel-level count: run `batches` in eval mode and report units that never fire."""
    fired = fired_units(model, batches)
    dead_layers = {name: int((~f).sum()) for name, f in fired.items()}
    return DeadUnits(
        dead=sum(dead_layers.values()),
        total=sum(f.numel() for f in fired.values()),
        layers=dead_layers,
    )
