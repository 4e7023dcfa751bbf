"""Issue #15, reliability and security round 3: the cases a hostile user found, each through the real command line.

Every refusal here is one line `error: ...` naming the value, exit 2, and nothing written.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, run_cli, stop_process_group, sweep_command, sweep_env

from sweeps import table1
from sweeps.engine.driver import main

TINY = ["--methods", "GP", "--seeds", "1", "--epochs", "1", "--cycles", "1", "--progress", "false"]


def refused(argv: list[str], capsys: pytest.CaptureFixture[str], spec=table1.SPEC) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(spec, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---- 2. --name is one folder name ----


@pytest.mark.parametrize("name", ["../../escape", "a/b", "..", "/abs", ".hidden", "a\\b", "x" * 200])
def test_a_name_that_is_not_one_plain_folder_name_is_refused(
    name: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    results = tmp_path / "deep" / "er" / "results"
    results.mkdir(parents=True)
    err = refused(["--name", name, "--results-dir", str(results), *TINY], capsys)
    assert f"--name {name!r}" in err
    assert tree(tmp_path) == ["deep", "deep/er", "deep/er/results"]  # nothing written, in or above the results


# ---- 7. ap-trial: argparse's mistakes are one line too ----


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--method-options", "channel_ratio"], "channel_ratio"),
        (["--epochs", "many"], "many"),
        (["--bogus"], "--bogus"),
    ],
)
def test_ap_trial_flag_mistakes_are_one_line(argv: list[str], named: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ap_core", *argv], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 2
    err = done.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and named in err and "usage" not in err


# ---- 11. the same sweep started twice: the second is refused at once ----


def test_the_same_sweep_started_twice_is_refused_within_seconds(tmp_path: Path) -> None:
    args = ["--results-dir", str(tmp_path), "--name", "twice", "--mlflow", "false", "--num-cpus", "1", *TINY]
    with (tmp_path.parent / f"{tmp_path.name}-first.log").open("w") as log:
        first = subprocess.Popen(
            sweep_command("table1", *args), cwd=REPO, env=sweep_env(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "twice" / ".lock").exists():  # the first holds the folder
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        started = time.monotonic()
        second = run_cli("table1", *args, timeout_s=120)
        took = time.monotonic() - started
        assert second.returncode == 2, second.stderr[-2000:]
        assert "already running in another process" in second.stderr and second.stderr.count("\n") == 1
        stop_process_group(first)
        # As soon as the plan is made: about what a dry run takes (imports, plan), not Ray's start on top (34 s).
        started = time.monotonic()
        assert run_cli("table1", *args, "--dry-run", timeout_s=120).returncode == 0
        planning = time.monotonic() - started
        assert took < 2 * planning + 5, f"refused after {took:.0f} s; planning alone takes {planning:.0f} s"
    finally:
        stop_process_group(first)


# ---- 4. what every trial would refuse, the sweep refuses first ----

TRIAL_REFUSALS = {
    "more threads than CPUs": (["--cpu-threads", "2000"], "cpu_threads 2000"),
    "cycles that prune every weight": (["--cycles", "60"], "cycles 60 would prune all"),
    "a batch larger than the data": (["--batch-size", "100000000000"], "batch_size 100000000000 is larger than"),
    "a rewind step past the cycle": (
        ["--retraining", "rewind_iteration", "--rewind-step", "100000"],
        "rewind_step 100000 must be below",
    ),
    "cuda without a GPU": (["--device", "cuda"], "device 'cuda'"),
}


@pytest.mark.parametrize("argv, named", list(TRIAL_REFUSALS.values()), ids=list(TRIAL_REFUSALS))
def test_what_every_trial_would_refuse_is_refused_before_anything_starts(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import ray
    import torch

    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    results = tmp_path / "results"
    base = ["--methods", "GP", "--seeds", "1", "--epochs", "1", "--progress", "false"]
    err = refused(["--results-dir", str(results), *base, *(["--cycles", "1"] if "--cycles" not in argv else []), *argv],
                  capsys)  # fmt: skip
    assert named in err
    assert not ray.is_initialized() and not results.exists()


# ---- 5. tracking URIs that are no store ----

BAD_TRACKING_URIS = {
    "no database file": ("sqlite:///", "names no database file"),
    "in-memory database": ("sqlite:///:memory:", "in-memory database"),
    "unwritable file store": ("file:///proc/nope/mlruns", "/proc/nope/mlruns"),
    "retired file store": ("file://{tmp}/mlruns", "file store is retired"),
    "database without its driver": ("postgresql://ap:pw@127.0.0.1:1/mlflow", "ap-sweeps[postgres]"),
}


@pytest.mark.parametrize("uri, named", list(BAD_TRACKING_URIS.values()), ids=list(BAD_TRACKING_URIS))
def test_a_tracking_uri_that_cannot_keep_the_records_is_refused(
    uri: str, named: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if uri.startswith("postgresql"):
        pytest.importorskip("sqlalchemy")
        try:
            import psycopg  # noqa: F401

            pytest.skip("the PostgreSQL driver is installed here")
        except ImportError:
            pass
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.chdir(tmp_path)  # where `:memory:.lock` used to appear
    uri = uri.replace("{tmp}", str(tmp_path))
    err = refused(["--tracking-uri", uri, "--results-dir", str(tmp_path / "results"), *TINY], capsys)
    assert named in err and uri in err
    assert tree(tmp_path) == []


# ---- 8. a results folder moved elsewhere ----


@pytest.mark.parametrize("recorded", [True, False], ids=["state names its folder", "state of an older version"])
def test_resuming_a_moved_results_folder_says_it_moved_and_writes_nothing(
    recorded: bool, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    from sweeps.engine.spec import expand
    from sweeps.engine.sweep_state import SweepState

    old, new = tmp_path / "results", tmp_path / "moved"
    (new / "s").mkdir(parents=True)
    client = MlflowClient(f"sqlite:///{new / 'mlflow.db'}")  # the store went along with the folder
    experiment = client.create_experiment("s")
    run = client.create_run(experiment)
    plan = expand(table1.SPEC, "smoke", methods=("GP",), seeds=1, overrides={"epochs": 1, "cycles": 1})
    state = SweepState(
        "s", plan.fingerprint(), f"sqlite:///{old / 'mlflow.db'}", experiment, run.info.run_id,
        {"": str(old / "ray" / "s-1")}, str(old) if recorded else "",
    )  # fmt: skip
    state.write(new / "s")
    before = tree(tmp_path)
    capsys.readouterr()
    err = refused(["--resume", "--name", "s", "--results-dir", str(new), *TINY], capsys)
    assert "moved" in err and str(old) in err and f"ln -s {new} {old}" in err
    assert tree(tmp_path) == before and not old.exists()  # no empty store at the old path


def test_a_sweep_whose_state_another_version_wrote_is_refused_before_its_tune_state_is_read(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Tune restores its pickled callbacks on resume: state from a version whose callbacks had other attributes
    ended in an AttributeError traceback mid-resume (a sweep interrupted under the previous release)."""
    from mlflow.tracking import MlflowClient

    from sweeps.engine.spec import expand
    from sweeps.engine.sweep_state import STATE_FILE, SweepState

    results = tmp_path / "results"
    (results / "s").mkdir(parents=True)
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.create_experiment("s")
    run = client.create_run(experiment)
    plan = expand(table1.SPEC, "smoke", methods=("GP",), seeds=1, overrides={"epochs": 1, "cycles": 1})
    state = SweepState(
        "s", plan.fingerprint(), f"sqlite:///{results / 'mlflow.db'}", experiment, run.info.run_id,
        {"": str(results / "ray" / "s-1")}, str(results),
    )  # fmt: skip
    state.write(results / "s")
    written = json.loads((results / "s" / STATE_FILE).read_text())
    del written["state_format"]  # as the previous release wrote it
    (results / "s" / STATE_FILE).write_text(json.dumps(written))
    before = tree(tmp_path)
    capsys.readouterr()
    err = refused(["--resume", "--name", "s", "--results-dir", str(results), *TINY], capsys)
    assert "another version of ap-sweeps (state format 1, this version resumes format 2)" in err
    assert "code_version" in err and "--overwrite" in err
    assert tree(tmp_path) == before


# ---- 6. a remote storage that never answers ----


class SilentEndpoint:
    """A TCP server on 127.0.0.1 that accepts connections and never answers (an S3 endpoint gone deaf)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connected = threading.Event()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(connection)
            self.connected.set()

    def close(self) -> None:
        self.sock.close()
        for connection in self.held:
            connection.close()


@pytest.fixture
def silent_s3() -> Iterator[tuple[str, dict[str, str]]]:
    endpoint = SilentEndpoint()
    uri = f"s3://ap-bucket/sweeps?endpoint_override=127.0.0.1:{endpoint.port}&scheme=http&region=us-east-1"
    # Credentials of its own, so the S3 client asks no metadata service (nothing outside 127.0.0.0/8 is contacted)
    env = {"AWS_ACCESS_KEY_ID": "ap", "AWS_SECRET_ACCESS_KEY": "ap", "AWS_EC2_METADATA_DISABLED": "true"}
    try:
        yield uri, env
    finally:
        endpoint.close()


def test_a_storage_that_never_answers_is_refused_in_bounded_time(
    silent_s3: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    uri, env = silent_s3
    started = time.monotonic()
    done = run_cli("table1", "--storage", uri, "--results-dir", str(tmp_path / "results"), *TINY, timeout_s=120,
                   AP_SWEEPS_STORAGE_TIMEOUT_S="3", **env)  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    err = done.stderr.strip()
    assert err.startswith("error: --storage") and "did not answer within 3 s" in err and "\n" not in err
    assert time.monotonic() - started < 60
    assert tree(tmp_path) == []  # no mlflow.db, no sweep.json


def test_sigterm_ends_a_sweep_waiting_for_its_storage(silent_s3: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    uri, env = silent_s3
    sweep = subprocess.Popen(
        sweep_command("table1", "--storage", uri, "--results-dir", str(tmp_path / "results"), *TINY),
        cwd=REPO, env=sweep_env(AP_SWEEPS_STORAGE_TIMEOUT_S="300", **env), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not any(tmp_path.rglob("*")) and time.monotonic() < deadline:  # the sweep has claimed its folder
            time.sleep(0.1)
        time.sleep(2)  # and is waiting on the endpoint
        sweep.terminate()
        sweep.wait(timeout=10)  # it hung over 150 s, ignoring SIGTERM
    finally:
        stop_process_group(sweep)


# ---- 10. what a killed sweep's Ray left running ----


def test_the_next_start_ends_what_the_killed_sweeps_ray_left_running(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from sweeps.engine.leftover_ray import SESSION_FILE

    sessions = {name: tmp_path / name / "logs" for name in ("session_ours", "session_other")}
    for logs in sessions.values():
        logs.mkdir(parents=True)
    # Ray's agents rename themselves (`ray::DashboardAgent`): what ties them to the session is the log they hold open
    hold = "import os, time; handle = open(os.environ['LOG'], 'a'); print('ready', flush=True); time.sleep(300)"
    agents = {}
    for name, logs in sessions.items():
        env = {**os.environ, "LOG": str(logs / "agent.log")}
        agents[name] = subprocess.Popen([sys.executable, "-c", hold], env=env, stdout=subprocess.PIPE, text=True)
    try:
        for agent in agents.values():
            assert agent.stdout is not None and agent.stdout.readline().strip() == "ready"
        sweep_dir = tmp_path / "results" / "s"
        sweep_dir.mkdir(parents=True)
        (sweep_dir / SESSION_FILE).write_text(f"{tmp_path / 'session_ours'}\n")  # its driver was SIGKILLed
        err = run_refused_after_claim(sweep_dir, capsys)
        assert agents["session_ours"].wait(timeout=10) is not None  # ended
        assert agents["session_other"].poll() is None  # another Ray's process is left alone
        assert err.count("ended 1 process(es) left running by this sweep's killed Ray") == 1
        assert not (sweep_dir / SESSION_FILE).exists()
    finally:
        for agent in agents.values():
            agent.kill()
            agent.wait()


def run_refused_after_claim(sweep_dir: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Start the sweep in `sweep_dir` with a tracking URI refused after the folder is claimed; its stderr."""
    argv = ["--name", sweep_dir.name, "--results-dir", str(sweep_dir.parent), "--tracking-uri", "sqlite:///", *TINY]
    with pytest.raises(SystemExit) as exit_info:
        main(table1.SPEC, argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


# ---- 3. a full disk ----


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs the test mounts (skipped where it cannot: mounting needs root)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> None:
    handle = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (65536, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(handle, b"\0" * chunk)
    finally:
        os.close(handle)


def test_a_state_write_on_a_full_disk_leaves_the_previous_version_whole(small_disk: Path) -> None:
    import errno

    from ap_core.paths import write_atomic

    state = small_disk / "sweep.json"
    write_atomic(state, '{"v": 1}\n')
    fill(small_disk)
    with pytest.raises(OSError) as err:
        write_atomic(state, "x" * 2**20)
    assert err.value.errno == errno.ENOSPC
    assert state.read_text() == '{"v": 1}\n' and sorted(p.name for p in small_disk.iterdir()) == [
        "filler",
        "sweep.json",
    ]


def test_tunes_state_upload_on_a_full_disk_keeps_the_last_complete_signed_state(
    small_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.fs

    from sweeps.engine import state_signing

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setattr("_thread.interrupt_main", lambda: None)  # the driver's main thread would stop Tune
    monkeypatch.setattr(state_signing, "FULL", {})
    staging, experiment = tmp_path / "staging", small_disk / "exp"
    staging.mkdir()
    state_signing.protect(str(experiment))
    (staging / "experiment_state-1.json").write_text('{"trial_data": [], "v": 1}')
    state_signing.signed_upload(str(staging), pyarrow.fs.LocalFileSystem(), str(experiment))
    fill(small_disk)
    (staging / "experiment_state-1.json").write_text('{"trial_data": [], "v": 2, "pad": "' + "x" * 2**20 + '"}')
    with pytest.raises(OSError):
        state_signing.signed_upload(str(staging), pyarrow.fs.LocalFileSystem(), str(experiment))
    assert {"path": str(experiment)} == state_signing.FULL  # the driver stops the sweep with one line, exit 3
    assert (experiment / "experiment_state-1.json").read_text() == '{"trial_data": [], "v": 1}'  # not truncated
    state_signing.verify(str(experiment))  # and still signed: `--resume` continues from it


@pytest.mark.integration
def test_a_sweep_whose_disk_fills_stops_resumably_and_resumes_once_there_is_room(small_disk: Path) -> None:
    results = small_disk  # 3 MiB: the MLflow store and the first checkpoints fill it
    args = ["--results-dir", str(results), "--name", "full", "--num-cpus", "2", *TINY[:6], "--cycles", "3",
            "--progress", "false"]  # fmt: skip
    env = {"XDG_CONFIG_HOME": str(small_disk.parent / "config")}
    full = run_cli("table1", *args, timeout_s=300, **env)
    assert full.returncode == 3, full.stderr[-3000:]
    # It was 878 lines with 18 tracebacks; what is left is one line per event (a rare worker traceback may slip by)
    assert full.stderr.count("Traceback") <= 1 and len(full.stderr.splitlines()) < 80, full.stderr[-3000:]
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no space left on the device holding") and "--resume" in last

    subprocess.run(["mount", "-o", "remount,size=200m", str(small_disk)], check=True)
    resumed = run_cli("table1", *args, "--resume", timeout_s=300, **env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (results / "full" / "full.md").exists()  # nothing was lost: the table is whole
