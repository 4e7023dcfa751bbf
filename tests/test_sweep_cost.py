"""A grid a lab can afford (issue 21): ASHA's rungs in epochs, the expected cost printed before a sweep starts, and a
sweep above --confirm-hours that asks first. Arithmetic and command lines only: nothing here starts Ray."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from sweeps import hparam_grid
from sweeps.engine import tune_runner
from sweeps.engine.driver import main
from sweeps.engine.expected_cost import (
    Rungs,
    confirm,
    dense_rungs,
    expected_cost,
    group_epochs,
    passes,
    rungs_for,
)
from sweeps.engine.options import SearchOptions, SweepError, SweepOptions
from sweeps.engine.spec import expand
from sweeps.engine.staged import stage_one
from trainables.pruning_trial import EPOCH, TRAINED_EPOCHS

PAPER_CYCLES = 16


def _epochs_at_each_rung(scheduler: tune_runner.EpochASHA, trial: SimpleNamespace, cycles: int) -> dict[int, int]:
    """Feed `trial`'s results cycle by cycle; the epochs it had trained when each rung recorded it."""
    recorded_at = {}
    for cycle in range(cycles + 1):
        scheduler.on_trial_result(None, trial, {"cycle": cycle, "val_acc": 50.0, "training_iteration": cycle + 1})
        for milestone, recorded in scheduler._brackets[0]._rungs:
            if trial.trial_id in recorded and milestone not in recorded_at:
                recorded_at[milestone] = (cycle + 1) * trial.config["epochs"]
    return recorded_at


def test_asha_rungs_are_in_epochs_so_a_500_and_an_80_epoch_point_meet_a_rung_at_equal_epochs() -> None:
    plan = expand(hparam_grid.SPEC, "paper", networks=("resnet20",), methods=("GP",))
    scheduler = tune_runner._scheduler(plan, plan.groups[0], SearchOptions())
    assert isinstance(scheduler, tune_runner.EpochASHA)
    scheduler.set_search_properties("val_acc", "max")
    rungs = rungs_for(SearchOptions(), PAPER_CYCLES, (80, 500))
    assert rungs == Rungs(grace=2 * 500, reduction=4, max_t=17 * 500)  # the grace: 2 cycles of the longest schedule
    assert sorted(m for m, _ in scheduler._brackets[0]._rungs) == list(rungs.milestones) == [1000, 4000]

    long, short = (SimpleNamespace(trial_id=i, config={"epochs": e}) for i, e in (("long", 500), ("short", 80)))
    for trial in (long, short):
        scheduler.on_trial_add(None, trial)
    long_at = _epochs_at_each_rung(scheduler, long, PAPER_CYCLES)
    short_at = _epochs_at_each_rung(scheduler, short, PAPER_CYCLES)
    # Both meet the first rung at 1000 epochs trained (the short point within one of its own cycles), where rungs in
    # cycles had judged the 500-epoch point after 1000 epochs and the 80-epoch one after 160.
    assert long_at[1000] == 1000 and 1000 <= short_at[1000] < 1000 + 80
    assert long_at[4000] == 4000 and 4000 not in short_at  # 17 cycles of 80 epochs end before the second rung


def test_stage_one_stops_points_within_their_dense_cycle_at_rungs_in_epochs() -> None:
    plan = stage_one(expand(hparam_grid.SPEC, "paper", networks=("resnet20",), methods=("GP",), search_mode="staged"))
    scheduler = tune_runner._scheduler(plan, plan.groups[0], SearchOptions())
    assert isinstance(scheduler, tune_runner.EpochASHA)
    scheduler.set_search_properties("val_acc", "max")
    # The longest dense cycle is 500 epochs; the grace is the search's share of its longest run, 2 of 17 cycles
    rungs = dense_rungs(SearchOptions(), PAPER_CYCLES, (80, 500))
    assert rungs == Rungs(grace=59, reduction=4, max_t=500)
    assert sorted(m for m, _ in scheduler._brackets[0]._rungs) == list(rungs.milestones) == [59, 236]

    def epoch_result(epoch: int, val_acc: float) -> dict[str, float]:  # as a stage-one trial reports it
        return {"val_acc": val_acc, TRAINED_EPOCHS: epoch + 1, EPOCH: epoch}

    good, poor, short = (
        SimpleNamespace(trial_id=i, config={"epochs": e}) for i, e in [("a", 500), ("b", 500), ("c", 80)]
    )
    for trial in (good, poor, short):
        scheduler.on_trial_add(None, trial)
    actions = {t.trial_id: [] for t in (good, poor, short)}
    for epoch in range(60):  # the three side by side, the poor 500-epoch point a little behind
        for trial, val_acc in ((good, 60.0), (short, 70.0), (poor, 10.0)):
            actions[trial.trial_id].append(scheduler.on_trial_result(None, trial, epoch_result(epoch, val_acc)))
    # The rung at 59 epochs judged the 80- and the 500-epoch points alike: the poor one stops 441 epochs before the
    # end of its dense cycle, the others go on
    assert actions["b"][58] == scheduler.STOP and set(actions["b"][:58]) == {scheduler.CONTINUE}
    assert set(actions["a"]) == set(actions["c"]) == {scheduler.CONTINUE}
    stopper = tune_runner.AfterDenseCycle()
    assert not stopper("a", epoch_result(0, 60.0)) and stopper("a", {"cycle": 0, "val_acc": 61.0})


def test_expected_epochs_follow_ashas_rungs_not_the_upper_bound() -> None:
    assert passes(1, 4) == 1 and passes(2, 4) == 1.5  # the first passes; the second beats the first half the time
    assert passes(10_000, 4) / 10_000 == pytest.approx(1 / 4, abs=0.002)  # a large rung keeps a quarter
    rungs = Rungs(grace=4, reduction=4, max_t=20)  # 5 cycles of 4 epochs: rungs at 4 and 16 epochs
    assert group_epochs({4: 1}, 4, None) == 20
    assert group_epochs({4: 1}, 4, rungs) == 20  # alone, a trial passes every rung
    # A 10,000-point rung keeps about a quarter: 4 epochs each, a quarter go on to 16, a sixteenth to 20
    assert group_epochs({4: 10_000}, 4, rungs) / 10_000 == pytest.approx(4 + 12 / 4 + 4 / 16, rel=0.01)
    # Stage one (its dense cycles only, judged after every epoch): 2- and 4-epoch points both meet the rung at 2
    # epochs, and the 4-epoch ones that pass train 2 more
    dense = Rungs(grace=2, reduction=4, max_t=4)
    assert group_epochs({2: 5_000, 4: 5_000}, 0, dense, every_epoch=True) / 10_000 == pytest.approx(
        2 + 2 / 2 / 4, rel=0.01
    )
    plan = expand(hparam_grid.SPEC, "paper", seeds=1)
    full = expected_cost(plan, SearchOptions(), reuse=True).total
    staged = expected_cost(expand(hparam_grid.SPEC, "paper", search_mode="staged", top_k=5), SearchOptions(), True)
    assert staged.total < full < 0.5 * plan.total_epochs


def test_a_sweep_above_the_threshold_without_yes_or_a_terminal_exits_2_naming_its_cost(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO())  # no terminal
    argv = ["--results-dir", str(tmp_path / "r"), "--epoch-seconds", "60", "--confirm-hours", "0.5", "--num-cpus", "2"]
    with pytest.raises(SystemExit) as exit_info:
        main(hparam_grid.SPEC, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "CPU-hours expected, above --confirm-hours 0.5: pass --yes" in err and "training epochs" in err
    assert not (tmp_path / "r").exists()


def test_a_terminal_is_asked_and_yes_skips_the_question(monkeypatch: pytest.MonkeyPatch) -> None:
    cost = expected_cost(expand(hparam_grid.SPEC, "smoke"), SearchOptions(), reuse=True)
    costly = SweepOptions(epoch_seconds=3600, confirm_hours=1)
    confirm(cost, SweepOptions(epoch_seconds=3600, confirm_hours=1, yes=True), "cpu")  # --yes: not asked
    confirm(cost, SweepOptions(epoch_seconds=1), "cpu")  # below the threshold: not asked
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(isatty=lambda: True))
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    with pytest.raises(SweepError, match="not started"):
        confirm(cost, costly, "cpu")
    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    confirm(cost, costly, "cpu")


@pytest.mark.parametrize("flag", ["--epoch-seconds=-1", "--confirm-hours=nan", "--top-k=0"])
def test_bad_cost_flags_are_one_line(flag: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(hparam_grid.SPEC, [flag, "--dry-run", "--results-dir", str(tmp_path / "r")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag.split("=")[1] in err


def test_a_staged_search_plans_each_points_dense_cycle_once_and_the_full_schedule_for_its_top_k() -> None:
    import pandas as pd

    from ap_core.cycle_keys import cycle_key
    from sweeps.engine import staged

    plan = expand(hparam_grid.SPEC, "smoke", search_mode="staged", top_k=2, seeds=2)
    gp, lp = plan.search_groups
    assert staged.dense_of(plan)[gp.key] == staged.dense_of(plan)[lp.key]  # GP and LP share their dense cycle
    first = staged.stage_one(plan)
    points = hparam_grid.SMOKE_GRID.size
    assert first.dense_stage and first.groups == [f"{gp.key}-dense"] and len(first.trials) == points * 2
    assert len({cycle_key(t.config, 0) for t in first.trials}) == len(first.trials)  # each point and seed once
    # Ranked on the mean over seeds after the dense cycle (here: later points score higher); a point that lacks a
    # seed is out (here: the last one)
    axes = list(hparam_grid.SMOKE_GRID.axes)
    rows = pd.DataFrame(
        [
            {"group": t.group, "cycle": 0, "seed": t.config.seed, "val_acc": float(i)}
            | {k: t.config.to_dict()[k] for k in axes}
            for i, t in enumerate(first.trials[:-1])
        ]
    )
    best = staged.best_dense_points(rows, plan)
    by_rank = [{k: t.config.to_dict()[k] for k in axes} for t in reversed(first.trials) if t.config.seed == 1]
    assert best == {f"{gp.key}-dense": by_rank[1:3]}
    second = staged.stage_two(plan, best)
    assert second.groups == [gp.key, lp.key] and len(second.trials) == 2 * 2 * 2  # methods x top k x seeds
    assert all(t.config.pruning.cycles == gp.base.pruning.cycles for t in second.trials)
    assert {tuple(t.config.to_dict()[k] for k in axes) for t in second.trials} == {
        tuple(p.values()) for p in by_rank[1:3]
    }
    assert plan.trial_count == len(first.trials) + len(second.trials)
