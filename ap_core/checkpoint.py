"""Trial checkpoints on disk: written atomically, read with weights_only=True, checked against the config."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ap_core.config import ADDED_DEFAULTS, RUNTIME_FIELDS, TrialConfig
from ap_core.cycle_keys import cycle_key
from ap_core.errors import ConfigError
from ap_core.training import resolve_device

CHECKPOINT_FILE = "trial.pt"


def write_checkpoint(state: dict[str, Any], checkpoint_dir: Path) -> None:
    """Write `state` atomically, so a kill mid-write never leaves a corrupt file behind."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    tmp = checkpoint_dir / f".{CHECKPOINT_FILE}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, checkpoint_dir / CHECKPOINT_FILE)


def read_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A trial checkpoint's contents (`meta` decoded from JSON); nothing in the file is unpickled as an object.

    A missing, truncated or foreign file is a ConfigError naming it.
    """
    if not path.is_file():
        raise ConfigError(f"no trial checkpoint at '{path}'")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        state["meta"] = json.loads(state["meta"])
    except Exception as err:  # any unreadable file is the same user-facing problem
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"'{path}' is not a readable trial checkpoint ({reason[:200]})") from None
    return state


def check_same_experiment(saved: dict[str, Any], config: TrialConfig, device: torch.device, path: Path) -> None:
    """A ConfigError naming the first experiment setting (or device type) the checkpoint was written with that
    differs from `config`: resuming it would compute something else."""
    current = config.to_dict()
    saved = {**ADDED_DEFAULTS, **saved}  # written before a setting was added: it was at its default
    changed = [k for k in current if k not in RUNTIME_FIELDS and _as_saved(saved.get(k)) != _as_saved(current[k])]
    if resolve_device(saved["device"]).type != device.type:
        changed.insert(0, "device")
    if changed:
        k = changed[0]
        raise ConfigError(f"checkpoint '{path}' was written with {k}={saved.get(k)!r}, not {current[k]!r}")


def _as_saved(value: Any) -> Any:
    """Settings as JSON gives them back (tuples become lists), so saved and current compare equal."""
    return json.loads(json.dumps(value))


def check_shared_prefix(meta: dict[str, Any], config: TrialConfig, cycle: int, path: Path) -> None:
    """A ConfigError unless `meta` is a state right after `cycle` whose cycles 0..`cycle` `config` shares."""
    try:
        saved = TrialConfig.from_dict(meta["config"])
    except ConfigError as err:
        raise ConfigError(f"checkpoint '{path}' was written with settings this code does not know ({err})") from None
    if meta["cycle"] != cycle + 1 or meta["cycle_begun"] or len(meta["results"]) != cycle + 1:
        raise ConfigError(f"checkpoint '{path}' is not the state right after cycle {cycle}")
    if cycle_key(saved, cycle) != cycle_key(config, cycle):
        raise ConfigError(f"checkpoint '{path}' holds cycles 0..{cycle} of another experiment")
