"""What the parent MLflow run shows: the protocol as params, the headline results as metrics, the table itself.

Opening a sweep's parent run in the MLflow UI should answer "does AP help here?" without downloading a PNG:
per (network, method, variant) the mean test accuracy and weights remaining at every cycle (step = cycle), and
per AP variant the paired difference to the baseline; the table is logged with `log_table` so the artifact view
renders it, and `report.html` (sweeps.engine.html_report) holds the whole answer on one page.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pandas as pd
from mlflow.entities import Metric

from sweeps.engine.html_report import TRAINING_VIEW, ChildRun, render_report
from sweeps.engine.result_table import SweepTable
from sweeps.engine.spec import SweepPlan
from sweeps.engine.tracking import ParentRun, now_ms
from sweeps.engine.tune_runner import split_settings


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


def log_results(
    parent: ParentRun, rows: pd.DataFrame, plan: SweepPlan, table: SweepTable | None, figure: Path | None
) -> None:
    """Headline metrics, the rendered table and the HTML report (embedding `figure`, the PNG drawn for the results
    folder) on the parent run."""
    store = parent.store
    store.log_metrics(parent.run_id, headline_metrics(rows, plan))
    if table is not None:
        store.log_metrics(parent.run_id, pooled_metrics(table))
        # MLflow's table viewer reads a '.' in a column name as a path and shows the column empty: 51.2 -> 51·2
        cells = table.cells.reset_index()
        cells.columns = [str(c).replace(".", "·") for c in cells.columns]
        if "table.json" not in store.artifact_paths(parent.run_id):
            store.log_table(parent.run_id, cells, "table.json")  # it appends to one logged before
        protocol = report_protocol(parent, plan)
        page = render_report(table, protocol, _embedded(figure), _children(parent), ui_url(parent))
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / REPORT_FILE
            path.write_text(page, encoding="utf-8")
            store.log_file(parent.run_id, path)
        print(f"report: {report_url(parent)}")


REPORT_FILE = "report.html"
POOLED_MEASURES = {"mean": "pooled_delta", "ci95_half_width": "pooled_ci95", "p_sign_flip": "pooled_p", "n": "pooled_n"}


def pooled_metrics(table: SweepTable) -> list[Metric]:
    """The pooled rows' numbers (`pooled_delta/<network>/<method>/<variant>`, `pooled_p/...`, ...), step 0."""
    values = table.values
    if "variant" not in values or values.empty:
        return []
    pooled = values[values["variant"].astype(str).str.endswith(" pooled")]
    with_dataset = values["dataset"].nunique() > 1
    now = now_ms()
    metrics = []
    for row in pooled.itertuples(index=False):
        variant = str(row.variant).removeprefix("Δ(").removesuffix(") pooled")
        name = "/".join([*([row.dataset] if with_dataset else []), row.network, row.method, variant])
        for column, measure in POOLED_MEASURES.items():
            value = float(getattr(row, column))
            if value == value:  # an interval with n too small is nan: not logged
                metrics.append(Metric(_metric_name(f"{measure}/{name}"), value, now, 0))
    return metrics


# Where `mlflow ui` serves a local store, as the README starts it.
LOCAL_UI = "http://127.0.0.1:5000"


def ui_url(parent: ParentRun) -> str:
    """The MLflow UI of the parent's store: the tracking server itself, or `mlflow ui` for a local store."""
    uri = parent.store.uri
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI


def report_url(parent: ParentRun) -> str:
    """Where the report opens in the MLflow UI (for a local store, once `mlflow ui` serves it)."""
    run = f"{ui_url(parent)}/#/experiments/{parent.experiment_id}/runs/{parent.run_id}"
    url = f"{run}/artifacts/{REPORT_FILE}{TRAINING_VIEW}"
    if parent.store.uri.startswith(("http://", "https://")):
        return url
    return f"{url} (after: mlflow ui --backend-store-uri {parent.store.uri} --port 5000)"


def report_protocol(parent: ParentRun, plan: SweepPlan) -> dict[str, str]:
    """The report's protocol section: the code version, the seeds and every shared setting and axis."""
    tags = parent.store.run_tags(parent.run_id)
    versions = {k: tags[k] for k in ("code_version", "protocol") if k in tags}
    return {**versions, "sweep": plan.spec.name, "preset": plan.preset_name, **protocol_params(plan)}


def _embedded(figure: Path | None) -> list[tuple[str, bytes]]:
    return [(f"Comparison (the figure of {figure.name})", figure.read_bytes())] if figure else []


def _children(parent: ParentRun) -> list[ChildRun]:
    runs = parent.store.child_runs(parent)
    return sorted(
        (ChildRun(r.info.run_name or r.info.run_id, r.info.experiment_id, r.info.run_id, r.info.status) for r in runs),
        key=lambda child: child.name,
    )


def _metric_name(text: str) -> str:
    """Readable names within what MLflow accepts (ASCII letters, digits, _ - . : / and spaces): a channel share
    `50%` reads `50pct_pruned`, DemP's `λ=0.001` reads `lambda 0.001`; anything else becomes one `_`, never at a
    name's or a part's edge."""
    text = re.sub(r"(\d)%", r"\1pct_pruned", text).replace("λ=", "lambda ").replace("λ", "lambda").replace("=", " ")
    text = re.sub(r"[^A-Za-z0-9_\-./ :]+", "_", text)
    return re.sub(r"_*/_*", "/", text).strip("_")


def _text(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "{}"
    return str(value)
