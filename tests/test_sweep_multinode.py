"""A sweep joins a two-node Ray cluster (`ray start` head + worker over 127.0.0.1) and runs trials on both nodes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port, run_cli, stop_process_group
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.integration

RAY = str(Path(sys.executable).with_name("ray"))
# Token authentication (Ray's default for new clusters): a joining node must be told to use the token too.
RAY_ENV = {**os.environ, "RAY_AUTH_MODE": "token"}
NODE_OPTIONS = ["--num-cpus", "1", "--object-store-memory", "100000000", "--block"]


def wait_for_port(port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def wait_for_nodes(address: str, count: int, timeout_s: float = 90) -> None:
    script = (
        "import ray, time, sys\n"
        f"ray.init(address={address!r})\n"
        f"deadline = time.monotonic() + {timeout_s}\n"
        f"while sum(n['Alive'] for n in ray.nodes()) < {count}:\n"
        "    if time.monotonic() > deadline: sys.exit(1)\n"
        "    time.sleep(0.5)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=timeout_s + 60, capture_output=True, env=RAY_ENV)


@pytest.fixture
def two_node_cluster(short_tmp: Path) -> Iterator[str]:
    """A Ray head and a worker node on this machine, each with one CPU; stopped by their process groups."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    processes = []
    try:
        processes.append(
            subprocess.Popen(
                [
                    RAY,
                    "start",
                    "--head",
                    "--port",
                    str(port),
                    "--node-ip-address",
                    "127.0.0.1",
                    "--temp-dir",
                    str(short_tmp / "ray"),
                    "--include-dashboard",
                    "false",
                    *NODE_OPTIONS,
                ],
                stdout=(short_tmp / "head.log").open("w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=RAY_ENV,
            )
        )
        wait_for_port(port)
        processes.append(
            subprocess.Popen(
                [RAY, "start", "--address", address, "--node-ip-address", "127.0.0.1", *NODE_OPTIONS],
                stdout=(short_tmp / "worker.log").open("w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=RAY_ENV,
            )
        )
        wait_for_nodes(address, 2)
        yield address
    finally:
        for process in reversed(processes):
            stop_process_group(process, timeout_s=5)


def test_sweep_runs_trials_on_both_nodes(two_node_cluster: str, tmp_path: Path) -> None:
    # Trials long enough (a few seconds) that the second starts while the first still holds the head's CPU.
    sweep = ["--methods", "GP", "--seeds", "2", "--epochs", "25", "--cycles", "3", "--progress", "false"]
    done = run_cli(
        "table1", "--address", two_node_cluster, "--results-dir", str(tmp_path), "--name", "two-nodes", *sweep,
        timeout_s=300, RAY_AUTH_MODE="token",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("two-nodes")
    children = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
    assert len({r.data.tags["node_id"] for r in children}) == 2
