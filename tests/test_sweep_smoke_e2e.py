"""The README's main job, end to end: `python sweeps/table1.py` (smoke preset) against a real MLflow server.

The printed table must equal what MLflow holds for those runs, recomputed here from the child runs' metric
histories with MLflow's client; every trial has exactly one child run with its tags, steps and artifacts.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import MlflowServer, parse_printed_table, run_cli
from mlflow.tracking import MlflowClient

from sweeps.engine.spec import expand
from sweeps.table1 import SPEC

pytestmark = pytest.mark.integration


def format_cell(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def test_smoke_preset_matches_mlflow(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    plan = expand(SPEC, "smoke", overrides={"device": "cpu"})
    done = run_cli(
        "table1", "--results-dir", str(tmp_path), "--tracking-uri", mlflow_server.uri, "--num-cpus", "2",
        "--name", "smoke-e2e", timeout_s=400,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    # The console is the progress bar and the table: no Tune boxes, TensorBoard hints or Ray/MLflow INFO lines.
    console = done.stdout + done.stderr
    assert not any(noise in console for noise in ("Configuration for experiment", "TensorBoard", "INFO", "Token"))
    assert len(parse_printed_table(done.stdout)[("mlp", "GP", "AP")]) == 7  # a terminal's width of the 17 levels
    printed = parse_printed_table((tmp_path / "smoke-e2e" / "smoke-e2e.md").read_text())  # every level

    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("smoke-e2e")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent_id = parents[0].info.run_id
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
    assert sorted(r.info.run_name for r in children) == sorted(t.name for t in plan.trials)

    planned = plan.by_name()
    acc: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in children:
        trial = planned[run.info.run_name]
        tags = run.data.tags
        assert run.info.status == "FINISHED"
        assert tags["network"] == trial.config.model and tags["dataset"] == trial.config.dataset
        assert (
            tags["method_label"] == trial.labels["method"]
            and tags["method"] == trial.config.method
            and tags["ap"] == str(trial.config.ap).lower()
        )
        assert tags["seed"] == str(trial.config.seed) and tags["sweep"] == "smoke-e2e" and tags["code_version"]
        assert run.data.params["lr"] == str(trial.config.lr)
        history = {
            key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
            for key in ("test_acc", "weights_remaining", "dnr")
        }
        assert sorted(history["test_acc"]) == list(range(trial.config.cycles + 1))
        assert sorted(history["dnr"]) == list(range(trial.config.cycles + 1))
        for step, value in history["test_acc"].items():
            level = f"{round(history['weights_remaining'][step], 1):.1f}"
            acc[(trial.config.model, trial.labels["method"], trial.labels["variant"])][level].append(value)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert {"cycles.csv", "mask_summary.csv", "plots"} <= artifacts
        assert {"plots/test_acc_vs_weights_remaining.png", "plots/dnr_per_cycle.png"} <= plots

    # The printed table, cell by cell, equals mean +- std over seeds of what MLflow holds.
    assert {key for key in printed if not key[2].startswith("Δ")} == set(acc)
    for key, levels in acc.items():
        assert printed[key] == {level: format_cell(values) for level, values in levels.items()}
        baseline = acc[(key[0], key[1], "no AP")]
        if key[2] == "AP":
            for level, values in levels.items():
                delta = statistics.mean(values) - statistics.mean(baseline[level])  # = the mean paired difference
                cell = printed[(key[0], key[1], "Δ(AP)")][level]
                assert abs(float(cell.split(" ± ")[0]) - delta) <= 0.0051

    parent_artifacts = {a.path for a in client.list_artifacts(parent_id)}
    stem = "smoke-e2e"
    assert {f"{stem}.csv", f"{stem}.md", f"{stem}.tex", "comparison.png"} <= parent_artifacts
    markdown = Path(client.download_artifacts(parent_id, f"{stem}.md", str(tmp_path / "download")))
    for levels in acc.values():
        assert format_cell(next(iter(levels.values()))) in markdown.read_text()
