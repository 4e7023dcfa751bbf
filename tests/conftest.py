"""Shared fixtures.

Sweep service (sweeps/, trainables/): a real `mlflow server` on 127.0.0.1 (SQLite backend, served artifacts) and
helpers that run sweep modules as the user would, in a subprocess.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SERVER_START_TIMEOUT_S = 120


def cpu_signature() -> str:
    """The CPU's vendor, family and model and torch's kernel level: float results are bit-identical only within one
    (two Xeon machines gave the same masks but other last bits of the weights, and so of losses and accuracies)."""
    import torch

    info: dict[str, str] = {}
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    cpu = f"{info.get('vendor_id', '?')} family {info.get('cpu family', '?')} model {info.get('model', '?')}"
    return f"{platform.machine()} {cpu} {torch.backends.cpu.get_cpu_capability()}"


def fixed_seed_recording(path: Path) -> tuple[list[dict], bool]:
    """The fixed-seed trials recorded on this CPU and True (compare bit for bit), or, on a CPU with no recording,
    the first recording and False (compare within what another CPU's rounding explains)."""
    recordings = json.loads(path.read_text())["recordings"]
    here = next((r for r in recordings if r["cpu"] == cpu_signature()), None)
    return (here["trials"], True) if here else (recordings[0]["trials"], False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process serving {url} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s}s")


def stop_process_group(process: subprocess.Popen, timeout_s: float = 30) -> None:
    """Stop a subprocess started with start_new_session=True, and everything it started, by its group id."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout_s)


@dataclass(frozen=True)
class MlflowServer:
    uri: str
    root: Path


def start_mlflow_server(root: Path, port: int) -> subprocess.Popen:
    """`mlflow server` with a SQLite backend and proxied artifacts under `root`; returns once it answers."""
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--serve-artifacts",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--workers",
        "1",
    ]
    with (root / "server.log").open("a") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", SERVER_START_TIMEOUT_S, process)
    except BaseException:
        stop_process_group(process)
        raise
    return process


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """`mlflow server` with a SQLite backend and proxied artifacts, so clients read artifacts back over HTTP."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    process = start_mlflow_server(root, port)
    try:
        yield MlflowServer(f"http://127.0.0.1:{port}", root)
    finally:
        stop_process_group(process)


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def sweep_command(module: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "sweeps" / f"{module}.py"), *args]


def sweep_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update(PYTHONUNBUFFERED="1", RAY_DEDUP_LOGS="1", **extra)
    return env


def run_cli(module: str, *args: str, timeout_s: float = 300, **env: str) -> CliResult:
    """Run `python sweeps/<module>.py ARGS` from the repository root, as a user would."""
    done = subprocess.run(
        sweep_command(module, *args),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=sweep_env(**env),
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


def parse_printed_table(stdout: str) -> dict[tuple[str, ...], dict[str, str]]:
    """The (first) Markdown table a sweep printed: {(network, method, variant): {weights-remaining level: cell}}.

    The pooled rows printed under it are another table: its first run of `|` lines is the table."""
    rows = stdout.splitlines()
    start = next(i for i, line in enumerate(rows) if line.startswith("|"))
    end = next((i for i in range(start, len(rows)) if not rows[i].startswith("|")), len(rows))
    lines = rows[start:end]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    labels = header.index("variant") + 1
    table = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        table[tuple(cells[:labels])] = dict(zip(header[labels:], cells[labels:], strict=True))
    return table


class Killed(Exception):
    """Stands in for a trial process killed between two cycles."""


def run_killed_after_cycle(config, cycle: int, checkpoint_dir: Path, dataset) -> None:
    """Run a trial that dies right after cycle `cycle` was checkpointed."""
    from ap_core import run_trial

    def kill(result) -> None:
        if result.cycle == cycle:
            raise Killed

    with pytest.raises(Killed):
        run_trial(config, on_cycle=kill, checkpoint_dir=checkpoint_dir, dataset=dataset)


def resumed_from_checkpoint_where(config, dataset, folder: Path, monkeypatch, wanted) -> list:
    """Run a trial writing checkpoints, keep the first one whose `meta` satisfies `wanted`, and resume a fresh trial
    from it; returns the resumed trial's results."""
    from ap_core import run_trial
    from ap_core.checkpoint import CHECKPOINT_FILE, read_checkpoint
    from ap_core.trial import TrialRunner

    kept = folder / "resume" / CHECKPOINT_FILE
    original_save = TrialRunner.save

    def save_and_keep_a_copy(self, directory):
        original_save(self, directory)
        if not kept.exists() and wanted(read_checkpoint(directory / CHECKPOINT_FILE)["meta"]):
            kept.parent.mkdir(parents=True)
            shutil.copy(directory / CHECKPOINT_FILE, kept)

    monkeypatch.setattr(TrialRunner, "save", save_and_keep_a_copy)
    run_trial(config, checkpoint_dir=folder / "run", dataset=dataset)
    monkeypatch.undo()
    assert kept.exists(), "no checkpoint matched"
    return run_trial(config, resume_from=kept.parent, dataset=dataset)


def comparable(results) -> list[dict]:
    """Everything a trial's results hold except wall-clock time."""
    return [{k: v for k, v in r.to_dict().items() if k != "seconds"} for r in results]


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """One intra-op thread for a module of tiny batches: they gain nothing from threads, and on a busy 2-core box
    threads slow such a module several times over."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary folder (Ray's unix sockets must fit in 107 characters)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="aps-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
