"""The store of finished cycles, as a trial sees it: an entry per cycle key, written once, read after a digest check.

An entry is a folder `<store>/<cycle key>/` holding the trial checkpoint right after that cycle (`trial.pt`, loaded
with `weights_only=True`; its JSON part holds the results of cycles 0..k). A trial writes its entries itself, into a
temporary folder renamed into place, so a reader never sees half an entry, and reports each entry's file digests;
the driver, which alone holds the user's signing key, signs those digests (`sweeps.engine.cycle_store`). A trial
starts from an entry only with the digests the driver verified, and checks its own copy against them: a file
changed between the driver's check and the trial's read is refused too.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ap_core.checkpoint import CHECKPOINT_FILE
from ap_core.config import file_digest

ENTRY_FILES = (CHECKPOINT_FILE,)
# In a result: the entry of the store this cycle was just written to (key, cycle, file digests), for the driver
# to sign; and, for a cycle taken from the store, the trial that computed it.
STORED_CYCLE = "stored_cycle"
REUSED_FROM = "reused_from"


class RejectedEntry(Exception):
    """A stored entry whose files are not the ones the driver verified."""


@dataclass(frozen=True)
class Reuse:
    """A verified entry a trial starts from: cycles 0..`cycle` of the trial that computed them."""

    key: str
    cycle: int
    files: dict[str, str]  # file name -> sha256 the driver verified
    computed_by: dict[str, str]  # sweep, trial, parent_run_id of the trial that computed it

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "cycle": self.cycle, "files": self.files, "computed_by": self.computed_by}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Reuse:
        return cls(str(values["key"]), int(values["cycle"]), dict(values["files"]), dict(values["computed_by"]))


def write_entry(store: Path, key: str, checkpoint_dir: Path) -> dict[str, str] | None:
    """Store the state in `checkpoint_dir` as entry `key`; returns the files' digests, or None when the entry
    exists already (another trial wrote it first)."""
    if (store / key).exists():
        return None
    store.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=store))
    try:
        shutil.copyfile(checkpoint_dir / CHECKPOINT_FILE, staging / CHECKPOINT_FILE)
        digests = {name: file_digest(staging / name) for name in ENTRY_FILES}
        os.rename(staging, store / key)  # atomic; fails if another trial's entry got there first
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if (store / key).exists():
            return None
        raise
    return digests


def fetch_entry(store: Path, reuse: Reuse, into: Path) -> None:
    """Copy entry `reuse.key` into `into` and check every file against the verified digests."""
    into.mkdir(parents=True, exist_ok=True)
    for name in ENTRY_FILES:
        try:
            shutil.copyfile(store / reuse.key / name, into / name)
        except OSError as err:
            raise RejectedEntry(f"stored cycle {reuse.key}: {name} unreadable ({err.strerror or err})") from None
        if file_digest(into / name) != reuse.files.get(name):
            raise RejectedEntry(f"stored cycle {reuse.key}: {name} changed since it was verified")
