"""Figures for trials (child runs) and sweeps (parent run); matplotlib's Agg backend, no display needed."""

from __future__ import annotations

import textwrap

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


def comparison_figure(rows: pd.DataFrame, title: str) -> Figure:
    """Per dataset/network/method: mean +- std test accuracy vs weights remaining, and DNR per cycle, per variant.

    `rows` has one row per (trial, cycle) with the table labels, `level`, `test_acc` and `dnr`.
    """
    panels = list(rows.groupby(["dataset", "network", "method"], sort=False))
    fig, axes = plt.subplots(len(panels), 2, figsize=(11, 3.8 * len(panels)), squeeze=False)
    for (keys, panel), (acc_ax, dnr_ax) in zip(panels, axes, strict=True):
        for variant, runs in panel.groupby("variant", sort=False):
            acc = runs.groupby("level")["test_acc"].agg(["mean", "std"]).sort_index(ascending=False)
            line = acc_ax.plot(acc.index, acc["mean"], marker="o", label=variant)[0]
            acc_ax.fill_between(
                acc.index,
                acc["mean"] - acc["std"].fillna(0),
                acc["mean"] + acc["std"].fillna(0),
                color=line.get_color(),
                alpha=0.2,
            )
            dnr = runs.groupby("cycle")["dnr"].mean()
            dnr_ax.plot(dnr.index, dnr.values, marker="o", label=variant)
        _accuracy_axes(acc_ax)
        acc_ax.set_title(" / ".join(map(str, keys)))
        acc_ax.legend()
        dnr_ax.set_xlabel("pruning cycle")
        dnr_ax.set_ylabel("dynamic DNR (mean over seeds)")
        dnr_ax.set_title(" / ".join(map(str, keys)))
        dnr_ax.grid(True, alpha=0.3)
        dnr_ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def accuracy_vs_params_figure(finals: pd.DataFrame, title: str) -> Figure:
    """Per dataset/network/method: final test accuracy and dynamic DNR against parameters remaining, one point per
    setting (channel ratio, lambda), one line per variant; error bars are the std over seeds."""
    panels = list(finals.groupby(["dataset", "network", "method"], sort=False))
    colors = {variant: f"C{i}" for i, variant in enumerate(dict.fromkeys(finals["variant"]))}
    fig, axes = plt.subplots(len(panels), 2, figsize=(12, 4.2 * len(panels)), squeeze=False)
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
                    marker="o",
                    capsize=3,
                    color=colors[variant],
                    label=variant,
                )
                for setting, values in points.iterrows():
                    ax.annotate(
                        str(setting),
                        (values[("params_remaining", "mean")], values[(measure, "mean")]),
                        textcoords="offset points",
                        xytext=(4, 4),
                        fontsize="x-small",
                        color=colors[variant],
                    )
        for ax, ylabel in zip(row, ("test accuracy (%)", "dynamic DNR, last epoch"), strict=True):
            _percent_axis(ax, "parameters remaining (%)")
            ax.set_ylabel(ylabel)
            ax.set_title(" / ".join(map(str, keys)))
            ax.legend()
    fig.suptitle(textwrap.fill(title, 90))
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    return fig


def save(fig: Figure, path: str) -> None:
    fig.savefig(path, dpi=100)
    plt.close(fig)
