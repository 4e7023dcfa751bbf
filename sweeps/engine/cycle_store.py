"""The store of finished cycles, as the driver keeps it: where it lives, who vouches for an entry, what it saves.

Trials write entries (`trainables.shared_cycles`); the driver signs each one as its trial reports it, with the key
that signs Tune's state (`state_signing.load_key`): an HMAC over the entry's key, cycle, file digests and the trial
that computed it, in `<store>/<key>.sig`. Before a trial may start from an entry, the driver checks the signature
and the files' digests, and hands the trial the digests it checked. An entry that fails (unsigned, signed by
another key, changed since) is moved aside with one line saying so, and its cycles are trained again.

The store lives in `<storage>/cycle-store` (Tune's `--storage`, by default `<results-dir>/ray`), so sweeps that
share a storage share their cycles; `--no-reuse` leaves it alone.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ap_core.config import file_digest
from ap_core.cycle_keys import cycle_key
from ap_core.paths import write_atomic
from sweeps.engine import state_signing
from trainables.shared_cycles import ENTRY_FILES, Reuse

STORE_FOLDER = "cycle-store"
DOMAIN = b"ap-sweeps cycle store v1\0"


def store_root(storage: str, reuse: bool) -> Path | None:
    """The store beside Tune's local (or mounted shared) storage; None with reuse off or on an object store."""
    if not reuse or "://" in storage:
        return None
    return Path(storage) / STORE_FOLDER


def _mac(key: bytes, entry: dict[str, Any]) -> str:
    payload = json.dumps({k: entry[k] for k in ("key", "cycle", "files", "computed_by")}, sort_keys=True)
    return hmac.new(key, DOMAIN + payload.encode(), hashlib.sha256).hexdigest()


def sign_entry(root: Path, stored: dict[str, Any], computed_by: dict[str, str]) -> None:
    """Vouch for the entry a trial of this user's sweep just wrote (its digests came with the trial's result)."""
    key = state_signing.load_key(create=True)
    assert key is not None
    entry = {**stored, "computed_by": computed_by}
    write_atomic(root / f"{stored['key']}.sig", json.dumps({**entry, "mac": _mac(key, entry)}))


def verified(root: Path, key: str) -> Reuse | None:
    """Entry `key` if it is there, signed with this user's key and unchanged; None if absent. One that fails is
    moved aside (so the trial that trains its cycles again can store them), with one line saying so."""
    folder, signature = root / key, root / f"{key}.sig"
    if not folder.is_dir():
        return None
    reason = _failure(folder, signature)
    if reason is None:
        entry = json.loads(signature.read_text())
        return Reuse(key, int(entry["cycle"]), dict(entry["files"]), dict(entry["computed_by"]))
    aside = root / f".rejected-{key}-{int(time.time())}"
    try:
        os.rename(folder, aside)
    except OSError:
        aside = folder
    print(
        f"stored cycle {key} failed verification ({reason}): recomputing it; the entry is at {aside}", file=sys.stderr
    )
    return None


def _failure(folder: Path, signature: Path) -> str | None:
    """Why the entry in `folder` cannot be trusted, or None."""
    key = state_signing.load_key(create=False)
    try:
        entry = json.loads(signature.read_text())
        mac = str(entry["mac"])
    except (OSError, ValueError, KeyError, TypeError):
        return "no signature of this user's sweeps"
    if key is None or not hmac.compare_digest(mac, _mac(key, entry)) or entry["key"] != folder.name:
        return "signed with another key"
    if sorted(entry["files"]) != sorted(ENTRY_FILES) or sorted(p.name for p in folder.iterdir()) != sorted(ENTRY_FILES):
        return "its files are not the ones signed"
    for name, digest in entry["files"].items():
        if file_digest(folder / name) != digest:
            return f"{name} changed since it was signed"
    return None


# ---- claims: two sweeps started together train a shared dense cycle once ------------------------------------------

CLAIMS = ".claims"
CLAIM_HOURS = 6  # a claim from another machine counts this long (its process cannot be asked there)


def claimant(sweep: str) -> str:
    """Who trains a dense cycle: this driver process of sweep `sweep`."""
    return f"{sweep}@{socket.gethostname()}:{os.getpid()}"


def claim(root: Path, key: str, sweep: str) -> bool:
    """Take the dense cycle `key` for a trial of this driver; False while another live driver trains it."""
    path = root / CLAIMS / key
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = claimant(sweep)
    for _ in range(2):
        try:
            with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "w") as file:
                file.write(mine)
            return True
        except FileExistsError:
            holder = _holder(path)
            if holder == mine or (holder is not None and _alive(holder, path)):
                return holder == mine
            path.unlink(missing_ok=True)  # its driver is gone: take it over
    return False


def claimed_elsewhere(root: Path, key: str, sweep: str) -> bool:
    """Whether another live driver holds the claim on dense cycle `key`."""
    path = root / CLAIMS / key
    holder = _holder(path)
    return holder is not None and holder != claimant(sweep) and _alive(holder, path)


def release(root: Path, key: str, sweep: str) -> None:
    path = root / CLAIMS / key
    if _holder(path) == claimant(sweep):
        path.unlink(missing_ok=True)


def _holder(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _alive(holder: str, path: Path) -> bool:
    """A claim is live while its driver runs: asked directly on this machine, by the claim's age elsewhere."""
    host, _, pid = holder.rpartition("@")[2].rpartition(":")
    if host != socket.gethostname():
        try:
            return time.time() - path.stat().st_mtime < CLAIM_HOURS * 3600
        except OSError:
            return False
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


# ---- what reuse saves -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Savings:
    """Training epochs of a plan: planned, held in the store already, and saved by sharing dense cycles within it."""

    planned: int
    held: int
    shared: int

    @property
    def to_train(self) -> int:
        return self.planned - self.held - self.shared

    def describe(self) -> str:
        if not self.planned:
            return "reuse: nothing planned"
        saved = self.held + self.shared
        return (
            f"reuse: {self.planned} epochs planned; {self.held} already in the cycle store, {self.shared} saved by "
            f"training shared dense cycles once; {self.to_train} to train ({100 * saved / self.planned:.0f}% saved)"
        )


def savings(configs: Iterable[Any], stored: set[str]) -> tuple[Savings, set[str]]:
    """What reuse saves on trials `configs` given the keys `stored`, and the keys the store holds afterwards.

    A trial whose last cycle is stored trains nothing; one whose dense cycle is stored, or trained by an earlier
    trial of the plan, trains all but it.
    """
    planned = held = shared = 0
    holding = set(stored)
    for config in configs:
        epochs, cycles = config.training.epochs, config.pruning.cycles
        planned += (cycles + 1) * epochs
        last, dense = cycle_key(config, cycles), cycle_key(config, 0)
        if last in holding:
            if last in stored:
                held += (cycles + 1) * epochs
            else:
                shared += (cycles + 1) * epochs
        elif dense in holding:
            if dense in stored:
                held += epochs
            else:
                shared += epochs
        holding |= {last, dense}
    return Savings(planned, held, shared), holding


def stored_keys(root: Path | None) -> set[str]:
    """The keys of the signed entries in the store (their signatures are checked when a trial would use one)."""
    if root is None or not root.is_dir():
        return set()
    return {p.name[: -len(".sig")] for p in root.glob("*.sig") if (root / p.name[: -len(".sig")]).is_dir()}
