"""The paper-style table: test accuracy mean +- std over seeds per weights-remaining level, with Delta rows.

Input is one row per (trial, cycle) of the finished trials; a failed or missing trial simply contributes no
rows, and a cell with no data prints as MISSING rather than breaking the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from sweeps.engine.spec import SweepPlan

MISSING = "—"
GROUP_KEYS = ["dataset", "network", "method"]


@dataclass(frozen=True)
class SweepTable:
    """`cells`: the formatted table as printed; `values`: its numbers in long form (one row per cell)."""

    title: str
    cells: pd.DataFrame
    values: pd.DataFrame

    def to_markdown(self) -> str:
        return self.cells.reset_index().to_markdown(index=False, stralign="right", disable_numparse=True)

    def to_latex(self) -> str:
        def tex(text: object) -> str:
            return str(text).replace("_", r"\_").replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace(MISSING, "--")

        table = self.cells.map(tex)
        table.index = table.index.map(lambda key: tuple(tex(k) for k in key))
        return table.to_latex(escape=False, caption=tex(self.title), label="tab:" + _slug(self.title))

    def write(self, folder: Path, stem: str) -> list[Path]:
        """Write `<stem>.csv`, `.md`, `.tex` and the long-form `<stem>_values.csv`; returns the paths."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / f"{stem}{suffix}" for suffix in (".csv", ".md", ".tex", "_values.csv")]
        self.cells.to_csv(paths[0])
        paths[1].write_text(f"{self.title}\n\n{self.to_markdown()}\n")
        paths[2].write_text(self.to_latex())
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
    if not rows.empty:
        stats = (
            rows.groupby([*GROUP_KEYS, "variant", "level"])["test_acc"]
            .agg(mean="mean", std="std", n="count")
            .reset_index()
        )
    levels = sorted(set(expected_levels(plan)) | set(stats["level"]), reverse=True)
    lookup = {tuple(r[:5]): (r[5], r[6], r[7]) for r in stats.itertuples(index=False, name=None)}

    table: dict[tuple[str, ...], list[str]] = {}
    for group in dict.fromkeys(c[:3] for c in combos):
        for variant in (v for v in variants if (*group, v) in combos):
            table[(*group, variant)] = [
                format_cell(lookup.get((*group, variant, level)), plan.seeds) for level in levels
            ]
        for variant in (v for v in variants[1:] if (*group, v) in combos):
            table[(*group, f"Δ({variant})")] = [
                format_delta(lookup.get((*group, variant, level)), lookup.get((*group, baseline, level)))
                for level in levels
            ]
    index = pd.MultiIndex.from_tuples(list(table), names=[*GROUP_KEYS, "variant"])
    cells = pd.DataFrame(list(table.values()), index=index, columns=[f"{level:.1f}" for level in levels])
    if len({c[0] for c in combos}) == 1:
        cells = cells.droplevel("dataset")
    cells.columns.name = "weights remaining (%)"
    title = (
        f"{plan.spec.title} — test accuracy (%), mean ± std over {plan.seeds} seeds "
        f"[{plan.spec.name}, preset {plan.preset_name}]"
    )
    return SweepTable(title, cells, stats)


def format_cell(stat: tuple[float, float, int] | None, seeds: int) -> str:
    """`mean ± std` of (mean, std, n), marked `(n=k)` when fewer than `seeds` values made it."""
    if stat is None:
        return MISSING
    mean, std, n = stat
    text = f"{mean:.2f}" if n < 2 else f"{mean:.2f} ± {std:.2f}"
    return text if n >= seeds else f"{text} (n={n})"


def format_delta(stat: tuple[float, float, int] | None, base: tuple[float, float, int] | None) -> str:
    """The difference of two cells' means, signed."""
    if stat is None or base is None:
        return MISSING
    return f"{stat[0] - base[0] + 0.0:+.2f}".replace("-0.00", "+0.00")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.split(" — ")[0].lower()).strip("-")
