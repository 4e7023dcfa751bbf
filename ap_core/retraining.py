"""Retraining schemes: what a pruned network restarts from, and at which learning rate it trains.

One class per scheme behind a registry; the trial calls `rewind` once when a pruning cycle begins and
`learning_rate` every step, so adding a scheme touches nothing else. A scheme that `needs_rewind_point` gets a
`RewindPoint` hook in cycle 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ap_core.hooks import TrainingHook
from ap_core.network import Reference
from ap_core.registry import Registry
from ap_core.settings import RetrainingSettings

if TYPE_CHECKING:
    from ap_core.network import PrunableNet


class Retraining:
    """Keep the trained weights and replay the schedule from step 0 (the base every scheme adjusts)."""

    uses_rewind_step = False  # whether `rewind_step` (k) matters, and so must fall inside a cycle
    needs_rewind_point = False  # whether cycle 0 must snapshot the weights before step k
    uses_finetune_lr = False  # whether `finetune_lr` matters

    def rewind(self, net: PrunableNet, settings: RetrainingSettings) -> int:
        """Restore the weights the next cycle starts from; returns the schedule step it starts at."""
        return 0

    def learning_rate(self, settings: RetrainingSettings, scheduled: float) -> float:
        """The LR of a pruning cycle's step, given the LR the schedule has at that step."""
        return scheduled


RETRAINING: Registry[type[Retraining]] = Registry("retraining scheme")


@RETRAINING.register("rewind_init")
class RewindToInit(Retraining):
    """Lottery ticket (Frankle & Carbin 2019): the surviving weights go back to their initial values."""

    def rewind(self, net: PrunableNet, settings: RetrainingSettings) -> int:
        net.model.load_state_dict(net.references[Reference.INIT])
        return 0


@RETRAINING.register("rewind_iteration")
class RewindToIteration(Retraining):
    """Late rewinding (Frankle et al. 2020): back to the weights before step k, the schedule resumes there."""

    uses_rewind_step = True
    needs_rewind_point = True

    def rewind(self, net: PrunableNet, settings: RetrainingSettings) -> int:
        net.model.load_state_dict(net.references[Reference.REWIND])
        return settings.rewind_step


class RewindPoint(TrainingHook):
    """During cycle 0, snapshot the weights just before optimizer step k (late rewinding's restart point)."""

    def __init__(self, net: PrunableNet, step: int) -> None:
        self.net, self.step = net, step

    def before_step(self, step: int) -> None:
        if step == self.step:
            self.net.snapshot(Reference.REWIND)


@RETRAINING.register("lr_rewind")
class LearningRateRewinding(Retraining):
    """Renda et al. 2020: keep the trained weights, replay the learning-rate schedule from step k."""

    uses_rewind_step = True

    def rewind(self, net: PrunableNet, settings: RetrainingSettings) -> int:
        return settings.rewind_step


@RETRAINING.register("finetune")
class FineTuning(Retraining):
    """Renda et al. 2020: keep the trained weights, train at a small constant learning rate."""

    uses_finetune_lr = True

    def learning_rate(self, settings: RetrainingSettings, scheduled: float) -> float:
        return settings.finetune_lr
