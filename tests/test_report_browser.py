"""The parent run's report.html in MLflow's own UI, in a real headless Chromium against a real `mlflow server`:
the pooled row and a Δ row must be on screen in the artifact view at 1280 px, and the row labels must stay in
view when the table scrolls sideways. docs/mlflow_screenshots.py takes the README's screenshots the same way."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, MlflowServer
from mlflow.tracking import MlflowClient

from sweeps.engine import tracking
from sweeps.engine.parent_view import log_results
from sweeps.engine.report import draw_comparison
from sweeps.engine.result_table import build_table
from sweeps.engine.spec import expand
from sweeps.table1 import SPEC

sys.path.insert(0, str(REPO / "docs"))
from mlflow_screenshots import Chromium, find_browser, report_view_url

pytestmark = pytest.mark.integration


def sweep_rows(plan) -> pd.DataFrame:
    """Every planned trial's cycles, AP a little ahead at high sparsity, as report.collect gives them."""
    rows = []
    for trial in plan.trials:
        for cycle in range(trial.config.pruning.cycles + 1):
            remaining = 100 * 0.8**cycle
            gain = 0.3 * trial.config.seed if trial.config.ap.enabled and remaining < 11 else 0.0
            rows.append(
                {"trial": trial.name, **trial.labels, "cycle": cycle, "weights_remaining": remaining,
                 "level": round(remaining, 1), "test_acc": 90.0 - cycle * 0.2 + gain, "dnr": 0.3}
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_report_shows_the_delta_and_pooled_rows_in_mlflows_artifact_view(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    browser = find_browser()
    if browser is None:
        pytest.skip("no chromium on the PATH (Debian: apt-get install chromium)")
    plan = expand(SPEC, "smoke", overrides={"device": "cpu"})
    parent = tracking.TrackingStore(mlflow_server.uri).start_parent_run("report-browser", None, "parent", {}, {})
    client = MlflowClient(mlflow_server.uri)
    client.create_run(parent.experiment_id, tags={"mlflow.parentRunId": parent.run_id}, run_name="mlp-gp-ap-seed1")
    rows = sweep_rows(plan)
    log_results(parent, rows, plan, build_table(rows, plan), draw_comparison(rows, plan, tmp_path)[0])

    try:
        chromium = Chromium(browser, tmp_path / "profile")
    except (OSError, RuntimeError) as err:
        pytest.skip(f"chromium could not start here: {err}")
    try:
        seen = chromium.report_in_ui(report_view_url(mlflow_server.uri, parent.experiment_id, parent.run_id))
    finally:
        chromium.close()
    assert seen, "report.html never showed in the artifact view"
    assert seen["pooled"] == "mlp / GP / Δ(AP)" and seen["pooled_visible"]
    assert seen["delta"] == "mlp / GP / Δ(AP)" and seen["delta_visible"]
    assert seen["scrolled"] > 0 and abs(seen["label_left_after_scroll"]) < 5  # the labels stayed in view
    levels = sorted({f"{level:.1f}" for level in rows["level"]}, key=float, reverse=True)
    assert seen["levels"][1:] == levels  # every level is a column
    assert seen["frame"]["width"] > 300  # the pane MLflow gives the page at 1280 px
