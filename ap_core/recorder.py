"""The figures of the cycle in progress: per-epoch numbers and channel-removal events, checkpointed between
epochs and turned into the cycle's CycleResult at its end."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ap_core.results import CycleResult

if TYPE_CHECKING:
    from ap_core.dnr import DeadRate, DeadUnits
    from ap_core.network import Remaining


@dataclass
class EpochFigures:
    """Per-epoch figures of the cycle in progress (checkpointed between epochs as plain data)."""

    train_loss: list[float] = field(default_factory=list)
    dnr: list[float] = field(default_factory=list)
    dnr_layers: list[dict[str, float]] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    removal_events: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def record_epoch(self, train_loss: float, rate: DeadRate, test_acc: float, test_loss: float) -> None:
        self.train_loss.append(train_loss)
        self.dnr.append(rate.dnr)
        self.dnr_layers.append(rate.layers)
        self.test_acc.append(test_acc)
        self.test_loss.append(test_loss)

    def record_removal(self, step: int, training_step: int, removed: int, left: Remaining) -> None:
        """A channel removal at `step` of the cycle (`training_step` counted over the whole trial)."""
        self.removal_events.append(
            {
                "step": step,
                "training_step": training_step,
                "removed": removed,
                "channels_remaining": left.channels,
                "params_remaining": left.params,
                "flops_remaining": left.flops,
                "weights_remaining": left.weights,
            }
        )

    def cycle_result(
        self,
        cycle: int,
        left: Remaining,
        units: DeadUnits,
        layer_density: dict[str, float],
        seconds: float,
        val_acc: float | None,
    ) -> CycleResult:
        return CycleResult(
            cycle=cycle,
            weights_remaining=left.weights,
            test_acc=self.test_acc[-1],
            best_acc=max(self.test_acc),
            test_loss=self.test_loss[-1],
            train_loss=self.train_loss[-1],
            dnr=self.dnr[-1],
            dead_units=units.dead,
            total_units=units.total,
            seconds=seconds,
            epochs=len(self.train_loss),
            train_loss_per_epoch=list(self.train_loss),
            dnr_per_epoch=list(self.dnr),
            dnr_layers_per_epoch=list(self.dnr_layers),
            dead_units_layers=units.layers,
            layer_density=layer_density,
            params_remaining=left.params,
            channels_remaining=left.channels,
            flops_remaining=left.flops,
            removal_events=list(self.removal_events),
            val_acc=val_acc,
        )
