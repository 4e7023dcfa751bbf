"""After Tune: per-cycle rows of every trial, the table (or a search's best settings) and the comparison plot."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow
import pyarrow.fs
from ray.tune import Checkpoint, Result

from sweeps.engine import plots
from sweeps.engine.hparams_file import TunedSettings, write_hparams
from sweeps.engine.result_table import DEFAULT_POOL_BELOW, PRINTED_LEVELS, SweepTable, build_table
from sweeps.engine.spec import SweepPlan
from sweeps.engine.sweep_state import CYCLES_FILE
from trainables.pruning_trial import HISTORY_FILE, PACKED_METRICS, ROW_METRICS

Outcome = tuple[Result, str]  # a trial's result and FINISHED, FAILED or unfinished


def collect(outcomes: list[Outcome], plan: SweepPlan) -> tuple[pd.DataFrame, list[str], int]:
    """Per-cycle rows of the trials that ran, the names of failed ones, and how many never finished.

    Rows carry the trial's name, group and labels, plus each searched axis (for choosing the best point).
    """
    catalog = plan.catalog()
    axes = list(plan.search.axes) if plan.search else []
    frames, failed = [], []
    # Trials of groups never started (the sweep was interrupted before them) count as unfinished too.
    unfinished = plan.trial_count - len(outcomes) + sum(outcome == "unfinished" for _, outcome in outcomes)
    for result, outcome in outcomes:
        if result.config is None:  # never started before Ctrl-C
            continue
        trial = catalog.trial_of(result.config, str((result.metrics or {}).get("trial_id", "")))
        config = trial.config
        if outcome == "FAILED":
            failed.append(trial.name)
            continue
        cycles = unpacked(cycle_rows(result.metrics_dataframe))
        if cycles.empty or len(cycles) <= cycles["cycle"].max():  # a retried trial's record starts at its checkpoint
            cycles = cycle_rows(pd.concat([checkpointed_cycles(result.checkpoint), cycles], ignore_index=True))
        if cycles.empty:
            continue
        flat = config.to_dict()
        frame = cycles[[c for c in ROW_METRICS if c in cycles]].assign(
            trial=trial.name, group=trial.group, **trial.labels, **{k: flat[k] for k in axes}
        )
        frames.append(frame.assign(final_cycle=config.pruning.cycles))
    # In plan order (not completion order), so tables and plots list variants and settings as declared.
    order = {t.name: index for index, t in enumerate(plan.trials)}
    frames.sort(key=lambda frame: (order.get(frame["trial"].iloc[0], len(order)), frame["trial"].iloc[0]))
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if not rows.empty:
        rows["level"] = rows["weights_remaining"].round(1)
    return rows, sorted(failed), unfinished


def cycle_rows(history: pd.DataFrame | None) -> pd.DataFrame:
    """A trial's results that end a cycle (a stage-one trial's per-epoch results have no `cycle`), the last one
    per cycle (a resumed trial reports some again), in cycle order; empty if it ended none."""
    if history is None or "cycle" not in history:
        return pd.DataFrame()
    ended = history.dropna(subset=["cycle"]).astype({"cycle": int})
    return ended.drop_duplicates("cycle", keep="last").sort_values("cycle")


def checkpointed_cycles(checkpoint: Checkpoint | None) -> pd.DataFrame:
    """Every cycle's metrics as of the trial's last checkpoint (JSON, read from wherever the checkpoint is stored).

    Tune rewrites a trial's record of results when it retries the trial from a checkpoint, so the cycles before that
    checkpoint are found here, not there."""
    if checkpoint is None:
        return pd.DataFrame()
    path = f"{checkpoint.path}/{HISTORY_FILE}"
    if checkpoint.filesystem.get_file_info(path).type != pyarrow.fs.FileType.File:
        return pd.DataFrame()
    with checkpoint.filesystem.open_input_stream(path) as stream:
        return pd.DataFrame(json.loads(stream.read()))


def unpacked(cycles: pd.DataFrame) -> pd.DataFrame:
    """A trial's per-cycle rows with the metrics it reported packed (`PACKED_METRICS`) as columns of their own."""
    if PACKED_METRICS not in cycles:
        return cycles
    packed = pd.DataFrame([json.loads(text) for text in cycles[PACKED_METRICS]], index=cycles.index)
    return cycles.join(packed[[c for c in packed if c not in cycles]])


def trial_outcomes(results: Iterable[Result], experiment_path: str) -> list[Outcome]:
    """Each trial with FAILED, FINISHED (it ran to its end, or a scheduler stopped it) or unfinished.

    Judged from the experiment state Tune saved last: Tune saves it before its Ctrl-C clean-up marks every
    interrupted trial TERMINATED, so the grid's own statuses would call half-done trials finished.
    """
    saved = saved_trial_statuses(experiment_path)
    return [(result, _outcome(result, saved)) for result in results]


def _outcome(result: Result, saved: dict[str, str]) -> str:
    if result.error is not None:
        return "FAILED"
    status = saved.get(str((result.metrics or {}).get("trial_id", "")))
    if status is None:  # not in a readable saved state: trust the last result's own `done`
        return "FINISHED" if (result.metrics or {}).get("done") else "unfinished"
    return {"TERMINATED": "FINISHED", "ERROR": "FAILED"}.get(status, "unfinished")


def saved_trial_statuses(experiment_path: str) -> dict[str, str]:
    """Trial id -> status in the newest `experiment_state-*.json` of a Tune experiment (local or remote storage)."""
    try:
        filesystem, root = pyarrow.fs.FileSystem.from_uri(experiment_path)
        names = sorted(
            info.path
            for info in filesystem.get_file_info(pyarrow.fs.FileSelector(root))
            if info.base_name.startswith("experiment_state-") and info.base_name.endswith(".json")
        )
        with filesystem.open_input_stream(names[-1]) as stream:
            trials = [json.loads(trial) for trial, _ in json.loads(stream.read())["trial_data"]]
        return {str(trial["trial_id"]): str(trial["status"]) for trial in trials}
    except (OSError, ValueError, KeyError, IndexError, TypeError, pyarrow.ArrowException):
        return {}


COMPARISON_FILE = "comparison.png"


def write_report(
    rows: pd.DataFrame,
    plan: SweepPlan,
    sweep_dir: Path,
    name: str,
    best_settings_path: Path | None,
    levels: tuple[float, ...] = (),
    pool_below: float = DEFAULT_POOL_BELOW,
) -> tuple[list[Path], dict[str, float], SweepTable | None]:
    """Print and write the table (or the best search settings) with its pooled rows over the levels at or below
    `pool_below`; returns the parent run's artifacts and metrics, and the table (None for a search)."""
    spec = plan.spec
    artifacts: list[Path] = []
    table = None
    rows_path = sweep_dir / CYCLES_FILE
    rows.to_csv(rows_path, index=False)
    artifacts.append(rows_path)
    if plan.search is not None:
        artifacts += write_best_settings(rows, plan, best_settings_path or sweep_dir / "best_hparams.json", sweep_dir)
    else:
        table = spec.table(rows, plan) if spec.table else build_table(rows, plan, pool_below)
        # The weights-remaining table has a column per level: print (and typeset) a terminal's width of them.
        shown = None if spec.table else table.columns_to_show(levels, PRINTED_LEVELS, pool_below)
        hidden = len(table.cells.columns) - len(shown or table.cells.columns)
        more = f"\n({hidden} more levels in {sweep_dir / name}.md; choose with --levels)" if hidden else ""
        note = f"\n{table.note}" if table.note else ""
        pooled = table.pooled_markdown()
        pooled = f"\nPooled high-sparsity rows (the paper's claim)\n\n{pooled}\n" if pooled else ""
        print(f"\n{table.title}\n\n{table.to_markdown(shown)}\n{note}{more}\n{pooled}")
        artifacts += table.write(sweep_dir, name, shown)
    artifacts += draw_comparison(rows, plan, sweep_dir)
    print(f"results in {sweep_dir}")
    finished = rows["trial"].nunique() if not rows.empty else 0
    return artifacts, {"trials": plan.trial_count, "trials_finished": finished}, table


def draw_comparison(rows: pd.DataFrame, plan: SweepPlan, folder: Path) -> list[Path]:
    """The sweep's figure as `comparison.png` (the report embeds it) and `.pdf` (for papers); none without rows."""
    if rows.empty:
        return []
    figure = (plan.spec.figure or plots.comparison_figure)(rows, plan.spec.title)
    return [Path(p) for p in plots.save(figure, str(folder / COMPARISON_FILE), vector=True)]


def best_points(rows: pd.DataFrame, plan: SweepPlan) -> pd.DataFrame:
    """Per group, the point with the highest mean final validation accuracy over its seeds, among points whose
    every seed ran every cycle (a point ASHA stopped on any seed is out). Test accuracy is reported, not used."""
    assert plan.search is not None
    axes = list(plan.search.axes)
    if rows.empty or "val_acc" not in rows:
        return pd.DataFrame()
    finals = rows.sort_values("cycle").groupby("trial").tail(1)
    complete = finals[finals["cycle"] == finals["final_cycle"]]
    by_point = complete.groupby(["group", *axes], sort=False).agg(
        val_acc=("val_acc", "mean"), test_acc=("test_acc", "mean"), seeds=("seed", "nunique"), trial=("trial", "first")
    )
    by_point = by_point[by_point["seeds"] == plan.seeds].reset_index()
    if by_point.empty:
        return by_point
    best = by_point.loc[by_point.groupby("group", sort=False)["val_acc"].idxmax()]
    points_per_group = by_point.groupby("group").size()
    return best.assign(complete_points=best["group"].map(points_per_group).to_numpy())


def write_best_settings(rows: pd.DataFrame, plan: SweepPlan, path: Path, sweep_dir: Path) -> list[Path]:
    """The best point per (network, pruning method) as the `--hparams` file, plus a CSV summary."""
    assert plan.search is not None
    axes = list(plan.search.axes)
    best = best_points(rows, plan)
    settings: TunedSettings = {}
    summary = []
    for row in best.itertuples(index=False):
        group = plan.search_group(row.group)
        point = {k: getattr(row, k) for k in axes}
        point = {k: v.item() if hasattr(v, "item") else v for k, v in point.items()}
        settings.setdefault(group.base.model, {})[group.base.pruning.method] = point
        summary.append(
            {
                "trial": row.trial,
                **group.labels,
                **point,
                "val_acc": float(row.val_acc),
                "test_acc": float(row.test_acc),
                "seeds": plan.seeds,
                "complete_points": int(row.complete_points),
            }
        )
    write_hparams(path, settings)
    summary_path = sweep_dir / "best_hparams.csv"
    pd.DataFrame(summary).to_csv(summary_path, index=False)
    print(pd.DataFrame(summary).to_markdown(index=False) if summary else "no point completed every cycle on every seed")
    print(f"best settings written to {path} (use: --hparams {path})")
    return [path, summary_path]
