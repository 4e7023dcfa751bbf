"""The README's Python snippets that read a finished sweep run as written, in a folder where a sweep just ran with
its defaults (results/, the SQLite store): they used to name a stale experiment (KeyError) and a relative Tune
path (ArrowInvalid)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, sweep_env

pytestmark = pytest.mark.integration


def readme_snippets_reading_results() -> list[str]:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.+?)\n```", readme, re.S)
    return [block for block in blocks if re.search(r"\"(sqlite:///)?results[/\"]", block)]  # the results folder


def test_readme_snippets_run_as_written_after_a_sweep(tmp_path: Path) -> None:
    snippets = readme_snippets_reading_results()
    assert len(snippets) == 2  # ExperimentAnalysis and mlflow.search_runs
    sweep = [sys.executable, str(REPO / "sweeps" / "table1.py"), "--epochs", "1", "--cycles", "1", "--seeds", "1",
             "--methods", "GP", "--num-cpus", "2", "--progress", "false"]  # fmt: skip
    done = subprocess.run(sweep, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=sweep_env())
    assert done.returncode == 0, done.stderr[-2000:]
    for snippet in snippets:
        ran = subprocess.run(
            [sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=sweep_env()
        )
        assert ran.returncode == 0, f"{snippet}\n{ran.stderr[-2000:]}"
        assert "test_acc" in ran.stdout  # a frame with the runs' accuracies, not an empty one
        if "ExperimentAnalysis" in snippet:
            assert "config/trial_name" in ran.stdout  # Tune's frame names each trial
