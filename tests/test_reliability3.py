"""Issue #15, reliability and security round 3: the cases a hostile user found, each through the real command line.

Every refusal here is one line `error: ...` naming the value, exit 2, and nothing written.
"""

from __future__ import annotations

import subprocess
import sys
import time
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


# ---- 2. --name is one folder name ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../escape", "a/b", "..", "/abs", ".hidden", "a\\b", "x" * 200])
def test_a_name_that_is_not_one_plain_folder_name_is_refused(
    name: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    results = tmp_path / "deep" / "er" / "results"
    results.mkdir(parents=True)
    err = refused(["--name", name, "--results-dir", str(results), *TINY], capsys)
    assert f"--name {name!r}" in err
    assert tree(tmp_path) == ["deep", "deep/er", "deep/er/results"]  # nothing written, in or above the results


# ---- 7. ap-trial: argparse's mistakes are one line too ---------------------------------------------------------------


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


# ---- 11. the same sweep started twice: the second is refused at once -------------------------------------------------


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
        assert took < 20, f"refused only after {took:.0f} s"  # it took 34 s when the lock came after Ray's start
    finally:
        stop_process_group(first)
