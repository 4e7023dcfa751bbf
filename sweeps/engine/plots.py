"""Figures for trials (child runs) and sweeps (parent run); matplotlib's Agg backend, no display needed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

PERCENT_TICKS = (100, 50, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1)


def _percent_axis(ax: plt.Axes, label: str) -> None:
    """A "% remaining" x axis on a log scale, densest on the left, as pruning papers draw it."""
    ax.set_xscale("log")
    low, high = ax.get_xlim()
    ticks = [t for t in PERCENT_TICKS if low <= t <= high]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlim(high, low)
    ax.set_xlabel(label)
    ax.grid(True, which="both", alpha=0.3)


def _accuracy_axes(ax: plt.Axes) -> None:
    _percent_axis(ax, "weights remaining (%)")
    ax.set_ylabel("test accuracy (%)")


def trial_accuracy_figure(cycles: pd.DataFrame, title: str) -> Figure:
    """Test accuracy vs weights remaining of one trial."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(cycles["weights_remaining"], cycles["test_acc"], marker="o")
    _accuracy_axes(ax)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def trial_dnr_figure(cycles: pd.DataFrame, title: str) -> Figure:
    """Dynamic dead-neuron rate per cycle: all layers (thick) and each ReLU layer."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for column in sorted(c for c in cycles.columns if c.startswith("dnr/")):
        ax.plot(cycles["cycle"], cycles[column], alpha=0.5, label=column.removeprefix("dnr/"))
    ax.plot(cycles["cycle"], cycles["dnr"], color="black", linewidth=2.5, label="all layers")
    ax.set_xlabel("pruning cycle")
    ax.set_ylabel("dynamic DNR")
    ax.set_title(title)
    ax.legend(fontsize="x-small", ncol=2)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


MARKERS = ("o", "s", "^", "D", "v", "P", "X")
LINESTYLES = ("-", "--", "-.", ":")


def variant_styles(variants: list[str]) -> dict[str, dict[str, object]]:
    """One colour, marker and line style per variant, by its declared order: the same in every panel and plot,
    however the trials finished. The baseline (first) is black and drawn on top, so an identical curve (the
    ablation's 'magnitude/all' equals 'no AP') cannot hide it."""
    styles: dict[str, dict[str, object]] = {}
    for i, variant in enumerate(variants):
        color = "black" if i == 0 else f"C{i - 1}"
        linestyle = "--" if i == 0 else LINESTYLES[(i - 1) % len(LINESTYLES)]
        styles[variant] = {"color": color, "marker": MARKERS[i % len(MARKERS)], "linestyle": linestyle}
        styles[variant]["zorder"] = 10 if i == 0 else 2
    return styles


def comparison_figure(rows: pd.DataFrame, title: str) -> Figure:
    """Per dataset/network/method: test accuracy and dynamic DNR against weights remaining, one line per variant.

    `rows` has one row per (trial, cycle) with the table labels, `level`, `test_acc` and `dnr`, in the sweep's
    declared order (report.collect keeps it). Lines are the mean over seeds; bands are ±1 std over them, the
    spread the table's cells show (mean ± std).
    """
    variants = list(dict.fromkeys(rows["variant"]))
    styles = variant_styles(variants)
    panels = list(rows.groupby(["dataset", "network", "method"], sort=False))
    fig, axes = plt.subplots(len(panels), 2, figsize=(12, 3.8 * len(panels) + 0.8), squeeze=False)
    for (keys, panel), row in zip(panels, axes, strict=True):
        for variant in variants:
            runs = panel[panel["variant"] == variant]
            if runs.empty:
                continue
            for ax, measure in zip(row, ("test_acc", "dnr"), strict=True):
                stats = runs.groupby("level")[measure].agg(["mean", "std"]).sort_index(ascending=False)
                ax.plot(stats.index, stats["mean"], label=variant, markersize=4, **styles[variant])
                ax.fill_between(
                    stats.index,
                    stats["mean"] - stats["std"].fillna(0),
                    stats["mean"] + stats["std"].fillna(0),
                    color=styles[variant]["color"],
                    alpha=0.12 if len(variants) > 2 else 0.2,
                    zorder=1,
                )
        for ax, ylabel in zip(row, ("test accuracy (%)", "dynamic DNR"), strict=True):
            _percent_axis(ax, "weights remaining (%)")
            ax.set_ylabel(ylabel)
            ax.set_title(" / ".join(map(str, keys)))
    seeds = rows.groupby("variant")["seed"].nunique().max() if "seed" in rows else 1
    handles, labels = axes[0][0].get_legend_handles_labels()
    # One legend for the figure, below the panels, so it never covers a curve.
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), frameon=False)
    fig.suptitle(f"{textwrap.fill(title, 100)}\n{spread_label(seeds, 'bands')}")
    fig.tight_layout(rect=(0, 0.8 / (3.8 * len(panels) + 0.8), 1, 1))
    return fig


def spread_label(seeds: int, drawn_as: str) -> str:
    """How every sweep plot states its spread (`drawn_as`: bands, error bars): the tables' cells' measure,
    mean ± std over the seeds."""
    if seeds < 2:
        return "one seed: no spread drawn"
    return f"lines: mean over {seeds} seeds; {drawn_as}: ±1 std over the seeds (as the tables' cells: mean ± std)"


def accuracy_vs_params_figure(finals: pd.DataFrame, title: str) -> Figure:
    """Per dataset/network/method: final test accuracy and dynamic DNR against parameters remaining, one point per
    setting (channel ratio, lambda), one line per variant; error bars are the std over seeds."""
    panels = list(finals.groupby(["dataset", "network", "method"], sort=False))
    variants = list(dict.fromkeys(finals["variant"]))
    styles = variant_styles(variants)
    fig, axes = plt.subplots(len(panels), 2, figsize=(12, 4.2 * len(panels) + 0.8), squeeze=False)
    for (keys, panel), row in zip(panels, axes, strict=True):
        for variant, runs in panel.groupby("variant", sort=False):
            points = runs.groupby("setting", sort=False)[["params_remaining", "test_acc", "dnr"]].agg(["mean", "std"])
            points = points.sort_values(("params_remaining", "mean"), ascending=False)
            for ax, measure in zip(row, ("test_acc", "dnr"), strict=True):
                ax.errorbar(
                    points[("params_remaining", "mean")],
                    points[(measure, "mean")],
                    xerr=points[("params_remaining", "std")].fillna(0),
                    yerr=points[(measure, "std")].fillna(0),
                    capsize=3,
                    label=variant,
                    **styles[variant],
                )
                # Labels above the baseline's points and below the others', so two variants' labels never meet.
                offset = (4, 6) if variant == variants[0] else (4, -12)
                for setting, values in points.iterrows():
                    ax.annotate(
                        str(setting),
                        (values[("params_remaining", "mean")], values[(measure, "mean")]),
                        textcoords="offset points",
                        xytext=offset,
                        fontsize="x-small",
                        color=styles[variant]["color"],
                    )
        for ax, ylabel in zip(row, ("test accuracy (%)", "dynamic DNR, last epoch"), strict=True):
            _percent_axis(ax, "parameters remaining (%)")
            ax.set_ylabel(ylabel)
            ax.set_title(" / ".join(map(str, keys)))
    seeds = int(finals.groupby("variant")["seed"].nunique().max()) if "seed" in finals else 1
    handles, labels = axes[0][0].get_legend_handles_labels()
    # One legend for the figure, below the panels, as in comparison_figure: it stays put whatever the panel.
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), frameon=False)
    fig.suptitle(f"{textwrap.fill(title, 90)}\n{spread_label(seeds, 'error bars')}")
    fig.tight_layout(rect=(0, 0.8 / (4.2 * len(panels) + 0.8), 1, 1))
    return fig


def save(fig: Figure, path: str, vector: bool = False) -> list[str]:
    """Write the figure as PNG (and, with `vector`, as PDF beside it, for papers); returns the paths."""
    paths = [path]
    fig.savefig(path, dpi=100)
    if vector:
        paths.append(str(Path(path).with_suffix(".pdf")))
        fig.savefig(paths[-1])
    plt.close(fig)
    return paths
