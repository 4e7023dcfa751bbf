"""One complete pruning experiment: dense training (cycle 0), then `cycles` rounds of prune -> rewind -> retrain.

Randomness is derived from (seed, cycle, epoch) rather than carried along, so a trial resumed from a checkpoint
replays exactly the batches, augmentations and random prunes an uninterrupted run would have used.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ap_core.config import TrialConfig
from ap_core.data import ArrayDataset, eval_batches, load_dataset, train_batches
from ap_core.dnr import DeadNeuronCounter, count_dead_units
from ap_core.errors import ConfigError, NonFiniteLossError
from ap_core.masks import Mask
from ap_core.models import build_model
from ap_core.pruning import named_weights, prune_cycle
from ap_core.results import CycleResult
from ap_core.training import (
    MaskedParameters,
    build_optimizer,
    evaluate,
    lr_factor,
    resolve_device,
    train_batches_step,
)

CHECKPOINT_FILE = "trial.pt"
EVAL_BATCH_SIZE = 1000
# Settings that may differ between a run and its resumption. The device may change within its type (cuda:0 ->
# cuda:1), not across types. CPU results are bit-identical only for the same cpu_threads.
RESUME_MAY_CHANGE = frozenset({"device", "cpu_threads", "data_dir", "download", "checkpoint_every_epoch"})
# Independent random streams: a tag keeps e.g. (seed, cycle) apart from (seed, cycle, epoch=0).
DATA_STREAM, PRUNING_STREAM = 1, 2


def derived_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integer parts (stream tag, seed, cycle, epoch...)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)


@dataclass
class CycleProgress:
    """Per-epoch figures of the cycle in progress (checkpointed between epochs)."""

    train_loss: list[float] = field(default_factory=list)
    dnr: list[float] = field(default_factory=list)
    dnr_layers: list[dict[str, float]] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0


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
        self.device = resolve_device(config.device)
        self.use_amp = config.amp and self.device.type == "cuda"
        if config.cpu_threads:
            # Tiny models on a shared CPU slow down sharply when several trials each spin up all cores.
            torch.set_num_threads(config.cpu_threads)
        if dataset is None:
            dataset = load_dataset(
                config.dataset,
                config.data_dir,
                download=config.download,
                max_train_samples=config.max_train_samples,
            )
        elif config.max_train_samples:
            dataset = dataset.limit_train(config.max_train_samples)
        self.data = dataset.to(self.device)
        # A last batch of a single sample would break BatchNorm in training mode: drop it.
        n_train = len(self.data.y_train)
        self.drop_last = n_train % config.batch_size == 1
        self.steps_per_epoch = (
            n_train // config.batch_size if self.drop_last else math.ceil(n_train / config.batch_size)
        )
        total_steps = self._cycle_steps()
        if config.retraining in ("rewind_iteration", "lr_rewind") and config.rewind_step >= total_steps:
            raise ConfigError(
                f"rewind_step {config.rewind_step} must be below the {total_steps} steps of a cycle "
                f"({config.epochs} epochs x {self.steps_per_epoch} steps)"
            )
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

        torch.manual_seed(config.seed)
        self.model = build_model(config.model, self.data.num_classes, self.data.input_shape).to(self.device)
        if self.use_amp and self.data.x_train.dim() == 4:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.init_state = _clone_state(self.model)
        late_rewind = config.retraining == "rewind_iteration"
        self.rewind_state = self.init_state if late_rewind and config.rewind_step == 0 else None
        self.mask = Mask.ones(self.model, config.keep_first_dense, config.keep_classifier_dense)
        self.optimizer = build_optimizer(config, self.model)
        self.masked = MaskedParameters(self.model, self.mask)
        self.start_weights: dict[str, torch.Tensor] = {}  # theta_start: set by _begin_cycle or restore
        self.counter = DeadNeuronCounter(self.model)
        self.results: list[CycleResult] = []
        self.cycle = 0
        self.step = 0
        self.cycle_begun = False
        self.progress = CycleProgress()

    # ---- the cycle loop -------------------------------------------------------------------------------------

    def run(self, on_cycle: Callable[[CycleResult], None] | None, checkpoint_dir: Path | None) -> list[CycleResult]:
        while self.cycle <= self.config.cycles:
            if not self.cycle_begun:
                self._begin_cycle()
            started = time.perf_counter() - self.progress.seconds
            while self.step < self._cycle_steps():
                self._train_epoch()
                self.progress.seconds = time.perf_counter() - started
                if self.config.checkpoint_every_epoch and self.step < self._cycle_steps() and checkpoint_dir:
                    self.save(checkpoint_dir)
            result = self._finish_cycle(time.perf_counter() - started)
            if checkpoint_dir is not None:
                self.save(checkpoint_dir)
            if on_cycle is not None:
                on_cycle(result)
        return self.results

    def _cycle_steps(self) -> int:
        return self.config.epochs * self.steps_per_epoch

    def _begin_cycle(self) -> None:
        """Prune (after cycle 0), rewind per the retraining scheme, and record theta_start."""
        config = self.config
        self.step = 0
        if self.cycle > 0:
            self.mask = prune_cycle(
                config.method,
                named_weights(self.model, self.mask),
                self.start_weights,
                self.mask,
                self.cycle,
                config.prune_rate,
                ap_rate=config.ap_rate if config.ap else None,
                ap_score=config.ap_score,
                ap_candidates=config.ap_candidates,
                generator=torch.Generator().manual_seed(derived_seed(PRUNING_STREAM, config.seed, self.cycle)),
            )
            if config.retraining == "rewind_init":
                self.model.load_state_dict(self.init_state)
            elif config.retraining == "rewind_iteration":
                assert self.rewind_state is not None  # captured during cycle 0
                self.model.load_state_dict(self.rewind_state)
            if config.retraining in ("rewind_iteration", "lr_rewind"):
                self.step = config.rewind_step
            self.optimizer = build_optimizer(config, self.model)
        self.masked = MaskedParameters(self.model, self.mask)
        self.masked.mask_weights()
        self.masked.clear_optimizer_state(self.optimizer)
        self.start_weights = self._prunable_weights()
        self.progress = CycleProgress()
        self.cycle_begun = True

    def _train_epoch(self) -> None:
        config = self.config
        epoch = self.step // self.steps_per_epoch
        seed = derived_seed(DATA_STREAM, config.seed, self.cycle, epoch)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        batches = train_batches(
            self.data, config.batch_size, generator, augment=config.augment, drop_last=self.drop_last
        )
        if self.use_amp and self.data.x_train.dim() == 4:  # match the channels-last weights
            batches = ((x.contiguous(memory_format=torch.channels_last), y) for x, y in batches)
        # A rewound schedule can start mid-epoch: skip the batches before the rewind point.
        batches = itertools.islice(batches, self.step % self.steps_per_epoch, None)
        first_step = self.step
        self.counter.reset()
        self.counter.enabled = True
        try:
            loss_sum, seen = train_batches_step(
                self.model,
                self._capture_rewind_point(batches, first_step),
                self.optimizer,
                self.masked,
                self._learning_rates(first_step),
                self.use_amp,
            )
        finally:
            self.counter.enabled = False
        self.step = (epoch + 1) * self.steps_per_epoch
        train_loss = float(loss_sum) / seen
        if not math.isfinite(train_loss):
            raise NonFiniteLossError(
                f"training loss became {train_loss} in cycle {self.cycle}, epoch {epoch} "
                f"(lr {config.lr}, model {config.model}); lower the learning rate"
            )
        rate = self.counter.read()
        test_acc, test_loss = evaluate(self.model, self._test_batches(), self.use_amp)
        if not math.isfinite(test_loss):
            raise NonFiniteLossError(
                f"test loss became {test_loss} in cycle {self.cycle}, epoch {epoch}: the weights diverged "
                f"(lr {config.lr}, model {config.model}); lower the learning rate"
            )
        self.progress.train_loss.append(train_loss)
        self.progress.dnr.append(rate.dnr)
        self.progress.dnr_layers.append(rate.layers)
        self.progress.test_acc.append(test_acc)
        self.progress.test_loss.append(test_loss)

    def _learning_rates(self, first_step: int) -> Iterator[float]:
        config = self.config
        if self.cycle > 0 and config.retraining == "finetune":
            return itertools.repeat(config.finetune_lr)
        return (config.lr * lr_factor(config, s, self.steps_per_epoch) for s in itertools.count(first_step))

    def _capture_rewind_point(self, batches: Iterable, first_step: int) -> Iterator:
        """During cycle 0, snapshot the weights just before optimizer step `rewind_step` (late rewinding)."""
        capture = self.cycle == 0 and self.config.retraining == "rewind_iteration"
        for offset, batch in enumerate(batches):
            if capture and self.rewind_state is None and first_step + offset == self.config.rewind_step:
                self.rewind_state = _clone_state(self.model)
            yield batch

    def _finish_cycle(self, seconds: float) -> CycleResult:
        window = self.config.dead_unit_window
        units = count_dead_units(
            self.model,
            (x for x, _ in eval_batches(self.data.x_train[:window], self.data.y_train[:window], EVAL_BATCH_SIZE)),
        )
        p = self.progress
        result = CycleResult(
            cycle=self.cycle,
            weights_remaining=100.0 * self.mask.density(),
            test_acc=p.test_acc[-1],
            best_acc=max(p.test_acc),
            test_loss=p.test_loss[-1],
            train_loss=p.train_loss[-1],
            dnr=p.dnr[-1],
            dead_units=units.dead,
            total_units=units.total,
            seconds=seconds,
            epochs=len(p.train_loss),
            train_loss_per_epoch=list(p.train_loss),
            dnr_per_epoch=list(p.dnr),
            dnr_layers_per_epoch=list(p.dnr_layers),
            dead_units_layers=units.layers,
            layer_density=self.mask.layer_density(),
        )
        self.results.append(result)
        self.cycle += 1
        self.cycle_begun = False
        return result

    def _test_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return eval_batches(self.data.x_test, self.data.y_test, EVAL_BATCH_SIZE)

    def _prunable_weights(self) -> dict[str, torch.Tensor]:
        return {name: w.clone() for name, w in named_weights(self.model, self.mask).items()}

    # ---- checkpoints ----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "cycle": self.cycle,
            "step": self.step,
            "cycle_begun": self.cycle_begun,
            "results": [r.to_dict() for r in self.results],
            "progress": self.progress.__dict__,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "mask": self.mask.state_dict(),
            "init_state": self.init_state,
            "rewind_state": self.rewind_state,
            "start_weights": self.start_weights,
            "torch_rng": torch.get_rng_state(),
        }

    def save(self, checkpoint_dir: Path) -> None:
        """Write the checkpoint atomically, so a kill mid-write never leaves a corrupt file behind."""
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        tmp = checkpoint_dir / f".{CHECKPOINT_FILE}.tmp"
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, checkpoint_dir / CHECKPOINT_FILE)

    def restore(self, path: Path) -> None:
        if not path.is_file():
            raise ConfigError(f"no trial checkpoint at '{path}'")
        state = torch.load(path, map_location=self.device, weights_only=False)
        saved, current = state["config"], self.config.to_dict()
        changed = [k for k in current if k not in RESUME_MAY_CHANGE and saved.get(k) != current[k]]
        if resolve_device(saved["device"]).type != self.device.type:
            changed.insert(0, "device")
        if changed:
            k = changed[0]
            raise ConfigError(f"checkpoint '{path}' was written with {k}={saved.get(k)!r}, not {current[k]!r}")
        self.cycle, self.step, self.cycle_begun = state["cycle"], state["step"], state["cycle_begun"]
        self.results = [CycleResult.from_dict(r) for r in state["results"]]
        self.progress = CycleProgress(**state["progress"])
        self.model.load_state_dict(state["model"])
        self.mask = Mask.from_state_dict(state["mask"]).to(self.device)
        self.optimizer = build_optimizer(self.config, self.model)
        self.optimizer.load_state_dict(state["optimizer"])
        self.masked = MaskedParameters(self.model, self.mask)
        self.init_state = state["init_state"]
        self.rewind_state = state["rewind_state"]
        self.start_weights = state["start_weights"]
        torch.set_rng_state(state["torch_rng"].cpu())


def _clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return copy.deepcopy(model.state_dict())
