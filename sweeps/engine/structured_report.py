"""Tables and the plot of the channel-pruning sweeps, whose results read by channel ratio or lambda rather than by
weights remaining.

Rows are the per-(trial, cycle) frame the driver collects: table labels (dataset, network, method, variant,
setting, seed) plus `cycle`, `test_acc`, `params_remaining`, `channels_remaining` and `flops_remaining`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from sweeps.engine import plots
from sweeps.engine.result_table import MISSING, SweepTable, values_by_seed
from sweeps.engine.spec import SweepPlan
from sweeps.engine.stats import DELTA_NOTE, format_cell, format_delta, paired_delta

REFERENCE = Path(__file__).resolve().parents[1] / "reference" / "rni_results.csv"
ROW_KEYS = ["dataset", "network", "method", "variant"]
# Table labels of the methods -> their names in the reference file.
REFERENCE_METHODS = {"NS": "network_slimming", "RNI": "rni"}


def final_cycles(rows: pd.DataFrame, plan: SweepPlan) -> pd.DataFrame:
    """The last cycle of each trial that ran all its cycles (an unfinished trial has no pruned result)."""
    if rows.empty:
        return rows
    planned = {t.name: t.config.pruning.cycles for t in plan.trials}
    return rows[rows["cycle"] == rows["trial"].map(planned)]


def dense_cycles(rows: pd.DataFrame) -> pd.DataFrame:
    """Cycle 0 once per (row, seed): it does not depend on the ratio, lambda or AP, so each seed counts once."""
    if rows.empty:
        return rows
    return rows[rows["cycle"] == 0].drop_duplicates([*ROW_KEYS[:3], "seed"])


def _stats(frame: pd.DataFrame, keys: list[str], column: str) -> dict[tuple, tuple[float, float, int]]:
    if frame.empty:
        return {}
    grouped = frame.groupby(keys)[column].agg(["mean", "std", "count"])
    return {
        key if isinstance(key, tuple) else (key,): (float(mean), float(std), int(n))
        for key, mean, std, n in grouped.itertuples(name=None)
    }


def _setting_ratio(plan: SweepPlan) -> dict[str, float]:
    """Each setting's channel ratio, in the plan's order."""
    return {t.labels["setting"]: t.config.pruning.method_options["channel_ratio"] for t in plan.trials}


def _reference() -> pd.DataFrame:
    return pd.read_csv(REFERENCE).set_index(["dataset", "network", "method"])


def structured_table(rows: pd.DataFrame, plan: SweepPlan) -> SweepTable:
    """RNI's comparison: accuracy dense and after pruning each share of channels, parameters left, the paper's numbers.

    `dense` is cycle 0 (trained with the method's regulariser), once per seed; each ratio column is the last cycle,
    after removal and fine-tuning, of the trials that finished. `ref` columns are the authors' single runs (no AP).
    """
    ratios = _setting_ratio(plan)
    seeds = plan.seeds
    finals = final_cycles(rows, plan)
    dense = _stats(dense_cycles(rows), ROW_KEYS[:3], "test_acc")
    acc = _stats(finals, [*ROW_KEYS, "setting"], "test_acc")
    params = _stats(finals, [*ROW_KEYS, "setting"], "params_remaining")
    by_seed = values_by_seed(finals, [*ROW_KEYS, "setting"])
    reference = _reference()
    variants = [v.label for v in plan.spec.variants]
    combos = list(dict.fromkeys(tuple(t.labels[k] for k in ROW_KEYS) for t in plan.trials))
    # `ref` columns only where the paper ran one of these networks (the smoke preset's digits: none).
    with_reference = any((c[0], c[1], REFERENCE_METHODS.get(c[2], "")) in reference.index for c in combos)
    columns = ["dense"]
    for label in ratios:
        columns += [f"{label} pruned: acc", f"{label} pruned: params %"]
    if with_reference:
        columns += ["ref dense", *(f"ref {label} pruned" for label in ratios)]

    table: dict[tuple, list[str]] = {}
    for combo in combos:
        dataset, network, method, variant = combo
        ref_key = (dataset, network, REFERENCE_METHODS.get(method, ""))
        has_ref = variant == variants[0] and ref_key in reference.index
        cells = [format_cell(dense.get(combo[:3]), seeds, MISSING)]
        for label in ratios:
            cells += [format_cell(acc.get((*combo, label)), seeds, MISSING), _mean(params.get((*combo, label)))]
        if with_reference:
            cells.append(f"{reference.loc[ref_key, 'dense']:.2f}" if has_ref else MISSING)
            for ratio in ratios.values():
                column = f"pruned_{round(100 * ratio)}pct_channels"
                has_column = has_ref and column in reference.columns
                cells.append(f"{reference.loc[ref_key, column]:.2f}" if has_column else MISSING)
        table[combo] = cells
        if variant != variants[0] and (*combo[:3], variants[0]) in table:
            base = (*combo[:3], variants[0])
            deltas = [""]  # the dense net is trained the same way with or without AP
            for label in ratios:
                delta = paired_delta(by_seed.get((*combo, label)), by_seed.get((*base, label)))
                deltas += [format_delta(delta, seeds, MISSING), ""]
            table[(*combo[:3], f"Δ({variant})")] = deltas + [""] * (len(columns) - len(deltas))
    title = (
        f"{plan.spec.title} — test accuracy (%), mean ± std over {seeds} seeds, and parameters remaining "
        f"[{plan.spec.name}, preset {plan.preset_name}]"
    )
    values = pd.concat(
        [
            _long(dense, ROW_KEYS[:3], "dense_acc"),
            _long(acc, [*ROW_KEYS, "setting"], "final_acc"),
            _long(params, [*ROW_KEYS, "setting"], "params_remaining"),
        ],
        ignore_index=True,
    )
    return SweepTable(title, _frame(table, columns, combos), values, DELTA_NOTE)


def demp_table(rows: pd.DataFrame, plan: SweepPlan) -> SweepTable:
    """DemP's curve as a table: per lambda, accuracy after DemP's run (cycle 0) and at the end, and what is left."""
    seeds = plan.seeds
    finals = final_cycles(rows, plan)
    # Lambda before variant, so AP and no AP of one lambda sit on adjacent rows.
    keys = ["dataset", "network", "method", "setting", "variant"]
    demp_run = _stats(rows[rows["cycle"] == 0] if not rows.empty else rows, keys, "test_acc")
    stats = {
        column: _stats(finals, keys, column)
        for column in ("test_acc", "params_remaining", "channels_remaining", "flops_remaining")
    }
    columns = ["acc after DemP", "final acc", "params %", "channels %", "FLOPs %"]
    # The order the sweep declares its settings in.
    position = {setting: i for i, setting in enumerate(dict.fromkeys(t.labels["setting"] for t in plan.trials))}
    combos = sorted(
        dict.fromkeys(tuple(t.labels[k] for k in keys) for t in plan.trials),
        key=lambda c: (c[:3], position[c[3]], c[4] != plan.spec.variants[0].label),
    )
    baseline = plan.spec.variants[0].label
    by_seed = values_by_seed(finals, keys)
    table: dict[tuple, list[str]] = {}
    for combo in combos:
        table[combo] = [
            format_cell(demp_run.get(combo), seeds, MISSING),
            format_cell(stats["test_acc"].get(combo), seeds, MISSING),
            *(_mean(stats[c].get(combo)) for c in ("params_remaining", "channels_remaining", "flops_remaining")),
        ]
        if combo[4] != baseline and (*combo[:4], baseline) in table:
            # the final accuracy paired by seed with the same lambda's run without AP
            delta = paired_delta(by_seed.get(combo), by_seed.get((*combo[:4], baseline)))
            table[(*combo[:4], f"Δ({combo[4]})")] = ["", format_delta(delta, seeds, MISSING), "", "", ""]
    title = (
        f"{plan.spec.title} — test accuracy (%), mean ± std over {seeds} seeds, and what remains (mean %) "
        f"[{plan.spec.name}, preset {plan.preset_name}]"
    )
    values = pd.concat([_long(stats[c], keys, c) for c in stats], ignore_index=True)
    index_names = ["dataset", "network", "method", "lambda", "variant"]
    return SweepTable(title, _frame(table, columns, combos, index_names), values, f"{DELTA_NOTE} {DEMP_NOTE}")


# Why AP's rows can end larger: read in the results of the smoke and paper presets, and true of the mechanism.
DEMP_NOTE = (
    "With AP, DemP can end with more parameters and channels left: AP de-sparsifies the ReLUs (it keeps units "
    "firing), and DemP removes only units that are dead, so fewer die and fewer are removed."
)


def params_figure(rows: pd.DataFrame, title: str) -> Figure:
    """Accuracy and DNR against parameters remaining, one point per setting, one line per variant (AP, no AP):
    each trial's last cycle (the driver draws it only when some trial finished). The sort is stable so variants keep
    the sweep's declared order, and with it the colours and line styles of every other plot."""
    return plots.accuracy_vs_params_figure(rows.sort_values("cycle", kind="stable").groupby("trial").tail(1), title)


def _mean(stat: tuple[float, float, int] | None) -> str:
    return MISSING if stat is None else f"{stat[0]:.1f}"


def _long(stats: dict[tuple, tuple[float, float, int]], keys: list[str], measure: str) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {**dict(zip(keys, k, strict=True)), "measure": measure, "mean": m, "std": s, "n": n}
            for k, (m, s, n) in stats.items()
        ]
    )


def _frame(
    table: dict[tuple, list[str]], columns: list[str], combos: list[tuple], names: list[str] | None = None
) -> pd.DataFrame:
    index = pd.MultiIndex.from_tuples(list(table), names=names or ROW_KEYS)
    cells = pd.DataFrame(list(table.values()), index=index, columns=columns)
    if len({c[0] for c in combos}) == 1:
        cells = cells.droplevel("dataset")
    return cells
