"""The Tune function trainable on a real local Ray: per-cycle reports with checkpoints, shared datasets, GPU shares."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import torch
from ray import tune

from ap_core import load_dataset
from ap_core.checks import checked_config
from trainables.pruning_trial import HISTORY_FILE, PACKED_METRICS, TUNE_METRICS, dataset_key, train_trial
from trainables.worker_setup import ignore_exit_requests_in_callbacks

pytestmark = pytest.mark.integration

CYCLES = 2


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """Two CPUs and one logical GPU (Ray only schedules it; the trials themselves train on the CPU)."""
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False)
    yield
    ray.shutdown()


class RunningTrials(tune.Callback):
    """Records the most trials Tune had running at once."""

    def __init__(self) -> None:
        self.most = 0

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.most = max(self.most, sum(t.status == "RUNNING" for t in trials))


def run_tuner(
    function: Any, param_space: dict, runtime: dict, datasets: dict, resources: dict, storage: Path
) -> tuple[Any, RunningTrials]:
    running = RunningTrials()
    trainable = tune.with_parameters(function, runtime=runtime, datasets=datasets)
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space=param_space,
        run_config=tune.RunConfig(storage_path=str(storage), callbacks=[running], verbose=0),
    )
    return tuner.fit(), running


def test_reports_every_cycle_with_a_checkpoint_and_uses_the_shipped_dataset(local_ray: None, tmp_path: Path) -> None:
    base = checked_config(dict(model="mlp", dataset="digits", epochs=6, cycles=CYCLES, device="cpu"))
    arrivals = tmp_path / "arrivals"
    arrivals.mkdir()

    def train_once_both_started(config: dict, runtime: Any = None, datasets: Any = None) -> None:
        """Each trial waits (up to a minute) for the other to start: only trials running side by side get past
        at once, however fast the machine trains (a trial alone used to end before the other one started)."""
        (arrivals / config["data_dir"]).touch()
        deadline = time.monotonic() + 60
        while len(list(arrivals.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        train_trial(config, runtime, datasets)

    # Two trials whose datasets differ by key: one gets a shipped copy whose training labels are scrambled,
    # the other finds no shipped copy and loads digits itself.
    shipped = base.replace(data_dir="shipped")
    digits = load_dataset("digits")
    scrambled = dataclasses.replace(digits, y_train=digits.y_train[torch.randperm(digits.num_train)])
    # Tune's config holds the trial's settings (here the data folder too); runtime settings come beside it.
    param_space = {**base.experiment_settings(), "data_dir": tune.grid_search(["shipped", "own"])}
    datasets = {dataset_key(shipped): ray.put(scrambled)}
    results, running = run_tuner(
        train_once_both_started, param_space, {"device": "cpu"}, datasets, {"cpu": 1, "gpu": 0.5}, tmp_path
    )

    assert results.num_errors == 0
    assert running.most == 2  # two half-GPU trials shared the single GPU at the same time
    by_name = {r.config["data_dir"]: r for r in results}
    frame = results.get_dataframe()
    assert set(frame["config/data_dir"]) == {"shipped", "own"} and set(frame["config/model"]) == {"mlp"}
    for result in by_name.values():
        history = result.metrics_dataframe
        assert history["cycle"].tolist() == list(range(CYCLES + 1))
        assert history["weights_remaining"].iloc[-1] == pytest.approx(100 * 0.8**CYCLES, abs=0.05)
        assert {"dnr", "test_acc", PACKED_METRICS, "node_id"} <= set(history.columns)
        packed = json.loads(history[PACKED_METRICS].iloc[-1])  # the rest, as one string Tune keeps no statistics of
        assert {"dead_units", "train_loss", "cycle_seconds"} <= set(packed)
        assert any(key.startswith("dnr/") for key in packed) and not set(packed) & set(TUNE_METRICS)
        with result.checkpoint.as_directory() as folder:
            assert (Path(folder) / "trial.pt").is_file()
            saved = json.loads((Path(folder) / HISTORY_FILE).read_text())  # every cycle so far, for the artifacts
            assert [row["cycle"] for row in saved] == list(range(CYCLES + 1))
            assert saved[-1]["train_loss"] == packed["train_loss"]
    assert by_name["own"].metrics["test_acc"] > 80
    assert by_name["shipped"].metrics["test_acc"] < 50  # learned the scrambled labels it was shipped


def test_a_sigterm_exit_inside_a_gc_callback_prints_nothing_but_real_errors_still_show(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray's SIGTERM at shutdown must not print a traceback on the user's console (seen in CI), a bug still must."""
    monkeypatch.setattr(sys, "unraisablehook", ignore_exit_requests_in_callbacks)

    class Collected:
        pass

    def raising(error: BaseException) -> Any:
        def callback(_: Any) -> None:
            raise error

        return callback

    for error in (SystemExit(1), ValueError("a real bug")):
        thing = Collected()
        ref = weakref.ref(thing, raising(error))
        del thing
        assert ref() is None
    err = capsys.readouterr().err
    assert "SystemExit" not in err and "ValueError: a real bug" in err
