"""Processes a killed sweep's private Ray left behind, found by that Ray's session folder and ended on the next start.

A driver killed with SIGKILL cannot shut its private Ray down, and some of Ray's agents (`ray::DashboardAgent`,
`ray::RuntimeEnvAgent`) outlive it. While a sweep runs on a private Ray, its session folder is recorded in the sweep
folder; a clean end removes the record. The next start of the sweep holds the sweep's lock, so no driver of it is
alive: every process still using that session folder (in its command line or its open files) is a leftover of
this sweep alone, and is ended. Processes are never matched by name across the machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

SESSION_FILE = ".ray-session"


def record_session(sweep_dir: Path) -> None:
    """Note the private Ray's session folder while the sweep runs on it."""
    import ray

    node = ray._private.worker.global_worker.node
    (sweep_dir / SESSION_FILE).write_text(node.get_session_dir_path() + "\n")


def forget_session(sweep_dir: Path) -> None:
    """The private Ray was shut down: nothing of it is left."""
    (sweep_dir / SESSION_FILE).unlink(missing_ok=True)


def end_leftovers(sweep_dir: Path, grace_s: float = 5.0) -> None:
    """End what the sweep's last private Ray left running, if it was killed; say so in one line."""
    record = sweep_dir / SESSION_FILE
    try:
        session = record.read_text().strip()
    except OSError:
        return
    if not session.startswith("/") or len(Path(session).parts) < 3:  # a damaged record matches nothing
        record.unlink(missing_ok=True)
        return
    pids = processes_using(session)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            _signal(pid, signal.SIGKILL)
    if pids:
        print(
            f"ended {len(pids)} process(es) left running by this sweep's killed Ray (session {session})",
            file=sys.stderr,
        )
    record.unlink(missing_ok=True)


def processes_using(session: str) -> list[int]:
    """This user's processes whose command line names the session folder or that hold a file open in it."""
    prefix = session.rstrip("/") + "/"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            uses = prefix in command or command.endswith(session + " ") or _holds_open(entry, prefix)
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if uses:
            found.append(int(entry.name))
    return found


def _holds_open(process: Path, prefix: str) -> bool:
    """Whether the process has a file open under `prefix` (Ray's processes keep their session's logs open)."""
    for fd in (process / "fd").iterdir():
        try:
            if os.readlink(fd).startswith(prefix):
                return True
        except OSError:
            continue
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie has ended; it only waits for its parent
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(OSError):  # ended meanwhile
        os.kill(pid, signum)
