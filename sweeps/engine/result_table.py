"""The paper-style table: test accuracy mean +- std over seeds per weights-remaining level, with Delta rows.

Input is one row per (trial, cycle) of the finished trials; a failed or missing trial simply contributes no
rows, and a cell with no data prints as MISSING rather than breaking the table. A Delta row pairs each variant's
run with the baseline's run of the same seed (same initialisation and data order) and shows the mean paired
difference with its 95% interval and the sign-flip test's verdict (sweeps.engine.stats). A pooled table gives, per
network and method, the per-seed mean of the paired difference over the high-sparsity levels: the paper's claim.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ap_core.errors import ConfigError
from sweeps.engine.spec import SweepPlan
from sweeps.engine.stats import (
    ALPHA,
    DELTA_NOTE,
    PairedDelta,
    delta_of,
    format_cell,
    format_delta,
    format_p,
    paired_delta,
    signed,
    smallest_p,
)

MISSING = "—"
GROUP_KEYS = ["dataset", "network", "method"]
# Columns of the printed table (files keep every level): enough to read the trend, narrow enough for a terminal.
PRINTED_LEVELS = 7
# The paper's headline level (0.8^10 of the weights): pooled rows take the levels at or below it by default, and the
# printed table always shows it.
DEFAULT_POOL_BELOW = 10.7


@dataclass(frozen=True)
class SweepTable:
    """`cells`: the formatted table as printed; `values`: its numbers in long form (one row per cell);
    `pooled`: the formatted pooled high-sparsity rows (None for tables without them)."""

    title: str
    cells: pd.DataFrame
    values: pd.DataFrame
    note: str = ""
    # Per column, the row labels of its best cell (bold in LaTeX); empty for tables without a best.
    best: dict[str, list[tuple[str, ...]]] | None = None
    pooled: pd.DataFrame | None = None
    pooled_note: str = ""

    def columns_to_show(
        self, levels: tuple[float, ...] = (), limit: int = 0, headline: float = DEFAULT_POOL_BELOW
    ) -> list[str]:
        """The columns nearest the chosen levels (`levels`), or at most `limit` spread evenly (0: all), always with
        the column nearest the `headline` level among them."""
        columns = list(self.cells.columns)
        if levels:
            wanted = {f"{level:.1f}" for level in nearest_levels(levels, [float(c) for c in columns])}
            return [c for c in columns if c in wanted]
        if not limit or len(columns) <= limit:
            return columns
        step = (len(columns) - 1) / (limit - 1)
        chosen = [columns[round(i * step)] for i in range(limit)]
        nearest = min(columns, key=lambda column: abs(float(column) - headline))
        inner = chosen[1:-1]  # the ends stay: they show the range
        if nearest not in chosen and inner:
            chosen[chosen.index(min(inner, key=lambda column: abs(float(column) - float(nearest))))] = nearest
        return [column for column in columns if column in chosen]

    def to_markdown(self, columns: list[str] | None = None) -> str:
        cells = self.cells[columns] if columns else self.cells
        return cells.reset_index().to_markdown(index=False, stralign="right", disable_numparse=True)

    def pooled_markdown(self) -> str:
        """The pooled rows with their note, or "" for a table without them."""
        if self.pooled is None or self.pooled.empty:
            return ""
        text = self.pooled.reset_index().to_markdown(index=False, stralign="right", disable_numparse=True)
        return f"{text}\n\n{self.pooled_note}"

    def to_latex(self, columns: list[str] | None = None) -> str:
        """A booktabs table (needs `\\usepackage{booktabs,multirow}`), best cell per column in bold."""

        def tex(text: object) -> str:
            return str(text).replace("_", r"\_").replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace(MISSING, "--")

        cells = self.cells[columns] if columns else self.cells
        table = cells.map(tex)
        for column, keys in (self.best or {}).items():
            for key in keys:
                if column in table.columns:
                    table.loc[key, column] = r"\textbf{" + table.loc[key, column] + "}"
        table.index = table.index.map(lambda key: tuple(tex(k) for k in key))
        caption = tex(re.sub(r"^Table \d+:\s*", "", self.title))  # LaTeX numbers the table itself
        latex = table.to_latex(escape=False, caption=caption, label="tab:" + _slug(self.title), multirow=True)
        # pandas closes the last multirow groups with \clines right before \bottomrule: drop them.
        latex = re.sub(r"(?:\\cline\{[^}]*\}\s*)+(\\bottomrule)", r"\1", latex)
        header = "% needs \\usepackage{booktabs,multirow}\n"
        return header + (latex if not self.note else latex.replace(r"\end{table}", f"{tex(self.note)}\n\\end{{table}}"))

    def write(self, folder: Path, stem: str, shown: list[str] | None = None) -> list[Path]:
        """Write `<stem>.csv`, `.md`, `.tex`, the long-form `<stem>_values.csv` and, with pooled rows,
        `<stem>_pooled.csv`; returns the paths.

        The CSV and Markdown files hold every column; the LaTeX table the `shown` ones (a page is narrow).
        """
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / f"{stem}{suffix}" for suffix in (".csv", ".md", ".tex", "_values.csv")]
        self.cells.to_csv(paths[0])
        note = f"\n{self.note}\n" if self.note else ""
        pooled = self.pooled_markdown()
        pooled = f"\nPooled high-sparsity rows\n\n{pooled}\n" if pooled else ""
        paths[1].write_text(f"{self.title}\n\n{self.to_markdown()}\n{note}{pooled}")
        paths[2].write_text(self.to_latex(shown))
        self.values.to_csv(paths[3], index=False)
        if self.pooled is not None and not self.pooled.empty:
            paths.append(folder / f"{stem}_pooled.csv")
            self.pooled.to_csv(paths[-1])
        return paths


def nearest_levels(wanted: tuple[float, ...], valid: list[float], say: bool = False) -> list[float]:
    """Each wanted level's nearest valid one (`--levels 10` shows 10.7); with `say`, one line per level that moved.
    A level outside (0, 100] is a ConfigError naming the valid ones."""
    chosen = []
    for level in wanted:
        if not 0 < level <= 100:
            raise ConfigError(
                f"--levels {level:g} is not a % of weights remaining; valid: {', '.join(map(str, valid))}"
            )
        nearest = min(valid, key=lambda candidate: abs(candidate - level))
        if say and round(level, 1) != nearest:
            print(f"--levels {level:g}: showing {nearest}, the nearest level of this sweep")
        chosen.append(nearest)
    return chosen


def expected_levels(plan: SweepPlan) -> list[float]:
    """The nominal weights-remaining levels, 100 (1-p)^k for k = 0..cycles, rounded as table columns."""
    levels = {
        round(100 * (1 - t.config.pruning.prune_rate) ** k, 1)
        for t in plan.trials
        for k in range(t.config.pruning.cycles + 1)
    }
    return sorted(levels, reverse=True)


def build_table(rows: pd.DataFrame, plan: SweepPlan, pool_below: float = DEFAULT_POOL_BELOW) -> SweepTable:
    """Pivot finished trials' cycles into the table; every (dataset, network, method, variant) gets a row, every
    AP variant a Δ row and a pooled row over the levels at or below `pool_below` (% weights remaining)."""
    variants = [v.label for v in plan.spec.variants]
    baseline = variants[0]
    combos = list(dict.fromkeys(tuple(t.labels[k] for k in [*GROUP_KEYS, "variant"]) for t in plan.trials))
    stats = pd.DataFrame(columns=[*GROUP_KEYS, "variant", "level", "mean", "std", "n"])
    by_seed = values_by_seed(rows, [*GROUP_KEYS, "variant", "level"])
    if not rows.empty:
        stats = (
            rows.groupby([*GROUP_KEYS, "variant", "level"])["test_acc"]
            .agg(mean="mean", std="std", n="count")
            .reset_index()
        )
    levels = sorted(set(expected_levels(plan)) | set(stats["level"]), reverse=True)
    lookup = {tuple(r[:5]): (r[5], r[6], r[7]) for r in stats.itertuples(index=False, name=None)}

    table: dict[tuple[str, ...], list[str]] = {}
    deltas = []
    pooled: dict[tuple[str, ...], list[str]] = {}
    best: dict[str, list[tuple[str, ...]]] = {}
    for group in dict.fromkeys(c[:3] for c in combos):
        present = [v for v in variants if (*group, v) in combos]
        for variant in present:
            table[(*group, variant)] = [
                format_cell(lookup.get((*group, variant, level)), plan.seeds, MISSING) for level in levels
            ]
        for level in levels:
            means = {v: lookup[(*group, v, level)][0] for v in present if (*group, v, level) in lookup}
            if len(means) > 1:
                top = max(means.values())
                best.setdefault(f"{level:.1f}", []).extend((*group, v) for v, m in means.items() if m == top)
        for variant in present[1:]:
            row = []
            for level in levels:
                delta = paired_delta(by_seed.get((*group, variant, level)), by_seed.get((*group, baseline, level)))
                row.append(format_delta(delta, plan.seeds, MISSING))
                if delta is not None:
                    keys = dict(zip(GROUP_KEYS, group, strict=True))
                    deltas.append({**keys, "variant": f"Δ({variant})", "level": level, **_delta_values(delta)})
            table[(*group, f"Δ({variant})")] = row
            # columns are rounded to 0.1: `--pool-below 10.7` takes the 10.7 column (10.737...)
            pooled_levels = [level for level in levels if level <= pool_below + 0.05]
            delta = pooled_delta(by_seed, (*group, variant), (*group, baseline), pooled_levels)
            pooled[(*group, f"Δ({variant})")] = format_pooled(delta, pooled_levels)
            if delta is not None:
                keys = dict(zip(GROUP_KEYS, group, strict=True))
                deltas.append({**keys, "variant": f"Δ({variant}) pooled", "level": pool_below, **_delta_values(delta)})
    index = pd.MultiIndex.from_tuples(list(table), names=[*GROUP_KEYS, "variant"])
    cells = pd.DataFrame(list(table.values()), index=index, columns=[f"{level:.1f}" for level in levels])
    pooled_cells = pd.DataFrame(
        list(pooled.values()),
        index=pd.MultiIndex.from_tuples(list(pooled), names=[*GROUP_KEYS, "variant"]),
        columns=POOLED_COLUMNS,
    )
    if len({c[0] for c in combos}) == 1:
        cells = cells.droplevel("dataset")
        pooled_cells = pooled_cells.droplevel("dataset")
        best = {column: [key[1:] for key in keys] for column, keys in best.items()}
    cells.columns.name = "weights remaining (%)"
    title = (
        f"{plan.spec.title} — test accuracy (%), mean ± std over {plan.seeds} seed{'s' if plan.seeds > 1 else ''} "
        f"[{plan.spec.name}, preset {plan.preset_name}]"
    )
    note = " ".join(n for n in (DELTA_NOTE, ap_scope_note(plan), plan.spec.note) if n)
    values = pd.concat([stats, pd.DataFrame(deltas)], ignore_index=True) if deltas else stats
    return SweepTable(title, cells, values, note, best, pooled_cells, pooled_note(pool_below))


POOLED_COLUMNS = ["levels pooled (%)", "Δ mean", "95% interval", "p (sign-flip)", "n", "W/L/T"]


def pooled_delta(
    by_seed: dict[tuple, dict[int, float]], variant: tuple, baseline: tuple, levels: list[float]
) -> PairedDelta | None:
    """Per seed, the mean over `levels` of variant − baseline, over the seeds that have both at every level."""
    if not levels:
        return None
    pairs = [(by_seed.get((*variant, level), {}), by_seed.get((*baseline, level), {})) for level in levels]
    seeds = sorted(set.intersection(*(set(v) & set(b) for v, b in pairs)))
    if not seeds:
        return None
    return delta_of([sum(v[seed] - b[seed] for v, b in pairs) / len(pairs) for seed in seeds])


def format_pooled(delta: PairedDelta | None, levels: list[float]) -> list[str]:
    """One pooled row's cells (POOLED_COLUMNS); `n` says how many seeds had every pooled level."""
    span = f"{levels[0]:.1f} to {levels[-1]:.1f} ({len(levels)} levels)" if levels else "none at or below"
    if delta is None:
        return [span, MISSING, MISSING, MISSING, "0", MISSING]
    mean = signed(delta.mean) + ("*" if delta.significant else "")
    low, high = delta.interval
    interval = f"[{signed(low)}, {signed(high)}]" if math.isfinite(delta.half_width) else f"n={delta.n} too small"
    floor = smallest_p(delta.n)
    p_value = format_p(delta.p_value) + (f" (min {format_p(floor)})" if floor >= ALPHA else "")
    return [span, mean, interval, p_value, str(delta.n), f"{delta.wins}/{delta.losses}/{delta.ties}"]


def pooled_note(pool_below: float) -> str:
    return (
        f"Pooled rows: per seed, the mean over the levels at or below {pool_below:g}% weights remaining (--pool-below) "
        "of the paired difference, then the mean over seeds with its 95% Student-t interval, the exact two-sided "
        "sign-flip p (* when p < 0.05; '(min x)': the smallest p this n allows), the seeds pooled (n) and on how many "
        "seeds the variant won, lost or tied against the baseline (W/L/T)."
    )


def _delta_values(delta: PairedDelta) -> dict[str, float | int]:
    """A Δ's numbers for the long-form values file."""
    return {
        "mean": delta.mean,
        "ci95_half_width": delta.half_width,
        "p_sign_flip": delta.p_value,
        "n": delta.n,
        "wins": delta.wins,
        "losses": delta.losses,
        "ties": delta.ties,
    }


def ap_scope_note(plan: SweepPlan) -> str:
    """Which AP scope the table's AP runs used: a global pick moves pruning between layers, a layer pick does not."""
    scopes = sorted({t.config.ap.scope for t in plan.trials if t.config.ap.enabled})
    words = {"global": "across all layers (ap_scope global)", "layer": "inside each layer's share (ap_scope layer)"}
    return f"AP picked its share {' and '.join(words[s] for s in scopes)}." if scopes else ""


def values_by_seed(rows: pd.DataFrame, keys: list[str], column: str = "test_acc") -> dict[tuple, dict[int, float]]:
    """Per group of `keys`, each seed's value: what `paired_delta` pairs."""
    if rows.empty:
        return {}
    return {
        key if isinstance(key, tuple) else (key,): dict(zip(group["seed"], group[column], strict=True))
        for key, group in rows.groupby(keys)
    }


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.split(" — ")[0].lower()).strip("-")
