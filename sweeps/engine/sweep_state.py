"""What `--resume` needs: the sweep's state file, written before any trial starts and read back on resume.

The file is JSON (never a pickle: the results folder may be shared), replaced atomically, and carries the plan's
fingerprint so a resume of a sweep whose trials changed is refused instead of mixing two protocols.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from ap_core.paths import write_atomic
from sweeps.engine.options import SweepError, SweepOptions
from sweeps.engine.spec import SweepPlan

STATE_FILE = "sweep.json"
CYCLES_FILE = "trial_cycles.csv"  # every trial's per-cycle results, as the sweep's table was built from them
LOCK_FILE = ".lock"  # held by the running driver: two drivers never share a sweep folder
# What Tune restores on resume (its pickled callbacks, the trainable's parameters, the trial configs) has this shape;
# bump it when that changes: an older sweep's Tune state would resume into code that no longer matches it.
STATE_FORMAT = "2"


@dataclass(frozen=True)
class SweepState:
    """One sweep's record: where it logs (empty strings: MLflow off) and the Tune experiment of each group."""

    sweep: str
    fingerprint: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    experiments: dict[str, str]
    results_dir: str = ""  # where the results folder was when the sweep started (its stores are addressed by it)
    finished: str = ""  # when every trial had run and been logged: a rerun reprints the table, runs nothing
    state_format: str = STATE_FORMAT  # "" in a state written before the format was recorded (format 1)

    def write(self, sweep_dir: Path) -> None:
        write_atomic(sweep_dir / STATE_FILE, json.dumps(dataclasses.asdict(self), indent=2) + "\n")


def read_state(sweep_dir: Path) -> SweepState | None:
    """The state of the sweep in `sweep_dir` (None: there is none), refusing a file that is not one."""
    path = sweep_dir / STATE_FILE
    if not path.exists():
        return None
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SweepError(f"cannot resume: {path} is not valid JSON ({err.msg})") from None
    except UnicodeDecodeError:
        raise SweepError(f"cannot resume: {path} is not a sweep state file (not UTF-8 text)") from None
    except OSError as err:
        raise SweepError(f"cannot resume: {path} cannot be read ({err.strerror or err})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("experiments"), dict):
        raise SweepError(f"cannot resume: {path} is not a sweep state file (no 'experiments' object)")
    fields = {f.name for f in dataclasses.fields(SweepState)}
    return SweepState(**{k: str(raw.get(k, "")) for k in fields if k != "experiments"}, experiments=raw["experiments"])


def choose_tracking_uri(options: SweepOptions, started_on: str | None, local_store: str) -> str:
    """Where to log ("" = nowhere). A resumed sweep (`started_on` not None) keeps logging where it started."""
    if started_on is not None:
        asked = options.tracking_uri if options.mlflow else ""
        if (asked and asked != started_on) or (not options.mlflow and started_on):
            raise SweepError(
                f"cannot continue with different MLflow logging: the sweep started with "
                f"{started_on or 'MLflow off'!r}; leave out --tracking-uri/--mlflow to continue as it began, or run "
                f"it afresh under another --results-dir or --name to log it {'to ' + repr(asked) if asked else 'so'}"
            )
        return started_on
    if not options.mlflow:
        return ""
    return options.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "") or local_store


def state_to_continue(sweep_dir: Path, plan: SweepPlan, resume: bool, overwrite: bool) -> SweepState | None:
    """The earlier state this invocation continues (None: start afresh), or a one-line refusal.

    Same protocol (plan fingerprint): continued, with or without `--resume`, so finished trials are never redone.
    Another protocol under the same name: refused unless `--overwrite`. `--resume` with nothing there: refused,
    naming where it looked (a mistyped --name or --results-dir must not start a whole new sweep).
    """
    if resume and overwrite:
        raise SweepError("--resume continues a sweep and --overwrite starts it over: pass one of them")
    state = read_state(sweep_dir)
    if state is None:
        if resume:
            raise SweepError(
                f"nothing to resume: no {STATE_FILE} in {sweep_dir} (sweep {sweep_dir.name!r} of --results-dir "
                f"{str(sweep_dir.parent)!r}); check --name and --results-dir, or leave out --resume to start it"
            )
        return None
    if state.fingerprint == plan.fingerprint():
        return None if overwrite else state
    if resume:
        raise SweepError(
            f"cannot resume {state.sweep or sweep_dir.name}: its trials changed since it started (preset, axes "
            "or settings); run without --resume under another --name, or with --overwrite to start it over"
        )
    if not overwrite:
        raise SweepError(
            f"{sweep_dir} holds sweep {state.sweep or sweep_dir.name!r} with other settings (protocol "
            f"{state.fingerprint}, now {plan.fingerprint()}); pick another --name, leave out --name for a folder "
            "of its own, or pass --overwrite to replace it"
        )
    return None


def check_state_format(state: SweepState, state_file: Path) -> None:
    """Refuse to resume Tune state that another version of ap-sweeps wrote, before anything of it is read."""
    if state.state_format != STATE_FORMAT:
        raise SweepError(
            f"cannot continue sweep {state.sweep!r}: {state_file} was written by another version of ap-sweeps "
            f"(state format {state.state_format or '1'}, this version resumes format {STATE_FORMAT}); finish it with "
            "the version that started it (its MLflow runs' code_version tag), or start it afresh with --overwrite "
            "or under another --name"
        )


def experiment_paths(plan: SweepPlan, storage: str, name: str, stamp: str, previous: dict[str, str]) -> dict[str, str]:
    """The Tune experiment folder of each group: the previous invocation's when resuming, else a new stamped one."""
    paths = dict(previous)
    for group in plan.groups:
        paths.setdefault(group, f"{storage.rstrip('/')}/{name}{'-' + group if group else ''}-{stamp}")
    return paths


def new_stamp() -> str:
    """A Tune experiment folder suffix no other invocation gets: microseconds and the process id."""
    return f"{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}-{os.getpid()}"


def lock_sweep_dir(sweep_dir: Path) -> TextIO:
    """Claim `sweep_dir` for this process (held until it exits); refuse when another sweep already holds it."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    while True:
        handle = (sweep_dir / LOCK_FILE).open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise SweepError(
                f"sweep {sweep_dir.name!r} is already running in another process ({sweep_dir / LOCK_FILE} is held); "
                "wait for it, or pick another --name"
            ) from None
        try:
            if os.path.samestat(os.fstat(handle.fileno()), os.stat(sweep_dir / LOCK_FILE)):
                return handle
        except FileNotFoundError:
            pass
        handle.close()  # a driver that was refused removed the file we locked: lock the one there now


@contextmanager
def claim_sweep_dir(sweep_dir: Path) -> Iterator[None]:
    """Hold the sweep folder's lock from the very start of a run, so a second driver is refused within a second.

    The lock file this claim created is removed when it ends, and so are the folders it created when nothing else
    was written into them: a run refused by a later check leaves nothing behind.
    """
    created = [folder for folder in (sweep_dir.parent, sweep_dir) if not folder.exists()]
    lock_existed = (sweep_dir / LOCK_FILE).exists()
    handle = lock_sweep_dir(sweep_dir)
    try:
        yield
    finally:
        try:
            if not lock_existed:
                (sweep_dir / LOCK_FILE).unlink()
            for folder in reversed(created):
                folder.rmdir()  # only when empty: a folder the run wrote into stays
        except OSError:
            pass
        finally:
            handle.close()


def check_not_moved(state: SweepState, results_dir: Path, state_file: Path) -> None:
    """Refuse to continue a sweep whose results folder was moved or copied: its MLflow store and Tune state are
    addressed by the old path, so going on would log into a new, empty store (or into the original)."""
    old = state.results_dir or _results_dir_of(state, results_dir)
    if not old or Path(old).resolve() == results_dir:
        return
    uses_old = [
        p for p in (state.tracking_uri.removeprefix("sqlite:///"), *state.experiments.values()) if _under(p, old)
    ]
    if uses_old:
        raise SweepError(
            f"{state_file} belongs to a results folder at {old!r}, not {str(results_dir)!r}: the folder was moved or "
            f"copied, and its MLflow store and Tune state are still addressed by the old path; move it back to "
            f"{old!r} (or link the old path to it: ln -s {results_dir} {old}) and resume it from there"
        )


def _results_dir_of(state: SweepState, results_dir: Path) -> str:
    """The results folder of a state written before it recorded one, where it plainly moved: the default SQLite
    store it names is gone, and one sits in the folder the state is in now."""
    database = state.tracking_uri.removeprefix("sqlite:///")
    if database != state.tracking_uri and Path(database).name == "mlflow.db" and not Path(database).exists():
        return str(Path(database).parent) if (results_dir / "mlflow.db").exists() else ""
    return ""


def _under(path: str, folder: str) -> bool:
    return "://" not in path and (path == folder or path.startswith(folder.rstrip("/") + "/"))
