"""Checks a sweep runs before it writes anything: Tune storage, the Ray cluster and the room it has for a trial.

Each failure is a one-line `SweepError` naming the value and what would work, so a mistyped path or an impossible
resource request ends in seconds with exit 2 instead of a traceback after the results folder was written, or a
sweep that waits forever for resources no node has.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from ap_core.paths import check_writable_dir
from sweeps.engine.options import SweepError

RAY_CONNECT_TIMEOUT_S = 10.0
# A Ray head's GCS port speaks gRPC, i.e. HTTP/2: sent the client preface and an empty SETTINGS frame, it answers
# with a SETTINGS frame of its own (frame type 4 in the fourth byte of the 9-byte frame header).
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
HTTP2_SETTINGS = 4


def storage_location(storage: str, results_dir: Path) -> str:
    """Where `--storage` points, unchecked: an absolute local path (by default `<results-dir>/ray`) or a URI."""
    if not storage:
        return str(results_dir / "ray")
    return storage if "://" in storage else str(Path(storage).resolve())


def resolve_storage(storage: str, results_dir: Path) -> str:
    """Tune's storage as an absolute local path or a URI pyarrow understands; refused in one line otherwise."""
    location = storage_location(storage, results_dir)
    if storage and "://" not in storage:
        check_writable_dir(Path(location), "--storage")
    elif storage and probe_storage(storage) == "local":
        check_writable_dir(Path(storage.split("://", 1)[1]), "--storage")
    return location


# A remote storage that accepts connections and never answers held pyarrow for minutes, deaf to SIGTERM: it is
# probed in a child process, killed after this many seconds, while this one stays free to take signals.
STORAGE_TIMEOUT_ENV = "AP_SWEEPS_STORAGE_TIMEOUT_S"
STORAGE_TIMEOUT_S = 30.0
_STORAGE_PROBE = """
import signal, sys
signal.alarm(int(float(sys.argv[2])) + 5)  # ends itself should its parent be gone
import pyarrow, pyarrow.fs
try:
    filesystem, path = pyarrow.fs.FileSystem.from_uri(sys.argv[1])
    if isinstance(filesystem, pyarrow.fs.LocalFileSystem):
        print("local")
    else:
        filesystem.get_file_info(path)
except Exception as err:
    text = str(err).strip()
    sys.exit(text.splitlines()[0] if text else type(err).__name__)
"""


def probe_storage(storage: str) -> str:
    """Open a storage URI and list its folder, within a bounded time; "local" for a local filesystem URI."""
    timeout = float(os.environ.get(STORAGE_TIMEOUT_ENV, "") or STORAGE_TIMEOUT_S)
    try:
        done = subprocess.run(
            [sys.executable, "-c", _STORAGE_PROBE, storage, str(timeout)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise SweepError(
            f"--storage {storage!r} did not answer within {timeout:g} s; check its endpoint and the network "
            f"(${STORAGE_TIMEOUT_ENV} sets the wait), or use a local or shared folder"
        ) from None
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise SweepError(
            f"--storage {storage!r} is not a usable Tune storage ({lines[-1] if lines else done.returncode}); "
            "use a local or shared folder, or s3://bucket/path"
        )
    return done.stdout.strip()


def check_ray_address(address: str) -> None:
    """Refuse a `host:port` no Ray head answers on, within seconds (ray.init would wait for minutes).

    The port must accept a connection and answer like the gRPC server a Ray head's GCS is. With Ray's TLS on
    (RAY_USE_TLS), the plain HTTP/2 greeting cannot be answered, so only the connection is checked.
    """
    if address in ("", "auto", "local") or "://" in address:
        return  # `auto` and `ray://` are resolved by Ray itself, which fails fast on them
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(f"--address {address!r} must be host:port (e.g. 10.0.0.1:6379) or 'auto'")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_CONNECT_TIMEOUT_S) as connection:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return
            answers_grpc = _answers_http2(connection)
    except OSError as err:
        raise SweepError(
            f"cannot reach a Ray cluster at --address {address!r} ({err.strerror or err}); start its head with "
            "`ray start --head`, or leave out --address for a private local Ray"
        ) from None
    if not answers_grpc:
        raise SweepError(
            f"--address {address!r} answers, but not as a Ray head (no gRPC reply); give the port `ray start "
            "--head` listens on (6379 unless --port says otherwise)"
        )


def _answers_http2(connection: socket.socket) -> bool:
    connection.sendall(HTTP2_PREFACE)
    header = b""
    try:
        while len(header) < 9:
            chunk = connection.recv(9 - len(header))
            if not chunk:
                break
            header += chunk
    except TimeoutError:
        return False
    return len(header) == 9 and header[3] == HTTP2_SETTINGS


def local_resources(num_cpus: int) -> list[dict[str, float]]:
    """What a private local Ray will have: the CPUs asked for (else all) and the GPUs torch sees."""
    import torch

    return [{"CPU": float(num_cpus or os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}]


def check_resources(
    nodes: Sequence[Mapping[str, float]], cpus_per_trial: float, gpus_per_trial: float, where: str, workers: int = 1
) -> None:
    """Refuse a trial (each of its data-parallel `workers`) that the nodes can never host: Tune would wait for it
    forever, warning once a minute."""
    wanted = {"CPU": cpus_per_trial, "GPU": gpus_per_trial}
    local = " or raise --num-cpus" if where == "the local Ray" else ""
    room = sum(
        min((node.get(kind, 0.0) // amount for kind, amount in wanted.items() if amount), default=1) for node in nodes
    )
    if not any(all(node.get(kind, 0.0) >= amount for kind, amount in wanted.items()) for node in nodes):
        most = {kind: max((node.get(kind, 0.0) for node in nodes), default=0.0) for kind in wanted}
        raise SweepError(
            f"a trial asks for {cpus_per_trial:g} CPU and {gpus_per_trial:g} GPU but no node of {where} has that "
            f"much (the largest has {most['CPU']:g} CPU, {most['GPU']:g} GPU); lower --cpus-per-trial/--gpus-per-trial"
            + local
        )
    if workers > 1 and room < workers:
        raise SweepError(
            f"a trial asks for {workers} workers of {cpus_per_trial:g} CPU and {gpus_per_trial:g} GPU but {where} "
            f"has room for {room:g}; lower --workers-per-trial or --cpus-per-trial/--gpus-per-trial" + local
        )
