"""What the parent MLflow run shows: the protocol as params, the headline results as metrics, the table itself.

Opening a sweep's parent run in the MLflow UI should answer "does AP help here?" without downloading a PNG:
per (network, method, variant) the mean test accuracy and weights remaining at every cycle (step = cycle), and
per AP variant the paired difference to the baseline; the table is logged with `log_table` so the artifact view
renders it.
"""

from __future__ import annotations

import re

import pandas as pd
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from sweeps.engine.result_table import SweepTable
from sweeps.engine.spec import SweepPlan
from sweeps.engine.tracking import ParentRun, now_ms
from sweeps.engine.tune_runner import split_settings

BATCH_LIMIT = 1000  # MLflow's log_batch accepts at most 1000 metrics per call


def protocol_params(plan: SweepPlan) -> dict[str, str]:
    """The settings every trial shares, and the values of the axes that vary (not the driver's flags)."""
    configs = [t.config for t in plan.trials] or [g.base for g in plan.search_groups]
    shared, _ = split_settings([c.experiment_settings() for c in configs])
    params = {k: _text(v) for k, v in shared.items()}
    labels = [t.labels for t in plan.trials] or [g.labels for g in plan.search_groups]
    for axis in ("dataset", "network", "method", "variant", "setting"):
        values = list(dict.fromkeys(str(label[axis]) for label in labels if axis in label))
        if values:
            params[f"axis.{axis}"] = ", ".join(values)
    params["axis.seeds"] = str(plan.seeds)
    if plan.search is not None:
        params.update({f"search.{k}": f"{len(v)} values {v[0]}..{v[-1]}" for k, v in plan.search.axes.items()})
        params["search.mode"] = plan.search_mode
    return {k: v[:6000] for k, v in params.items()}  # MLflow's limit on a param value


def headline_metrics(rows: pd.DataFrame, plan: SweepPlan) -> list[Metric]:
    """Per (network, method, variant[, setting]) and cycle: mean test accuracy and weights remaining over seeds,
    and for every variant but the baseline the mean paired difference to it (`delta/...`)."""
    if rows.empty:
        return []
    keys = ["dataset"] if rows["dataset"].nunique() > 1 else []
    keys += ["network", "method"] + (["setting"] if "setting" in rows else [])
    baseline = plan.spec.variants[0].label
    now = now_ms()
    metrics = []
    for group, runs in rows.groupby(keys, sort=False):
        name = "/".join(map(str, group if isinstance(group, tuple) else (group,)))
        by_variant = {variant: frame for variant, frame in runs.groupby("variant", sort=False)}
        for variant, frame in by_variant.items():
            means = frame.groupby("cycle")[["test_acc", "weights_remaining"]].mean()
            for cycle, values in means.iterrows():
                for measure in ("test_acc", "weights_remaining"):
                    key = _metric_name(f"{measure}/{name}/{variant}")
                    metrics.append(Metric(key, float(values[measure]), now, int(cycle)))
            if variant == baseline or baseline not in by_variant:
                continue
            paired = frame.merge(by_variant[baseline], on=["seed", "cycle"], suffixes=("", "_base"))
            deltas = (paired["test_acc"] - paired["test_acc_base"]).groupby(paired["cycle"]).mean()
            for cycle, delta in deltas.items():
                metrics.append(Metric(_metric_name(f"delta/{name}/{variant}"), float(delta), now, int(cycle)))
    return metrics


def log_results(parent: ParentRun, rows: pd.DataFrame, plan: SweepPlan, table: SweepTable | None) -> None:
    """Headline metrics and the rendered table on the parent run."""
    client = MlflowClient(parent.tracking_uri)
    metrics = headline_metrics(rows, plan)
    for start in range(0, len(metrics), BATCH_LIMIT):
        client.log_batch(parent.run_id, metrics=metrics[start : start + BATCH_LIMIT])
    if table is not None:
        # MLflow's table viewer reads a '.' in a column name as a path and shows the column empty: 51.2 -> 51·2
        cells = table.cells.reset_index()
        cells.columns = [str(c).replace(".", "·") for c in cells.columns]
        client.log_table(parent.run_id, data=cells, artifact_file="table.json")


def _metric_name(text: str) -> str:
    """MLflow accepts letters, digits, _ - . / and spaces in metric names."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", text)


def _text(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "{}"
    return str(value)
