"""The README's main job, end to end: `python sweeps/table1.py` (smoke preset) against a real MLflow server.

The printed table must equal what MLflow holds for those runs, recomputed here from the child runs' metric
histories with MLflow's client; every trial has exactly one child run with its tags, steps and artifacts.
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import MlflowServer, parse_printed_table, run_cli
from mlflow.tracking import MlflowClient

from sweeps.engine.spec import expand
from sweeps.engine.stats import delta_of
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
    # The console is the progress bar and the table: no Tune boxes, TensorBoard hints, Ray/MLflow INFO lines or
    # MLflow's per-run 'View run' links.
    console = done.stdout + done.stderr
    noise = ("Configuration for experiment", "TensorBoard", "INFO", "Token", "View run", "View experiment")
    assert not any(line in console for line in noise)
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
    by_seed: dict[tuple[str, str, str, int], dict[str, float]] = {}
    for run in children:
        trial = planned[run.info.run_name]
        tags = run.data.tags
        assert run.info.status == "FINISHED"
        assert tags["network"] == trial.config.model and tags["dataset"] == trial.config.dataset
        assert (
            tags["method_label"] == trial.labels["method"]
            and tags["method"] == trial.config.pruning.method
            and tags["ap"] == str(trial.config.ap.enabled).lower()
        )
        assert tags["seed"] == str(trial.config.seed) and tags["sweep"] == "smoke-e2e" and tags["code_version"]
        assert run.data.params["lr"] == str(trial.config.optimizer.lr)
        history = {
            key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
            for key in ("test_acc", "weights_remaining", "dnr")
        }
        assert sorted(history["test_acc"]) == list(range(trial.config.pruning.cycles + 1))
        assert sorted(history["dnr"]) == list(range(trial.config.pruning.cycles + 1))
        for step, value in history["test_acc"].items():
            level = f"{round(history['weights_remaining'][step], 1):.1f}"
            acc[(trial.config.model, trial.labels["method"], trial.labels["variant"])][level].append(value)
            by_seed.setdefault(
                (trial.config.model, trial.labels["method"], trial.labels["variant"], trial.config.seed), {}
            )[level] = value
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

    # The pooled rows, recomputed from the child runs: per seed, the mean over the levels <= 10.7% of AP - no AP.
    parent_metrics = client.get_run(parent_id).data.metrics
    for method in ("GP", "LP"):
        levels = [level for level in acc[("mlp", method, "AP")] if float(level) <= 10.7]
        differences = [
            statistics.mean(by_seed[("mlp", method, "AP", seed)][lv] - by_seed[("mlp", method, "no AP", seed)][lv]
                            for lv in levels)
            for seed in range(1, plan.seeds + 1)
        ]  # fmt: skip
        expected = delta_of(differences)
        assert len(levels) == 7 and expected.n == 3 and expected.p_value >= 0.25  # 3 seeds: never below 2^(1-3)
        assert abs(parent_metrics[f"pooled_delta/mlp/{method}/AP"] - expected.mean) < 1e-9
        assert parent_metrics[f"pooled_p/mlp/{method}/AP"] == expected.p_value
        assert parent_metrics[f"pooled_n/mlp/{method}/AP"] == 3
        pooled_rows = [[c.strip() for c in line.strip("|").split("|")] for line in done.stdout.splitlines()]
        # network, method, variant, levels pooled, Δ mean, 95% interval, p, n, W/L/T
        row = next(r for r in pooled_rows if len(r) == 9 and r[1] == method and "levels)" in r[3])
        assert row[3] == "10.7 to 2.8 (7 levels)" and row[7] == "3"
        assert row[4] == f"{expected.mean + 0.0:+.2f}".replace("-0.00", "+0.00")  # no star: p >= 0.25
        assert row[8] == f"{expected.wins}/{expected.losses}/{expected.ties}"
    assert "report: http://127.0.0.1:" in done.stdout

    parent_artifacts = {a.path for a in client.list_artifacts(parent_id)}
    stem = "smoke-e2e"
    assert {f"{stem}.csv", f"{stem}.md", f"{stem}.tex", "comparison.png", "report.html"} <= parent_artifacts
    report = Path(client.download_artifacts(parent_id, "report.html", str(tmp_path / "report"))).read_text()
    assert all(f"<th>{level}</th>" in report for level in acc[("mlp", "GP", "AP")])  # every level is a column
    # Self-contained: the only URLs are the embedded plot and links to this server's own runs (one per trial).
    urls = re.findall(r"(?:src|href)=\"([^\"]*)\"", report)
    assert all(url.startswith(("data:image/png;base64,", f"{mlflow_server.uri}/#/experiments/")) for url in urls)
    assert sum(url.startswith(mlflow_server.uri) for url in urls) == plan.trial_count
    markdown = Path(client.download_artifacts(parent_id, f"{stem}.md", str(tmp_path / "download")))
    for levels in acc.values():
        assert format_cell(next(iter(levels.values()))) in markdown.read_text()

    # The finished sweep run again to see other levels: the table from its saved rows; no Ray, no Tune, no logging.
    tune_files = {p: p.stat().st_mtime_ns for p in (tmp_path / "ray").rglob("*")}
    again = run_cli(
        "table1", "--results-dir", str(tmp_path), "--tracking-uri", mlflow_server.uri, "--name", "smoke-e2e",
        "--levels", "10", "51.2", timeout_s=120,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "finished at" in again.stdout and "nothing re-run" in again.stdout
    assert "--levels 10: showing 10.7" in again.stdout
    shown = parse_printed_table(again.stdout)
    assert shown[("mlp", "GP", "AP")] == {level: printed[("mlp", "GP", "AP")][level] for level in ("10.7", "51.2")}
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "ray").rglob("*")} == tune_files
    assert len(client.search_runs([experiment.experiment_id], max_results=1000)) == len(runs)
    moved = run_cli(
        "table1", "--results-dir", str(tmp_path), "--name", "smoke-e2e", "--tracking-uri", "sqlite:///elsewhere.db",
        timeout_s=60,
    )  # fmt: skip
    assert moved.returncode == 2 and "another --results-dir or --name" in moved.stderr
