"""Kill the driver mid-sweep, rerun with --resume: every trial completes exactly once, one child run per trial.

Tune's own per-trial result logs (result.json) tell which trials ran after the resume and from which cycle;
MLflow (a real server) must end with one child run per trial, each with every cycle logged exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO, MlflowServer, run_cli, stop_process_group, sweep_command, sweep_env
from mlflow.tracking import MlflowClient

from sweeps.engine.spec import expand
from sweeps.table1 import SPEC

pytestmark = pytest.mark.integration

CYCLES = 8
# 80 epochs a cycle (~1 s on an idle CPU): the third trial is half done for several seconds while the first has
# finished, long enough for Tune to save that state and the test to see it (6 epochs, ~0.1 s, once let an idle host's
# sweep finish unseen).
EPOCHS = 80
NAME = "resume-test"
CATALOG = expand(SPEC, "smoke", methods=("GP",), seeds=3, overrides={"epochs": EPOCHS, "cycles": CYCLES}).catalog()


def child_runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name(NAME)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def logged_steps(client: MlflowClient, run_id: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, "test_acc")]


def persisted_trials(storage: Path) -> dict[str, tuple[str, int]]:
    """Trial name -> (status, last cycle) as Tune's experiment state on storage has them (what a resume sees)."""
    trials = {}
    for path in storage.glob("*/experiment_state-*.json"):
        try:
            state = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):  # being replaced right now
            return {}
        for trial_state, metadata in state["trial_data"]:
            trial, meta = json.loads(trial_state), json.loads(metadata)
            name = CATALOG.trial_of(trial["config"]).name
            trials[name] = (trial["status"], meta["last_result"].get("cycle", -1))
    return trials


def kill_when_mid_sweep(
    process: subprocess.Popen, storage: Path, timeout_s: float = 240
) -> tuple[set[str], dict[str, int]]:
    """SIGKILL the driver (and its local Ray) once Tune has recorded a finished and a half-done trial.

    Returns the finished trials, and the half-done ones with the last cycle Tune had recorded for them.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "the sweep ended before it could be interrupted"
        trials = persisted_trials(storage)
        finished = [name for name, (status, _) in trials.items() if status == "TERMINATED"]
        partial = {
            name: cycle for name, (status, cycle) in trials.items() if status == "RUNNING" and 2 <= cycle < CYCLES
        }
        if finished and partial:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
            return set(finished), partial
        time.sleep(0.1)
    pytest.fail("never saw a finished and a half-done trial at the same time")


def tune_results(storage: Path) -> dict[str, list[dict]]:
    """Every result Tune recorded, per trial name, from the trials' result.json files."""
    results: dict[str, list[dict]] = {}
    for path in storage.glob("*/*/result.json"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        results[path.parent.name.rsplit("_", 2)[0]] = lines
    return results


def test_killed_sweep_resumes_without_duplicates(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    args = [
        "--results-dir", str(tmp_path), "--tracking-uri", mlflow_server.uri, "--num-cpus", "2", "--name", NAME,
        "--methods", "GP", "--seeds", "3", "--epochs", str(EPOCHS), "--cycles", str(CYCLES), "--progress", "false",
    ]  # fmt: skip
    client = MlflowClient(mlflow_server.uri)
    with (tmp_path / "first.log").open("w") as log:
        first = subprocess.Popen(
            sweep_command("table1", *args),
            cwd=REPO,
            env=sweep_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            finished_before, partial_before = kill_when_mid_sweep(first, tmp_path / "ray")
        finally:
            stop_process_group(first)

    # Tune stamps results with whole seconds: start the resume in a fresh second, after every pre-kill result.
    resumed_at = int(time.time()) + 1
    time.sleep(resumed_at - time.time())
    done = run_cli("table1", *args, "--resume", timeout_s=300)
    assert done.returncode == 0, done.stderr[-3000:]

    planned = [t.name for t in expand(SPEC, "smoke", methods=("GP",), seeds=3).trials]
    runs = child_runs(client)
    assert sorted(r.info.run_name for r in runs) == sorted(planned)  # one child run per trial
    for run in runs:
        assert run.info.status == "FINISHED"
        assert sorted(logged_steps(client, run.info.run_id)) == list(range(CYCLES + 1))  # no gaps, no repeats
        cycles_csv = client.download_artifacts(run.info.run_id, "cycles.csv", str(tmp_path / run.info.run_id))
        assert [int(line.split(",")[0]) for line in Path(cycles_csv).read_text().splitlines()[1:]] == list(
            range(CYCLES + 1)
        )

    # GP with and without AP share each seed's dense cycle: across the kill and the resume, one trial of each pair
    # trained it and the other started from the stored one
    for seed in (1, 2, 3):
        pair = [r for r in runs if r.data.tags["seed"] == str(seed)]
        assert sorted("reused_from" in r.data.tags for r in pair) == [False, True], seed

    results = tune_results(tmp_path / "ray")
    assert sorted(results) == sorted(planned)
    for name in finished_before:  # not rerun
        assert all(r["timestamp"] < resumed_at for r in results[name])
    for name, cycle in partial_before.items():  # continued from its last checkpoint, not from scratch
        after = [r["cycle"] for r in results[name] if r["timestamp"] >= resumed_at]
        assert after and 0 < min(after) <= cycle + 1
        assert max(after) == CYCLES

    parents = [
        r
        for r in client.search_runs([client.get_experiment_by_name(NAME).experiment_id])
        if r.data.tags.get("sweep.role") == "parent"
    ]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
