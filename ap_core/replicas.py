"""Data-parallel replicas of one trial: the processes of a `torch.distributed` group that train it together.

Whoever starts the processes (Ray Train, torchrun) sets up the group; the core only reads it. Every replica holds
the whole network and draws the same global batches; each trains on its share of every batch (`shard`), and the
gradients are summed over replicas and divided by the global batch, so a step equals the one-process step on the
whole batch. Decisions (a pruning step's mask, a channel removal) are taken on the first replica and broadcast, so
replicas never drift apart; BatchNorm buffers follow the first replica after every step.

Models change shape when channels are removed, so gradients are reduced here, flattened into one buffer per step,
rather than by a DistributedDataParallel wrapper that would have to be rebuilt by every replica at every removal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


@dataclass(frozen=True)
class Replicas:
    """This process's place among its trial's replicas; `Replicas()` is a trial trained by one process alone."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> Replicas:
        """The replicas of the initialised default process group, or one process alone."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def parallel(self) -> bool:
        return self.world > 1

    @property
    def first(self) -> bool:
        """The replica that writes checkpoints and reports results."""
        return self.rank == 0

    def _bounds(self, count: int) -> slice:
        """Where this replica's contiguous share of `count` items lies (sizes differ by at most one; may be empty)."""
        size, extra = divmod(count, self.world)
        start = self.rank * size + min(self.rank, extra)
        return slice(start, start + size + (self.rank < extra))

    def share(self, items: Sequence[T]) -> Sequence[T]:
        """This replica's share of a batch's items."""
        return items[self._bounds(len(items))] if self.parallel else items

    def shard(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """This replica's share of a batch of (images, labels): views, no copy."""
        x, y = batch
        share = self._bounds(len(y))
        return x[share], y[share]

    def sum_with_count(self, tensors: Sequence[torch.Tensor], count: int) -> int:
        """Sum `tensors` over the replicas in place, in one collective with `count`; returns the summed count."""
        counted = torch.tensor(float(count), dtype=torch.float64, device=tensors[0].device)
        self.sum_([*tensors, counted])
        return round(float(counted))

    def sum_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Sum each tensor over the replicas, in place (one collective for all of them)."""
        if self.parallel and tensors:
            flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])
            dist.all_reduce(flat)
            for tensor, total in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
                tensor.copy_(total.view_as(tensor))

    def average_gradients(self, model: nn.Module, samples: int) -> None:
        """Every parameter's gradient becomes the sum over replicas divided by the global batch size, given each
        replica's gradient of its summed (not averaged) loss over its `samples`."""
        params = [p for p in model.parameters() if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        count = torch.tensor([float(samples)], device=grads[0].device, dtype=grads[0].dtype)
        flat = torch.cat([*(g.reshape(-1) for g in grads), count])
        dist.all_reduce(flat)
        flat[:-1].div_(flat[-1])
        for param, total in zip(params, flat[:-1].split([p.numel() for p in params]), strict=True):
            param.grad = total.view_as(param).clone()

    def follow_first(self, tensors: Iterable[torch.Tensor]) -> None:
        """Overwrite each tensor with the first replica's, in place."""
        tensors = [t for t in tensors if t.numel()]
        if not self.parallel or not tensors:
            return
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for tensor in tensors:
            by_dtype.setdefault(tensor.dtype, []).append(tensor)
        for group in by_dtype.values():
            flat = torch.cat([t.reshape(-1) for t in group])
            wire = flat.to(torch.uint8) if flat.dtype == torch.bool else flat  # gloo has no bool
            dist.broadcast(wire, src=0)
            for tensor, value in zip(group, wire.split([t.numel() for t in group]), strict=True):
                tensor.copy_(value.view_as(tensor))

    def decided_by_first(self, decision: Any) -> Any:
        """The first replica's `decision` (JSON-able: a channel removal's names and indices), on every replica;
        sent as JSON text, so nothing received is unpickled."""
        if not self.parallel:
            return decision
        device = _collective_device()
        text = json.dumps(decision).encode() if self.first else b""
        size = torch.tensor([len(text)], dtype=torch.int64, device=device)
        dist.broadcast(size, src=0)
        if self.first:
            wire = torch.frombuffer(bytearray(text), dtype=torch.uint8).to(device)
        else:
            wire = torch.empty(int(size), dtype=torch.uint8, device=device)
        dist.broadcast(wire, src=0)
        return json.loads(wire.cpu().numpy().tobytes())


def _collective_device() -> torch.device:
    """Where the group's collectives take their tensors: NCCL only reduces CUDA tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# A trial trained by one process: the default wherever replicas are optional.
ALONE = Replicas()
