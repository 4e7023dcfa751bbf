"""Training primitives: optimizers, LR schedules as pure functions of the step, masked steps, evaluation."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ap_core.replicas import ALONE, Replicas
from ap_core.settings import OptimizerSettings, ScheduleSettings

if TYPE_CHECKING:
    from ap_core.hooks import TrainingHook
    from ap_core.network import PrunableNet


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when enabled; a no-op elsewhere (CPU runs stay exact and deterministic)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_optimizer(
    settings: OptimizerSettings, model: nn.Module, groups: list[dict[str, Any]] | None = None
) -> torch.optim.Optimizer:
    """The configured optimizer over `groups` (a method's parameter groups, each with an `lr_scale`) or all
    parameters."""
    params: Any = groups if groups is not None else model.parameters()
    if settings.name == "adamw":
        return torch.optim.AdamW(
            params, lr=settings.lr, betas=(settings.momentum, 0.999), weight_decay=settings.weight_decay
        )
    return torch.optim.SGD(
        params,
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        nesterov=settings.nesterov and settings.momentum > 0,
    )


def lr_factor(schedule: ScheduleSettings, epochs: int, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the peak LR at optimizer step `step` of a cycle of `epochs` epochs.

    A pure function of the step, so learning-rate rewinding and resumed trials replay the schedule from any step.
    """
    total = epochs * steps_per_epoch
    progress = min(step / total, 1.0)
    if schedule.name == "multistep":
        factor = schedule.lr_gamma ** sum(progress >= m for m in schedule.milestones)
    elif schedule.name == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule.name == "onecycle":
        factor = one_cycle(progress)
    else:
        factor = 1.0
    warmup_steps = schedule.warmup_epochs * steps_per_epoch
    if warmup_steps > 0 and step < warmup_steps:
        factor *= (step + 1) / warmup_steps
    return factor


def one_cycle(progress: float) -> float:
    """torch.optim.lr_scheduler.OneCycleLR's shape as a factor of the peak: cosine up from 1/25 over the first 30%,
    cosine down to 1/25e4 at the end (DemP's lambda and noise schedules share it)."""
    start, end, peak_at = 1 / 25, 1 / 25e4, 0.3
    if progress < peak_at:
        return start + (1 - start) * 0.5 * (1 - math.cos(math.pi * progress / peak_at))
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * (progress - peak_at) / (1 - peak_at)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"] if "lr_scale" in group else lr


def train_epoch(
    net: PrunableNet,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    lrs: Iterator[float],
    use_amp: bool,
    first_step: int,
    hooks: Sequence[TrainingHook] = (),
    replicas: Replicas = ALONE,
) -> tuple[torch.Tensor, int]:
    """Train on `batches` (one epoch or its remainder; each replica's share of it); returns (summed loss as a
    device tensor, sample count), over all replicas.

    The optimizer, masking and forward module are looked up on `net` every step, since a hook may remove channels
    mid-epoch. Replicas reduce their gradients before the hooks see them, so a hook's own gradient terms (a
    regulariser's) are added once, as in one process.
    """
    model = net.model
    model.train()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    seen = 0
    for step, (x, y) in enumerate(batches, first_step):
        for hook in hooks:
            hook.before_step(step)
        optimizer = net.optimizer
        set_lr(optimizer, next(lrs))
        with autocast(device, use_amp):
            logits = net.forward_module(x)
            loss = F.cross_entropy(logits, y, reduction="sum" if replicas.parallel else "mean")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if replicas.parallel:
            replicas.average_gradients(net.model, len(y))
        for hook in hooks:
            hook.after_backward(step)
        net.masked.mask_grads()
        optimizer.step()
        net.masked.mask_weights()
        if replicas.parallel:
            replicas.follow_first(net.model.buffers())  # BatchNorm's running statistics
        loss_sum += loss.detach().float() * (1 if replicas.parallel else len(y))
        seen += len(y)
        for hook in hooks:
            hook.after_step(step)
    if replicas.parallel:
        seen = replicas.sum_with_count([loss_sum], seen)
    return loss_sum, seen


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    use_amp: bool,
    replicas: Replicas = ALONE,
) -> tuple[float, float]:
    """(accuracy %, mean loss) over every sample of `batches` (each replica's share of them)."""
    model.eval()
    device = next(model.parameters()).device
    correct = torch.zeros((), dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), device=device)
    seen = 0
    for x, y in batches:
        with autocast(device, use_amp):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(dim=1) == y).sum()
        seen += len(y)
    if replicas.parallel:
        seen = replicas.sum_with_count([correct, loss_sum], seen)
    return 100.0 * int(correct) / seen, float(loss_sum) / seen
