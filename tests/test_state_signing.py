"""Issue #15.1: Tune's state files on storage run code when unpickled, so a sweep restores only files it signed.

A real sweep is interrupted (Ctrl-C), then its Tune state files are replaced, one at a time, by a pickle whose
`__reduce__` runs `os.system` (touching a marker file). The next `--resume`, or a plain rerun of the same
protocol, must stop with one line naming the file and exit 2, and the marker must not exist: nothing ran. With the
genuine files back, the resume completes.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import run_cli, stop_process_group, sweep_command, sweep_env

from sweeps.engine import state_signing
from sweeps.engine.options import SweepError

pytestmark = pytest.mark.integration


class Planted:
    """What a hostile user with write access to the storage leaves there."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


def plant(path: Path, marker: Path) -> None:
    payload = pickle.dumps(Planted(f"touch {marker}"))
    if path.suffix == ".json":  # Tune's experiment state: JSON carrying cloudpickled blobs
        state = json.loads(path.read_text())
        state["runner_data"] = {"_type": "CLOUDPICKLE_FALLBACK", "value": payload.hex()}
        path.write_text(json.dumps(state))
    else:
        path.write_bytes(payload)


def the_experiment(root: Path) -> Path:
    """The sweep's Tune experiment folder (its storage also holds the cycle store)."""
    (experiment,) = (root / "results" / "ray").glob("signed-*")
    return experiment


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], dict[str, str]]:
    """A real sweep stopped by Ctrl-C once Tune has saved its state; its results folder, args and environment."""
    root = tmp_path_factory.mktemp("signed")
    env = {"XDG_CONFIG_HOME": str(root / "config")}  # this user's signing key lives here, not on the storage
    (root / "work").mkdir()  # where the sweep is started from
    args = [
        "--results-dir", str(root / "results"), "--name", "signed", "--num-cpus", "1", "--max-concurrent", "1",
        "--tracking-uri", f"sqlite:///{root / 'store' / 'mlflow.db'}",  # the user's own SQLite store (#15.12)
        "--methods", "GP", "--seeds", "1", "--epochs", "1", "--cycles", "3", "--progress", "false",
    ]  # fmt: skip
    with (root / "first.log").open("w") as log:
        sweep = subprocess.Popen(
            sweep_command("table1", *args), cwd=root / "work", env=sweep_env(**env), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        storage = root / "results" / "ray"
        while not list(storage.glob("*/searcher-state-*.pkl")):  # Tune's first snapshot of its state
            assert sweep.poll() is None, (root / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "Tune never saved its state"
            time.sleep(0.2)
        os.killpg(sweep.pid, signal.SIGINT)
        sweep.wait(timeout=180)
    finally:
        stop_process_group(sweep)
    assert sweep.returncode == 130, (root / "first.log").read_text()[-3000:]
    return root, args, env


@pytest.mark.parametrize(
    "target, how",
    [("tuner.pkl", "--resume"), ("callback-states-*.pkl", "--resume"), ("searcher-state-*.pkl", "plain rerun")],
)
def test_a_planted_state_file_is_refused_and_runs_nothing(
    interrupted: tuple[Path, list[str], dict[str, str]], target: str, how: str
) -> None:
    root, args, env = interrupted
    experiment = the_experiment(root)
    genuine = snapshot(root / "results")
    # The sweep's callbacks keep no state, so Tune writes no callback-states file: a planted one is new, and Tune's
    # restore would still unpickle it.
    session = next(experiment.glob("searcher-state-*.pkl")).name.removeprefix("searcher-state-")
    victim = next(experiment.glob(target), experiment / target.replace("*.pkl", session))
    marker = root / f"ran-{victim.stem}"
    plant(victim, marker)
    planted = snapshot(root / "results")
    try:
        done = run_cli("table1", *args, *(["--resume"] if how == "--resume" else []), timeout_s=180, **env)
        assert done.returncode == 2, done.stderr[-3000:]
        err = done.stderr.strip()
        assert err.startswith("error: refusing to restore from") and victim.name in err and "\n" not in err, err
        assert not marker.exists()  # the planted command did not run
        assert snapshot(root / "results") == planted  # and nothing was written
    finally:
        for rel, content in genuine.items():
            (root / "results" / rel).write_bytes(content)
        if victim.relative_to(root / "results").as_posix() not in genuine:
            victim.unlink()


def test_experiment_state_tampering_a_foreign_key_or_a_missing_signature_is_refused(
    interrupted: tuple[Path, list[str], dict[str, str]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root, _, env = interrupted
    experiment = shutil.copytree(the_experiment(root), tmp_path / "copy")
    monkeypatch.setenv("XDG_CONFIG_HOME", env["XDG_CONFIG_HOME"])
    state_signing.verify(str(experiment))  # the genuine state passes

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "someone-else"))
    with pytest.raises(SweepError, match="no signing key here"):
        state_signing.verify(str(experiment))
    state_signing.load_key(create=True)
    with pytest.raises(SweepError, match="does not match its signature"):  # signed, but with another user's key
        state_signing.verify(str(experiment))

    monkeypatch.setenv("XDG_CONFIG_HOME", env["XDG_CONFIG_HOME"])
    victim = next(experiment.glob("experiment_state-*.json"))
    plant(victim, tmp_path / "ran")
    with pytest.raises(SweepError, match=f"{victim.name}: it does not match"):
        state_signing.verify(str(experiment))
    (experiment / state_signing.MANIFEST).unlink()
    with pytest.raises(SweepError, match="it is not signed"):
        state_signing.verify(str(experiment))
    assert not (tmp_path / "ran").exists()


def test_the_genuine_state_resumes_to_the_end(interrupted: tuple[Path, list[str], dict[str, str]]) -> None:
    root, args, env = interrupted
    done = subprocess.run(
        sweep_command("table1", *args, "--resume"), cwd=root / "work", env=sweep_env(**env), capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (root / "results" / "signed" / "signed.md").exists()
    assert not list(root.glob("ran-*"))
    # #15.12: the artifacts of a sweep tracked in the user's SQLite file are in the results folder, not ./mlruns
    assert not (root / "work" / "mlruns").exists()
    assert list((root / "results" / "mlartifacts" / "signed").rglob("cycles.csv"))


def test_a_signing_key_others_can_read_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv(state_signing.KEY_ENV, raising=False)
    state_signing.load_key(create=True)
    key = state_signing.key_path()
    assert key.stat().st_mode & 0o777 == 0o600
    key.chmod(0o644)
    with pytest.raises(SweepError, match="can be read by others"):
        state_signing.load_key(create=False)
    monkeypatch.setenv(state_signing.KEY_ENV, "the operator's secret")  # a cluster's secret wins over the file
    assert state_signing.load_key(create=False) is not None
