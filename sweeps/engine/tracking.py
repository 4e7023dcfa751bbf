"""Where a sweep logs: the tracking-URI policy, the server check, the parent run and the sweep's tags.

The parent run is one per sweep (reopened on `--resume`); trials become its child runs (sweeps/engine/trial_logger.py).
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from sweeps.engine.options import SweepError, SweepOptions

PARENT_TAG = "mlflow.parentRunId"
EXPERIMENT_KIND = "mlflow.experimentKind"


def choose_tracking_uri(options: SweepOptions, started_on: str | None, local_store: str) -> str:
    """Where to log ("" = nowhere). A resumed sweep (`started_on` not None) keeps logging where it started."""
    if started_on is not None:
        asked = options.tracking_uri if options.mlflow else ""
        if (asked and asked != started_on) or (not options.mlflow and started_on):
            raise SweepError(
                f"cannot resume with different MLflow logging: the sweep started with "
                f"{started_on or 'MLflow off'!r}; leave out --tracking-uri/--mlflow to continue as it began"
            )
        return started_on
    if not options.mlflow:
        return ""
    return options.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "") or local_store


def check_tracking_uri(uri: str) -> None:
    """Fail fast, in one line, when an http(s) tracking server does not answer its health check."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as response:
            response.read()
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise SweepError(
            f"cannot reach MLflow tracking server {uri!r} ({reason}); start it (mlflow server ...) "
            "or leave out --tracking-uri to use the local SQLite store"
        ) from None


@dataclass(frozen=True)
class ParentRun:
    """The MLflow parent run of a sweep: tracking URI, experiment and run id."""

    tracking_uri: str
    experiment_id: str
    run_id: str


def start_parent_run(
    tracking_uri: str,
    experiment_name: str,
    artifact_location: str | None,
    run_name: str,
    tags: dict[str, str],
    params: dict[str, str],
) -> ParentRun:
    """Create the experiment if needed and a parent run for this sweep invocation."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        # MLflow 3's UI opens a training experiment (runs, charts) rather than its GenAI overview for this kind.
        else client.create_experiment(
            experiment_name, artifact_location=artifact_location, tags={EXPERIMENT_KIND: "custom_model_development"}
        )
    )
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
    return ParentRun(tracking_uri, experiment_id, run.info.run_id)


def open_parent_run(
    tracking_uri: str,
    experiment_id: str,
    run_id: str,
    experiment_name: str,
    tags: dict[str, str],
    params: dict[str, str],
    artifact_location: str | None,
) -> ParentRun | None:
    """The sweep's parent run: reopened when resuming (`run_id` given), else a new one; None when not logging."""
    if not tracking_uri:
        return None
    if run_id:
        parent = ParentRun(tracking_uri, experiment_id, run_id)
        reopen_parent_run(parent)
        return parent
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    return start_parent_run(
        tracking_uri, experiment_name, artifact_location, f"{experiment_name} {stamp}", tags, params
    )


def reopen_parent_run(parent: ParentRun) -> None:
    """Mark a resumed sweep's parent run as running again."""
    MlflowClient(parent.tracking_uri).update_run(parent.run_id, status="RUNNING")


def finish_parent_run(parent: ParentRun, status: str, artifacts: list[Path], metrics: dict[str, float]) -> None:
    client = MlflowClient(parent.tracking_uri)
    now = now_ms()
    client.log_batch(parent.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    for path in artifacts:
        client.log_artifact(parent.run_id, str(path))
    client.set_terminated(parent.run_id, status)


def close_dangling_child_runs(parent: ParentRun, failed: set[str]) -> int:
    """End child runs still RUNNING after every trial ended (a driver killed between Tune's record and ours)."""
    client = MlflowClient(parent.tracking_uri)
    query = f"tags.`{PARENT_TAG}` = '{parent.run_id}' and attributes.status = 'RUNNING'"
    closed, token = 0, None
    while True:
        page = client.search_runs([parent.experiment_id], filter_string=query, page_token=token)
        for run in page:
            client.set_terminated(run.info.run_id, "FAILED" if run.data.tags.get("trial") in failed else "FINISHED")
            closed += 1
        token = page.token
        if not token:
            return closed


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
