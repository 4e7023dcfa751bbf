"""DemP, Demon Pruning (Dufort-Labbe et al. 2024, arXiv 2403.07688).

DemP does not rank and cut: a one-cycle L1 term on the BatchNorm scales plus parameter noise makes neurons die
during training, and every `prune_every` steps the channels dead on an eval window are removed for good. Sparsity
is not targeted; sweeping lambda traces the accuracy/size curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ap_core.errors import ConfigError
from ap_core.hooks import CycleContext, TrainingHook
from ap_core.network import PrunableNet
from ap_core.pruning.base import PruneRequest, Removal, register_method
from ap_core.pruning.channels import ChannelMethod, add_l1_subgradient, norm_groups, norm_scales
from ap_core.training import one_cycle

NOISE_STREAM = 3  # the trial's random streams: data 1, pruning 2, DemP's noise 3


@dataclass(frozen=True)
class DempHparams:
    lam: float = field(default=1e-4, metadata={"help": "lambda: peak strength of the L1 on BatchNorm scales"})
    noise: float = field(default=5e-5, metadata={"help": "peak std of the parameter noise (0: off)"})
    prune_every: int = field(default=1000, metadata={"help": "optimizer steps between dead-channel removals"})
    span: float = field(default=1.0, metadata={"help": "length of the one-cycle schedules, as a share of cycle 0"})
    min_channels: int = field(default=1, metadata={"help": "channels every layer keeps"})

    def validate(self) -> None:
        for name in ("lam", "noise"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} {value} must be a number >= 0")
        if self.prune_every < 1:
            raise ConfigError(f"prune_every {self.prune_every} must be >= 1")
        if not 0 < self.span <= 1:
            raise ConfigError(f"span {self.span} must be in (0, 1]: a share of cycle 0")
        if self.min_channels < 1:
            raise ConfigError(f"min_channels {self.min_channels} must be >= 1")


def schedule_factor(step: int, span_steps: float) -> float:
    """The one-cycle factor at `step`: 1/25 at 0, 1 at 30% of the span, 1/2.5e5 at its end, held after it."""
    return one_cycle(min(step / span_steps, 1.0))


def dead_channels(net: PrunableNet, fired: dict[str, torch.Tensor], floor: int) -> dict[str, list[int]]:
    """Channels of each group that fired at none of the activations they feed, keeping at least `floor` per group.

    A channel read by several later layers (a concatenation) is dead only when it is dead at every one of them.
    """
    removal = {}
    for group in norm_groups(net, relu=True):
        alive = torch.stack([fired[site.activation][list(site.index)] for site in group.sites]).any(dim=0)
        dead = (~alive).nonzero().flatten().tolist()
        dead = dead[: max(0, len(alive) - floor)]
        if dead:
            removal[group.root] = dead
    return removal


class DemonHook(TrainingHook):
    """The L1 term and noise on their one-cycle schedules, and dead-channel removal every `prune_every` steps.

    Noise goes to every parameter of the net as it stands: the units alive at the last dead-unit check, since the
    dead ones were removed then (a unit kept only by `min_channels` gets it too).
    """

    def __init__(self, context: CycleContext) -> None:
        self.context = context
        hp: DempHparams = context.hparams
        self.hp = hp
        # Cycle 0 is DemP's run; later (fine-tuning) cycles are past the span and hold the final values.
        self.span_steps = hp.span * context.cycle_steps if context.cycle == 0 else 0.0
        self.generator: torch.Generator | None = None

    def factor(self, step: int) -> float:
        return schedule_factor(step, self.span_steps) if self.span_steps else one_cycle(1.0)

    def on_epoch_start(self, epoch: int) -> None:
        self.generator = self.context.generator(NOISE_STREAM, self.context.cycle, epoch)

    def after_backward(self, step: int) -> None:
        add_l1_subgradient(norm_scales(self.context.net.model), self.hp.lam * self.factor(step))

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        net = self.context.net
        sigma = self.hp.noise * self.factor(step)
        if sigma and self.generator is not None:
            for param in net.model.parameters():
                noise = torch.randn(param.shape, generator=self.generator, device=param.device, dtype=param.dtype)
                param.add_(noise, alpha=sigma)
            net.masked.mask_weights()
        if (step + 1) % self.hp.prune_every == 0:
            removal = dead_channels(net, self.context.fired_units(), self.hp.min_channels)
            if removal:
                self.context.remove_channels(removal, step + 1)


@register_method("demp")
class DemonPruning(ChannelMethod):
    Hparams = DempHparams
    needs_relu = True

    def hooks(self, context: CycleContext) -> list[TrainingHook]:
        return [DemonHook(context)]

    def propose(self, request: PruneRequest) -> Removal:
        """At a cycle boundary: whatever died since the last removal."""
        cycle = request.trial_cycle("demp")
        return Removal(channels=dead_channels(cycle.net, cycle.fired_units(), request.hparams.min_channels))
