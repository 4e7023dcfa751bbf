"""Units of the sweep engine: state file, tracking policy, Tune set-up, trial catalog, best point, trial logger.

Nothing here starts Ray; the trial logger writes to a real (SQLite) MLflow store through Tune's own Trial objects.
"""

from __future__ import annotations

import json
import pickle
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from ray.train._internal.session import _TrainingResult
from ray.tune import Checkpoint, Result
from ray.tune.experiment import Trial
from ray.tune.search import Searcher

from sweeps import hparam_grid, table1
from sweeps.engine import tracking
from sweeps.engine.driver import default_name
from sweeps.engine.options import SearchOptions, SweepError, SweepOptions
from sweeps.engine.parent_view import headline_metrics, log_results, protocol_params
from sweeps.engine.report import best_points, draw_comparison, trial_outcomes
from sweeps.engine.result_table import build_table
from sweeps.engine.retention import CheckpointRetention
from sweeps.engine.spec import expand
from sweeps.engine.sweep_state import (
    STATE_FILE,
    SweepState,
    choose_tracking_uri,
    experiment_paths,
    lock_sweep_dir,
    new_stamp,
    read_state,
    state_to_continue,
)
from sweeps.engine.trial_artifacts import write_trial_artifacts
from sweeps.engine.trial_logger import MlflowTrialLogger, sync_with_tune
from sweeps.engine.tune_runner import PlanSearcher, TrialNamer, planned_points, search_setup, split_settings
from trainables.pruning_trial import ARTIFACTS_DIR
from trainables.tune_config import REPEAT_INDEX, TRIAL_NAME, trial_config

REPO = Path(__file__).resolve().parent.parent
SMOKE = expand(table1.SPEC, "smoke")
GRID = expand(hparam_grid.SPEC, "smoke", methods=("GP",), seeds=2)


# ---- sweep_state --------------------------------------------------------------------------------------------------


def test_state_round_trips_and_refuses_what_cannot_be_resumed(tmp_path: Path) -> None:
    state = SweepState("s", SMOKE.fingerprint(), "sqlite:///x.db", "1", "abc", {"": "/r/s-1"})
    state.write(tmp_path)
    assert read_state(tmp_path) == state
    assert read_state(tmp_path / "elsewhere") is None
    (tmp_path / STATE_FILE).write_text("{not json")
    with pytest.raises(SweepError, match="not valid JSON"):
        read_state(tmp_path)
    (tmp_path / STATE_FILE).write_text("[]")
    with pytest.raises(SweepError, match="not a sweep state file"):
        read_state(tmp_path)
    (tmp_path / STATE_FILE).write_bytes(b"\xff\xfe{}")
    with pytest.raises(SweepError, match="not UTF-8"):
        read_state(tmp_path)
    (tmp_path / STATE_FILE).unlink()
    (tmp_path / STATE_FILE).mkdir()
    with pytest.raises(SweepError, match="cannot be read"):
        read_state(tmp_path)


def test_same_protocol_continues_another_is_refused_and_resume_needs_a_sweep(tmp_path: Path) -> None:
    changed = expand(table1.SPEC, "smoke", overrides={"lr": 0.5})
    with pytest.raises(SweepError, match=r"nothing to resume: no sweep\.json in .*table1-typo"):
        state_to_continue(tmp_path / "table1-typo", SMOKE, resume=True, overwrite=False)
    assert state_to_continue(tmp_path / "new", SMOKE, resume=False, overwrite=False) is None
    state = SweepState("s", SMOKE.fingerprint(), "", "", "", {"": "/r/s-1"})
    state.write(tmp_path)
    assert state_to_continue(tmp_path, SMOKE, resume=False, overwrite=False) == state  # same protocol: continued
    assert state_to_continue(tmp_path, SMOKE, resume=True, overwrite=False) == state
    assert state_to_continue(tmp_path, SMOKE, resume=False, overwrite=True) is None
    with pytest.raises(SweepError, match="trials changed"):
        state_to_continue(tmp_path, changed, resume=True, overwrite=False)
    with pytest.raises(SweepError, match=r"other settings.*--overwrite"):
        state_to_continue(tmp_path, changed, resume=False, overwrite=False)
    assert state_to_continue(tmp_path, changed, resume=False, overwrite=True) is None
    with pytest.raises(SweepError, match="pass one of them"):
        state_to_continue(tmp_path, SMOKE, resume=True, overwrite=True)


def test_a_changed_setting_gets_its_own_folder_and_the_same_protocol_the_same_one() -> None:
    shorter = expand(table1.SPEC, "smoke", seeds=1, overrides={"epochs": 2, "cycles": 3})
    assert default_name(SMOKE) == default_name(expand(table1.SPEC, "smoke"))
    assert default_name(shorter) != default_name(SMOKE)
    assert default_name(SMOKE).startswith("table1-smoke-")
    # where a trial runs is not its protocol: --device or --cpu-threads resume the same sweep
    assert default_name(expand(table1.SPEC, "smoke", overrides={"device": "cpu", "cpu_threads": 1})) == default_name(
        SMOKE
    )


def test_a_sweep_folder_is_claimed_by_one_driver_at_a_time(tmp_path: Path) -> None:
    script = (
        "import sys, time; from pathlib import Path; from sweeps.engine.sweep_state import lock_sweep_dir\n"
        "with lock_sweep_dir(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "s")], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(SweepError, match="already running in another process"):
            lock_sweep_dir(tmp_path / "s")
    finally:
        holder.kill()
        holder.wait()
    with lock_sweep_dir(tmp_path / "s"):  # free again once the holder is gone
        pass
    assert new_stamp() != new_stamp()


def test_a_resumed_sweep_keeps_its_experiment_folders_and_a_new_one_gets_stamped_ones() -> None:
    assert experiment_paths(SMOKE, "/r/", "s", "20261122", {}) == {"": "/r/s-20261122"}
    assert experiment_paths(SMOKE, "/r", "s", "later", {"": "/r/s-1"}) == {"": "/r/s-1"}
    assert experiment_paths(GRID, "s3://b", "g", "1", {}) == {"digits-mlp-gp": "s3://b/g-digits-mlp-gp-1"}


# ---- tracking -----------------------------------------------------------------------------------------------------


def test_tracking_uri_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    local = "sqlite:///results/mlflow.db"
    assert choose_tracking_uri(SweepOptions(), None, local) == local
    assert choose_tracking_uri(SweepOptions(mlflow=False), None, local) == ""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert choose_tracking_uri(SweepOptions(), None, local) == "http://127.0.0.1:1"
    assert choose_tracking_uri(SweepOptions(tracking_uri="http://a"), None, local) == "http://a"
    # A resumed sweep logs where it began, whatever the environment says now.
    assert choose_tracking_uri(SweepOptions(), "sqlite:///old.db", local) == "sqlite:///old.db"
    with pytest.raises(SweepError, match="started with 'sqlite:///old\\.db'"):
        choose_tracking_uri(SweepOptions(tracking_uri="http://b"), "sqlite:///old.db", local)
    with pytest.raises(SweepError, match="MLflow off"):
        choose_tracking_uri(SweepOptions(tracking_uri="http://b"), "", local)


# ---- Tune set-up --------------------------------------------------------------------------------------------------


def test_the_trainable_holds_shared_settings_and_the_searcher_hands_out_the_rest(tmp_path: Path) -> None:
    settings = [t.config.experiment_settings() for t in SMOKE.trials]
    shared, points = split_settings(settings)
    assert {"model", "epochs", "cycles"} <= set(shared) and not {"method", "ap", "seed"} & set(shared)
    assert [{**shared, **p} for p in points] == settings
    # A trial's Tune config is its name and what differs; the trainable puts the group's shared settings under it.
    group_shared, configs = planned_points(SMOKE, SMOKE.groups[0])
    trials = SMOKE.trials_of(SMOKE.groups[0])
    assert [c[TRIAL_NAME] for c in configs] == [t.name for t in trials] and not set(group_shared) & set(configs[0])
    assert [trial_config(c, shared=group_shared) for c in configs] == [t.config for t in trials]
    assert [SMOKE.catalog().trial_of(c) for c in configs] == list(trials)
    searcher = PlanSearcher(points)
    assert [searcher.suggest(f"t{i}") for i in range(2)] == points[:2]
    searcher.save(str(tmp_path / "searcher.json"))
    restored = PlanSearcher(points)
    restored.restore(str(tmp_path / "searcher.json"))
    rest = [restored.suggest(f"t{i}") for i in range(len(points) - 2)]
    assert rest == points[2:] and restored.suggest("last") == Searcher.FINISHED


@pytest.mark.parametrize(("mode", "samples"), [("grid", 1), ("random", 3), ("optuna", 3 * 2), ("hyperopt", 3 * 2)])
def test_each_search_mode_is_tunes_own(mode: str, samples: int) -> None:
    plan = expand(hparam_grid.SPEC, "smoke", methods=("GP",), seeds=2, search_mode=mode, num_samples=3)
    space, algorithm, num_samples = search_setup(plan, plan.groups[0], SearchOptions(search=mode, num_samples=3))
    assert num_samples == samples
    assert type(algorithm).__name__ == {"grid": "BasicVariantGenerator", "random": "BasicVariantGenerator"}.get(
        mode, "Repeater"
    )
    assert space["model"] == "mlp" and space["cycles"] == plan.search_group(plan.groups[0]).base.pruning.cycles
    # grid and random sweep the seeds as a Tune grid; the Repeater's index is the seed for the others
    assert ("seed" in space) == (mode in ("grid", "random"))


def test_repeat_index_is_the_seed_and_runtime_settings_come_beside_the_config() -> None:
    config = trial_config({"model": "mlp", "lr": 0.02, REPEAT_INDEX: 1}, {"device": "cpu", "cpu_threads": 1})
    assert (config.seed, config.optimizer.lr, config.runtime.device, config.runtime.cpu_threads) == (2, 0.02, "cpu", 1)


# ---- catalog and names --------------------------------------------------------------------------------------------


def test_catalog_names_planned_and_searched_trials() -> None:
    trial = SMOKE.by_name()["mlp-lp-ap-seed2"]
    catalog = SMOKE.catalog()
    assert catalog.describe(trial.config.replace(device="cuda", cpu_threads=3)) == trial  # runtime ignored
    # A planned trial's name travels in its config; the namer Tune stores with every trial holds no plan.
    config = {**trial.config.experiment_settings(), TRIAL_NAME: trial.name}
    stub = Trial("train_trial", config=config, trial_id="abc12_00003", stub=True)
    assert TrialNamer()(stub) == "mlp-lp-ap-seed2"
    assert TrialNamer(with_id=True)(stub) == "mlp-lp-ap-seed2_abc12_00003"
    assert trial_config(config) == trial.config  # the name is not a setting
    assert len(pickle.dumps(TrialNamer("mlp-gp", ("batch_size", "lr", "epochs"), numbered=True))) < 300

    base = GRID.search_group("digits-mlp-gp").base
    point = base.replace(batch_size=128, lr=0.05, epochs=4, seed=2)
    described = GRID.catalog().describe(point, "abc12_00007")
    assert described.name == "mlp-gp-bs128-lr0.05-ep4-seed2" and described.labels["seed"] == 2
    group = GRID.search_group("digits-mlp-gp")
    searched = Trial("train_trial", config=point.experiment_settings(), trial_id="abc12_00007", stub=True)
    assert TrialNamer(group.stem, tuple(GRID.search.axes))(searched) == described.name  # the same name as the catalog's
    sampled = expand(hparam_grid.SPEC, "smoke", methods=("GP",), search_mode="optuna", num_samples=2)
    assert sampled.catalog().describe(point, "abc12_00007").name.endswith("-seed2-00007")  # points may repeat
    assert sampled.catalog().describe(point, "e6da6f37").name.endswith("-seed2-e6da6f37")  # a searcher's trial id
    with pytest.raises(KeyError, match="not part of this sweep"):
        GRID.catalog().describe(point.replace(method="layerwise_magnitude"))


# ---- best point ---------------------------------------------------------------------------------------------------


def test_best_point_is_chosen_by_its_mean_validation_accuracy_over_seeds_among_complete_points() -> None:
    def final(point: tuple[int, float, int], seed: int, acc: float, cycle: int = 4) -> dict:
        bs, lr, epochs = point
        return {
            "trial": f"{point}-{seed}",
            "group": "digits-mlp-gp",
            "seed": seed,
            "batch_size": bs,
            "lr": lr,
            "epochs": epochs,
            "cycle": cycle,
            "final_cycle": 4,
            "val_acc": acc,
            "test_acc": 100.0 - acc,  # the test set must play no part in the choice
        }

    a, b, c = (64, 0.01, 2), (128, 0.05, 4), (64, 0.05, 2)
    rows = pd.DataFrame(
        [
            final(a, 1, 90.0),
            final(a, 2, 80.0),  # mean 85
            final(b, 1, 99.0),
            final(b, 2, 60.0),  # mean 79.5, despite the best single run
            final(c, 1, 97.0),
            final(c, 2, 96.0, cycle=2),  # stopped early on seed 2: not complete
        ]
    )
    best = best_points(rows, GRID)
    assert len(best) == 1
    row = best.iloc[0]
    assert (row.batch_size, row.lr, row.epochs, row.val_acc, row.complete_points) == (64, 0.01, 2, 85.0, 2)
    assert row.test_acc == 15.0  # reported beside it


# ---- trial logger -------------------------------------------------------------------------------------------------


def test_trial_logger_writes_one_child_run_per_trial_and_skips_steps_it_has(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = tracking.TrackingStore(uri).start_parent_run(
        "unit", None, "unit parent", {"sweep": "unit"}, {"preset": "smoke"}
    )
    trial = SMOKE.by_name()["mlp-gp-ap-seed1"]
    tune_trial = Trial("train_trial", config=trial.config.experiment_settings(), trial_id="abc12_00000", stub=True)
    result = {
        "cycle": 0,
        "test_acc": 50.0,
        "weights_remaining": 100.0,
        "dnr": 0.3,
        "node_id": "n1",
        "removal_events": "[]",
    }

    logger = MlflowTrialLogger(parent, SMOKE.catalog(), {"sweep": "unit"})
    logger.on_trial_start(0, [], tune_trial)
    logger.on_trial_result(0, [], tune_trial, result)
    # A resumed driver (the logger as Tune unpickles it: no client, no cached runs) finds the same child run and does
    # not log cycle 0 again.
    again = pickle.loads(pickle.dumps(logger))
    again.on_trial_result(0, [], tune_trial, result)
    again.on_trial_result(0, [], tune_trial, {**result, "cycle": 1, "test_acc": 60.0, "weights_remaining": 80.0})
    again.on_trial_complete(0, [], tune_trial)

    client = MlflowClient(uri)
    runs = client.search_runs([parent.experiment_id], filter_string=f"tags.`{tracking.PARENT_TAG}` = '{parent.run_id}'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "mlp-gp-ap-seed1" and run.info.status == "FINISHED"
    assert run.data.tags["method"] == "global_magnitude" and run.data.tags["method_label"] == "GP"
    assert run.data.params["lr"] == str(trial.config.optimizer.lr)
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "test_acc")] == [(0, 50.0), (1, 60.0)]
    assert run.data.tags["early_stopped"] == "true"  # ended after cycle 1 of 16


# ---- parent run view ----------------------------------------------------------------------------------------------


def test_parent_run_holds_the_protocol_headline_metrics_and_the_rendered_table(tmp_path: Path) -> None:
    params = protocol_params(SMOKE)
    assert params["cycles"] == "16" and params["epochs"] == "8" and params["model"] == "mlp"
    assert params["axis.method"] == "GP, LP" and params["axis.variant"] == "no AP, AP" and params["axis.seeds"] == "3"
    assert not {"dry_run", "resume", "progress", "list", "seed", "ap"} & set(params)  # flags and axes stay out

    rows = pd.DataFrame(
        [
            {"dataset": "digits", "network": "mlp", "method": "GP", "variant": variant, "seed": seed, "cycle": cycle,
             "weights_remaining": 100 * 0.8**cycle, "test_acc": 90.0 + cycle + seed + (1.5 if variant == "AP" else 0)}
            for variant in ("no AP", "AP") for seed in (1, 2) for cycle in (0, 1)
        ]
    )  # fmt: skip
    metrics = {(m.key, m.step): m.value for m in headline_metrics(rows, SMOKE)}
    assert metrics[("test_acc/mlp/GP/no AP", 1)] == 92.5 and metrics[("weights_remaining/mlp/GP/AP", 1)] == 80.0
    assert metrics[("delta/mlp/GP/AP", 0)] == 1.5 and ("delta/mlp/GP/no AP", 0) not in metrics

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = tracking.TrackingStore(uri).start_parent_run("view", None, "view parent", {}, params)
    rows = rows.assign(level=rows["weights_remaining"].round(1), trial="t", dnr=0.5)  # as report.collect gives them
    client = MlflowClient(uri)
    child = client.create_run(parent.experiment_id, tags={"mlflow.parentRunId": parent.run_id}, run_name="mlp-gp-ap")
    log_results(parent, rows, SMOKE, build_table(rows, SMOKE), draw_comparison(rows, SMOKE, tmp_path)[0])
    assert client.get_experiment(parent.experiment_id).tags[tracking.EXPERIMENT_KIND] == "custom_model_development"
    assert [m.step for m in client.get_metric_history(parent.run_id, "delta/mlp/GP/AP")] == [0, 1]
    assert {"table.json", "report.html"} <= {a.path for a in client.list_artifacts(parent.run_id)}
    assert client.get_run(parent.run_id).data.params["axis.method"] == "GP, LP"
    page = Path(client.download_artifacts(parent.run_id, "report.html", str(tmp_path))).read_text()
    # Self-contained: nothing fetched from outside; the plot is embedded; every level and the Δ row are there.
    urls = re.findall(r"(?:src|href)=\"([^\"]*)\"", page)
    assert urls and all(
        url.startswith(("data:image/png;base64,", "http://127.0.0.1:5000/#/experiments/")) for url in urls
    )
    assert "<script" not in page and "@import" not in page and "url(" not in page
    assert 'src="data:image/png;base64,' in page and "position: sticky" in page
    assert all(f"<th>{level}</th>" in page for level in ("100.0", "80.0")) and "Δ(AP)" in page
    assert "sign-flip" in page and "axis.seeds" in page
    run = f"http://127.0.0.1:5000/#/experiments/{parent.experiment_id}/runs/{child.info.run_id}"
    link = f"{run}?workflowType=machine_learning"
    assert f'href="{link}"' in page and ">mlp-gp-ap</a>" in page

    # A resumed sweep logs its results again: the table is not appended to the one already there.
    def table_rows() -> int:
        return len(
            json.loads(Path(client.download_artifacts(parent.run_id, "table.json", str(tmp_path))).read_text())["data"]
        )

    logged = table_rows()
    log_results(parent, rows, SMOKE, build_table(rows, SMOKE), draw_comparison(rows, SMOKE, tmp_path)[0])
    assert table_rows() == logged > 0


def test_parent_metric_names_read_as_words() -> None:
    rows = pd.DataFrame(
        [
            {"dataset": "digits", "network": "vgg_small", "method": method, "setting": setting, "variant": variant,
             "seed": 1, "cycle": 0, "weights_remaining": 100.0, "test_acc": 90.0}
            for method, setting in (("DemP", "λ=0.001"), ("NS", "50%"))
            for variant in ("no AP", "AP")
        ]
    )  # fmt: skip
    names = {m.key for m in headline_metrics(rows, SMOKE)}
    assert "delta/vgg_small/DemP/lambda 0.001/AP" in names and "test_acc/vgg_small/NS/50pct_pruned/AP" in names
    assert not [name for name in names if "__" in name or "_/" in name or name.endswith("_")]


def test_trial_logger_pauses_within_seconds_when_mlflow_is_gone(capsys: pytest.CaptureFixture[str]) -> None:
    tracking.configure_client()
    with socket.socket() as sock:  # a port nothing listens on: the server went away
        sock.bind(("127.0.0.1", 0))
        gone = f"http://127.0.0.1:{sock.getsockname()[1]}"
    parent = tracking.ParentRun(tracking.TrackingStore(gone), "1", "parentid")
    trial = SMOKE.by_name()["mlp-gp-ap-seed1"]
    tune_trial = Trial("train_trial", config=trial.config.experiment_settings(), trial_id="abc12_00000", stub=True)
    logger = MlflowTrialLogger(parent, SMOKE.catalog(), {"sweep": "unit"})
    started = time.monotonic()
    for cycle in range(3):
        logger.on_trial_result(0, [], tune_trial, {"cycle": cycle, "test_acc": 50.0, "weights_remaining": 100.0})
    logger.on_trial_complete(0, [], tune_trial)
    assert time.monotonic() - started < 30  # MLflow's defaults retry for minutes per call
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and gone in warnings[0] and "training goes on" in warnings[0]


def test_sync_with_tune_logs_exactly_the_missing_cycles_and_closes_the_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = tracking.TrackingStore(uri).start_parent_run(
        "unit", None, "unit parent", {"sweep": "unit"}, {"preset": "smoke"}
    )
    trial = SMOKE.by_name()["mlp-gp-ap-seed1"]
    settings = trial.config.experiment_settings()
    tune_trial = Trial("train_trial", config=settings, trial_id="abc12_00000", stub=True)
    rows = [{"cycle": c, "test_acc": 50.0 + c, "weights_remaining": 100.0 * 0.8**c, "dnr": 0.1} for c in range(3)]
    MlflowTrialLogger(parent, SMOKE.catalog(), {}).on_trial_result(0, [], tune_trial, rows[0])  # then MLflow went away

    last = {**rows[-1], "done": True, "trial_id": "abc12_00000", "config": settings}
    history = pd.DataFrame([{**r, "done": False, "config/lr": settings["lr"]} for r in rows])
    # The trial's worker drew its artifacts into its last checkpoint; the driver only uploads them.
    write_trial_artifacts(tmp_path / "checkpoint" / ARTIFACTS_DIR, trial.name, rows)
    checkpoint = Checkpoint.from_directory(str(tmp_path / "checkpoint"))
    result = Result(metrics=last, checkpoint=checkpoint, error=None, path=str(tmp_path), metrics_dataframe=history)
    assert sync_with_tune(parent, SMOKE.catalog(), {}, [(result, "FINISHED")]) == ""
    assert sync_with_tune(parent, SMOKE.catalog(), {}, [(result, "FINISHED")]) == ""  # a second sync adds nothing

    client = MlflowClient(uri)
    (run,) = client.search_runs(
        [parent.experiment_id], filter_string=f"tags.`{tracking.PARENT_TAG}` = '{parent.run_id}'"
    )
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "test_acc")) == [0, 1, 2]
    assert "config/lr" not in run.data.metrics
    assert {"cycles.csv", "mask_summary.csv", "plots"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/test_acc_vs_weights_remaining.png", "plots/dnr_per_cycle.png"}
    cycles_csv = client.download_artifacts(run.info.run_id, "cycles.csv", str(tmp_path / "download"))
    assert pd.read_csv(cycles_csv)["test_acc"].tolist() == [50.0, 51.0, 52.0]


def test_a_trial_is_finished_when_tunes_saved_state_says_so_not_its_status_after_ctrl_c(tmp_path: Path) -> None:
    settings = SMOKE.trials[0].config.experiment_settings()
    # Tune saved this state before its Ctrl-C clean-up marked the running trial TERMINATED in memory.
    saved = {"b": "TERMINATED", "r": "RUNNING", "p": "PENDING", "e": "ERROR"}
    trials = [[json.dumps({"trial_id": tid, "status": status}), "{}"] for tid, status in saved.items()]
    (tmp_path / "experiment_state-2026-11-22_10-00-00.json").write_text(json.dumps({"trial_data": []}))
    (tmp_path / "experiment_state-2026-11-22_10-00-05.json").write_text(json.dumps({"trial_data": trials}))
    results = [
        Result(metrics={"trial_id": tid, "config": settings, "done": False}, checkpoint=None, error=None, path="")
        for tid in [*saved, "never-saved"]
    ]
    outcomes = [outcome for _, outcome in trial_outcomes(results, str(tmp_path))]
    assert outcomes == ["FINISHED", "unfinished", "unfinished", "FAILED", "unfinished"]


@pytest.mark.integration  # two processes creating MLflow's schema: a minute or more on a loaded machine
def test_two_sweeps_creating_one_sqlite_store_at_once_both_succeed(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    go = tmp_path / "go"
    # Each imports MLflow first, then waits for the same moment to create its experiment in the new store.
    script = (
        "import sys, time; from pathlib import Path; from sweeps.engine import tracking\n"
        "print('ready', flush=True)\n"
        "while not Path(sys.argv[3]).exists(): time.sleep(0.01)\n"
        "tracking.TrackingStore(sys.argv[1]).open_parent_run('', '', sys.argv[2], {}, {}, None)"
    )
    sweeps = [
        subprocess.Popen(
            [sys.executable, "-c", script, uri, f"sweep{index}", str(go)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(2)
    ]
    for sweep in sweeps:
        assert sweep.stdout is not None and sweep.stdout.readline().strip() == "ready"
    go.touch()
    errors = [sweep.communicate(timeout=300)[1] for sweep in sweeps]
    assert [sweep.returncode for sweep in sweeps] == [0, 0], errors
    client = MlflowClient(uri)
    for name in ("sweep0", "sweep1"):
        assert len(client.search_runs([client.get_experiment_by_name(name).experiment_id])) == 1


def test_every_worker_of_a_sweeps_ray_runs_the_quiet_shutdown_setup_first() -> None:
    """Ray's SIGTERM at shutdown must not print SystemExit tracebacks from workers (seen in CI): each worker of the
    sweep's job has the hook in place before it runs anything."""
    import ray

    from sweeps.engine import tune_runner

    plan = expand(table1.SPEC, "smoke", methods=("GP",), seeds=1)
    try:
        tune_runner.connect(SweepOptions(num_cpus=1, gpus_per_trial=0.0), plan, {})

        @ray.remote(num_cpus=0)
        def hook_name() -> str:
            return sys.unraisablehook.__qualname__

        assert ray.get(hook_name.remote()) == "ignore_exit_requests_in_callbacks"
    finally:
        ray.shutdown()


# ---- checkpoint retention -----------------------------------------------------------------------------------------


def test_old_checkpoints_go_only_once_no_saved_snapshot_can_name_them(tmp_path: Path) -> None:
    retention = CheckpointRetention()
    trial = Trial("train_trial", config={}, trial_id="abc12_00000", stub=True)

    def checkpoint(index: int) -> None:
        (tmp_path / f"checkpoint_{index:06d}").mkdir()
        saved = Checkpoint.from_directory(str(tmp_path / f"checkpoint_{index:06d}"))
        retention.on_checkpoint(0, [], trial, saved)
        manager = trial.run_metadata.checkpoint_manager
        manager.register_checkpoint(_TrainingResult(saved, {"training_iteration": index}))  # as Tune goes on to do
        # The trial's saved state names its newest checkpoint only, however many cycles it has run.
        assert [r.checkpoint.path for r in manager.best_checkpoint_results] == [saved.path]

    def left() -> list[int]:
        return sorted(int(p.name.rpartition("_")[2]) for p in tmp_path.iterdir())

    for index in range(4):
        checkpoint(index)
    assert retention.get_state() is None and left() == [0, 1, 2, 3]  # snapshot 1 names 3; nothing older is safe yet
    checkpoint(4)
    checkpoint(5)
    retention.get_state()  # snapshot 2 names 5: what snapshot 1 named (3) stays, and so do the newest two
    assert left() == [3, 4, 5]
    checkpoint(6)
    retention.get_state()  # snapshot 3: 5 and newer stay; 3 and 4 are older than what snapshot 2 named
    assert left() == [5, 6]
    retention.on_trial_complete(0, [], trial)
    checkpoint_dirs_before_end = left()
    retention.on_experiment_end([trial])  # Tune's final snapshot names 6: the newest two are kept
    assert checkpoint_dirs_before_end == left() == [5, 6]
    assert len(pickle.dumps(retention)) < 1000  # Tune pickles its callbacks with the experiment: no bookkeeping in it
