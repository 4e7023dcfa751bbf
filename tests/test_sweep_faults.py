"""Faults a sweep left running must survive: Ctrl-C with trials still waiting, and the MLflow server going away.

Each runs a real sweep (local Ray, a real `mlflow server`), injects the fault early, checks what the user sees (the
exit status, a resume hint, no traceback, a bounded time), then resumes and checks that MLflow holds one child
run per trial with every cycle exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    REPO,
    MlflowServer,
    free_port,
    run_cli,
    start_mlflow_server,
    stop_process_group,
    sweep_command,
    sweep_env,
)
from mlflow.tracking import MlflowClient

from sweeps.engine.spec import expand
from sweeps.table1 import SPEC

pytestmark = pytest.mark.integration

CYCLES = 3


def sweep_args(results: Path, uri: str, name: str, seeds: int, *extra: str) -> list[str]:
    return [
        "--results-dir", str(results), "--tracking-uri", uri, "--num-cpus", "2", "--name", name, "--methods", "GP",
        "--seeds", str(seeds), "--epochs", "2", "--cycles", str(CYCLES), "--progress", "false", *extra,
    ]  # fmt: skip


def start_sweep(args: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            sweep_command("table1", *args),
            cwd=REPO,
            env=sweep_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def children(client: MlflowClient, name: str) -> list:
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000) if experiment else []
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def wait_for_a_logged_cycle(client: MlflowClient, name: str, process: subprocess.Popen, timeout_s: float = 300) -> None:
    """Return once MLflow holds a first cycle of some trial (the sweep is really running)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "the sweep ended before the fault could be injected"
        if any("test_acc" in run.data.metrics for run in children(client, name)):
            return
        time.sleep(0.5)
    pytest.fail("no cycle was logged in time")


def assert_every_cycle_once(client: MlflowClient, name: str, seeds: int) -> None:
    planned = [t.name for t in expand(SPEC, "smoke", methods=("GP",), seeds=seeds).trials]
    runs = children(client, name)
    assert sorted(r.info.run_name for r in runs) == sorted(planned)  # one child run per trial
    for run in runs:
        assert run.info.status == "FINISHED", run.info.run_name
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "test_acc")]
        assert sorted(steps) == list(range(CYCLES + 1)), run.info.run_name  # every cycle, exactly once
    parents = [r for r in client.search_runs([runs[0].info.experiment_id]) if r.data.tags.get("sweep.role")]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"


def test_ctrl_c_with_trials_waiting_exits_130_and_resume_completes(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    name = "ctrl-c"
    # One trial at a time: when Ctrl-C comes, one trial runs and three wait.
    args = sweep_args(tmp_path, mlflow_server.uri, name, 2, "--max-concurrent", "1")
    client = MlflowClient(mlflow_server.uri)
    first = start_sweep(args, tmp_path / "first.log")
    try:
        wait_for_a_logged_cycle(client, name, first)
        os.killpg(first.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends: the whole foreground group
        started = time.monotonic()
        first.wait(timeout=180)
        stopped_in = time.monotonic() - started
    finally:
        stop_process_group(first)
    output = (tmp_path / "first.log").read_text()
    assert first.returncode == 130, output[-3000:]
    assert "--resume" in output and "Traceback" not in output and "TypeError" not in output
    assert stopped_in < 120
    assert not [r.info.run_name for r in children(client, name) if r.info.status == "RUNNING"]

    done = run_cli("table1", *args, "--resume", timeout_s=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_every_cycle_once(client, name, seeds=2)


def test_sigterm_stops_like_ctrl_c(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    name = "sigterm"
    client = MlflowClient(mlflow_server.uri)
    sweep = start_sweep(sweep_args(tmp_path, mlflow_server.uri, name, 1), tmp_path / "sweep.log")
    try:
        wait_for_a_logged_cycle(client, name, sweep)
        sweep.terminate()  # SIGTERM to the driver alone, as `kill` or `timeout` send it
        sweep.wait(timeout=180)
    finally:
        stop_process_group(sweep)
    output = (tmp_path / "sweep.log").read_text()
    assert sweep.returncode == 130, output[-3000:]
    assert "--resume" in output and "Traceback" not in output
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    assert runs and not [r.info.run_name for r in runs if r.info.status == "RUNNING"]


def test_mlflow_server_going_away_mid_sweep_is_survived(tmp_path: Path) -> None:
    root, port, name = tmp_path / "server", free_port(), "outage"
    root.mkdir()
    uri = f"http://127.0.0.1:{port}"
    args = sweep_args(tmp_path / "results", uri, name, 1)
    client = MlflowClient(uri)
    server = start_mlflow_server(root, port)
    sweep = start_sweep(args, tmp_path / "first.log")
    try:
        try:
            wait_for_a_logged_cycle(client, name, sweep)
        finally:
            stop_process_group(server)
        started = time.monotonic()
        sweep.wait(timeout=300)
        ended_in = time.monotonic() - started
    finally:
        stop_process_group(sweep)
    output = (tmp_path / "first.log").read_text()
    # Training went on without the server; the end says what is missing and how to get it logged.
    assert sweep.returncode == 3, output[-3000:]
    assert "Traceback" not in output and output.count("stopped answering") == 1
    assert "--resume" in output and "could not be reached" in output
    assert ended_in < 240
    assert (tmp_path / "results" / name / f"{name}.md").exists()  # the table was written all the same

    server = start_mlflow_server(root, port)  # back, with the same store
    try:
        done = run_cli("table1", *args, "--resume", timeout_s=400)
        assert done.returncode == 0, done.stderr[-3000:]
        assert_every_cycle_once(client, name, seeds=1)
    finally:
        stop_process_group(server)
