"""Where a sweep logs: the tracking-URI policy, the server check, the parent run and the sweep's tags.

The parent run is one per sweep (reopened on `--resume`); trials become its child runs (sweeps/engine/trial_logger.py).
"""

from __future__ import annotations

import base64
import fcntl
import http.client
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.credentials import read_mlflow_creds

from ap_core.paths import check_writable_dir
from sweeps.engine.options import SweepError

PARENT_TAG = "mlflow.parentRunId"
EXPERIMENT_KIND = "mlflow.experimentKind"


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
TRACKING_SCHEMES = ("http", "https", "sqlite", "file", "postgresql", "mysql", "mssql", "databricks")
TRACKING_ERRORS = (MlflowException, OSError)  # what an unreachable store raises (requests' errors are OSErrors)


def configure_client() -> None:
    for key, value in CLIENT_SETTINGS.items():
        os.environ.setdefault(key, value)


def check_tracking_uri(uri: str) -> None:
    """Refuse, in one line and before anything is written, a tracking URI MLflow could not log to."""
    scheme = uri.partition(":")[0].partition("+")[0] if ":" in uri else ""
    if scheme not in TRACKING_SCHEMES:
        raise SweepError(
            f"tracking URI {uri!r} has an unknown scheme; use http(s)://host:port, sqlite:///path/mlflow.db, "
            "a database URI (postgresql://...) or leave out --tracking-uri for SQLite in the results folder"
        )
    if scheme == "sqlite":
        check_sqlite_uri(uri)
        return
    if scheme == "file":
        folder = urllib.parse.urlparse(uri).path
        if not folder:
            raise SweepError(f"tracking URI {uri!r} names no folder; give file:///absolute/path/mlruns")
        check_writable_dir(Path(urllib.parse.unquote(folder)), f"the folder of tracking URI {uri!r}:")
        check_file_store_allowed(uri)
        return
    if scheme in DATABASE_SCHEMES:
        check_database_driver(uri)
        return
    if scheme not in ("http", "https"):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as response:
            response.read()
        with urllib.request.urlopen(_api_probe(uri), timeout=10) as response:
            answer = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as err:
        if isinstance(err, urllib.error.HTTPError) and err.code in (401, 403):
            raise SweepError(
                f"MLflow at {uri!r} refused the login ({err.code}): set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD (or ~/.mlflow/credentials) to an account of its basic-auth app"
            ) from None
        if isinstance(err, urllib.error.HTTPError | json.JSONDecodeError):
            raise SweepError(
                f"{uri!r} answers but is not an MLflow tracking server ({err}); check the host and port"
            ) from None
        reason = getattr(err, "reason", err)
        raise SweepError(
            f"cannot reach MLflow tracking server {uri!r} ({reason}); start it (mlflow server ...) "
            "or leave out --tracking-uri to use the local SQLite store"
        ) from None
    if not isinstance(answer, dict):
        raise SweepError(f"{uri!r} answers but is not an MLflow tracking server; check the host and port")


DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
# The Python driver SQLAlchemy loads for each database scheme, and how to install it.
DRIVER_INSTALL = {
    "psycopg": "pip install 'ap-sweeps[postgres]' (psycopg 3, SQLAlchemy's PostgreSQL driver)",
    "psycopg2": "pip install psycopg2-binary",
    "pymysql": "pip install pymysql",
    "MySQLdb": "pip install mysqlclient",
    "pyodbc": "pip install pyodbc",
}


def check_sqlite_uri(uri: str) -> None:
    """A SQLite URI must name a database file in a writable folder: `sqlite:///` names none, and `:memory:` keeps
    nothing once the sweep ends (nor does any other process see it)."""
    database = uri.partition("://")[2].removeprefix("/")
    if not database or database.endswith("/"):
        raise SweepError(
            f"tracking URI {uri!r} names no database file; give sqlite:///path/to/mlflow.db (an absolute path "
            "after the third slash: sqlite:////abs/path/mlflow.db)"
        )
    if database == ":memory:" or database.startswith(":memory:") or "mode=memory" in database:
        raise SweepError(
            f"tracking URI {uri!r} is an in-memory database: every record is lost when the sweep ends; give "
            "sqlite:///path/to/mlflow.db or leave out --tracking-uri for SQLite in the results folder"
        )
    check_writable_dir(Path(database.partition("?")[0]).parent, f"the folder of tracking URI {uri!r}:")


def check_file_store_allowed(uri: str) -> None:
    """MLflow 3 retired its file store (a long 'maintenance mode' exception at first use): say so in one line."""
    from mlflow import environment_variables

    allowed = getattr(environment_variables, "MLFLOW_ALLOW_FILE_STORE", None)
    if allowed is not None and not allowed.get():
        raise SweepError(
            f"tracking URI {uri!r}: MLflow's file store is retired (maintenance mode); use "
            "sqlite:///path/mlflow.db, or set MLFLOW_ALLOW_FILE_STORE=true to keep using it"
        )


def check_database_driver(uri: str) -> None:
    """A database URI needs its Python driver installed: name the one missing and how to install it."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        dialect = make_url(uri).get_dialect()
        dialect.import_dbapi()
    except (ArgumentError, NoSuchModuleError, ValueError) as err:
        raise SweepError(f"tracking URI {uri!r} is not a database URI SQLAlchemy understands ({err})") from None
    except ImportError as err:
        module = err.name or str(err)
        how = DRIVER_INSTALL.get(module.partition(".")[0], f"pip install {module.partition('.')[0]}")
        raise SweepError(
            f"tracking URI {uri!r} needs the database driver {module!r}, which is not installed: {how}"
        ) from None


def _api_probe(uri: str) -> urllib.request.Request:
    """A cheap MLflow API call, with the basic-auth login MLflow's own client would send (env or credentials file)."""
    request = urllib.request.Request(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1")
    login = read_mlflow_creds()
    if login.username and login.password:
        token = base64.b64encode(f"{login.username}:{login.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    return request


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
        MlflowClient(tracking_uri).update_run(run_id, status="RUNNING")
        return parent
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    with store_creation_lock(tracking_uri):
        return start_parent_run(
            tracking_uri, experiment_name, artifact_location, f"{experiment_name} {stamp}", tags, params
        )


def check_parent_run(tracking_uri: str, run_id: str, state_file: Path) -> None:
    """Refuse to continue a sweep whose parent run was deleted from MLflow (its child runs would be orphans)."""
    try:
        run = MlflowClient(tracking_uri).get_run(run_id)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise SweepError(
                f"cannot read the sweep's parent run {run_id} from {tracking_uri!r}: {err.message}"
            ) from None
        run = None
    if run is None or run.info.lifecycle_stage == "deleted":
        raise SweepError(
            f"the parent run {run_id} named in {state_file} no longer exists in MLflow at {tracking_uri!r}; "
            "rerun with --overwrite to start the sweep over"
        )


@contextmanager
def store_creation_lock(tracking_uri: str) -> Iterator[None]:
    """Serialise the first use of a shared SQLite store: two sweeps creating its schema at once corrupt it."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with database.with_name(database.name + ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            MlflowClient(tracking_uri).search_experiments(max_results=1)  # creates or upgrades the schema
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    yield


def finish_parent_run(parent: ParentRun, status: str, artifacts: list[Path], metrics: dict[str, float]) -> bool:
    """Log the table and close the parent run; False (with a one-line warning) when MLflow cannot be reached."""
    client = MlflowClient(parent.tracking_uri)
    now = now_ms()
    try:
        client.log_batch(parent.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
        for path in artifacts:
            client.log_artifact(parent.run_id, str(path))
        client.set_terminated(parent.run_id, status)
    except TRACKING_ERRORS as err:
        print(f"warning: could not close the parent run in MLflow ({short_error(err)})", file=sys.stderr)
        return False
    return True


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
