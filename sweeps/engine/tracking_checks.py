"""Whether a tracking URI can hold a sweep's records: refused in one line before anything is written.

Kept apart from the store itself (sweeps/engine/tracking.py): these checks need no MLflow client, so a wrong URI is
refused without building one.
"""

from __future__ import annotations

import base64
import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from mlflow.utils.credentials import read_mlflow_creds

from ap_core.paths import check_writable_dir
from sweeps.engine.options import SweepError

TRACKING_SCHEMES = ("http", "https", "sqlite", "file", "postgresql", "mysql", "mssql", "databricks")


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
