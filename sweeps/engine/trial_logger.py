"""MLflow child runs of a sweep's trials, logged from the driver only.

Trials never talk to MLflow: Tune hands their results to `MlflowTrialLogger` in the driver, so a SQLite backend
sees one writer however many trials run, and a remote server sees one client. The logger finds a trial's child
run by its name under the parent run, and logs only cycles that are not logged yet, so a resumed sweep ends with
exactly one child run per trial and no duplicate or missing steps.

A tracking server that stops answering must not stall training: the first failed call (bounded by
`tracking.CLIENT_SETTINGS`) prints one warning and pauses logging for the rest of the invocation. Tune keeps
every result on its storage, so `sync_with_tune` logs whatever MLflow is missing once Tune returns, or on the next
`--resume` when the server is still away.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.fs
from mlflow.entities import Metric, RunTag
from ray.tune import Callback, Checkpoint, Result
from ray.tune.experiment import Trial
from ray.tune.result import AUTO_RESULT_KEYS

from sweeps.engine.report import Outcome, cycle_rows
from sweeps.engine.spec import PlannedTrial, TrialCatalog
from sweeps.engine.tracking import PARENT_TAG, TRACKING_ERRORS, ParentRun, TrackingStore, now_ms, short_error
from trainables.pruning_trial import ARTIFACTS_DIR, PACKED_METRICS
from trainables.shared_cycles import REUSED_FROM

# Bookkeeping Tune adds to every result; the trial's own metrics are everything else that is numeric.
NOT_METRICS = {*AUTO_RESULT_KEYS, "done", "trial_id", "checkpoint_dir_name", "should_checkpoint"}


class MlflowTrialLogger(Callback):
    """One child run per planned trial: params, tags, per-cycle metrics (step = cycle), artifacts, status.

    A thin Tune callback over the parent run's `TrackingStore`, which makes every MLflow call. Picklable (Tune
    stores it with the experiment): the store's client and the run cache are rebuilt lazily. It keeps no state of
    its own: a trial's artifacts (per-cycle CSV, mask summary, plots) are drawn on its worker into every
    checkpoint, and uploaded from the last one when the trial ends.
    """

    def __init__(self, parent: ParentRun, catalog: TrialCatalog, sweep_tags: dict[str, str]) -> None:
        self.parent = parent
        self.catalog = catalog
        self.sweep_tags = sweep_tags
        self._runs: dict[str, tuple[str, int]] = {}  # trial name -> (run id, last logged step)
        self._children: dict[str, tuple[str, str]] | None = None  # trial name -> (run id, status), read once
        self._paused = False  # MLflow stopped answering during this invocation

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_runs": {}, "_children": None, "_paused": False}

    @property
    def store(self) -> TrackingStore:
        return self.parent.store

    # ---- Tune events ------------------------------------------------------------------------------------------

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._unless_paused(self._run, trial)

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        if "cycle" in result:  # a stage-one trial's per-epoch results are for its scheduler, not MLflow
            self._unless_paused(self._log_result, trial, result, _metrics(result))

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._unless_paused(self._log_recovery, trial)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._unless_paused(self._finish, trial, "FINISHED", None)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._unless_paused(self._finish, trial, "FAILED", _error_text(trial))

    # ---- after Tune -------------------------------------------------------------------------------------------

    def sync_trial(self, result: Result, outcome: str) -> None:
        """Log the cycles of a trial that MLflow lacks, from Tune's own record, and give its run its final status.

        Raises what the client raises when MLflow cannot be reached.
        """
        planned = self.catalog.trial_of(result.config, str((result.metrics or {}).get("trial_id", "")))
        run_id, status = self._find_run(planned.name)
        if run_id is None:
            run_id, status = self._create_run(planned, str((result.metrics or {}).get("trial_id", ""))), "RUNNING"
        logged = set(self.store.logged_steps(run_id, "test_acc"))
        last_cycle = -1
        for row in cycle_rows(result.metrics_dataframe).to_dict("records"):
            record = _metrics({k: v for k, v in row.items() if _present(v)})
            last_cycle = int(record["cycle"])
            if last_cycle not in logged:
                self.store.log_metrics(run_id, _step_entries(record, row.get("removal_events"), now_ms()))
        if outcome == "unfinished":
            if status == "RUNNING":
                self.store.end_run(run_id, "KILLED")  # --resume sets it running again
        elif status != outcome:
            error = str(result.error) if result.error is not None else None
            self._close(run_id, planned, outcome, last_cycle, result.checkpoint, error)

    # ---- logging, paused while MLflow is away ----------------------------------------------------------------

    def _unless_paused(self, action: Callable[..., object], *args: Any) -> None:
        """Run a logging action unless MLflow stopped answering; on its first failure, warn once and pause."""
        if self._paused:
            return
        try:
            action(*args)
        except TRACKING_ERRORS as err:
            self._paused = True
            print(
                f"warning: MLflow at {self.store.uri} stopped answering ({short_error(err)}); training goes "
                "on and what is not logged is logged from Tune's records when the sweep ends",
                file=sys.stderr,
                flush=True,
            )

    def _log_result(self, trial: Trial, result: dict[str, Any], metrics: dict[str, float]) -> None:
        name = self._planned(trial).name
        run_id, last_step = self._run(trial)
        step = int(result["cycle"])
        if step <= last_step:
            return  # re-reported after a resume: MLflow has it already
        tags = [RunTag("node_ip", str(result.get("node_ip", ""))), RunTag("node_id", str(result.get("node_id", "")))]
        if step == 0 and isinstance(reused := result.get(REUSED_FROM), str) and reused:
            tags += self._reuse_tags(json.loads(reused))
        self.store.log_metrics(run_id, _step_entries(metrics, result.get("removal_events"), now_ms()), tags)
        self._runs[name] = (run_id, step)

    def _reuse_tags(self, computed_by: dict[str, Any]) -> list[RunTag]:
        """Where a trial's first cycles come from: the run that computed them (its MLflow id where this store has it,
        else its sweep and trial), which cycles, and the cycle store's key."""
        run_id = None
        if computed_by.get("parent_run_id"):
            run_id = self.store.find_child_run(str(computed_by["parent_run_id"]), str(computed_by["trial"]))
        origin = run_id or f"{computed_by.get('sweep', '')}/{computed_by.get('trial', '')}"
        return [
            RunTag("reused_from", origin),
            RunTag("reused_cycles", f"0-{computed_by['cycle']}"),
            RunTag("reused_key", str(computed_by["key"])),
        ]

    def _log_recovery(self, trial: Trial) -> None:
        run_id, _ = self._run(trial)
        self.store.set_tags(run_id, {"attempts": str(trial.num_failures + 1), "last_error": _error_summary(trial)})

    # ---- helpers ----------------------------------------------------------------------------------------------

    def _planned(self, trial: Trial) -> PlannedTrial:
        return self.catalog.trial_of(trial.config, trial.trial_id)

    def _run(self, trial: Trial) -> tuple[str, int]:
        """The trial's child run (created on first sight, found again after a resume) and its last step."""
        planned = self._planned(trial)
        name = planned.name
        if name in self._runs:
            return self._runs[name]
        run_id, _ = self._find_run(name)
        if run_id is not None:
            last_step = max(self.store.logged_steps(run_id, "test_acc"), default=-1)
            self.store.reopen_run(run_id)
            self._known_runs()[name] = (run_id, "RUNNING")
        else:
            run_id = self._create_run(planned, trial.trial_id)
            last_step = -1
        self._runs[name] = (run_id, last_step)
        return run_id, last_step

    def _find_run(self, name: str) -> tuple[str | None, str]:
        """The id and status of the trial's child run under this sweep's parent run (None: not created yet)."""
        return self._known_runs().get(name, (None, ""))

    def _known_runs(self) -> dict[str, tuple[str, str]]:
        """The parent's child runs by trial name, read once: a search per trial would scan the experiment's runs,
        a cost per trial that grows with the number of trials."""
        if self._children is None:
            runs = self.store.child_runs(self.parent)
            self._children = {r.data.tags.get("trial", ""): (r.info.run_id, r.info.status) for r in runs}
        return self._children

    def _create_run(self, plan: PlannedTrial, trial_id: str) -> str:
        config = plan.config
        tags = {
            **self.sweep_tags,
            PARENT_TAG: self.parent.run_id,
            "trial": plan.name,
            "tune_trial_id": trial_id,
            "network": config.model,
            "dataset": config.dataset,
            "method": config.pruning.method,
            "method_label": plan.labels["method"],
            "variant": plan.labels["variant"],
            **({"setting": plan.labels["setting"]} if "setting" in plan.labels else {}),
            "ap": str(config.ap.enabled).lower(),
            "seed": str(config.seed),
            "attempts": "1",
        }
        run_id = self.store.create_run(self.parent.experiment_id, plan.name, tags, plan.params())
        self._known_runs()[plan.name] = (run_id, "RUNNING")
        return run_id

    def _finish(self, trial: Trial, status: str, error: str | None) -> None:
        planned = self._planned(trial)
        run_id, last_cycle = self._run(trial)
        self._close(run_id, planned, status, last_cycle, trial.checkpoint, error)
        self._runs.pop(planned.name, None)

    def _close(
        self,
        run_id: str,
        planned: PlannedTrial,
        status: str,
        last_cycle: int,
        checkpoint: Checkpoint | None,
        error: str | None,
    ) -> None:
        """Final tags, the artifacts of the trial's last checkpoint (and its error), then its terminal status."""
        tags = {"status_detail": status.lower()}
        if status == "FINISHED" and last_cycle < planned.config.pruning.cycles:
            tags["early_stopped"] = "true"  # a scheduler (ASHA) ended it before its last cycle
        if error is not None:
            tags["error"] = _one_line(error)
        self.store.set_tags(run_id, tags)
        with tempfile.TemporaryDirectory() as folder:
            if checkpoint is not None:
                _copy_artifacts(checkpoint, Path(folder))
            if error is not None:
                (Path(folder) / "error.txt").write_text(error)
            if any(Path(folder).iterdir()):
                self.store.log_folder(run_id, Path(folder))
        self.store.end_run(run_id, status)
        self._known_runs()[planned.name] = (run_id, status)


def sync_with_tune(
    parent: ParentRun, catalog: TrialCatalog, sweep_tags: dict[str, str], outcomes: list[Outcome]
) -> str:
    """Bring MLflow level with Tune's results; returns "" when it is, else why it could not (server away)."""
    logger = MlflowTrialLogger(parent, catalog, sweep_tags)
    try:
        for result, outcome in outcomes:
            if result.config is not None:  # a trial that never started has nothing to log
                logger.sync_trial(result, outcome)
    except TRACKING_ERRORS as err:
        return short_error(err)
    return ""


def _metrics(result: dict[str, Any]) -> dict[str, float]:
    """The trial's own numeric metrics of one result (Tune's bookkeeping and flattened config left out), the
    packed ones unpacked."""
    packed = result.get(PACKED_METRICS)
    return {
        **{
            k: float(v)
            for k, v in result.items()
            if k not in NOT_METRICS
            and not k.startswith("config/")
            and isinstance(v, int | float)
            and not isinstance(v, bool)
        },
        **({str(k): float(v) for k, v in json.loads(packed).items()} if isinstance(packed, str) else {}),
    }


def _present(value: object) -> bool:
    return not (isinstance(value, float) and math.isnan(value))


def _step_entries(metrics: dict[str, float], removal_events: object, now: int) -> list[Metric]:
    """One cycle's metrics (step = cycle) and its channel removals (step = training step)."""
    entries = [Metric(k, v, now, int(metrics["cycle"])) for k, v in metrics.items()]
    return entries + _removal_metrics(removal_events if isinstance(removal_events, str) else None, now)


def _removal_metrics(events_json: str | None, now: int) -> list[Metric]:
    """Channel removals as `removal/<measure>` metrics whose step is the training step of the whole trial."""
    events = json.loads(events_json) if events_json else []
    measures = ("removed", "channels_remaining", "params_remaining", "flops_remaining", "weights_remaining")
    return [Metric(f"removal/{m}", float(e[m]), now, int(e["training_step"])) for e in events for m in measures]


def _copy_artifacts(checkpoint: Checkpoint, folder: Path) -> None:
    """The artifacts the trial's worker drew into its checkpoint (none in a checkpoint gone from storage)."""
    source = f"{checkpoint.path}/{ARTIFACTS_DIR}"
    if checkpoint.filesystem.get_file_info(source).type != pyarrow.fs.FileType.Directory:
        return
    pyarrow.fs.copy_files(source, str(folder), source_filesystem=checkpoint.filesystem)


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
