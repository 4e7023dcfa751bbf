#!/usr/bin/env python3
"""Entry point of the ap-sweeps image: start a Ray head, a Ray worker or the MLflow server from environment variables.

`ap-node start` starts the role named by AP_ROLE; `ap-node health` is the image's health check; any other command
(`ap-node python sweeps/table1.py ...`) runs as the sweep driver. Secrets are read from files (Docker secrets under
/run/secrets), never from the image, and a node refuses to start without them: Ray always runs with token
authentication, because an unauthenticated Ray endpoint runs any code it is sent.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import socket
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROLES = ("head", "worker", "mlflow")
SECRETS = Path(os.environ.get("AP_SECRETS_DIR", "/run/secrets"))
RAY_PORT = int(os.environ.get("AP_RAY_PORT", "6379"))
MLFLOW_PORT = int(os.environ.get("AP_MLFLOW_PORT", "5000"))
# Fixed ports, so a multi-host firewall opens exactly these between nodes (docker/README.md lists them).
RAY_NODE_PORTS = [
    "--node-manager-port=6380",
    "--object-manager-port=6381",
    "--runtime-env-agent-port=6382",
    "--dashboard-agent-grpc-port=6383",
    "--metrics-export-port=6384",
    "--dashboard-agent-listen-port=52365",
    "--min-worker-port=10002",
    "--max-worker-port=10999",
]


class NodeError(Exception):
    """A setting or secret that keeps this node from starting; printed as one line."""


def secret(name: str, env_override: str) -> str:
    """The content of a secret file: $<env_override> names the file, else /run/secrets/<name>."""
    path = Path(os.environ.get(env_override) or SECRETS / name)
    try:
        value = path.read_text().strip()
    except OSError as err:
        raise NodeError(
            f"secret {name!r} is missing: cannot read {path} ({err.strerror}); "
            "create the secrets with docker/make-secrets.sh"
        ) from None
    if not value:
        raise NodeError(f"secret {name!r} at {path} is empty; create the secrets with docker/make-secrets.sh")
    return value


def require_ray_token() -> None:
    """Token authentication on, with a token file present: Ray itself then refuses unauthenticated peers."""
    mode = os.environ.get("RAY_AUTH_MODE", "token")
    if mode != "token":
        raise NodeError(f"RAY_AUTH_MODE={mode!r} is refused: this image runs Ray only with RAY_AUTH_MODE=token")
    os.environ["RAY_AUTH_MODE"] = "token"
    if os.environ.get("RAY_AUTH_TOKEN"):
        return
    os.environ.setdefault("RAY_AUTH_TOKEN_PATH", str(SECRETS / "ray_auth_token"))
    secret("ray_auth_token", "RAY_AUTH_TOKEN_PATH")


def write_mlflow_credentials() -> None:
    """Let the driver (run in this container, e.g. by `docker compose exec`) log in to an MLflow with basic auth."""
    password_file = Path(os.environ.get("AP_MLFLOW_PASSWORD_FILE") or SECRETS / "mlflow_admin_password")
    if not password_file.exists():
        return
    credentials = Path.home() / ".mlflow" / "credentials"
    credentials.parent.mkdir(mode=0o700, exist_ok=True)
    credentials.touch(mode=0o600)
    credentials.write_text(
        "[mlflow]\n"
        f"mlflow_tracking_username = {os.environ.get('AP_MLFLOW_USERNAME', 'admin')}\n"
        f"mlflow_tracking_password = {secret('mlflow_admin_password', 'AP_MLFLOW_PASSWORD_FILE')}\n"
    )


def optional_args(*pairs: tuple[str, str]) -> list[str]:
    """`--flag=value` for each environment variable that is set."""
    return [f"{flag}={os.environ[var]}" for var, flag in pairs if os.environ.get(var)]


def ray_node_args() -> list[str]:
    return [
        *RAY_NODE_PORTS,
        *optional_args(
            ("AP_NODE_IP", "--node-ip-address"),
            ("AP_NUM_CPUS", "--num-cpus"),
            ("AP_NUM_GPUS", "--num-gpus"),
            ("AP_OBJECT_STORE_BYTES", "--object-store-memory"),
        ),
        *shlex.split(os.environ.get("AP_RAY_START_ARGS", "")),
        "--block",
    ]


def head_command() -> list[str]:
    require_ray_token()
    write_mlflow_credentials()
    # 127.0.0.1 unless told otherwise: with host networking that keeps the dashboard off the LAN.
    dashboard_host = os.environ.get("AP_DASHBOARD_HOST", "127.0.0.1")
    cpus = ["--num-cpus=0"] if "AP_NUM_CPUS" not in os.environ else []  # the head schedules, workers train
    return [
        "ray",
        "start",
        "--head",
        f"--port={RAY_PORT}",
        f"--dashboard-host={dashboard_host}",
        *cpus,
        *ray_node_args(),
    ]


def worker_command() -> list[str]:
    require_ray_token()
    head = os.environ.get("AP_HEAD_ADDRESS", "")
    if not head:
        raise NodeError("AP_HEAD_ADDRESS is not set; set it to the head's host:port, e.g. ray-head:6379")
    return ["ray", "start", f"--address={head}", *ray_node_args()]


def mlflow_command() -> list[str]:
    backend = os.environ.get("MLFLOW_BACKEND_STORE_URI") or postgres_uri()
    os.environ["MLFLOW_BACKEND_STORE_URI"] = backend
    artifacts = os.environ.get("AP_MLFLOW_ARTIFACTS", "s3://mlflow-artifacts")
    if artifacts.startswith("s3://"):
        os.environ.setdefault("AWS_ACCESS_KEY_ID", secret("s3_access_key", "AP_S3_ACCESS_KEY_FILE"))
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", secret("s3_secret_key", "AP_S3_SECRET_KEY_FILE"))
        ensure_bucket(urllib.parse.urlparse(artifacts).netloc)
    host = os.environ.get("AP_MLFLOW_HOST", "127.0.0.1")
    # The names a browser or client may use for this server (DNS-rebinding protection) and the web origins it trusts.
    allowed_hosts = os.environ.get(
        "AP_MLFLOW_ALLOWED_HOSTS", "mlflow,mlflow:*,localhost,localhost:*,127.0.0.1,127.0.0.1:*"
    )
    origins = os.environ.get("AP_MLFLOW_CORS_ORIGINS", "http://localhost:*,http://127.0.0.1:*")
    command = [
        "mlflow", "server", "--host", host, "--port", str(MLFLOW_PORT),
        "--workers", os.environ.get("AP_MLFLOW_WORKERS", "2"),
        "--serve-artifacts", "--artifacts-destination", artifacts,
        "--allowed-hosts", allowed_hosts, "--cors-allowed-origins", origins,
    ]  # fmt: skip
    auth = os.environ.get("AP_MLFLOW_AUTH", "basic")
    if auth == "basic":
        command += ["--app-name", "basic-auth"]
        configure_basic_auth()
    elif auth != "none":
        raise NodeError(f"AP_MLFLOW_AUTH={auth!r} is not valid; use 'basic' (the default) or 'none'")
    return command


def postgres_uri() -> str:
    password = urllib.parse.quote(secret("postgres_password", "AP_POSTGRES_PASSWORD_FILE"), safe="")
    user = os.environ.get("AP_POSTGRES_USER", "mlflow")
    host = os.environ.get("AP_POSTGRES_HOST", "postgres:5432")
    return f"postgresql+psycopg2://{user}:{password}@{host}/{os.environ.get('AP_POSTGRES_DB', 'mlflow')}"


def ensure_bucket(bucket: str, timeout_s: float = 120) -> None:
    """Create the artifact bucket on first start (S3 servers start empty); waits for the S3 endpoint to answer."""
    import boto3
    import botocore.exceptions

    s3 = boto3.client("s3", endpoint_url=os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
                s3.create_bucket(Bucket=bucket)
            return
        except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionClosedError) as err:
            if time.monotonic() > deadline:
                raise NodeError(
                    f"S3 endpoint {s3.meta.endpoint_url} did not answer within {timeout_s}s: {err}"
                ) from None
            time.sleep(2)


def configure_basic_auth() -> None:
    """MLflow's basic-auth app: users in a SQLite store on the MLflow volume, the admin password from a secret."""
    password = secret("mlflow_admin_password", "AP_MLFLOW_PASSWORD_FILE")
    os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"] = password
    # Every gunicorn worker must sign sessions with the same key; derive it from the admin secret.
    os.environ.setdefault(
        "MLFLOW_FLASK_SERVER_SECRET_KEY", hashlib.sha256(b"ap-sweeps flask " + password.encode()).hexdigest()
    )
    config = Path("/tmp/mlflow-basic-auth.ini")
    config.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {os.environ.get('AP_MLFLOW_AUTH_DB', 'sqlite:////mlflow/basic_auth.db')}\n"
        f"admin_username = {os.environ.get('AP_MLFLOW_USERNAME', 'admin')}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    os.environ["MLFLOW_AUTH_CONFIG_PATH"] = str(config)


def healthy() -> bool:
    role = os.environ.get("AP_ROLE", "")
    if role == "mlflow":
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{MLFLOW_PORT}/health", timeout=10) as response:
                return response.status == 200
        except OSError:
            return False
    if role == "head":  # `ray start` finished (it writes the address file last) and the GCS answers
        if not Path("/tmp/ray/ray_current_cluster").exists():
            return False
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", RAY_PORT)) == 0
    if role == "worker":  # the node's raylet is alive
        return "raylet" in process_names()
    return True


def process_names() -> set[str]:
    names = set()
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):  # the process ended while we looked
            names.add(comm.read_text().strip())
    return names


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["health"]:
            return 0 if healthy() else 1
        if argv[:1] in ([], ["start"]):
            role = os.environ.get("AP_ROLE", "")
            if role not in ROLES:
                raise NodeError(f"AP_ROLE={role!r} is not a role; use one of {', '.join(ROLES)}")
            command = {"head": head_command, "worker": worker_command, "mlflow": mlflow_command}[role]()
        else:  # a driver or any other command: Ray and MLflow credentials as for the head, where there are any
            if (SECRETS / "ray_auth_token").exists() or os.environ.get("RAY_AUTH_TOKEN_PATH"):
                require_ray_token()
            write_mlflow_credentials()
            command = argv
    except NodeError as err:
        print(f"ap-node: {err}", file=sys.stderr)
        return 2
    sys.stdout.flush()
    os.execvp(command[0], command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
