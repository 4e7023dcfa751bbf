"""A sweep whose trials each train on two data-parallel workers (Ray Train inside the Tune trial), end to end through
a real local Ray and `mlflow server`: the numbers of trials trained in one process, and a worker killed after a
cycle costs a retry from the trial's last checkpoint, not the trial."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import MlflowServer, run_cli
from mlflow import MlflowClient

from ap_core import run_trial
from sweeps import table1
from sweeps.engine.spec import expand

pytestmark = pytest.mark.integration

SHORT = ("--seeds", "1", "--methods", "gp", "--cycles", "3", "--epochs", "2", "--num-cpus", "2", "--progress", "false")


def train_workers() -> list[int]:
    """Live processes of Ray Train workers (Ray titles them after their actor class)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"RayTrainWorker" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile
    return found


def kill_a_worker_after_a_checkpoint(storage: Path, sweep: str, killed: list[int], stop: threading.Event) -> None:
    """Once a trial of `sweep` has saved a checkpoint, SIGKILL one of the Ray Train workers training."""
    while not stop.wait(0.2):
        workers = train_workers()
        if workers and any(storage.glob(f"{sweep}-*/*/checkpoint_*")):
            os.kill(workers[0], signal.SIGKILL)
            killed.append(workers[0])
            return


def test_two_workers_per_trial_give_the_numbers_of_one_and_survive_a_lost_worker(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=kill_a_worker_after_a_checkpoint, args=(tmp_path / "ray", "dp-two", killed, stop))
    killer.start()
    started = time.monotonic()
    try:
        done = run_cli(
            "table1", "--results-dir", str(tmp_path), "--tracking-uri", mlflow_server.uri, "--name", "dp-two",
            "--no-reuse", "--workers-per-trial", "2", *SHORT, timeout_s=600,
        )  # fmt: skip
    finally:
        stop.set()
        killer.join()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    assert killed, f"no Ray Train worker was running after a checkpoint in {time.monotonic() - started:.0f} s"
    (state,) = (tmp_path / "ray").glob("dp-two-*/experiment_state-*.json")
    assert state.read_text().count('\\"num_failures\\": 1') == 1  # the killed worker's trial, retried once

    # every cycle of every trial, the killed one's included, with the numbers of the trial trained in one process
    shared = pd.read_csv(tmp_path / "dp-two" / "trial_cycles.csv")
    plan = expand(table1.SPEC, "smoke", seeds=1, methods=("GP",), overrides={"cycles": 3, "epochs": 2})
    for trial in plan.trials:
        rows = shared[shared.trial == trial.name].sort_values("cycle")
        alone = run_trial(trial.config)
        assert rows.cycle.tolist() == [r.cycle for r in alone]
        assert rows.weights_remaining.tolist() == pytest.approx([r.weights_remaining for r in alone])
        assert rows.test_acc.tolist() == pytest.approx([r.test_acc for r in alone], abs=0.6)  # two images
        assert rows.dnr.tolist() == pytest.approx([r.dnr for r in alone], abs=1e-3)
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("dp-two")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if "trial" in r.data.tags]
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.metrics["cycle"] == 3 for r in runs)
