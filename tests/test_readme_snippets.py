"""The README's Python snippets that read a finished sweep run as written, in a folder where a sweep just ran with
its defaults (results/, the SQLite store): they used to name a stale experiment (KeyError) and a relative Tune
path (ArrowInvalid). The sweep adds a plugin's method (tests/test_method_contract.py) to GP, with and without AP: what
docs/adding-a-method.md promises of a method added with no edit in the repository."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, sweep_env
from mlflow.tracking import MlflowClient
from test_method_contract import PLUGIN

pytestmark = pytest.mark.integration


def readme_snippets_reading_results() -> list[str]:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.+?)\n```", readme, re.S)
    return [block for block in blocks if re.search(r"\"(sqlite:///)?results[/\"]", block)]  # the results folder


def test_readme_snippets_run_as_written_after_a_sweep_of_a_plugin_method(tmp_path: Path) -> None:
    snippets = readme_snippets_reading_results()
    assert len(snippets) == 2  # ExperimentAnalysis and mlflow.search_runs
    sweep = [sys.executable, str(REPO / "sweeps" / "table1.py"), "--epochs", "1", "--cycles", "2", "--seeds", "1",
             "--methods", "GP", "noisy_magnitude", "--hparams", "noise.json", "--num-cpus", "2",
             "--progress", "false"]  # fmt: skip
    (tmp_path / "noise.json").write_text('{"mlp": {"noisy_magnitude": {"method_options": {"noise": 0.5}}}}')
    plugin = sweep_env(AP_SWEEPS_PLUGINS=PLUGIN)
    done = subprocess.run(sweep, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=plugin)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "noisy_magnitude" in done.stdout  # the method's own rows in the printed table
    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    children = [run for run in runs if run.data.params.get("method") == "noisy_magnitude"]
    assert sorted(run.data.params["ap"] for run in children) == ["False", "True"]
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.params["method_options.noise"] == "0.5" and run.data.tags["method_label"] == "noisy_magnitude"
        steps = client.get_metric_history(run.info.run_id, "weights_remaining")
        assert sorted(round(m.value, 1) for m in steps) == [64.0, 80.0, 100.0]
    for snippet in snippets:
        ran = subprocess.run(
            [sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=sweep_env()
        )
        assert ran.returncode == 0, f"{snippet}\n{ran.stderr[-2000:]}"
        assert "test_acc" in ran.stdout  # a frame with the runs' accuracies, not an empty one
        if "ExperimentAnalysis" in snippet:
            assert "config/trial_name" in ran.stdout  # Tune's frame names each trial
