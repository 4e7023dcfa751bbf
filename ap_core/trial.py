"""One complete pruning experiment: dense training (cycle 0), then `cycles` rounds of prune -> rewind -> retrain.

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
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ap_core.config import RUNTIME_FIELDS, TrialConfig
from ap_core.data import ArrayDataset, eval_batches, load_dataset, train_batches
from ap_core.dnr import DeadNeuronCounter, count_dead_units, fired_units
from ap_core.errors import ConfigError, NonFiniteLossError
from ap_core.hooks import CycleContext, TrainingHook
from ap_core.masks import Mask
from ap_core.models import build_model
from ap_core.network import ChannelRemoval, PrunableNet, Reference, find_channel_groups
from ap_core.pruning import METHODS, PruneRequest, prune_step, target_alive
from ap_core.results import CycleResult
from ap_core.retraining import RETRAINING
from ap_core.training import (
    build_optimizer,
    evaluate,
    lr_factor,
    resolve_device,
    train_epoch,
)

CHECKPOINT_FILE = "trial.pt"
EVAL_BATCH_SIZE = 1000
# Independent random streams: a tag keeps e.g. (seed, cycle) apart from (seed, cycle, epoch=0).
DATA_STREAM, PRUNING_STREAM = 1, 2
VALIDATION_SPLIT_SEED = 20230101
# Below this many parameters one CPU thread trains fastest (cpu_threads 0 = auto): more threads only add
# synchronisation, and several trials sharing a machine each spinning up every core slow down sharply.
SMALL_MODEL_PARAMS = 1_000_000


def hold_out(data: ArrayDataset, fraction: float) -> tuple[ArrayDataset, tuple[torch.Tensor, torch.Tensor]]:
    """Split `fraction` of the training set off for validation.

    The split depends on nothing but the dataset and the fraction: every seed and every searched point is
    judged on the same held-out samples, and none of them is ever trained on.
    """
    n_train = len(data.y_train)
    n_val = round(n_train * fraction)
    if not 0 < n_val < n_train - 1:
        raise ConfigError(f"val_fraction {fraction} of {n_train} training samples leaves no validation or train set")
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(VALIDATION_SPLIT_SEED))
    val, train = order[:n_val].sort().values.to(data.device), order[n_val:].sort().values.to(data.device)
    kept = dataclasses.replace(data, x_train=data.x_train[train], y_train=data.y_train[train])
    return kept, (data.x_train[val], data.y_train[val])


def derived_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integer parts (stream tag, seed, cycle, epoch...)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)


@dataclass
class EpochFigures:
    """Per-epoch figures of the cycle in progress (checkpointed between epochs)."""

    train_loss: list[float] = field(default_factory=list)
    dnr: list[float] = field(default_factory=list)
    dnr_layers: list[dict[str, float]] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    removal_events: list[dict[str, float]] = field(default_factory=list)
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


def check_compile_toolchain(torch_compile: str, device: torch.device) -> None:
    """Refuse `torch_compile` on a CPU without the C++ compiler its backend builds with (it would fail mid-trial)."""
    compilers = (os.environ.get("CXX") or "g++", "clang++")
    if torch_compile != "off" and device.type == "cpu" and not any(shutil.which(c) for c in compilers):
        raise ConfigError(
            f"torch_compile {torch_compile!r} on a CPU needs a C++ compiler (g++, clang++ or $CXX); "
            "install one or use torch_compile off"
        )


class Trial:
    """The mutable state of one trial; `run` advances it cycle by cycle."""

    def __init__(self, config: TrialConfig, dataset: ArrayDataset | None = None) -> None:
        self.config = config  # validated when constructed (frozen)
        self.device = resolve_device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {config.device!r}: this machine has no CUDA GPU; use --device cpu or auto")
        if config.cpu_threads > (os.cpu_count() or 1):
            raise ConfigError(f"cpu_threads {config.cpu_threads} is more than this machine's {os.cpu_count()} CPUs")
        check_compile_toolchain(config.torch_compile, self.device)
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
        # The only copy of a shared (read-only) dataset a trial makes: to its GPU, still in its stored form (uint8).
        self.data = dataset.to(self.device)
        self._standardise = self.data.standardiser(self.device)
        self.validation: tuple[torch.Tensor, torch.Tensor] | None = None
        if config.val_fraction:
            self.data, self.validation = hold_out(self.data, config.val_fraction)
        # A last batch of a single sample would break BatchNorm in training mode: drop it.
        n_train = len(self.data.y_train)
        if config.batch_size > n_train:
            raise ConfigError(f"batch_size {config.batch_size} is larger than the {n_train} training samples")
        self.drop_last = n_train % config.batch_size == 1
        self.steps_per_epoch = (
            n_train // config.batch_size if self.drop_last else math.ceil(n_train / config.batch_size)
        )
        self.method = METHODS.get(config.method)
        self.hparams = self.method.hparams(config.method_options, config.method)
        self.retraining = RETRAINING.get(config.retraining)()
        total_steps = self._cycle_steps()
        if self.retraining.uses_rewind_step and config.rewind_step >= total_steps:
            raise ConfigError(
                f"rewind_step {config.rewind_step} must be below the {total_steps} steps of a cycle "
                f"({config.epochs} epochs x {self.steps_per_epoch} steps)"
            )
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

        torch.manual_seed(config.seed)
        self.net = self._build_net()
        if self.device.type == "cpu" and not config.cpu_threads and self.net.dense.params < SMALL_MODEL_PARAMS:
            torch.set_num_threads(1)
        if (
            not self.method.removes_channels
            and target_alive(self.net.dense.weights, config.prune_rate, config.cycles) < 1
        ):
            most = max(k for k in range(config.cycles) if target_alive(self.net.dense.weights, config.prune_rate, k))
            raise ConfigError(
                f"cycles {config.cycles} would prune all {self.net.dense.weights} weights of {config.model} at "
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
        """The dense network with its method's changes, mask, optimizer and initial state."""
        config = self.config
        model = build_model(config.model, self.data.num_classes, self.data.input_shape)
        self.method.prepare(model, self.hparams)
        model = model.to(self.device)
        if self.use_amp and self.data.x_train.dim() == 4:
            model = model.to(memory_format=torch.channels_last)
        example = self.data.standardised(self.data.x_train[:1])
        groups = find_channel_groups(model, example) if self.method.removes_channels else []
        mask = Mask.ones(model, config.keep_first_dense, config.keep_classifier_dense)
        channels_last = self.use_amp and self.data.x_train.dim() == 4
        net = PrunableNet(model, mask, example, self._make_optimizer, groups, channels_last, config.torch_compile)
        net.references[Reference.INIT] = _clone_state(model)
        return net

    def _make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(self.config.optimizer_settings, model, self.method.param_groups(model, self.hparams))

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
            config=self.config,
            hparams=self.hparams,
            cycle=self.cycle,
            cycle_steps=self._cycle_steps(),
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

    def _window(self) -> Iterator[torch.Tensor]:
        window = self.config.dead_unit_window
        data = self.data
        batches = eval_batches(data.x_train[:window], data.y_train[:window], EVAL_BATCH_SIZE, self._standardise)
        return (x for x, _ in batches)

    def _fired_units(self) -> dict[str, torch.Tensor]:
        with self._not_counting():
            return fired_units(self.net.model, self._window())

    def _remove_channels(self, removal: ChannelRemoval, step: int) -> None:
        with self._not_counting():
            removed = self.net.remove_channels(removal)
            if removed:
                left = self.net.remaining()
                self.progress.removal_events.append(
                    {
                        "step": step,
                        "training_step": self.cycle * self._cycle_steps() + step,
                        "removed": removed,
                        "channels_remaining": left.channels,
                        "params_remaining": left.params,
                        "flops_remaining": left.flops,
                        "weights_remaining": left.weights,
                    }
                )

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
        hooks = self._cycle_hooks()
        for hook in hooks:
            hook.on_epoch_start(epoch)
        self.counter.reset()
        self.counter.enabled = True
        try:
            loss_sum, seen = train_epoch(
                self.net, batches, self._learning_rates(first_step), self.use_amp, first_step, hooks
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
        test_acc, test_loss = evaluate(self.net.forward_module, self._test_batches(), self.use_amp)
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
        for step in itertools.count(first_step):
            scheduled = config.lr * lr_factor(config.schedule_settings, step, self.steps_per_epoch)
            yield self.retraining.learning_rate(config.retraining_settings, scheduled) if self.cycle > 0 else scheduled

    def _finish_cycle(self, seconds: float) -> CycleResult:
        net = self.net
        units = count_dead_units(net.model, self._window())
        left = net.remaining()
        p = self.progress
        result = CycleResult(
            cycle=self.cycle,
            weights_remaining=left.weights,
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
            layer_density=net.mask.layer_density(),
            params_remaining=left.params,
            channels_remaining=left.channels,
            flops_remaining=left.flops,
            removal_events=list(p.removal_events),
            val_acc=self._validation_accuracy(),
        )
        self.results.append(result)
        self.cycle += 1
        self.cycle_begun = False
        return result

    def _validation_accuracy(self) -> float | None:
        if self.validation is None:
            return None
        x_val, y_val = self.validation
        batches = eval_batches(x_val, y_val, EVAL_BATCH_SIZE, self._standardise)
        return evaluate(self.net.forward_module, batches, self.use_amp)[0]

    def _test_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return eval_batches(self.data.x_test, self.data.y_test, EVAL_BATCH_SIZE, self._standardise)

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
        """Write the checkpoint atomically, so a kill mid-write never leaves a corrupt file behind."""
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        tmp = checkpoint_dir / f".{CHECKPOINT_FILE}.tmp"
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, checkpoint_dir / CHECKPOINT_FILE)

    def restore(self, path: Path) -> None:
        state = read_checkpoint(path, self.device)
        meta = state["meta"]
        saved, current = meta["config"], self.config.to_dict()
        changed = [k for k in current if k not in RUNTIME_FIELDS and _as_saved(saved.get(k)) != _as_saved(current[k])]
        if resolve_device(saved["device"]).type != self.device.type:
            changed.insert(0, "device")
        if changed:
            k = changed[0]
            raise ConfigError(f"checkpoint '{path}' was written with {k}={saved.get(k)!r}, not {current[k]!r}")
        self.cycle, self.step, self.cycle_begun = meta["cycle"], meta["step"], meta["cycle_begun"]
        self.results = [CycleResult.from_dict(r) for r in meta["results"]]
        self.progress = EpochFigures(**meta["progress"])
        self.net.load_state(
            meta["removals"],
            state["model"],
            state["optimizer"],
            Mask.from_state_dict(state["mask"]).to(self.device),
            state["references"],
        )
        torch.set_rng_state(state["torch_rng"].cpu())
        self._hooks = None


class RewindPoint(TrainingHook):
    """During cycle 0, snapshot the weights just before optimizer step k (late rewinding's restart point)."""

    def __init__(self, net: PrunableNet, step: int) -> None:
        self.net, self.step = net, step

    def before_step(self, step: int) -> None:
        if step == self.step:
            self.net.references[Reference.REWIND] = _clone_state(self.net.model)


def read_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A trial checkpoint's contents (`meta` decoded from JSON); nothing in the file is unpickled as an object.

    A missing, truncated or foreign file is a ConfigError naming it.
    """
    if not path.is_file():
        raise ConfigError(f"no trial checkpoint at '{path}'")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        state["meta"] = json.loads(state["meta"])
    except Exception as err:  # any unreadable file is the same user-facing problem
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"'{path}' is not a readable trial checkpoint ({reason[:200]})") from None
    return state


def _as_saved(value: Any) -> Any:
    """Settings as JSON gives them back (tuples become lists), so saved and current compare equal."""
    return json.loads(json.dumps(value))


def _clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return copy.deepcopy(model.state_dict())
