"""Typed, validated trial configuration.

`TrialConfig` is the single source for a trial's CLI flags, Ray Tune's param space and MLflow params: its fields
become flags (`ap_core.dataclass_flags`) and flat dicts, so a new field shows up everywhere at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ap_core.errors import ConfigError
from ap_core.settings import (
    AP_CANDIDATES,
    AP_SCOPES,
    AP_SCORES,
    OPTIMIZERS,
    SCHEDULES,
    APSettings,
    OptimizerSettings,
    RetrainingSettings,
    ScheduleSettings,
    coerce_setting,
)

COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


def _runtime(default: Any, help: str) -> Any:
    """A setting of where a trial runs, not of what it computes: outside the experiment's identity."""
    return field(default=default, metadata={"help": help, "runtime": True})


@dataclass(frozen=True)
class TrialConfig:
    """One pruning experiment: a network trained dense (cycle 0), then pruned for `cycles` cycles.

    Two concerns share one flat record (one flag, Tune key and MLflow param each): the experiment's settings,
    which decide every number it produces, and the runtime settings (`RUNTIME_FIELDS`: device, threads, paths),
    which decide only where and how fast it runs. `experiment_id` hashes the first kind only.
    """

    model: str = _opt("mlp", "network name (see --list)")
    dataset: str = _opt("digits", "dataset name (see --list)")
    method: str = _opt("global_magnitude", "pruning method X (see --list)")
    method_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "the method's own options as KEY=VALUE (see --list), e.g. channel_ratio=0.5"},
    )
    ap: bool = _opt(False, "add Activate-While-Pruning to method X")
    ap_rate: float = _opt(0.02, "AP's share p_ap of the alive weights pruned per cycle (< prune_rate)")
    ap_score: str = _opt("change", f"AP ranking score: {'/'.join(AP_SCORES)}")
    ap_candidates: str = _opt("negative", f"AP candidate weights: {'/'.join(AP_CANDIDATES)}")
    ap_scope: str = _opt(
        "global",
        "where AP picks its share: global (across layers, as the official code) or layer (inside the per-layer "
        "allocation method X alone would make)",
    )
    prune_rate: float = _opt(0.2, "fraction p of the alive weights pruned per cycle")
    cycles: int = _opt(10, "pruning cycles after the dense cycle 0")
    retraining: str = _opt("rewind_init", "retraining between cycles (see --list)")
    rewind_step: int = _opt(0, "optimizer step k for rewind_iteration / lr_rewind")
    finetune_lr: float = _opt(0.001, "constant learning rate for the finetune scheme")
    keep_first_dense: bool = _opt(False, "never prune the first conv/linear layer")
    keep_classifier_dense: bool = _opt(False, "never prune the classifier")
    epochs: int = _opt(10, "training epochs per cycle")
    batch_size: int = _opt(64, "training batch size")
    optimizer: str = _opt("sgd", f"optimizer: {'/'.join(OPTIMIZERS)}")
    lr: float = _opt(0.05, "peak learning rate")
    momentum: float = _opt(0.9, "SGD momentum (AdamW beta1)")
    weight_decay: float = _opt(1e-4, "weight decay")
    nesterov: bool = _opt(False, "Nesterov momentum for SGD")
    schedule: str = _opt("multistep", f"LR schedule: {'/'.join(SCHEDULES)}")
    milestones: tuple[float, ...] = _opt((0.5, 0.75), "multistep LR drops, as fractions of the epochs")
    lr_gamma: float = _opt(0.1, "multistep LR factor per milestone")
    warmup_epochs: float = _opt(0.0, "linear LR warm-up length in epochs")
    augment: bool = _opt(True, "random crop (pad 4) + horizontal flip on image datasets")
    max_train_samples: int = _opt(0, "use only the first N training samples (0 = all)")
    val_fraction: float = _opt(
        0.0, "share of the training set held out for validation (same split for every seed); 0 = train on all"
    )
    dead_unit_window: int = _opt(1500, "training images used to count dead units after each cycle")
    seed: int = _opt(0, "random seed (initialisation, data order, augmentation, random pruning)")
    device: str = _runtime("auto", "auto, cpu, cuda or cuda:N")
    cpu_threads: int = _runtime(
        0, "torch intra-op threads on a CPU; 0 = auto: 1 for models under 1M parameters, else torch's default"
    )
    amp: bool = _opt(True, "bf16 autocast and channels-last on CUDA (ignored on CPU)")
    torch_compile: str = _runtime(
        "off",
        f"torch.compile the model for training and evaluation: {'/'.join(COMPILE_MODES)} (reduce-overhead adds "
        "CUDA graphs); results match eager within noise, not bit for bit; a CPU needs a C++ compiler",
    )
    data_dir: str = _runtime("data", "folder for torchvision datasets")
    download: bool = _runtime(False, "download torchvision datasets when missing")
    checkpoint_every_epoch: bool = _runtime(False, "also checkpoint between epochs, not only between cycles")

    def __post_init__(self) -> None:
        _coerce_field_types(self)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first bad value: each setting on its own, then the names it gives checked
        against the registries (`ap_core.checks`, imported here on use: this module stays plain data)."""
        from ap_core.checks import check_names

        _choice("ap_score", self.ap_score, AP_SCORES)
        _choice("ap_candidates", self.ap_candidates, AP_CANDIDATES)
        _choice("ap_scope", self.ap_scope, AP_SCOPES)
        _choice("torch_compile", self.torch_compile, COMPILE_MODES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _open_unit("prune_rate", self.prune_rate)
        _open_unit("ap_rate", self.ap_rate)
        _at_least("cycles", self.cycles, 1)
        _at_least("epochs", self.epochs, 1)
        _at_least("batch_size", self.batch_size, 1)
        _at_least("rewind_step", self.rewind_step, 0)
        _at_least("max_train_samples", self.max_train_samples, 0)
        _at_least("dead_unit_window", self.dead_unit_window, 1)
        _at_least("cpu_threads", self.cpu_threads, 0)
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed {self.seed} must be in [0, 2**32)")
        for name in ("lr", "finetune_lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} {value} must be a positive number")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum {self.momentum} must be in [0, 1)")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay {self.weight_decay} must be a number >= 0")
        if not 0 <= self.warmup_epochs <= self.epochs:  # written so that nan fails too
            raise ConfigError(f"warmup_epochs {self.warmup_epochs} must be in [0, epochs={self.epochs}]")
        if not 0 <= self.val_fraction < 0.5:  # written so that nan fails too
            raise ConfigError(f"val_fraction {self.val_fraction} must be in [0, 0.5)")
        if self.max_train_samples == 1:
            raise ConfigError("max_train_samples 1 leaves no training batch (BatchNorm needs 2); use 0 (all) or >= 2")
        if any(not 0 < m < 1 for m in self.milestones):
            raise ConfigError(f"milestones {self.milestones} must be fractions of the epochs in (0, 1)")
        if not 0 < self.lr_gamma <= 1:
            raise ConfigError(f"lr_gamma {self.lr_gamma} must be in (0, 1]")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"device {self.device!r} must be auto, cpu, cuda or cuda:N")
        check_names(self)

    # ---- typed groups: views of the flat fields for the code that needs one concern ----------------------------

    @property
    def optimizer_settings(self) -> OptimizerSettings:
        return OptimizerSettings(self.optimizer, self.lr, self.momentum, self.weight_decay, self.nesterov)

    @property
    def schedule_settings(self) -> ScheduleSettings:
        return ScheduleSettings(self.epochs, self.schedule, self.milestones, self.lr_gamma, self.warmup_epochs)

    @property
    def ap_settings(self) -> APSettings | None:
        """AP's settings, or None when the trial runs its method alone."""
        return APSettings(self.ap_rate, self.ap_score, self.ap_candidates, self.ap_scope) if self.ap else None

    @property
    def retraining_settings(self) -> RetrainingSettings:
        return RetrainingSettings(self.rewind_step, self.finetune_lr)

    def replace(self, **changes: Any) -> TrialConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def experiment_settings(self) -> dict[str, Any]:
        """The settings that decide the results (every field but the runtime ones)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}

    def runtime_settings(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_dict().items() if k in RUNTIME_FIELDS}

    def experiment_id(self) -> str:
        """A short hash of the experiment settings: equal for runs that compute the same thing anywhere."""
        payload = json.dumps(self.experiment_settings(), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrialConfig:
        """Build from a flat dict (e.g. Tune's config), rejecting unknown keys by name."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown trial setting {unknown[0]!r}; valid: {', '.join(sorted(names))}")
        return cls(**values)


# Where a trial runs and how fast: a resumed trial may change them (ap_core.checkpoint checks the device type).
# On a CPU, results are bit-identical only for the same cpu_threads (reduction order follows the threads).
RUNTIME_FIELDS = frozenset(f.name for f in dataclasses.fields(TrialConfig) if f.metadata.get("runtime"))


def _coerce_field_types(config: object) -> None:
    for f in dataclasses.fields(config):
        object.__setattr__(config, f.name, coerce_setting(type(config), f.name, getattr(config, f.name)))


def _choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")


def _open_unit(name: str, value: float) -> None:
    if not 0 < value < 1:
        raise ConfigError(f"{name} {value} must be in the open interval (0, 1)")


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{name} {value} must be >= {low}")
