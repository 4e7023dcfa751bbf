"""What a sweep is expected to cost before it starts: the epochs it will train under its scheduler, what reuse saves,
and device-hours from a time per epoch; a sweep above `--confirm-hours` asks first.

ASHA's expected epochs come from its rungs, not from the upper bound: a trial at a rung meets the cutoff of the
trials recorded there before it (Tune's asynchronous ASHA), so of n trials reaching a rung more than n / reduction
pass while n is small, and n / reduction as n grows. Arithmetic on the plan: nothing is trained or started.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from ap_core.config import TrialConfig
from sweeps.engine.options import SearchOptions, SweepError, SweepOptions
from sweeps.engine.spec import SweepPlan

# Seconds per training epoch recorded per (device type, network, dataset), on how many training images, and where
# each figure comes from. `--epoch-seconds` wins; `--dry-run --estimate` measures one where it runs.
RECORDED_EPOCH_SECONDS: dict[tuple[str, str, str], tuple[float, int, str]] = {
    ("cpu", "resnet20", "cifar10"): (
        250.7,
        50_000,
        "recorded in benchmarks/RESULTS.md (issue 11: a 2-core CPU, batch 128)",
    ),
    ("cuda", "resnet20", "cifar10"): (
        2.0,
        50_000,
        "assumed, not measured: issue 21's figure (no GPU epoch is recorded in benchmarks/RESULTS.md yet)",
    ),
}


@dataclass(frozen=True)
class Rungs:
    """ASHA's rungs in training epochs: every point trains `grace` epochs (`--grace-period` cycles of the longest
    schedule) before it can be stopped, then each rung is `reduction` times the one before, up to `max_t`.

    A point is judged at the first cycle it ends at or past a rung (trials report once a cycle), so with the grace
    in cycles of the longest schedule, a point has trained less than one cycle of the longest schedule past the rung;
    in a staged search's stage one (`dense_rungs`) at the rung itself.
    """

    grace: int
    reduction: int
    max_t: int

    @property
    def milestones(self) -> tuple[int, ...]:
        """As Tune's ASHA computes them (one bracket)."""
        count = int(math.log(self.max_t / self.grace) / math.log(self.reduction) + 1)
        return tuple(self.grace * self.reduction**k for k in range(count))


def rungs_for(search: SearchOptions, cycles: int, epochs_per_cycle: tuple[int, ...]) -> Rungs:
    """The rungs of one searched group: `cycles` pruning cycles after the dense one, `epochs_per_cycle` its values."""
    longest = max(epochs_per_cycle)
    return Rungs(min(search.grace_period, cycles + 1) * longest, search.reduction_factor, (cycles + 1) * longest)


def dense_rungs(search: SearchOptions, cycles: int, epochs_per_cycle: tuple[int, ...]) -> Rungs:
    """Stage one's rungs (a staged search): its trials train the dense cycle only, so `max_t` is the longest one,
    and the grace is the share of it the search's grace is of the longest schedule (`--grace-period` of its
    `cycles` + 1); stage one reports after every epoch, so a point is judged at the rung itself."""
    longest = max(epochs_per_cycle)
    share = min(search.grace_period, cycles + 1) / (cycles + 1)
    return Rungs(max(1, math.ceil(share * longest)), search.reduction_factor, longest)


def passes(arrivals: float, reduction: int) -> float:
    """Expected trials that pass a rung of `arrivals` trials, each meeting the cutoff (the 1 - 1/reduction quantile,
    interpolated as numpy does) of those recorded before it: the first always passes, then (m - h) / (m + 1) with
    h = (m - 1)(1 - 1/reduction) for the trial that meets m (exact for ranks: the values' law plays no part)."""
    quantile = 1 - 1 / reduction

    def chance(m: int) -> float:
        return 1.0 if m == 0 else (m - (m - 1) * quantile) / (m + 1)

    whole = int(arrivals)
    return sum(chance(m) for m in range(whole)) + (arrivals - whole) * chance(whole)


def group_epochs(
    trials_per_epochs: Mapping[int, float], cycles: int, rungs: Rungs | None, every_epoch: bool = False
) -> float:
    """Expected training epochs of one Tune experiment whose trials run `cycles` + 1 cycles, `trials_per_epochs`
    of them at each number of epochs per cycle, under ASHA's `rungs` (None: every trial runs to its end). Trials
    report once a cycle, so each is judged at the first cycle it ends at or past a rung; with `every_epoch` (stage
    one) at the rung itself."""
    ends = {e: (cycles + 1) * e for e in trials_per_epochs}
    if rungs is None:
        return sum(n * ends[e] for e, n in trials_per_epochs.items())
    reach = dict.fromkeys(trials_per_epochs, 1.0)  # chance a trial of these epochs is still running
    position = dict.fromkeys(trials_per_epochs, 0)  # epochs it has trained by then
    spent = 0.0
    for milestone in rungs.milestones:
        judged = [e for e in trials_per_epochs if ends[e] >= milestone]
        arrivals = sum(trials_per_epochs[e] * reach[e] for e in judged)
        survive = passes(arrivals, rungs.reduction) / arrivals if arrivals else 0.0
        for e in judged:
            at = milestone if every_epoch else math.ceil(milestone / e) * e
            spent += trials_per_epochs[e] * reach[e] * (at - position[e])
            position[e], reach[e] = at, reach[e] * survive
    return spent + sum(n * reach[e] * (ends[e] - position[e]) for e, n in trials_per_epochs.items())


@dataclass(frozen=True)
class ExpectedCost:
    """Epochs a sweep is expected to train per (network, dataset), what reuse saves of them, and how it was worked
    out (`how`, one phrase)."""

    epochs: Mapping[tuple[str, str], float]
    examples: Mapping[tuple[str, str], TrialConfig]  # a trial of each, for its epoch time
    saved: float
    how: str

    @property
    def total(self) -> float:
        return sum(self.epochs.values())


def expected_cost(plan: SweepPlan, search: SearchOptions | None, reuse: bool) -> ExpectedCost:
    """The epochs `plan` is expected to train: ASHA's rung arithmetic for a search, the staged search's two stages,
    or every planned epoch less what sharing dense cycles within the plan saves (a table sweep)."""
    from sweeps.engine.cycle_store import savings
    from sweeps.engine.staged import dense_groups

    epochs: dict[tuple[str, str], float] = {}
    examples: dict[tuple[str, str], TrialConfig] = {}

    def add(config: TrialConfig, amount: float) -> None:
        key = (config.model, config.dataset)
        epochs[key] = epochs.get(key, 0.0) + amount
        examples.setdefault(key, config)

    if plan.search is None:
        by_network: dict[tuple[str, str], list[TrialConfig]] = {}
        for trial in plan.trials:
            by_network.setdefault((trial.config.model, trial.config.dataset), []).append(trial.config)
        saved = 0
        for configs in by_network.values():  # trials of different networks share no cycle
            found = savings(configs, set())[0]
            saved += found.shared if reuse else 0
            add(configs[0], found.to_train if reuse else found.planned)
        how = "every trial to its last cycle" + (", dense cycles shared" if reuse else "")
        return ExpectedCost(epochs, examples, saved, how)
    assert search is not None
    values = plan.search.axes.get("epochs")
    per_group = plan.points_per_group * plan.seeds
    asha = search.scheduler == "asha"

    def spread(base: TrialConfig) -> tuple[int, ...]:
        return values or (base.training.epochs,)

    def trials_per_epochs(base: TrialConfig) -> dict[int, float]:
        return {e: per_group * spread(base).count(e) / len(spread(base)) for e in set(spread(base))}

    if plan.search_mode == "staged":
        best = min(search.top_k, plan.points_per_group) * plan.seeds

        def stage_one(base: TrialConfig) -> float:
            rungs = dense_rungs(search, base.pruning.cycles, spread(base)) if asha else None
            return group_epochs(trials_per_epochs(base), 0, rungs, every_epoch=True)

        # Stage two's points are known only after stage one; ranked on the dense cycle, the longest schedules tend
        # to lead (more epochs, higher accuracy), so its cycles are counted at the longest epochs per cycle.
        longest = max(values) if values else None
        stored = 1 if reuse else 0  # stage two starts from the dense cycle stage one stored (--no-reuse: trains it)
        saved = 0.0
        for group in plan.search_groups:
            epochs_per_cycle = longest or group.base.training.epochs
            add(group.base, best * (group.base.pruning.cycles + 1 - stored) * epochs_per_cycle)
            saved += stage_one(group.base) + stored * best * epochs_per_cycle
        for dense in dense_groups(plan):  # stage one: once for every method that shares it
            add(dense.base, stage_one(dense.base))
            saved -= stage_one(dense.base)
        stopping = " under ASHA" if asha else ""
        how = f"each point's dense cycle once{stopping}, then the best {search.top_k} in full at the longest schedule"
        return ExpectedCost(epochs, examples, saved, how)
    for group in plan.search_groups:
        cycles = group.base.pruning.cycles
        rungs = rungs_for(search, cycles, spread(group.base)) if asha else None
        add(group.base, group_epochs(trials_per_epochs(group.base), cycles, rungs))
    how = "ASHA's rungs in epochs" if asha else "every point to its last cycle (no scheduler)"
    return ExpectedCost(epochs, examples, 0.0, how)


def epoch_seconds(options: SweepOptions, device: str, config: TrialConfig) -> tuple[float, str] | None:
    """Seconds per epoch of `config`'s network and dataset on `device` ("cpu" or "cuda"), scaled to the training
    images it uses, and where the figure comes from; None where neither `--epoch-seconds` nor a record gives one."""
    if options.epoch_seconds > 0:
        return options.epoch_seconds, "--epoch-seconds"
    recorded = RECORDED_EPOCH_SECONDS.get((device, config.model, config.dataset))
    if recorded is None:
        return None
    seconds, images, source = recorded
    used = min(config.training.max_train_samples or images, images)
    return seconds * used / images, source


def describe(cost: ExpectedCost, options: SweepOptions, device: str) -> tuple[str, float]:
    """One line on the expected cost, and its device-hours: of the networks whose epoch time is known (so a lower
    bound where one is not)."""
    hours = 0.0
    parts = []
    for (network, dataset), epochs in cost.epochs.items():
        timed = epoch_seconds(options, device, cost.examples[(network, dataset)])
        if timed is None:
            parts.append(f"{network} on {dataset}: no epoch time recorded on {device} (give --epoch-seconds)")
            continue
        seconds, source = timed
        hours += epochs * seconds / 3600
        parts.append(
            f"{network} on {dataset}: {epochs * seconds / 3600:,.1f} {device.upper()}-hours at {seconds:.3g} s an "
            f"epoch, {source}"
        )
    saved = f"; reuse saves {cost.saved:,.0f}" if cost.saved else ""
    line = f"expected: {cost.total:,.0f} training epochs ({cost.how}){saved}; " + "; ".join(parts)
    return line, hours


def confirm(cost: ExpectedCost, options: SweepOptions, device: str) -> None:
    """Start a sweep expected to take more than `--confirm-hours` only with `--yes` or the user's yes at a terminal;
    refused in one line (SweepError: exit 2, nothing written) without a terminal."""
    line, hours = describe(cost, options, device)
    if options.yes or hours <= options.confirm_hours:
        return
    above = f"{hours:,.1f} {device.upper()}-hours expected, above --confirm-hours {options.confirm_hours:g}"
    if not sys.stdin.isatty():
        raise SweepError(f"{above}: pass --yes to start it ({line})")
    print(line)
    if input(f"{above}; start it? [y/N] ").strip().lower() not in ("y", "yes"):
        raise SweepError(f"not started: {above}")
