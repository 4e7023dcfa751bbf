"""The hyperparameter search (smoke grid, ASHA) picks the best complete point and hands it to the table sweeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli
from mlflow.tracking import MlflowClient
from ray.tune import ExperimentAnalysis

from sweeps import hparam_grid, table1
from sweeps.engine.driver import main
from trainables.pruning_trial import TRAINED_EPOCHS
from trainables.tune_config import TRIAL_NAME

pytestmark = pytest.mark.integration


def test_asha_grid_writes_the_best_complete_point_for_the_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    done = run_cli(
        "hparam_grid", "--results-dir", str(tmp_path), "--num-cpus", "2", "--methods", "GP", "--name", "grid",
        "--grace-period", "1", "--progress", "false", timeout_s=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    best_file = tmp_path / "grid" / "best_hparams.json"
    best = json.loads(best_file.read_text())
    assert list(best) == ["mlp"] and list(best["mlp"]) == ["global_magnitude"]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("grid")
    children = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == hparam_grid.SMOKE_GRID.size
    stopped = [r for r in children if r.data.tags.get("early_stopped") == "true"]
    complete = [r for r in children if r not in stopped]
    assert stopped and complete  # ASHA ended some points early and let others run every cycle
    cycles = hparam_grid.SPEC.presets["smoke"].trial["cycles"]
    assert all(r.data.metrics["cycle"] == cycles for r in complete)
    assert all(r.data.metrics["cycle"] < cycles for r in stopped)
    settings = best["mlp"]["global_magnitude"]
    assert set(settings) == set(hparam_grid.SMOKE_GRID.axes)
    chosen = [r for r in complete if all(r.data.params[k] == str(v) for k, v in settings.items())]
    # Chosen on the held-out validation split: the test accuracy plays no part (a run's metrics hold the last value)
    assert all("val_acc" in r.data.metrics and r.data.params["val_fraction"] == "0.1" for r in children)
    top = max(r.data.metrics["val_acc"] for r in complete)
    assert len(chosen) == 1 and chosen[0].data.metrics["val_acc"] == top

    with pytest.raises(SystemExit) as exit_info:
        main(table1.SPEC, ["--hparams", str(best_file), "--methods", "GP", "--dry-run"])
    assert exit_info.value.code == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if ": model=" in line]
    assert lines and all(f"batch_size={settings['batch_size']} lr={settings['lr']:g}" in line for line in lines)
    assert all(f"epochs={settings['epochs']} " in line for line in lines)


def test_optuna_with_asha_chooses_a_point_by_its_mean_over_seeds_and_resumes(tmp_path: Path) -> None:
    command = [
        "hparam_grid", "--results-dir", str(tmp_path), "--num-cpus", "2", "--methods", "GP", "--name", "optuna",
        "--search", "optuna", "--num-samples", "4", "--seeds", "2", "--grace-period", "2", "--reduction-factor", "2",
        "--max-concurrent", "1", "--progress", "false",
    ]  # fmt: skip
    done = run_cli(*command, timeout_s=300)
    assert done.returncode == 0, done.stderr[-3000:]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("optuna")
    children = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 8 and all(r.info.status == "FINISHED" for r in children)
    axes = list(hparam_grid.SMOKE_GRID.axes)
    cycles = hparam_grid.SPEC.presets["smoke"].trial["cycles"]
    by_trial_number: dict[str, list] = {}
    for run in children:  # Tune's Repeater runs each point once per seed, one after the other
        point = tuple(run.data.params[k] for k in axes)
        by_trial_number.setdefault(point, []).append(run)
    assert all(
        sorted(r.data.params["seed"] for r in runs) in (["1", "2"], ["1", "1", "2", "2"])
        for runs in by_trial_number.values()
    )
    assert any(r.data.tags.get("early_stopped") == "true" for r in children)  # ASHA stopped some

    complete = {
        point: sum(r.data.metrics["val_acc"] for r in runs) / len(runs)
        for point, runs in by_trial_number.items()
        if len(runs) == 2 and all(r.data.metrics["cycle"] == cycles for r in runs)
    }
    assert complete, "no point ran every cycle on both seeds: pick another search seed for this test"
    best = json.loads((tmp_path / "optuna" / "best_hparams.json").read_text())["mlp"]["global_magnitude"]
    assert tuple(str(best[k]) for k in axes) == max(complete, key=complete.__getitem__)

    state = json.loads((tmp_path / "optuna" / "sweep.json").read_text())
    frame = ExperimentAnalysis(next(iter(state["experiments"].values()))).dataframe()
    assert {f"config/{k}" for k in axes} | {"config/model", "config/method"} <= set(frame.columns)

    resumed = run_cli(*command, "--resume", timeout_s=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.info.run_id for r in again) == sorted(r.info.run_id for r in children)
    assert all(len(client.get_metric_history(r.info.run_id, "test_acc")) == r.data.metrics["cycle"] + 1 for r in again)


def _printed_expected_epochs(argv: list[str], capsys: pytest.CaptureFixture[str]) -> float:
    with pytest.raises(SystemExit) as exit_info:
        main(hparam_grid.SPEC, [*argv, "--dry-run"])
    assert exit_info.value.code == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("expected: "))
    return float(line.split()[1].replace(",", ""))


def _trained_epochs(runs: list) -> float:
    """Epochs the runs trained: every cycle they reported, less the cycles they took from the cycle store."""
    trained = 0.0
    for run in (r for r in runs if "cycle" in r.data.metrics):
        reused = run.data.tags.get("reused_cycles", "")
        first = int(reused.rpartition("-")[2]) + 1 if reused else 0
        trained += (run.data.metrics["cycle"] + 1 - first) * int(run.data.params["epochs"])
    return trained


def _stopped_within_a_cycle(sweep_dir: Path) -> dict[str, tuple[int, int]]:
    """Trial name -> (epochs trained, epochs per cycle) of the trials stopped before they ended a cycle, from
    Tune's records (MLflow logs whole cycles only): a staged search's stage-one trials that ASHA stopped."""
    stopped = {}
    for folder in json.loads((sweep_dir / "sweep.json").read_text())["experiments"].values():
        analysis = ExperimentAnalysis(folder)
        configs = analysis.get_all_configs()
        for path, history in analysis.trial_dataframes.items():
            if "cycle" not in history and TRAINED_EPOCHS in history:  # the smoke grid's epochs are a searched axis
                stopped[configs[path][TRIAL_NAME]] = (int(history[TRAINED_EPOCHS].max()), int(configs[path]["epochs"]))
    return stopped


def test_the_expected_cost_is_what_the_grid_and_the_staged_search_then_train(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    searches = {
        # one trial at a time: ASHA's rungs (stage one's too) meet the points in grid order, the same on every run
        "full": ["--max-concurrent", "1"],
        "staged": ["--search", "staged", "--top-k", "2", "--max-concurrent", "1"],
    }
    runs, stopped = {}, {}
    for name, flags in searches.items():
        argv = ["--results-dir", str(tmp_path), "--num-cpus", "2", "--name", name, "--progress", "false", *flags]
        expected = _printed_expected_epochs(argv, capsys)
        done = run_cli("hparam_grid", *argv, timeout_s=300)
        assert done.returncode == 0, done.stderr[-3000:]
        experiment = client.get_experiment_by_name(name)
        runs[name] = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
        stopped[name] = _stopped_within_a_cycle(tmp_path / name)
        trained = _trained_epochs(runs[name]) + sum(epochs for epochs, _ in stopped[name].values())
        assert abs(trained - expected) <= 0.1 * expected, (name, expected, trained)

    points = hparam_grid.SMOKE_GRID.size
    every_dense = [r for r in runs["staged"] if "-dense-" in r.info.run_name]
    pruned = [r for r in runs["staged"] if r not in every_dense]
    # Stage one: each point's dense cycle once, for GP and LP alike, under ASHA in epochs (reported after every
    # epoch): some 4-epoch points stopped at the rung of 2 epochs, within their dense cycle; stage two: the best 2
    # of those that ended it, per method, in full, from the dense cycle stage one stored
    assert len(every_dense) == points and len({r.info.run_name for r in every_dense}) == points
    assert not stopped["full"] and stopped["staged"]
    assert all(trained == 2 < epochs for trained, epochs in stopped["staged"].values())
    dense = [r for r in every_dense if r.info.run_name not in stopped["staged"]]
    assert all(r.data.metrics["cycle"] == 0 for r in dense)
    assert all("cycle" not in r.data.metrics for r in every_dense if r not in dense)
    assert sorted(r.data.params["method"] for r in pruned) == ["global_magnitude"] * 2 + ["layerwise_magnitude"] * 2
    cycles = hparam_grid.SPEC.presets["smoke"].trial["cycles"]
    assert all(r.data.metrics["cycle"] == cycles and r.data.tags["reused_cycles"] == "0-0" for r in pruned)
    ranked = sorted(dense, key=lambda r: -r.data.metrics["val_acc"])
    best_dense = {tuple(r.data.params[k] for k in hparam_grid.SMOKE_GRID.axes) for r in ranked[:2]}
    assert {tuple(r.data.params[k] for k in hparam_grid.SMOKE_GRID.axes) for r in pruned} == best_dense
    best = json.loads((tmp_path / "staged" / "best_hparams.json").read_text())["mlp"]
    assert {tuple(str(best[m][k]) for k in hparam_grid.SMOKE_GRID.axes) for m in best} <= best_dense
