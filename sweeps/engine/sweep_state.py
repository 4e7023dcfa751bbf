"""What `--resume` needs: the sweep's state file, written before any trial starts and read back on resume.

The file is JSON (never a pickle: the results folder may be shared), replaced atomically, and carries the plan's
fingerprint so a resume of a sweep whose trials changed is refused instead of mixing two protocols.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeps.engine.options import SweepError
from sweeps.engine.spec import SweepPlan

STATE_FILE = "sweep.json"


@dataclass(frozen=True)
class SweepState:
    """One sweep's record: where it logs (empty strings: MLflow off) and the Tune experiment of each group."""

    sweep: str
    fingerprint: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    experiments: dict[str, str]

    def write(self, sweep_dir: Path) -> None:
        path = sweep_dir / STATE_FILE
        path.with_suffix(".tmp").write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
        path.with_suffix(".tmp").replace(path)


def read_state(sweep_dir: Path, plan: SweepPlan) -> SweepState | None:
    """The state of the sweep in `sweep_dir` to resume (None: there is none), refusing one that cannot be."""
    path = sweep_dir / STATE_FILE
    if not path.exists():
        return None
    try:
        raw: Any = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SweepError(f"cannot resume: {path} is not valid JSON ({err.msg})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("experiments"), dict):
        raise SweepError(f"cannot resume: {path} is not a sweep state file (no 'experiments' object)")
    if raw.get("fingerprint") != plan.fingerprint():
        raise SweepError(
            f"cannot resume {raw.get('sweep', sweep_dir.name)}: its trials changed since it started (preset, axes "
            "or settings); run without --resume to start it over"
        )
    fields = {f.name for f in dataclasses.fields(SweepState)}
    return SweepState(**{k: str(raw.get(k, "")) for k in fields if k != "experiments"}, experiments=raw["experiments"])


def experiment_paths(plan: SweepPlan, storage: str, name: str, stamp: str, previous: dict[str, str]) -> dict[str, str]:
    """The Tune experiment folder of each group: the previous invocation's when resuming, else a new stamped one."""
    paths = dict(previous)
    for group in plan.groups:
        paths.setdefault(group, f"{storage.rstrip('/')}/{name}{'-' + group if group else ''}-{stamp}")
    return paths
