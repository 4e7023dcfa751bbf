"""A trial's settings as plain typed groups, one per concern, at the bottom of the import graph.

Each field names the flat setting it stands for (`setting(flag, ...)`): the `--flag` of `ap-trial`, the key of Tune's
param space and the MLflow param, which keep the names users' scripts know. `ap_core.config.TrialConfig` holds one
group of each kind; a group checks its own values when built, naming the flat setting that is wrong.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ap_core.errors import ConfigError
from ap_core.typed_values import coerce_setting

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("multistep", "cosine", "onecycle", "constant")
AP_SCORES = ("change", "magnitude")
AP_CANDIDATES = ("negative", "all")
AP_SCOPES = ("global", "layer")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
PRETRAINED_HELP = (
    "start from this state_dict file (torch.save's format or .safetensors; nothing is downloaded) instead of "
    "untrained weights; a classifier of another shape starts untrained"
)
SHA256_HELP = "the sha256 the pretrained_weights file must have; empty: whatever it holds (it joins the experiment)"


def setting(flag: str, default: Any, help: str, added: bool = False) -> Any:
    """A group field that is the flat setting `flag`.

    `added` marks a setting introduced after experiments were recorded: at its default it is left out of the
    experiment hash, so every earlier experiment keeps its id (and its stored runs and cycles).
    """
    return field(default=default, metadata={"flag": flag, "help": help, "added": added})


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag", f.name)


class SettingsGroup:
    """A typed settings group: its fields are coerced to their types, then `check` runs (both name the flag)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = coerce_setting(type(self), f.name, getattr(self, f.name), flag_name(f))
            object.__setattr__(self, f.name, value)
        self.check()

    def check(self) -> None:
        """Raise ConfigError naming the first value that is wrong on its own."""

    def flat(self) -> dict[str, Any]:
        """The group's values under their flat setting names."""
        return {flag_name(f): getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class PruningSettings(SettingsGroup):
    """Which method prunes, with its own options, and how much: `prune_rate` per cycle for `cycles` cycles."""

    method: str = setting("method", "global_magnitude", "pruning method X (see --list)")
    method_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "flag": "method_options",
            "help": "the method's own options as KEY=VALUE (see --list), e.g. channel_ratio=0.5",
        },
    )
    prune_rate: float = setting("prune_rate", 0.2, "fraction p of the alive weights pruned per cycle")
    cycles: int = setting("cycles", 10, "pruning cycles after the dense cycle 0")
    keep_first_dense: bool = setting("keep_first_dense", False, "never prune the first conv/linear layer")
    keep_classifier_dense: bool = setting("keep_classifier_dense", False, "never prune the classifier")

    def check(self) -> None:
        _open_unit("prune_rate", self.prune_rate)
        _at_least("cycles", self.cycles, 1)


@dataclass(frozen=True)
class APSettings(SettingsGroup):
    """Activate-While-Pruning beside a method: whether it runs, its share of the alive weights, ranking, candidates
    and scope."""

    enabled: bool = setting("ap", False, "add Activate-While-Pruning to method X")
    rate: float = setting("ap_rate", 0.02, "AP's share p_ap of the alive weights pruned per cycle (< prune_rate)")
    score: str = setting("ap_score", "change", f"AP ranking score: {'/'.join(AP_SCORES)}")
    candidates: str = setting("ap_candidates", "negative", f"AP candidate weights: {'/'.join(AP_CANDIDATES)}")
    scope: str = setting(
        "ap_scope",
        "global",
        "where AP picks its share: global (across layers, as the official code) or layer (inside the per-layer "
        "allocation method X alone would make)",
    )

    def check(self) -> None:
        _open_unit("ap_rate", self.rate)
        _choice("ap_score", self.score, AP_SCORES)
        _choice("ap_candidates", self.candidates, AP_CANDIDATES)
        _choice("ap_scope", self.scope, AP_SCOPES)


@dataclass(frozen=True)
class RetrainingSettings(SettingsGroup):
    """How a pruned net is retrained: the scheme, its rewind step k and its fine-tuning learning rate."""

    scheme: str = setting("retraining", "rewind_init", "retraining between cycles (see --list)")
    rewind_step: int = setting("rewind_step", 0, "optimizer step k for rewind_iteration / lr_rewind")
    finetune_lr: float = setting("finetune_lr", 0.001, "constant learning rate for the finetune scheme")

    def check(self) -> None:
        _at_least("rewind_step", self.rewind_step, 0)
        _positive("finetune_lr", self.finetune_lr)


@dataclass(frozen=True)
class TrainingSettings(SettingsGroup):
    """What one cycle trains on and for how long, from which starting weights, and how its dead units are counted."""

    epochs: int = setting("epochs", 10, "training epochs per cycle")
    batch_size: int = setting("batch_size", 64, "training batch size")
    augment: bool = setting("augment", True, "random crop (pad 4) + horizontal flip on image datasets")
    max_train_samples: int = setting("max_train_samples", 0, "use only the first N training samples (0 = all)")
    val_fraction: float = setting(
        "val_fraction",
        0.0,
        "share of the training set held out for validation (same split for every seed); 0 = train on all",
    )
    dead_unit_window: int = setting("dead_unit_window", 1500, "training images used to count dead units per cycle")
    amp: bool = setting("amp", True, "bf16 autocast and channels-last on CUDA (ignored on CPU)")
    pretrained_weights: str = setting("pretrained_weights", "", PRETRAINED_HELP, added=True)
    pretrained_sha256: str = setting("pretrained_weights_sha256", "", SHA256_HELP, added=True)
    image_size: int = setting(
        "image_size", 224, "side of the square crops of folder / imagenet images the model sees", added=True
    )
    num_classes: int = setting(
        "num_classes", 0, "classes a folder / imagenet dataset must have (0: folder any, imagenet 1000)", added=True
    )

    def check(self) -> None:
        if self.pretrained_sha256 and not (
            self.pretrained_weights and re.fullmatch(r"[0-9a-f]{64}", self.pretrained_sha256)
        ):
            raise ConfigError(
                f"pretrained_weights_sha256 {self.pretrained_sha256!r} must be 64 lowercase hex digits, "
                "given with pretrained_weights"
            )
        for name, least in (("epochs", 1), ("image_size", 8), ("num_classes", 0), ("batch_size", 1)):
            _at_least(name, getattr(self, name), least)
        _at_least("max_train_samples", self.max_train_samples, 0)
        _at_least("dead_unit_window", self.dead_unit_window, 1)
        if not 0 <= self.val_fraction < 0.5:  # written so that nan fails too
            raise ConfigError(f"val_fraction {self.val_fraction} must be in [0, 0.5)")
        if self.max_train_samples == 1:
            raise ConfigError("max_train_samples 1 leaves no training batch (BatchNorm needs 2); use 0 (all) or >= 2")


@dataclass(frozen=True)
class OptimizerSettings(SettingsGroup):
    """Which optimizer updates the weights, and with what peak learning rate and regularisation."""

    name: str = setting("optimizer", "sgd", f"optimizer: {'/'.join(OPTIMIZERS)}")
    lr: float = setting("lr", 0.05, "peak learning rate")
    momentum: float = setting("momentum", 0.9, "SGD momentum (AdamW beta1)")
    weight_decay: float = setting("weight_decay", 1e-4, "weight decay")
    nesterov: bool = setting("nesterov", False, "Nesterov momentum for SGD")

    def check(self) -> None:
        _choice("optimizer", self.name, OPTIMIZERS)
        _positive("lr", self.lr)
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum {self.momentum} must be in [0, 1)")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay {self.weight_decay} must be a number >= 0")


@dataclass(frozen=True)
class ScheduleSettings(SettingsGroup):
    """The learning-rate schedule of one cycle, as a factor of the peak LR."""

    name: str = setting("schedule", "multistep", f"LR schedule: {'/'.join(SCHEDULES)}")
    milestones: tuple[float, ...] = setting("milestones", (0.5, 0.75), "multistep LR drops, as fractions of the epochs")
    lr_gamma: float = setting("lr_gamma", 0.1, "multistep LR factor per milestone")
    warmup_epochs: float = setting("warmup_epochs", 0.0, "linear LR warm-up length in epochs")

    def check(self) -> None:
        _choice("schedule", self.name, SCHEDULES)
        if any(not 0 < m < 1 for m in self.milestones):
            raise ConfigError(f"milestones {self.milestones} must be fractions of the epochs in (0, 1)")
        if not 0 < self.lr_gamma <= 1:
            raise ConfigError(f"lr_gamma {self.lr_gamma} must be in (0, 1]")


@dataclass(frozen=True)
class RuntimeSettings(SettingsGroup):
    """Where a trial runs and how fast, outside the experiment: a resumed trial may change them (on a CPU, results
    are bit-identical only for the same cpu_threads: reduction order follows the threads)."""

    device: str = setting("device", "auto", "auto, cpu, cuda or cuda:N")
    cpu_threads: int = setting(
        "cpu_threads", 0, "torch intra-op threads on a CPU; 0 = auto: 1 for models under 1M parameters, else torch's"
    )
    torch_compile: str = setting(
        "torch_compile",
        "off",
        f"torch.compile the model for training and evaluation: {'/'.join(COMPILE_MODES)} (reduce-overhead adds "
        "CUDA graphs); results match eager within noise, not bit for bit; a CPU needs a C++ compiler",
    )
    data_dir: str = setting(
        "data_dir", "data", "folder for torchvision datasets; for folder / imagenet: the one with train/ and val/"
    )
    download: bool = setting("download", False, "download torchvision datasets when missing")
    checkpoint_every_epoch: bool = setting(
        "checkpoint_every_epoch", False, "also checkpoint between epochs, not only between cycles"
    )
    loader_workers: int = setting(
        "loader_workers", 4, "processes decoding folder / imagenet images (0: in the trial's process)", added=True
    )

    def check(self) -> None:
        _at_least("loader_workers", self.loader_workers, 0)
        _choice("torch_compile", self.torch_compile, COMPILE_MODES)
        _at_least("cpu_threads", self.cpu_threads, 0)
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"device {self.device!r} must be auto, cpu, cuda or cuda:N")


def _choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")


def _open_unit(name: str, value: float) -> None:
    if not 0 < value < 1:
        raise ConfigError(f"{name} {value} must be in the open interval (0, 1)")


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{name} {value} must be >= {low}")


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} {value} must be a positive number")
