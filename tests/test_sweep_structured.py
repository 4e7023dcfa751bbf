"""The channel-pruning sweeps: their plans, tables (with the published numbers beside ours) and the DemP plot;
then both smoke presets end to end through a real Ray and a real MLflow server."""

from __future__ import annotations

import statistics
from pathlib import Path

import pandas as pd
import pytest
from conftest import MlflowServer, parse_printed_table, run_cli
from mlflow.tracking import MlflowClient

from ap_core import ConfigError
from sweeps import table_demp, table_structured
from sweeps.engine import plots
from sweeps.engine.html_report import render_report
from sweeps.engine.result_table import MISSING
from sweeps.engine.spec import expand
from sweeps.engine.structured_report import demp_table, params_figure, structured_table


def fake_rows(plan, accuracy, params=50.0) -> pd.DataFrame:
    """Two cycles per trial: dense (cycle 0) and after removal (cycle 1), accuracies from `accuracy(labels, c)`."""
    rows = []
    for trial in plan.trials:
        for cycle in (0, 1):
            rows.append(
                {
                    "trial": trial.name,
                    **trial.labels,
                    "cycle": cycle,
                    "test_acc": accuracy(trial.labels, cycle),
                    "weights_remaining": 100.0,
                    "params_remaining": 100.0 if cycle == 0 else params,
                    "channels_remaining": 100.0 if cycle == 0 else 50.0,
                    "flops_remaining": 100.0 if cycle == 0 else 40.0,
                    "dnr": 0.5,
                }
            )
    return pd.DataFrame(rows)


def test_structured_plan_crosses_methods_ratios_and_ap_with_readable_names() -> None:
    plan = expand(table_structured.SPEC, "paper", overrides={"method_options": {"min_channels": 4}})
    assert len(plan.trials) == 2 * 2 * 2 * 2 * 2 * 3  # datasets x networks x methods x ratios x AP x seeds
    trial = plan.by_name()["vgg16-cifar10-rni-r90-ap-seed1"]
    assert trial.config.pruning.method == "rni" and trial.config.optimizer.nesterov and trial.config.ap.enabled
    # The ratio (from the setting) and the command line's option are merged, not one replacing the other.
    assert trial.config.pruning.method_options == {"channel_ratio": 0.9, "min_channels": 4}
    assert trial.labels["setting"] == "90%"
    assert trial.params()["method_options.channel_ratio"] == "0.9"


def test_a_method_option_that_does_not_fit_a_method_of_the_sweep_is_refused_before_anything_runs() -> None:
    with pytest.raises(ConfigError, match="unknown option 'alpha' for method network_slimming"):
        expand(table_structured.SPEC, "smoke", overrides={"method_options": {"alpha": 1e-3}})


def test_structured_table_shows_mean_std_delta_params_and_the_published_numbers() -> None:
    plan = expand(table_structured.SPEC, "paper", datasets=("cifar10",), networks=("vgg16",))

    def accuracy(labels, cycle):
        bonus = 1.0 if labels["variant"] == "AP" else 0.0
        return 93.0 + labels["seed"] * 0.1 if cycle == 0 else 90.0 + bonus + labels["seed"] * 0.2

    table = structured_table(fake_rows(plan, accuracy), plan)
    cells = table.cells
    assert list(cells.columns) == [
        "dense", "50% pruned: acc", "50% pruned: params %", "90% pruned: acc", "90% pruned: params %",
        "ref dense", "ref 50% pruned", "ref 90% pruned",
    ]  # fmt: skip
    seeds = [90.2, 90.4, 90.6]
    expected = f"{statistics.mean(seeds):.2f} ± {statistics.stdev(seeds):.2f}"
    assert cells.loc[("vgg16", "NS", "no AP"), "90% pruned: acc"] == expected
    assert cells.loc[("vgg16", "NS", "no AP"), "90% pruned: params %"] == "50.0"
    # Δ pairs each seed's AP run with its no-AP run: here AP adds exactly 1.0 on every seed. Three seeds that agree
    # are no evidence at p < 0.05 (the sign-flip test's p is 2/8): no star, whatever the interval's width.
    assert cells.loc[("vgg16", "NS", "Δ(AP)"), "90% pruned: acc"] == "+1.00 ± 0.00"
    assert "paired differences" in table.note
    # The authors' numbers (shared/reference/rni_results.csv) sit beside the runs without AP.
    assert cells.loc[("vgg16", "NS", "no AP"), "ref 90% pruned"] == "89.95"
    assert cells.loc[("vgg16", "RNI", "no AP"), "ref 90% pruned"] == "90.88"
    assert cells.loc[("vgg16", "RNI", "no AP"), "ref dense"] == "93.63"
    assert cells.loc[("vgg16", "RNI", "AP"), "ref 90% pruned"] == MISSING
    # A trial that never got past cycle 0 has no pruned result: its cell counts the seeds that finished.
    unfinished = fake_rows(plan, accuracy)
    unfinished = unfinished[~((unfinished["trial"] == "vgg16-rni-r50-ap-seed3") & (unfinished["cycle"] == 1))]
    partial = structured_table(unfinished, plan).cells
    assert partial.loc[("vgg16", "RNI", "AP"), "50% pruned: acc"].endswith("(n=2)")
    # only seeds run both ways, and two are too few for an interval
    assert partial.loc[("vgg16", "RNI", "Δ(AP)"), "50% pruned: acc"] == "+1.00 (n=2 too small)"
    assert partial.loc[("vgg16", "RNI", "AP"), "dense"] == cells.loc[("vgg16", "RNI", "AP"), "dense"]
    # Dense is cycle 0 once per seed, whatever the ratio or AP: three values, not twelve.
    assert cells.loc[("vgg16", "NS", "no AP"), "dense"] == "93.20 ± 0.10"
    assert cells.loc[("vgg16", "NS", "Δ(AP)"), "dense"] == ""
    # Networks the paper did not run get no reference columns at all (no columns of dashes).
    smoke = expand(table_structured.SPEC, "smoke", seeds=1)
    smoke_cells = structured_table(pd.DataFrame(), smoke).cells
    assert not [c for c in smoke_cells.columns if c.startswith("ref")]
    assert set(smoke_cells["50% pruned: acc"]) == {MISSING}


def test_demp_table_and_plot_trace_accuracy_against_parameters(tmp_path: Path) -> None:
    plan = expand(table_demp.SPEC, "smoke")
    lambdas = [t.config.pruning.method_options["lam"] for t in plan.trials]
    assert sorted(set(lambdas)) == [1e-3, 0.01, 0.05]

    rows = fake_rows(plan, lambda labels, cycle: 95.0 + labels["seed"])
    shrink = {"λ=0.001": 90.0, "λ=0.01": 60.0, "λ=0.05": 20.0}
    rows.loc[rows["cycle"] == 1, "params_remaining"] = rows.loc[rows["cycle"] == 1, "setting"].map(shrink)
    table = demp_table(rows, plan)
    assert table.cells.index.names == ["network", "method", "lambda", "variant"]
    assert list(table.cells.index)[:2] == [
        ("vgg_small", "DemP", "λ=0.001", "no AP"),
        ("vgg_small", "DemP", "λ=0.001", "AP"),
    ]
    assert table.cells.loc[("vgg_small", "DemP", "λ=0.01", "AP"), "params %"] == "60.0"
    assert table.cells.loc[("vgg_small", "DemP", "λ=0.01", "AP"), "final acc"] == "96.50 ± 0.71"
    # AP's Δ row per lambda, paired by seed (the smoke preset's 2 seeds: too few for an interval), and why AP's
    # rows can keep more of the net
    assert table.cells.loc[("vgg_small", "DemP", "λ=0.01", "Δ(AP)"), "final acc"] == "+0.00 (n=2 too small)"
    assert "DemP removes only units that are dead" in table.note
    page = render_report(table, {"preset": "smoke"}, [], [], "http://127.0.0.1:5000")  # the parent run's report
    assert "<h2>The table</h2>" in page and "Pooled rows" not in page and "vgg_small / DemP / λ=0.01 / Δ(AP)" in page
    path = tmp_path / "demp.png"
    plots.save(params_figure(rows, "DemP"), str(path))
    assert path.stat().st_size > 10_000


@pytest.mark.integration
@pytest.mark.parametrize("module", ["table_structured", "table_demp"])
def test_smoke_preset_runs_through_ray_and_mlflow(module: str, mlflow_server: MlflowServer, tmp_path: Path) -> None:
    spec = {"table_structured": table_structured.SPEC, "table_demp": table_demp.SPEC}[module]
    # One network keeps the suite's time: ResNet-20's channel removal is covered by tests/test_structured.py. So do
    # shorter cycles where channels go by ratio at the cycle's start; DemP needs its steps to let neurons die.
    shorter = ["--epochs", "3"] if module == "table_structured" else []
    plan = expand(spec, "smoke", networks=("vgg_small",), overrides={"device": "cpu"})
    name = f"{module}-e2e"
    done = run_cli(
        module, "--results-dir", str(tmp_path), "--tracking-uri", mlflow_server.uri, "--num-cpus", "2",
        "--name", name, "--progress", "false", "--networks", "vgg_small", *shorter, timeout_s=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    printed = parse_printed_table(done.stdout)

    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parent = next(r for r in runs if r.data.tags.get("sweep.role") == "parent")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == sorted(t.name for t in plan.trials)
    finals: dict[tuple[str, ...], list[float]] = {}
    for run in children:
        trial = plan.by_name()[run.info.run_name]
        assert run.info.status == "FINISHED" and run.data.tags["setting"] == trial.labels["setting"]
        for key in ("channels_remaining", "params_remaining", "flops_remaining", "test_acc", "dnr", "dead_units"):
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == [0, 1], key
        final = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "test_acc")}[1]
        channels = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "channels_remaining")}
        if module == "table_structured":
            assert channels[0] == 100.0 and channels[1] < 100.0  # channels really went, when the cycle began
        else:  # DemP removes during training: every removal is a metric over the trial's training steps
            removals = client.get_metric_history(run.info.run_id, "removal/channels_remaining")
            if trial.config.pruning.method_options["lam"] >= 0.01:
                assert removals and channels[1] < 100.0
            by_step = [m.value for m in sorted(removals, key=lambda m: m.step)]
            assert by_step == sorted(by_step, reverse=True)
            assert not removals or min(by_step) == channels[1]
        labels = trial.labels
        finals.setdefault((labels["network"], labels["method"], labels["variant"], labels["setting"]), []).append(final)

    # Printed cells equal mean +- std over seeds of what MLflow holds for the last cycle.
    for (network, method, variant, setting), values in finals.items():
        cell = f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"
        if module == "table_structured":
            assert printed[(network, method, variant)][f"{setting} pruned: acc"] == cell
        else:
            assert printed[(network, method, setting, variant)]["final acc"] == cell
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {f"{name}.md", f"{name}.csv", "comparison.png"} <= artifacts
    assert (tmp_path / name / "comparison.png").stat().st_size > 10_000
