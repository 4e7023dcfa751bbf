"""One cycle of a trial: its pruning step and rewind, its training epochs with the method's hooks, and its result.

Randomness is derived from (seed, cycle, epoch) rather than carried along, so a trial resumed from a checkpoint
replays exactly the batches, augmentations and random prunes an uninterrupted run would have used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ap_core.channel_removal import ChannelRemoval
from ap_core.config import TrialConfig
from ap_core.dnr import DeadNeuronCounter, count_dead_units, fired_units
from ap_core.environment import Environment
from ap_core.errors import NonFiniteLossError
from ap_core.hooks import CycleContext, TrainingHook
from ap_core.masks import Mask
from ap_core.network import PrunableNet, Reference
from ap_core.pruning import PruneRequest, PruningMethod, prune_step, target_alive
from ap_core.recorder import EpochFigures
from ap_core.replicas import Replicas
from ap_core.results import CycleResult
from ap_core.retraining import Retraining, RewindPoint
from ap_core.training import evaluate, lr_factor, train_epoch
from ap_core.trial_data import TrialData

# Independent random streams: a tag keeps e.g. (seed, cycle) apart from (seed, cycle, epoch=0).
DATA_STREAM, PRUNING_STREAM = 1, 2


def derived_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integer parts (stream tag, seed, cycle, epoch...)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)


@dataclass(frozen=True)
class TrialParts:
    """What every cycle of a trial works with, fixed when the trial is built (the net changes only in place)."""

    config: TrialConfig
    environment: Environment
    data: TrialData
    method: PruningMethod
    hparams: Any
    retraining: Retraining
    net: PrunableNet
    counter: DeadNeuronCounter
    channels_last: bool
    replicas: Replicas

    @property
    def cycle_steps(self) -> int:
        return self.config.training.epochs * self.data.steps_per_epoch


class CycleRunner:
    """Cycle `cycle` of a trial, from its pruning step to its result.

    `step`, `begun` and `figures` are where the cycle stands: what a checkpoint written between epochs brings back.
    """

    def __init__(
        self, parts: TrialParts, cycle: int, step: int = 0, begun: bool = False, figures: EpochFigures | None = None
    ) -> None:
        self.parts = parts
        self.cycle, self.step, self.begun = cycle, step, begun
        self.figures = figures if figures is not None else EpochFigures()
        self._hooks: list[TrainingHook] | None = None

    @property
    def trained(self) -> bool:
        """Whether every step of the cycle's schedule has run."""
        return self.step >= self.parts.cycle_steps

    def begin(self) -> None:
        """Prune (after cycle 0), rewind per the retraining scheme, and record theta_start."""
        parts, net = self.parts, self.parts.net
        self.step = 0
        self.figures = EpochFigures()
        self._hooks = None
        mask = net.mask
        if self.cycle > 0:
            mask = self._prune()
            self.step = parts.retraining.rewind(net, parts.config.retraining)
            net.new_optimizer()
        net.set_mask(mask)
        net.references[Reference.START] = {name: w.clone() for name, w in net.weights().items()}
        self.begun = True

    def _prune(self) -> Mask:
        """This cycle's removal (the method's proposal, then AP's share); returns the new mask."""
        config, net = self.parts.config, self.parts.net
        generator = torch.Generator().manual_seed(derived_seed(PRUNING_STREAM, config.seed, self.cycle))
        count = max(0, net.mask.alive() - target_alive(net.mask.total(), config.pruning.prune_rate, self.cycle))
        request = PruneRequest(
            net.weights(),
            net.references[Reference.START],
            net.mask,
            count,
            generator,
            self.parts.hparams,
            self._context(),
        )

        def apply_channels(removal: ChannelRemoval) -> PruneRequest:
            self._remove_channels(removal, 0)
            return dataclasses.replace(
                request, weights=net.weights(), start=net.references[Reference.START], mask=net.mask
            )

        mask = prune_step(self.parts.method, request, config.ap, apply_channels)
        self.parts.replicas.follow_first(mask.values())
        return mask

    def _context(self) -> CycleContext:
        return CycleContext(
            net=self.parts.net,
            hparams=self.parts.hparams,
            cycle=self.cycle,
            cycle_steps=self.parts.cycle_steps,
            fired_units=self._fired_units,
            remove_channels=self._remove_channels,
            seed=lambda stream, *parts: derived_seed(stream, self.parts.config.seed, *parts),
        )

    def _cycle_hooks(self) -> list[TrainingHook]:
        if self._hooks is None:
            self._hooks = self.parts.method.hooks(self._context())
            if self.cycle == 0 and self.parts.retraining.needs_rewind_point:
                self._hooks.append(RewindPoint(self.parts.net, self.parts.config.retraining.rewind_step))
        return self._hooks

    @contextlib.contextmanager
    def _not_counting(self) -> Iterator[None]:
        """Keep the epoch's DNR count to training batches while hooks run forward passes of their own."""
        counter = self.parts.counter
        enabled, counter.enabled = counter.enabled, False
        try:
            yield
        finally:
            counter.enabled = enabled

    def _fired_units(self) -> dict[str, torch.Tensor]:
        with self._not_counting():
            return fired_units(self.parts.net.model, self.parts.data.window())

    def _remove_channels(self, removal: ChannelRemoval, step: int) -> None:
        with self._not_counting():
            net = self.parts.net
            replicas = self.parts.replicas
            if replicas.parallel:
                removal = replicas.decided_by_first({root: [int(i) for i in idxs] for root, idxs in removal.items()})
            removed = net.remove_channels(removal)
            if removed:
                training_step = self.cycle * self.parts.cycle_steps + step
                self.figures.record_removal(step, training_step, removed, net.remaining())

    def train_epoch(self) -> None:
        """Train the cycle's next epoch (from a rewound step, if one is mid-epoch), then evaluate and record it."""
        parts = self.parts
        config, data, counter, net = parts.config, parts.data, parts.counter, parts.net
        epoch = self.step // data.steps_per_epoch
        generator = torch.Generator(device=parts.environment.device).manual_seed(
            derived_seed(DATA_STREAM, config.seed, self.cycle, epoch)
        )
        batches = data.epoch(generator, self.step, parts.channels_last)
        first_step = self.step
        hooks = self._cycle_hooks()
        for hook in hooks:
            hook.on_epoch_start(epoch)
        counter.reset()
        counter.enabled = True
        use_amp, replicas = parts.environment.use_amp, parts.replicas
        try:
            lrs = self._learning_rates(first_step)
            loss_sum, seen = train_epoch(net, batches, lrs, use_amp, first_step, hooks, replicas)
        finally:
            counter.enabled = False
        self.step = (epoch + 1) * data.steps_per_epoch
        train_loss = float(loss_sum) / seen
        self._check_finite("training loss", train_loss, epoch, "")
        rate = counter.read(replicas)
        test_acc, test_loss = evaluate(net.forward_module, data.test_batches(), use_amp, replicas)
        self._check_finite("test loss", test_loss, epoch, ": the weights diverged")
        self.figures.record_epoch(train_loss, rate, test_acc, test_loss)

    def _check_finite(self, what: str, value: float, epoch: int, why: str) -> None:
        if not math.isfinite(value):
            config = self.parts.config
            raise NonFiniteLossError(
                f"{what} became {value} in cycle {self.cycle}, epoch {epoch}{why} "
                f"(lr {config.optimizer.lr}, model {config.model}); lower the learning rate"
            )

    def _learning_rates(self, first_step: int) -> Iterator[float]:
        config, retraining = self.parts.config, self.parts.retraining
        for step in itertools.count(first_step):
            factor = lr_factor(config.schedule, config.training.epochs, step, self.parts.data.steps_per_epoch)
            scheduled = config.optimizer.lr * factor
            yield retraining.learning_rate(config.retraining, scheduled) if self.cycle > 0 else scheduled

    def finish(self, seconds: float) -> CycleResult:
        """The cycle's result: its last epoch's figures, the dead units on the window and the validation accuracy."""
        net, data = self.parts.net, self.parts.data
        units = count_dead_units(net.model, data.window())
        val_acc = self.validation_accuracy()
        left = net.remaining()
        return self.figures.cycle_result(self.cycle, left, units, net.mask.layer_density(), seconds, val_acc)

    def validation_accuracy(self) -> float | None:
        """Accuracy on the held-out validation split (None without one); draws no random numbers, so evaluating
        it between epochs leaves the training as it was."""
        parts = self.parts
        validation = parts.data.validation_batches()
        if validation is None:
            return None
        return evaluate(parts.net.forward_module, validation, parts.environment.use_amp, parts.replicas)[0]
