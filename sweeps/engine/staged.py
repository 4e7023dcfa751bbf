"""The staged search (`--search staged`): a grid a lab can afford.

Stage one trains the dense cycle 0 of every grid point (and seed) once for all the methods that share it (GP and
LP share it exactly: `ap_core.cycle_keys`) under ASHA in epochs (its trials report after every epoch, so a poor point
stops within its dense cycle: `expected_cost.dense_rungs`) and ranks the points that ended it on its validation
accuracy. Stage two runs the full pruning schedule, for each method, of the best `--top-k` points of stage one only,
each starting from its dense cycle as stage one stored it in the cycle store. The best point is then chosen as in
every search: on validation accuracy after pruning (`report.best_points`). Both stages are planned trials
(`tune_runner.PlanSearcher`), so a dense cycle stored by an earlier sweep is not trained again either.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

import pandas as pd

from ap_core.cycle_keys import cycle_key
from sweeps.engine.spec import PlannedTrial, SearchGroup, SweepPlan, searched_trial_name
from trainables.tune_config import trial_config

Outcome = tuple[Any, str]  # a trial's Tune result and FINISHED, FAILED or unfinished (report.Outcome)


def dense_groups(plan: SweepPlan) -> tuple[SearchGroup, ...]:
    """One group per distinct dense cycle of the searched groups, named after the first group that has it."""
    return tuple({dense.key: dense for dense in dense_of(plan).values()}.values())


def dense_of(plan: SweepPlan) -> dict[str, SearchGroup]:
    """Each searched group's key -> the stage-one group that trains its dense cycles."""
    first: dict[str, SearchGroup] = {}
    by_group = {}
    for group in plan.search_groups:
        dense = first.setdefault(
            cycle_key(group.base, 0),
            SearchGroup(
                f"{group.key}-dense", f"{group.stem}-dense", {**group.labels, "method": "dense cycle 0"}, group.base
            ),
        )
        by_group[group.key] = dense
    return by_group


def _trials(plan: SweepPlan, group: SearchGroup, points: list[dict[str, Any]]) -> list[PlannedTrial]:
    """`group`'s trials at `points`, each once per seed, named as the searched points they are."""
    assert plan.search is not None
    axes = tuple(plan.search.axes)
    trials = []
    for point, seed in itertools.product(points, range(1, plan.seeds + 1)):
        settings = {**group.base.experiment_settings(), **point, "seed": seed}
        config = trial_config(settings, group.base.runtime_settings())
        name = searched_trial_name(group.stem, axes, config, "", numbered=False)
        trials.append(PlannedTrial(name, group.key, {**group.labels, "seed": seed}, config))
    return trials


def stage_one(plan: SweepPlan) -> SweepPlan:
    """Every grid point's dense cycle 0, once per seed, for each distinct dense cycle of the searched methods."""
    assert plan.search is not None
    axes = plan.search.axes
    points = [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]
    trials = [t for group in dense_groups(plan) for t in _trials(plan, group, points)]
    return dataclasses.replace(plan, trials=tuple(trials), dense_stage=True)


def best_dense_points(rows: pd.DataFrame, plan: SweepPlan) -> dict[str, list[dict[str, Any]]]:
    """Per stage-one group, its best `plan.top_k` points by mean validation accuracy after the dense cycle, among
    points whose every seed trained it to its end (ASHA stopped none of them; ties: in grid order)."""
    assert plan.search is not None
    axes = list(plan.search.axes)
    if rows.empty or "val_acc" not in rows:
        return {}
    dense = rows[rows["cycle"] == 0]
    by_point = dense.groupby(["group", *axes], sort=False).agg(val_acc=("val_acc", "mean"), seeds=("seed", "nunique"))
    by_point = by_point[by_point["seeds"] == plan.seeds].reset_index()
    best = {}
    for group, points in by_point.groupby("group", sort=False):
        top = points.sort_values("val_acc", ascending=False, kind="stable").head(plan.top_k)
        best[str(group)] = [{k: _plain(row[k]) for k in axes} for _, row in top.iterrows()]
    return best


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def stage_two(plan: SweepPlan, best: dict[str, list[dict[str, Any]]]) -> SweepPlan:
    """Each searched method's full schedule at the best points of the stage-one group holding its dense cycles."""
    dense = dense_of(plan)
    trials = [t for group in plan.search_groups for t in _trials(plan, group, best.get(dense[group.key].key, []))]
    return dataclasses.replace(plan, trials=tuple(trials))


def run_stages(
    plan: SweepPlan, run_stage: Callable[[SweepPlan], list[Outcome]], collect: Callable[..., Any]
) -> tuple[list[Outcome], SweepPlan]:
    """Run stage one, rank its points, run stage two; returns every trial's outcome and the plan they make up
    (both stages' trials). Stage two does not start if stage one was interrupted."""
    first = stage_one(plan)
    outcomes = run_stage(first)
    rows, _, unfinished = collect(outcomes, first)
    if unfinished:
        return outcomes, first
    second = stage_two(plan, best_dense_points(rows, plan))
    both = dataclasses.replace(plan, trials=first.trials + second.trials)
    print(f"stage one done: its best {plan.top_k} points run each method's full schedule ({len(second.trials)} trials)")
    return outcomes + run_stage(second), both
