"""One complete pruning experiment: dense training (cycle 0), then `cycles` rounds of prune -> rewind -> retrain.

`TrialRunner` only orchestrates: the environment (`ap_core.environment`), the data and its batches
(`ap_core.trial_data`), each cycle's pruning step, epochs and result (`ap_core.cycle_runner`, which calls the
pruning step with AP, the training loop with its hooks and the recorder of figures and removal events) and the
checkpoint file (`ap_core.checkpoint`) are collaborators it calls.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ap_core.array_dataset import ArrayDataset
from ap_core.channel_graph import channel_layout
from ap_core.checkpoint import (
    CHECKPOINT_FILE,
    check_same_experiment,
    check_shared_prefix,
    read_checkpoint,
    write_checkpoint,
)
from ap_core.checks import check_names
from ap_core.config import TrialConfig
from ap_core.cycle_runner import CycleRunner, TrialParts
from ap_core.dnr import DeadNeuronCounter
from ap_core.environment import prepare_environment
from ap_core.errors import ConfigError
from ap_core.folder_data import open_trial_data
from ap_core.masks import Mask
from ap_core.models import build_model
from ap_core.network import PrunableNet, Reference
from ap_core.pruning import METHODS, PruningMethod, target_alive
from ap_core.recorder import EpochFigures
from ap_core.replicas import Replicas
from ap_core.results import CycleResult, EpochProgress
from ap_core.retraining import RETRAINING
from ap_core.training import build_optimizer
from ap_core.trial_data import TrialData


def run_trial(
    config: TrialConfig,
    on_cycle: Callable[[CycleResult], None] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume_from: str | Path | None = None,
    dataset: ArrayDataset | None = None,
    shared_cycle: int | None = None,
) -> list[CycleResult]:
    """Run (or resume) a trial; returns one CycleResult per cycle, cycle 0 being the dense network.

    After every cycle the checkpoint is written to `checkpoint_dir/trial.pt` first, then `on_cycle(result)` is
    called, so a tracker can attach the checkpoint to the result it reports. A resumed trial calls `on_cycle`
    only for cycles it runs itself. With `shared_cycle` k, `resume_from` is another trial's checkpoint after
    cycle k whose cycles 0..k this trial shares (`ap_core.cycle_keys`).
    """
    trial = TrialRunner(config, dataset)
    if resume_from is not None:
        trial.restore(Path(resume_from) / CHECKPOINT_FILE, shared_cycle)
    return trial.run(on_cycle, Path(checkpoint_dir) if checkpoint_dir is not None else None)


class TrialRunner:
    """One trial's parts, its results so far and the cycle in progress; `run` advances it cycle by cycle."""

    def __init__(self, config: TrialConfig, dataset: ArrayDataset | None = None) -> None:
        check_names(config)  # its settings were each checked when it was built (frozen)
        self.config = config
        environment = prepare_environment(config)
        self.device = environment.device
        replicas = Replicas.current()
        self.data = open_trial_data(config, dataset, self.device, replicas)
        channels_last = environment.use_amp and self.data.images
        method = METHODS.get(config.pruning.method)
        hparams = method.hparams(config.pruning.method_options, config.pruning.method)
        retraining = RETRAINING.get(config.retraining.scheme)()
        cycle_steps = config.training.epochs * self.data.steps_per_epoch
        if retraining.uses_rewind_step and config.retraining.rewind_step >= cycle_steps:
            raise ConfigError(
                f"rewind_step {config.retraining.rewind_step} must be below the {cycle_steps} steps of a cycle "
                f"({config.training.epochs} epochs x {self.data.steps_per_epoch} steps)"
            )
        torch.manual_seed(config.seed)
        self.net = build_net(config, method, hparams, self.data, self.device, channels_last)
        replicas.follow_first(self.net.model.state_dict().values())  # one network, whatever each replica drew
        environment.settle_threads(self.net.dense.params)
        dense = self.net.dense.weights
        if not method.removes_channels and target_alive(dense, config.pruning.prune_rate, config.pruning.cycles) < 1:
            most = max(k for k in range(config.pruning.cycles) if target_alive(dense, config.pruning.prune_rate, k))
            raise ConfigError(
                f"cycles {config.pruning.cycles} would prune all {dense} weights of {config.model} at "
                f"prune_rate {config.pruning.prune_rate}; at most {most}"
            )
        counter = DeadNeuronCounter(self.net.model)
        self.parts = TrialParts(
            config, environment, self.data, method, hparams, retraining, self.net, counter, channels_last, replicas
        )
        self.results: list[CycleResult] = []
        self.current_cycle = CycleRunner(self.parts, cycle=0)

    def run(
        self,
        on_cycle: Callable[[CycleResult], None] | None,
        checkpoint_dir: Path | None,
        on_epoch: Callable[[EpochProgress], None] | None = None,
    ) -> list[CycleResult]:
        """Train to the last cycle, calling `on_cycle` after each (its checkpoint written first) and `on_epoch`
        after each epoch that does not end a cycle: only then is the validation split evaluated between epochs, so
        a trial without `on_epoch` costs and computes what it did before (a scheduler's callback, as in OpenLTH)."""
        while self.current_cycle.cycle <= self.config.pruning.cycles:
            current = self.current_cycle
            if not current.begun:
                current.begin()
            started = time.perf_counter() - current.figures.seconds
            while not current.trained:
                current.train_epoch()
                current.figures.seconds = time.perf_counter() - started
                if self.config.runtime.checkpoint_every_epoch and not current.trained and checkpoint_dir:
                    self.save(checkpoint_dir)
                if on_epoch is not None and not current.trained:
                    epoch = current.step // self.data.steps_per_epoch - 1
                    on_epoch(EpochProgress(current.cycle, epoch, current.validation_accuracy()))
            result = current.finish(time.perf_counter() - started)
            self.results.append(result)
            self.current_cycle = CycleRunner(self.parts, cycle=current.cycle + 1)
            if checkpoint_dir is not None:
                self.save(checkpoint_dir)
            if on_cycle is not None:
                on_cycle(result)
        return self.results

    # ---- checkpoints ----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Tensors, plus everything else as one JSON string: loadable with torch.load(weights_only=True)."""
        net, current = self.net, self.current_cycle
        meta = {
            "config": self.config.to_dict(),
            "cycle": current.cycle,
            "step": current.step,
            "cycle_begun": current.begun,
            "results": [r.to_dict() for r in self.results],
            "progress": current.figures.__dict__,
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

    def restore(self, path: Path, shared_cycle: int | None = None) -> None:
        """Resume from this trial's own checkpoint; or, with `shared_cycle` k, start from another trial's state
        after cycle k, which counts only if cycles 0..k of both are decided by the same settings."""
        state = read_checkpoint(path, self.device)
        meta = state["meta"]
        if shared_cycle is None:
            check_same_experiment(meta["config"], self.config, self.device, path)
        else:
            check_shared_prefix(meta, self.config, shared_cycle, path)
        figures = EpochFigures(**meta["progress"])
        self.current_cycle = CycleRunner(self.parts, meta["cycle"], meta["step"], meta["cycle_begun"], figures)
        self.results = [CycleResult.from_dict(r) for r in meta["results"]]
        mask = Mask.from_state_dict(state["mask"]).to(self.device)
        self.net.load_state(meta["removals"], state["model"], state["optimizer"], mask, state["references"])
        torch.set_rng_state(state["torch_rng"].cpu())


def build_net(
    config: TrialConfig,
    method: PruningMethod,
    hparams: Any,
    data: TrialData,
    device: torch.device,
    channels_last: bool,
) -> PrunableNet:
    """The dense network with its method's changes, mask, optimizer, channel groups and initial state."""
    dataset, weights = data.dataset, config.training.pretrained_weights
    model = build_model(config.model, dataset.num_classes, dataset.input_shape, weights=weights)
    method.prepare(model, hparams)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    example = data.example()
    groups = channel_layout(model, example).groups if method.removes_channels else []
    mask = Mask.ones(model, config.pruning.keep_first_dense, config.pruning.keep_classifier_dense)

    def make_optimizer(module: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(config.optimizer, module, method.param_groups(module, hparams))

    net = PrunableNet(model, mask, example, make_optimizer, groups, channels_last, config.runtime.torch_compile)
    method.check_network(net, config.pruning.method)
    net.snapshot(Reference.INIT)
    return net
