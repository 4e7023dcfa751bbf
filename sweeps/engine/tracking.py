"""Where a sweep logs: one `TrackingStore` per invocation, whose one MLflow client makes every call of the sweep.

The driver opens (or, on `--resume`, reopens) the sweep's parent run through it; the parent view logs the results
there and the trial logger (sweeps/engine/trial_logger.py) makes each trial a child run of it. The store holds the
client, so `CLIENT_SETTINGS` bound every call alike and an unpickled copy (Tune pickles its callbacks) rebuilds it.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sweeps.engine.options import SweepError

if TYPE_CHECKING:
    import pandas as pd

PARENT_TAG = "mlflow.parentRunId"
EXPERIMENT_KIND = "mlflow.experimentKind"
BATCH_LIMIT = 1000  # MLflow's log_batch accepts at most 1000 metrics per call
SEARCH_PAGE = 10_000  # runs per page when reading a parent's child runs (MLflow allows up to 50,000)


# The driver's MLflow client, set before it is used (users may still set their own values). A server gone away must
# show within seconds, not after MLflow's default 7 retries of 120 s each: the trial logger runs inside Tune's loop.
CLIENT_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    # MLflow prints a "View run ... at: <url>" line for every run it ends on a server: dozens into the progress bar.
    # The sweep prints one link of its own, to the parent run's report.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
TRACKING_ERRORS = (MlflowException, OSError)  # what an unreachable store raises (requests' errors are OSErrors)


def configure_client() -> None:
    for key, value in CLIENT_SETTINGS.items():
        os.environ.setdefault(key, value)


@dataclass(frozen=True)
class ParentRun:
    """The MLflow parent run of a sweep: the store it lives in, its experiment and run id."""

    store: TrackingStore
    experiment_id: str
    run_id: str


class TrackingStore:
    """The MLflow store at one tracking URI and the one client that reads and writes it.

    The client is built on first use, not here: a new SQLite store must be created under `_schema_lock`, and a
    pickled copy leaves it out.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._client: MlflowClient | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}

    @property
    def _mlflow(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.uri)
        return self._client

    # ---- the parent run ----------------------------------------------------------------------------------------

    def open_parent_run(
        self,
        experiment_id: str,
        run_id: str,
        experiment_name: str,
        tags: dict[str, str],
        params: dict[str, str],
        artifact_location: str | None,
    ) -> ParentRun:
        """The sweep's parent run: reopened when resuming (`run_id` given), else a new one."""
        if run_id:
            self.reopen_run(run_id)
            return ParentRun(self, experiment_id, run_id)
        stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        with self._schema_lock():
            return self.start_parent_run(experiment_name, artifact_location, f"{experiment_name} {stamp}", tags, params)

    def start_parent_run(
        self,
        experiment_name: str,
        artifact_location: str | None,
        run_name: str,
        tags: dict[str, str],
        params: dict[str, str],
    ) -> ParentRun:
        """Create the experiment if needed and a parent run for this sweep invocation."""
        experiment = self._mlflow.get_experiment_by_name(experiment_name)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            # MLflow 3's UI opens a training experiment (runs, charts) rather than its GenAI overview for this kind.
            else self._mlflow.create_experiment(
                experiment_name, artifact_location=artifact_location, tags={EXPERIMENT_KIND: "custom_model_development"}
            )
        )
        return ParentRun(self, experiment_id, self.create_run(experiment_id, run_name, tags, params))

    def check_parent_run(self, run_id: str, state_file: Path) -> None:
        """Refuse to continue a sweep whose parent run was deleted from MLflow (its child runs would be orphans)."""
        try:
            run = self._mlflow.get_run(run_id)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise SweepError(
                    f"cannot read the sweep's parent run {run_id} from {self.uri!r}: {err.message}"
                ) from None
            run = None
        if run is None or run.info.lifecycle_stage == "deleted":
            raise SweepError(
                f"the parent run {run_id} named in {state_file} no longer exists in MLflow at {self.uri!r}; "
                "rerun with --overwrite to start the sweep over"
            )

    def finish_parent_run(
        self, parent: ParentRun, status: str, artifacts: list[Path], metrics: dict[str, float]
    ) -> bool:
        """Log the table and close the parent run; False (with a one-line warning) when MLflow cannot be reached."""
        now = now_ms()
        try:
            self.log_metrics(parent.run_id, [Metric(k, float(v), now, 0) for k, v in metrics.items()])
            for path in artifacts:
                self.log_file(parent.run_id, path)
            self.end_run(parent.run_id, status)
        except TRACKING_ERRORS as err:
            print(f"warning: could not close the parent run in MLflow ({short_error(err)})", file=sys.stderr)
            return False
        return True

    @contextmanager
    def _schema_lock(self) -> Iterator[None]:
        """Serialise the first use of a shared SQLite store: two sweeps creating its schema at once corrupt it.

        The client's first call creates (or upgrades) the schema, so it must come inside the lock.
        """
        if not self.uri.startswith("sqlite:///"):
            yield
            return
        database = Path(self.uri.removeprefix("sqlite:///"))
        database.parent.mkdir(parents=True, exist_ok=True)
        with database.with_name(database.name + ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                self._mlflow.search_experiments(max_results=1)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        yield

    # ---- runs --------------------------------------------------------------------------------------------------

    def create_run(self, experiment_id: str, name: str, tags: dict[str, str], params: dict[str, str]) -> str:
        """A new run with its tags and params; its id."""
        run = self._mlflow.create_run(experiment_id, run_name=name, tags=tags)
        self._mlflow.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
        return run.info.run_id

    def child_runs(self, parent: ParentRun) -> list[Run]:
        """Every child run of `parent`, page by page."""
        runs: list[Run] = []
        token = None
        while True:
            page = self._mlflow.search_runs(
                [parent.experiment_id],
                filter_string=f"tags.`{PARENT_TAG}` = '{parent.run_id}'",
                max_results=SEARCH_PAGE,
                page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def find_child_run(self, parent_run_id: str, trial: str) -> str | None:
        """The id of trial `trial`'s child run under parent run `parent_run_id` (any sweep, any experiment)."""
        try:
            experiment_id = self._mlflow.get_run(parent_run_id).info.experiment_id
        except MlflowException:
            return None  # logged to another store, or deleted
        runs = self._mlflow.search_runs(
            [experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.trial = '{trial}'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def run_tags(self, run_id: str) -> dict[str, str]:
        return self._mlflow.get_run(run_id).data.tags

    def logged_steps(self, run_id: str, key: str) -> list[int]:
        """The steps at which metric `key` is logged: what a resumed logger must not log again."""
        return [m.step for m in self._mlflow.get_metric_history(run_id, key)]

    def reopen_run(self, run_id: str) -> None:
        self._mlflow.update_run(run_id, status="RUNNING")

    def end_run(self, run_id: str, status: str) -> None:
        self._mlflow.set_terminated(run_id, status)

    def log_metrics(self, run_id: str, metrics: Sequence[Metric], tags: Sequence[RunTag] = ()) -> None:
        """Metrics in batches MLflow accepts, the tags with the first (nothing at all when there are no metrics)."""
        for start in range(0, len(metrics), BATCH_LIMIT):
            batch = list(metrics[start : start + BATCH_LIMIT])
            self._mlflow.log_batch(run_id, metrics=batch, tags=list(tags) if start == 0 else [])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self._mlflow.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_file(self, run_id: str, path: Path) -> None:
        self._mlflow.log_artifact(run_id, str(path))

    def log_folder(self, run_id: str, folder: Path) -> None:
        """Every file under `folder`, at the top of the run's artifacts."""
        self._mlflow.log_artifacts(run_id, str(folder))

    def artifact_paths(self, run_id: str) -> set[str]:
        """The run's top-level artifacts."""
        return {item.path for item in self._mlflow.list_artifacts(run_id)}

    def log_table(self, run_id: str, data: pd.DataFrame, artifact_file: str) -> None:
        """A table MLflow's artifact view renders (appended to one logged before under the same name)."""
        self._mlflow.log_table(run_id, data=data, artifact_file=artifact_file)


def short_error(err: BaseException) -> str:
    """One line of at most 200 characters: MLflow's connection errors nest urllib3's whole retry story."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    reason = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if reason and " failed with exception " in line:
        line = f"{line.split(' failed with exception ')[0]} failed: {reason.group(1)}"
    return line[:200]


def code_version() -> dict[str, str]:
    """The git commit of the code (with `-dirty` for local changes), else the package version."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"code_version": metadata.version("ap-sweeps")}
    return {"code_version": commit[:12] + ("-dirty" if dirty else ""), "mlflow.source.git.commit": commit}


def now_ms() -> int:
    return int(time.time() * 1000)
