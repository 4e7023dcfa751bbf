"""The paper-style table: test accuracy mean +- std over seeds per weights-remaining level, with Delta rows.

Input is one row per (trial, cycle) of the finished trials; a failed or missing trial simply contributes no
rows, and a cell with no data prints as MISSING rather than breaking the table. A Delta row pairs each variant's
run with the baseline's run of the same seed (same initialisation and data order) and shows the mean paired
difference with its 95% confidence interval.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from sweeps.engine.spec import SweepPlan

MISSING = "—"
GROUP_KEYS = ["dataset", "network", "method"]
# Columns of the printed table (files keep every level): enough to read the trend, narrow enough for a terminal.
PRINTED_LEVELS = 7
DELTA_NOTE = (
    "Δ rows: mean of the paired differences (same seed: same initialisation and data order) ± the half-width of "
    "their 95% confidence interval (Student's t, n−1 degrees of freedom); * marks an interval that excludes 0; "
    "(n=k) marks cells with fewer seeds than planned."
)


@dataclass(frozen=True)
class SweepTable:
    """`cells`: the formatted table as printed; `values`: its numbers in long form (one row per cell)."""

    title: str
    cells: pd.DataFrame
    values: pd.DataFrame
    note: str = ""
    # Per column, the row labels of its best cell (bold in LaTeX); empty for tables without a best.
    best: dict[str, list[tuple[str, ...]]] | None = None

    def columns_to_show(self, levels: tuple[float, ...] = (), limit: int = 0) -> list[str]:
        """The columns of the chosen levels (`levels`), or at most `limit` spread evenly (0: all)."""
        columns = list(self.cells.columns)
        if levels:
            wanted = {f"{level:.1f}" for level in levels}
            unknown = sorted(wanted - set(columns))
            if unknown:
                raise ValueError(f"level {unknown[0]} is not a column of this table; valid: {', '.join(columns)}")
            return [c for c in columns if c in wanted]
        if not limit or len(columns) <= limit:
            return columns
        step = (len(columns) - 1) / (limit - 1)
        return [columns[round(i * step)] for i in range(limit)]

    def to_markdown(self, columns: list[str] | None = None) -> str:
        cells = self.cells[columns] if columns else self.cells
        return cells.reset_index().to_markdown(index=False, stralign="right", disable_numparse=True)

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
        """Write `<stem>.csv`, `.md`, `.tex` and the long-form `<stem>_values.csv`; returns the paths.

        The CSV and Markdown files hold every column; the LaTeX table the `shown` ones (a page is narrow).
        """
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / f"{stem}{suffix}" for suffix in (".csv", ".md", ".tex", "_values.csv")]
        self.cells.to_csv(paths[0])
        note = f"\n{self.note}\n" if self.note else ""
        paths[1].write_text(f"{self.title}\n\n{self.to_markdown()}\n{note}")
        paths[2].write_text(self.to_latex(shown))
        self.values.to_csv(paths[3], index=False)
        return paths


def expected_levels(plan: SweepPlan) -> list[float]:
    """The nominal weights-remaining levels, 100 (1-p)^k for k = 0..cycles, rounded as table columns."""
    levels = {round(100 * (1 - t.config.prune_rate) ** k, 1) for t in plan.trials for k in range(t.config.cycles + 1)}
    return sorted(levels, reverse=True)


def build_table(rows: pd.DataFrame, plan: SweepPlan) -> SweepTable:
    """Pivot finished trials' cycles into the table; every (dataset, network, method, variant) gets a row."""
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
    best: dict[str, list[tuple[str, ...]]] = {}
    for group in dict.fromkeys(c[:3] for c in combos):
        present = [v for v in variants if (*group, v) in combos]
        for variant in present:
            table[(*group, variant)] = [
                format_cell(lookup.get((*group, variant, level)), plan.seeds) for level in levels
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
                row.append(format_paired_delta(delta, plan.seeds))
                if delta is not None:
                    keys = dict(zip(GROUP_KEYS, group, strict=True))
                    deltas.append({**keys, "variant": f"Δ({variant})", "level": level, "mean": delta[0]})
                    deltas[-1].update(ci95=delta[1], n=delta[2])
            table[(*group, f"Δ({variant})")] = row
    index = pd.MultiIndex.from_tuples(list(table), names=[*GROUP_KEYS, "variant"])
    cells = pd.DataFrame(list(table.values()), index=index, columns=[f"{level:.1f}" for level in levels])
    if len({c[0] for c in combos}) == 1:
        cells = cells.droplevel("dataset")
        best = {column: [key[1:] for key in keys] for column, keys in best.items()}
    cells.columns.name = "weights remaining (%)"
    title = (
        f"{plan.spec.title} — test accuracy (%), mean ± std over {plan.seeds} seed{'s' if plan.seeds > 1 else ''} "
        f"[{plan.spec.name}, preset {plan.preset_name}]"
    )
    note = " ".join(n for n in (DELTA_NOTE, ap_scope_note(plan), plan.spec.note) if n)
    values = pd.concat([stats, pd.DataFrame(deltas)], ignore_index=True) if deltas else stats
    return SweepTable(title, cells, values, note, best)


def ap_scope_note(plan: SweepPlan) -> str:
    """Which AP scope the table's AP runs used: a global pick moves pruning between layers, a layer pick does not."""
    scopes = sorted({t.config.ap_scope for t in plan.trials if t.config.ap})
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


def paired_delta(
    variant: dict[int, float] | None, baseline: dict[int, float] | None
) -> tuple[float, float, int] | None:
    """(mean difference, 95% CI half-width, n) over the seeds both ran; the half-width is nan for n < 2."""
    seeds = sorted(set(variant or {}) & set(baseline or {}))
    if not seeds:
        return None
    assert variant is not None and baseline is not None
    diffs = pd.Series([variant[s] - baseline[s] for s in seeds])
    if len(diffs) < 2:
        return float(diffs.iloc[0]), float("nan"), 1
    from scipy import stats  # a second to import: only when a table is built

    half = float(stats.t.ppf(0.975, len(diffs) - 1) * diffs.std() / len(diffs) ** 0.5)
    return float(diffs.mean()), half, len(diffs)


def format_paired_delta(delta: tuple[float, float, int] | None, seeds: int) -> str:
    """`+1.20 ± 0.45*` (* when the interval excludes 0), marked `(n=k)` when fewer than `seeds` pairs made it."""
    if delta is None:
        return MISSING
    mean, half, n = delta
    text = f"{mean + 0.0:+.2f}".replace("-0.00", "+0.00")
    if n >= 2:
        text += f" ± {half:.2f}" + ("*" if abs(mean) > half else "")
    return text if n >= seeds else f"{text} (n={n})"


def format_cell(stat: tuple[float, float, int] | None, seeds: int) -> str:
    """`mean ± std` of (mean, std, n), marked `(n=k)` when fewer than `seeds` values made it."""
    if stat is None:
        return MISSING
    mean, std, n = stat
    text = f"{mean:.2f}" if n < 2 else f"{mean:.2f} ± {std:.2f}"
    return text if n >= seeds else f"{text} (n={n})"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.split(" — ")[0].lower()).strip("-")
