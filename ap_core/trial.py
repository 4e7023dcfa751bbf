"""One complete pruning experiment: dense training (cycle 0), then `cycles` rounds of prune -> rewind -> retrain.

`Trial` only orchestrates: the environment (`ap_core.environment`), the data and its batches
(`ap_core.trial_data`), the pruning step with AP (`ap_core.pruning.prune_step`), the training loop with its hooks
(`ap_core.training`), the figures and removal events (`ap_core.recorder`) and the checkpoint file
(`ap_core.checkpoint`) are collaborators it calls.

Randomness is derived from (seed, cycle, epoch) rather than carried along, so a trial resumed from a checkpoint
replays exactly the batches, augmentations and random prunes an uninterrupted run would have used.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ap_core.array_dataset import ArrayDataset
from ap_core.channel_graph import channel_layout
from ap_core.channel_removal import ChannelRemoval
from ap_core.checkpoint import CHECKPOINT_FILE, check_same_experiment, read_checkpoint, write_checkpoint
from ap_core.config import TrialConfig
from ap_core.dnr import DeadNeuronCounter, count_dead_units, fired_units
from ap_core.environment import check_compile_toolchain, prepare_environment
from ap_core.errors import ConfigError, NonFiniteLossError
from ap_core.hooks import CycleContext, TrainingHook
from ap_core.masks import Mask
from ap_core.models import build_model
from ap_core.network import PrunableNet, Reference
from ap_core.pruning import METHODS, PruneRequest, prune_step, target_alive
from ap_core.recorder import EpochFigures
from ap_core.results import CycleResult
from ap_core.retraining import RETRAINING
from ap_core.training import build_optimizer, evaluate, lr_factor, train_epoch
from ap_core.trial_data import TrialData

__all__ = ["CHECKPOINT_FILE", "Trial", "check_compile_toolchain", "read_checkpoint", "run_trial"]

# Independent random streams: a tag keeps e.g. (seed, cycle) apart from (seed, cycle, epoch=0).
DATA_STREAM, PRUNING_STREAM = 1, 2


def derived_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integer parts (stream tag, seed, cycle, epoch...)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)


def run_trial(
    config: TrialConfig,
    on_cycle: Callable[[CycleResult], None] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume_from: str | Path | None = None,
    dataset: ArrayDataset | None = None,
) -> list[CycleResult]:
    """Run (or resume) a trial; returns one CycleResult per cycle, cycle 0 being the dense network.

    After every cycle the checkpoint is written to `checkpoint_dir/trial.pt` first, then `on_cycle(result)` is
    called, so a tracker can attach the checkpoint to the result it reports. A resumed trial calls `on_cycle`
    only for cycles it runs itself.
    """
    trial = Trial(config, dataset)
    if resume_from is not None:
        trial.restore(Path(resume_from) / CHECKPOINT_FILE)
    return trial.run(on_cycle, Path(checkpoint_dir) if checkpoint_dir is not None else None)


class Trial:
    """The mutable state of one trial; `run` advances it cycle by cycle."""

    def __init__(self, config: TrialConfig, dataset: ArrayDataset | None = None) -> None:
        self.config = config  # validated when constructed (frozen)
        self.environment = prepare_environment(config)
        self.device = self.environment.device
        self.data = TrialData(config, dataset, self.device)
        self.channels_last = self.environment.use_amp and self.data.images
        self.method = METHODS.get(config.method)
        self.hparams = self.method.hparams(config.method_options, config.method)
        self.retraining = RETRAINING.get(config.retraining)()
        if self.retraining.uses_rewind_step and config.rewind_step >= self.cycle_steps:
            raise ConfigError(
                f"rewind_step {config.rewind_step} must be below the {self.cycle_steps} steps of a cycle "
                f"({config.epochs} epochs x {self.data.steps_per_epoch} steps)"
            )
        torch.manual_seed(config.seed)
        self.net = self._build_net()
        self.environment.settle_threads(self.net.dense.params)
        dense = self.net.dense.weights
        if not self.method.removes_channels and target_alive(dense, config.prune_rate, config.cycles) < 1:
            most = max(k for k in range(config.cycles) if target_alive(dense, config.prune_rate, k))
            raise ConfigError(
                f"cycles {config.cycles} would prune all {dense} weights of {config.model} at "
                f"prune_rate {config.prune_rate}; at most {most}"
            )
        self.counter = DeadNeuronCounter(self.net.model)
        self.results: list[CycleResult] = []
        self.cycle = 0
        self.step = 0
        self.cycle_begun = False
        self.progress = EpochFigures()
        self._hooks: list[TrainingHook] | None = None

    def _build_net(self) -> PrunableNet:
        """The dense network with its method's changes, mask, optimizer, channel groups and initial state."""
        config, data = self.config, self.data.dataset
        model = build_model(config.model, data.num_classes, data.input_shape)
        self.method.prepare(model, self.hparams)
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        example = self.data.example()
        groups = channel_layout(model, example).groups if self.method.removes_channels else []
        mask = Mask.ones(model, config.keep_first_dense, config.keep_classifier_dense)
        net = PrunableNet(model, mask, example, self._make_optimizer, groups, self.channels_last, config.torch_compile)
        self.method.check_network(net, config.method)
        net.references[Reference.INIT] = _clone_state(model)
        return net

    def _make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(self.config.optimizer_settings, model, self.method.param_groups(model, self.hparams))

    @property
    def cycle_steps(self) -> int:
        return self.config.epochs * self.data.steps_per_epoch

    # ---- the cycle loop -------------------------------------------------------------------------------------

    def run(self, on_cycle: Callable[[CycleResult], None] | None, checkpoint_dir: Path | None) -> list[CycleResult]:
        while self.cycle <= self.config.cycles:
            if not self.cycle_begun:
                self.begin_cycle()
            started = time.perf_counter() - self.progress.seconds
            while self.step < self.cycle_steps:
                self.train_epoch()
                self.progress.seconds = time.perf_counter() - started
                if self.config.checkpoint_every_epoch and self.step < self.cycle_steps and checkpoint_dir:
                    self.save(checkpoint_dir)
            result = self._finish_cycle(time.perf_counter() - started)
            if checkpoint_dir is not None:
                self.save(checkpoint_dir)
            if on_cycle is not None:
                on_cycle(result)
        return self.results

    def begin_cycle(self) -> None:
        """Prune (after cycle 0), rewind per the retraining scheme, and record theta_start."""
        net = self.net
        self.step = 0
        self.progress = EpochFigures()
        self._hooks = None
        mask = net.mask
        if self.cycle > 0:
            mask = self._prune()
            self.step = self.retraining.rewind(net, self.config.retraining_settings)
            net.new_optimizer()
        net.set_mask(mask)
        net.references[Reference.START] = {name: w.clone() for name, w in net.weights().items()}
        self.cycle_begun = True

    def _prune(self) -> Mask:
        """This cycle's removal (the method's proposal, then AP's share); returns the new mask."""
        config, net = self.config, self.net
        generator = torch.Generator().manual_seed(derived_seed(PRUNING_STREAM, config.seed, self.cycle))
        count = max(0, net.mask.alive() - target_alive(net.mask.total(), config.prune_rate, self.cycle))
        request = PruneRequest(
            net.weights(), net.references[Reference.START], net.mask, count, generator, self.hparams, self._context()
        )

        def apply_channels(removal: ChannelRemoval) -> PruneRequest:
            self._remove_channels(removal, 0)
            return dataclasses.replace(
                request, weights=net.weights(), start=net.references[Reference.START], mask=net.mask
            )

        return prune_step(self.method, request, config.ap_settings, apply_channels)

    def _context(self) -> CycleContext:
        return CycleContext(
            net=self.net,
            hparams=self.hparams,
            cycle=self.cycle,
            cycle_steps=self.cycle_steps,
            fired_units=self._fired_units,
            remove_channels=self._remove_channels,
            seed=lambda stream, *parts: derived_seed(stream, self.config.seed, *parts),
        )

    def _cycle_hooks(self) -> list[TrainingHook]:
        if self._hooks is None:
            self._hooks = self.method.hooks(self._context())
            if self.cycle == 0 and self.retraining.needs_rewind_point:
                self._hooks.append(RewindPoint(self.net, self.config.rewind_step))
        return self._hooks

    @contextlib.contextmanager
    def _not_counting(self) -> Iterator[None]:
        """Keep the epoch's DNR count to training batches while hooks run forward passes of their own."""
        enabled, self.counter.enabled = self.counter.enabled, False
        try:
            yield
        finally:
            self.counter.enabled = enabled

    def _fired_units(self) -> dict[str, torch.Tensor]:
        with self._not_counting():
            return fired_units(self.net.model, self.data.window())

    def _remove_channels(self, removal: ChannelRemoval, step: int) -> None:
        with self._not_counting():
            removed = self.net.remove_channels(removal)
            if removed:
                training_step = self.cycle * self.cycle_steps + step
                self.progress.record_removal(step, training_step, removed, self.net.remaining())

    def train_epoch(self) -> None:
        """Train the cycle's next epoch (from a rewound step, if one is mid-epoch), then evaluate and record it."""
        config = self.config
        epoch = self.step // self.data.steps_per_epoch
        generator = torch.Generator(device=self.device).manual_seed(
            derived_seed(DATA_STREAM, config.seed, self.cycle, epoch)
        )
        batches = self.data.epoch(generator, self.step, self.channels_last)
        first_step = self.step
        hooks = self._cycle_hooks()
        for hook in hooks:
            hook.on_epoch_start(epoch)
        self.counter.reset()
        self.counter.enabled = True
        use_amp = self.environment.use_amp
        try:
            loss_sum, seen = train_epoch(
                self.net, batches, self._learning_rates(first_step), use_amp, first_step, hooks
            )
        finally:
            self.counter.enabled = False
        self.step = (epoch + 1) * self.data.steps_per_epoch
        train_loss = float(loss_sum) / seen
        self._check_finite("training loss", train_loss, epoch, "")
        rate = self.counter.read()
        test_acc, test_loss = evaluate(self.net.forward_module, self.data.test_batches(), use_amp)
        self._check_finite("test loss", test_loss, epoch, ": the weights diverged")
        self.progress.record_epoch(train_loss, rate, test_acc, test_loss)

    def _check_finite(self, what: str, value: float, epoch: int, why: str) -> None:
        if not math.isfinite(value):
            config = self.config
            raise NonFiniteLossError(
                f"{what} became {value} in cycle {self.cycle}, epoch {epoch}{why} "
                f"(lr {config.lr}, model {config.model}); lower the learning rate"
            )

    def _learning_rates(self, first_step: int) -> Iterator[float]:
        config = self.config
        for step in itertools.count(first_step):
            scheduled = config.lr * lr_factor(config.schedule_settings, step, self.data.steps_per_epoch)
            yield self.retraining.learning_rate(config.retraining_settings, scheduled) if self.cycle > 0 else scheduled

    def _finish_cycle(self, seconds: float) -> CycleResult:
        net = self.net
        units = count_dead_units(net.model, self.data.window())
        validation = self.data.validation_batches()
        val_acc = None
        if validation is not None:
            val_acc = evaluate(net.forward_module, validation, self.environment.use_amp)[0]
        left = net.remaining()
        result = self.progress.cycle_result(self.cycle, left, units, net.mask.layer_density(), seconds, val_acc)
        self.results.append(result)
        self.cycle += 1
        self.cycle_begun = False
        return result

    # ---- checkpoints ----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Tensors, plus everything else as one JSON string: loadable with torch.load(weights_only=True)."""
        net = self.net
        meta = {
            "config": self.config.to_dict(),
            "cycle": self.cycle,
            "step": self.step,
            "cycle_begun": self.cycle_begun,
            "results": [r.to_dict() for r in self.results],
            "progress": self.progress.__dict__,
            "removals": net.removals,
            "parameters": [name for name, _ in net.model.named_parameters()],
        }
        return {
            "meta": json.dumps(meta),
            "model": net.model.state_dict(),
            "optimizer": net.optimizer.state_dict(),
            "mask": net.mask.state_dict(),
            "references": {str(key): state for key, state in net.references.items()},
            "torch_rng": torch.get_rng_state(),
        }

    def save(self, checkpoint_dir: Path) -> None:
        write_checkpoint(self.state_dict(), checkpoint_dir)

    def restore(self, path: Path) -> None:
        state = read_checkpoint(path, self.device)
        meta = state["meta"]
        check_same_experiment(meta["config"], self.config, self.device, path)
        self.cycle, self.step, self.cycle_begun = meta["cycle"], meta["step"], meta["cycle_begun"]
        self.results = [CycleResult.from_dict(r) for r in meta["results"]]
        self.progress = EpochFigures(**meta["progress"])
        mask = Mask.from_state_dict(state["mask"]).to(self.device)
        self.net.load_state(meta["removals"], state["model"], state["optimizer"], mask, state["references"])
        torch.set_rng_state(state["torch_rng"].cpu())
        self._hooks = None


class RewindPoint(TrainingHook):
    """During cycle 0, snapshot the weights just before optimizer step k (late rewinding's restart point)."""

    def __init__(self, net: PrunableNet, step: int) -> None:
        self.net, self.step = net, step

    def before_step(self, step: int) -> None:
        if step == self.step:
            self.net.references[Reference.REWIND] = _clone_state(self.net.model)


def _clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return copy.deepcopy(model.state_dict())
