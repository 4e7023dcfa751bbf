"""Training hooks: how a pruning method (or a retraining scheme) acts inside the training loop.

The loop calls every hook at fixed points of every step without knowing what it does, as OpenLTH's training
callbacks work: a regulariser adds its gradient after the backward pass, DemP adds noise and removes dead
channels after the optimizer step, late rewinding snapshots the weights before step k.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ap_core.channel_removal import ChannelRemoval
    from ap_core.network import PrunableNet


class TrainingHook:
    """Override any of these; `step` counts optimizer steps within the cycle (the LR schedule's clock)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Before the first batch of epoch `epoch` of the cycle (also when a resumed trial continues there)."""

    def before_step(self, step: int) -> None:
        """Before the forward pass of step `step`."""

    def after_backward(self, step: int) -> None:
        """After the loss's gradients exist, before masking and the optimizer step: add regulariser gradients."""

    def after_step(self, step: int) -> None:
        """After the optimizer step and the masking of pruned weights."""


@dataclass
class CycleContext:
    """What hooks and methods may use during one cycle of a trial.

    `fired_units()` runs the eval window (un-augmented training images) and says, per activation layer, which
    units fired; `remove_channels(removal, step)` removes channels during training and records the removal event;
    both keep the epoch's DNR count clean of their own forward passes.
    """

    net: PrunableNet
    hparams: Any
    cycle: int
    cycle_steps: int
    fired_units: Callable[[], dict[str, torch.Tensor]]
    remove_channels: Callable[[ChannelRemoval, int], None]
    seed: Callable[..., int]

    def generator(self, *parts: int) -> torch.Generator:
        """A generator on the model's device seeded from the trial's seed and `parts` (reproducible on resume)."""
        device = next(self.net.model.parameters()).device
        return torch.Generator(device=device).manual_seed(self.seed(*parts))
