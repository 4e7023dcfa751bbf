"""What a trial hands back after every cycle (and, to a caller that asks, after every epoch), and its flat form for
trackers."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EpochProgress:
    """Where a trial stands after an epoch that does not end its cycle (the cycle's `CycleResult` stands for the
    last one): what a scheduler needs to stop a trial within a long cycle."""

    cycle: int
    epoch: int  # of the cycle, from 0
    val_acc: float | None  # None when the trial holds out no validation split


@dataclass
class CycleResult:
    """The outcome of one training cycle (cycle 0 = dense) of a trial."""

    cycle: int
    weights_remaining: float  # percent of prunable weights alive during this cycle
    test_acc: float  # percent, after the cycle's last epoch
    best_acc: float  # percent, best epoch within the cycle
    test_loss: float
    train_loss: float  # mean over the cycle's last epoch
    dnr: float  # dynamic DNR of the last epoch, all activation layers
    dead_units: int  # channels dead on the evaluation window after the cycle
    total_units: int
    seconds: float
    epochs: int
    train_loss_per_epoch: list[float] = field(default_factory=list)
    dnr_per_epoch: list[float] = field(default_factory=list)
    dnr_layers_per_epoch: list[dict[str, float]] = field(default_factory=list)
    dead_units_layers: dict[str, int] = field(default_factory=dict)
    layer_density: dict[str, float] = field(default_factory=dict)
    # In percent of the dense net, measured on the net: trainable parameters (masked weights not counted),
    # channels of the removable channel groups, and multiply-accumulates of one forward pass as executed.
    params_remaining: float = 100.0
    channels_remaining: float = 100.0
    flops_remaining: float = 100.0
    # Channel removals of the cycle: step (within the cycle and over the whole trial), channels removed and what
    # remained after each.
    removal_events: list[dict[str, float]] = field(default_factory=list)
    # Accuracy (percent) on the held-out validation split after the cycle; None when no split was held out.
    val_acc: float | None = None

    def metrics(self) -> dict[str, float]:
        """Flat scalar metrics: one entry per scalar, per-layer values under `dnr/<layer>` etc."""
        flat: dict[str, float] = {
            "cycle": self.cycle,
            "weights_remaining": self.weights_remaining,
            "params_remaining": self.params_remaining,
            "channels_remaining": self.channels_remaining,
            "flops_remaining": self.flops_remaining,
            "test_acc": self.test_acc,
            "best_acc": self.best_acc,
            "test_loss": self.test_loss,
            "train_loss": self.train_loss,
            "dnr": self.dnr,
            "dnr_mean": sum(self.dnr_per_epoch) / len(self.dnr_per_epoch) if self.dnr_per_epoch else self.dnr,
            "dead_units": self.dead_units,
            "dead_units_frac": self.dead_units / self.total_units if self.total_units else 0.0,
            "cycle_seconds": self.seconds,
        }
        if self.val_acc is not None:
            flat["val_acc"] = self.val_acc
        if self.dnr_layers_per_epoch:
            flat.update({f"dnr/{k}": v for k, v in self.dnr_layers_per_epoch[-1].items()})
        flat.update({f"dead_units/{k}": v for k, v in self.dead_units_layers.items()})
        flat.update({f"density/{k}": v for k, v in self.layer_density.items()})
        return flat

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CycleResult:
        return cls(**values)
