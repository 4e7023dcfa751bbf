"""A sweep's saved Tune state per trial must not grow with the size of its plan (issue #20).

Tune saves every trial's state in the experiment-state file at each snapshot; anything in a trial's state that
captures the plan (the trial namers used to be closures over it) makes the file grow with trials x plan size, and
the sweep's cost per trial with its number of trials. The benchmark (`benchmarks/sweep_scale.py`) measures the
costs; this test pins the cause.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

pytestmark = pytest.mark.integration

NEAR_EMPTY = ("--epochs", "1", "--cycles", "1", "--max-train-samples", "64", "--dead-unit-window", "64")
# cloudpickle's markers for a function or class pickled by value (a closure, a lambda, a class defined in __main__)
BY_VALUE = (b"_make_function", b"_make_skeleton_class", b"_function_setstate")


def saved_state(results: Path) -> tuple[int, list[bytes]]:
    """Bytes of the sweep's experiment-state file(s), and every pickled blob Tune stored in them."""
    paths = list(results.glob("ray/*/experiment_state-*.json"))
    blobs: list[bytes] = []

    def collect(value: object) -> None:
        if isinstance(value, dict):
            if value.get("_type") == "CLOUDPICKLE_FALLBACK":
                blobs.append(bytes.fromhex(value["value"]))
            for item in value.values():
                collect(item)
        elif isinstance(value, list):
            for item in value:
                collect(item)

    for path in paths:
        for trial, runtime in json.loads(path.read_text())["trial_data"]:
            collect(json.loads(trial))
            collect(json.loads(runtime))
    return sum(path.stat().st_size for path in paths), blobs


def test_saved_state_per_trial_does_not_grow_with_the_plan_and_holds_no_pickled_function(tmp_path: Path) -> None:
    per_trial = {}
    for seeds in (1, 10):  # 2 trials, then a plan ten times larger
        results = tmp_path / f"seeds{seeds}"
        done = run_cli(
            "table1", "--results-dir", str(results), "--methods", "GP", "--seeds", str(seeds),
            "--num-cpus", "2", "--progress", "false", "--mlflow", "false", *NEAR_EMPTY, timeout_s=400,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        size, blobs = saved_state(results)
        per_trial[seeds] = size / (2 * seeds)
        assert blobs and not [blob for blob in blobs if any(marker in blob for marker in BY_VALUE)]
        assert not [blob for blob in blobs if b"TrialCatalog" in blob or b"PlannedTrial" in blob]  # no plan inside
    assert per_trial[10] <= 1.1 * per_trial[1], per_trial  # namers closed over the plan: ~4x
