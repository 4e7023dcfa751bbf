"""A diverging trial is retried, then recorded FAILED in Tune and MLflow; the rest finishes; the table shows gaps.

Uses MLflow's embedded default (SQLite in the results folder) with two trials running at once, which is also the
check that logging from the driver alone never trips over SQLite's locking: every run and every step arrives.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import parse_printed_table, run_cli
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.integration

CYCLES = 3
SEEDS = 1


def test_failing_trials_are_retried_then_failed(tmp_path: Path) -> None:
    hparams = tmp_path / "hparams.json"
    hparams.write_text(json.dumps({"mlp": {"layerwise_magnitude": {"lr": 1000.0}}}))  # LP diverges: NaN loss
    results = tmp_path / "results"
    done = run_cli(
        "table1", "--results-dir", str(results), "--num-cpus", "2", "--seeds", str(SEEDS), "--epochs", "2",
        "--cycles", str(CYCLES), "--max-failures", "1", "--hparams", str(hparams), "--name", "failing",
        timeout_s=300,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]  # finished, but with failed trials
    failed_line = [line for line in done.stderr.splitlines() if "FAILED:" in line]
    assert failed_line and "mlp-lp-ap-seed1" in failed_line[0]
    # #15.9: one line per failed attempt on the console, naming the error; the tracebacks are in the log file
    attempts = [line for line in done.stderr.splitlines() if "Trial task failed for trial" in line]
    assert len(attempts) == 2 * 2 * SEEDS and all("NonFiniteLossError: training loss became nan" in a for a in attempts)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "Traceback (most recent call last)" in (results / "failing" / "driver.log").read_text()

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("failing")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2 * 2 * SEEDS  # GP and LP, AP on/off
    for run in children:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "test_acc")]
        if run.data.tags["method_label"] == "LP":
            assert run.info.status == "FAILED"
            assert "loss became nan" in run.data.tags["error"]
            assert run.data.tags["attempts"] == "2"  # the first try and one retry
            assert "error.txt" in {a.path for a in client.list_artifacts(run.info.run_id)}
            assert steps == []
        else:
            assert run.info.status == "FINISHED"
            assert sorted(steps) == list(range(CYCLES + 1))

    table = parse_printed_table(done.stdout)
    assert {key[1] for key in table} == {"GP", "LP"}
    for (_, method, _), cells in table.items():
        assert len(cells) == CYCLES + 1
        if method == "LP":
            assert set(cells.values()) == {"—"}
        else:
            assert "—" not in cells.values()
    written = parse_printed_table((results / "failing" / "failing.md").read_text())
    assert written == table
