"""MLflow child runs of a sweep's trials, logged from the driver only.

Trials never talk to MLflow: Tune hands their results to `MlflowTrialLogger` in the driver, so a SQLite backend
sees one writer however many trials run, and a remote server sees one client. The logger finds a trial's child
run by its name under the parent run, and logs only cycles that are not logged yet, so a resumed sweep ends with
exactly one child run per trial and no duplicate or missing steps.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.result import AUTO_RESULT_KEYS

from sweeps.engine import plots
from sweeps.engine.spec import PlannedTrial, TrialCatalog
from sweeps.engine.tracking import PARENT_TAG, ParentRun, now_ms
from trainables.pruning_trial import trial_config

# Bookkeeping Tune adds to every result; the trial's own metrics are everything else that is numeric.
NOT_METRICS = {*AUTO_RESULT_KEYS, "done", "trial_id", "checkpoint_dir_name", "should_checkpoint"}
BATCH_LIMIT = 1000  # MLflow's log_batch accepts at most 1000 metrics per call


class MlflowTrialLogger(Callback):
    """One child run per planned trial: params, tags, per-cycle metrics (step = cycle), artifacts, status.

    Picklable (Tune stores it with the experiment): the client and run cache are rebuilt lazily, and the
    per-cycle rows of unfinished trials travel in Tune's callback state so a resumed trial's CSV is complete.
    """

    def __init__(self, parent: ParentRun, catalog: TrialCatalog, sweep_tags: dict[str, str]) -> None:
        self.parent = parent
        self.catalog = catalog
        self.sweep_tags = sweep_tags
        self._rows: dict[str, dict[int, dict[str, float]]] = {}
        self._client: MlflowClient | None = None
        self._runs: dict[str, tuple[str, int]] = {}  # trial name -> (run id, last logged step)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_runs": {}}

    def get_state(self) -> dict[str, Any]:
        return {"rows": self._rows}

    def set_state(self, state: dict[str, Any]) -> None:
        self._rows = state["rows"]

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.parent.tracking_uri)
        return self._client

    # ---- Tune events ------------------------------------------------------------------------------------------

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._run(trial)

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        name = self._planned(trial).name
        run_id, last_step = self._run(trial)
        step = int(result["cycle"])
        metrics = {
            k: float(v)
            for k, v in result.items()
            if k not in NOT_METRICS and isinstance(v, int | float) and not isinstance(v, bool)
        }
        self._rows.setdefault(name, {})[step] = metrics
        if step <= last_step:
            return  # re-reported after a resume: MLflow has it already
        now = now_ms()
        entries = [Metric(k, v, now, step) for k, v in metrics.items()]
        entries += _removal_metrics(result.get("removal_events"), now)
        tags = [RunTag("node_ip", str(result.get("node_ip", ""))), RunTag("node_id", str(result.get("node_id", "")))]
        for start in range(0, len(entries), BATCH_LIMIT):
            self.client.log_batch(run_id, metrics=entries[start : start + BATCH_LIMIT], tags=tags if start == 0 else [])
        self._runs[name] = (run_id, step)

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        run_id, _ = self._run(trial)
        self.client.set_tag(run_id, "attempts", str(trial.num_failures + 1))
        self.client.set_tag(run_id, "last_error", _error_summary(trial))

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finish(trial, "FINISHED", error=None)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finish(trial, "FAILED", error=_error_text(trial))

    # ---- helpers ----------------------------------------------------------------------------------------------

    def _planned(self, trial: Trial) -> PlannedTrial:
        return self.catalog.describe(trial_config(trial.config), trial.trial_id)

    def _run(self, trial: Trial) -> tuple[str, int]:
        """The trial's child run (created on first sight, found again after a resume) and its last step."""
        planned = self._planned(trial)
        name = planned.name
        if name in self._runs:
            return self._runs[name]
        found = self.client.search_runs(
            [self.parent.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{self.parent.run_id}' and tags.trial = '{name}'",
            max_results=1,
        )
        if found:
            run_id = found[0].info.run_id
            history = self.client.get_metric_history(run_id, "test_acc")
            last_step = max((m.step for m in history), default=-1)
            self.client.update_run(run_id, status="RUNNING")
        else:
            run_id = self._create_run(planned, trial.trial_id)
            last_step = -1
        self._runs[name] = (run_id, last_step)
        return run_id, last_step

    def _create_run(self, plan: PlannedTrial, trial_id: str) -> str:
        config = plan.config
        tags = {
            **self.sweep_tags,
            PARENT_TAG: self.parent.run_id,
            "trial": plan.name,
            "tune_trial_id": trial_id,
            "network": config.model,
            "dataset": config.dataset,
            "method": config.method,
            "method_label": plan.labels["method"],
            "variant": plan.labels["variant"],
            **({"setting": plan.labels["setting"]} if "setting" in plan.labels else {}),
            "ap": str(config.ap).lower(),
            "seed": str(config.seed),
            "attempts": "1",
        }
        run = self.client.create_run(self.parent.experiment_id, run_name=plan.name, tags=tags)
        self.client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in plan.params().items()])
        return run.info.run_id

    def _finish(self, trial: Trial, status: str, error: str | None) -> None:
        planned = self._planned(trial)
        name = planned.name
        run_id, last_step = self._run(trial)
        cycles = pd.DataFrame([{**m, "cycle": c} for c, m in sorted(self._rows.pop(name, {}).items())])
        tags = {"status_detail": status.lower()}
        if status == "FINISHED" and last_step < planned.config.cycles:
            tags["early_stopped"] = "true"  # a scheduler (ASHA) ended it before its last cycle
        if error is not None:
            tags["error"] = _one_line(error)
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)
        with tempfile.TemporaryDirectory() as folder:
            for path in _trial_artifacts(Path(folder), name, cycles, error):
                self.client.log_artifact(run_id, str(path), artifact_path=_artifact_dir(path))
        self.client.set_terminated(run_id, status)
        self._runs.pop(name, None)


def _removal_metrics(events_json: str | None, now: int) -> list[Metric]:
    """Channel removals as `removal/<measure>` metrics whose step is the training step of the whole trial."""
    events = json.loads(events_json) if events_json else []
    measures = ("removed", "channels_remaining", "params_remaining", "flops_remaining", "weights_remaining")
    return [Metric(f"removal/{m}", float(e[m]), now, int(e["training_step"])) for e in events for m in measures]


def _trial_artifacts(folder: Path, name: str, cycles: pd.DataFrame, error: str | None) -> list[Path]:
    """Per-cycle CSV, final mask summary (density per layer) and the trial's plots."""
    paths = []
    if error is not None:
        paths.append(folder / "error.txt")
        paths[-1].write_text(error)
    if cycles.empty:
        return paths
    paths.append(folder / "cycles.csv")
    cycles.to_csv(paths[-1], index=False)
    final = cycles.iloc[-1]
    density = {k.removeprefix("density/"): final[k] for k in cycles.columns if k.startswith("density/")}
    paths.append(folder / "mask_summary.csv")
    pd.DataFrame({"layer": list(density), "density": list(density.values())}).assign(
        cycle=int(final["cycle"]), weights_remaining=final["weights_remaining"]
    ).to_csv(paths[-1], index=False)
    plots_dir = folder / "plots"
    plots_dir.mkdir()
    paths.append(plots_dir / "test_acc_vs_weights_remaining.png")
    plots.save(plots.trial_accuracy_figure(cycles, name), str(paths[-1]))
    paths.append(plots_dir / "dnr_per_cycle.png")
    plots.save(plots.trial_dnr_figure(cycles, name), str(paths[-1]))
    return paths


def _artifact_dir(path: Path) -> str | None:
    return "plots" if path.parent.name == "plots" else None


def _error_text(trial: Trial) -> str:
    """Every failure's traceback so far; read from the driver's copy, which Tune writes before calling us."""
    path = trial.error_file
    if path is not None and Path(path).is_file():
        return Path(path).read_text()
    error = trial.get_error()  # the copy on storage, synced a little later
    return str(error) if error is not None else "trial failed without an error message"


def _error_summary(trial: Trial) -> str:
    return _one_line(_error_text(trial))


def _one_line(error: str) -> str:
    """The exception line of a traceback (`NonFiniteLossError: loss is nan at ...`), at most 500 characters."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "unknown error")[:500]
