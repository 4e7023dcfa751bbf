"""What decides a trial's state after cycle k, as a hash: trials with equal keys compute the same cycles 0..k.

Cycle 0 (the dense training) depends on less than the whole experiment: not on AP, the pruning rate, the number
of cycles or how later cycles retrain, and only on the parts of the method that act during dense training (GP, LP
and random pruning: none of it; a channel method: its regulariser, not its channel ratio). Trials that share that
key share their cycle 0. After pruning began, cycle k depends on every experiment setting but the number of cycles
still to come and those the trial's own choices leave idle (a rewind step its scheme never rewinds to).
`NUMERICS_VERSION` is part of every key: a change to the code that alters results bumps it, so cycles stored by
earlier code are never taken for this code's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from ap_core.config import TrialConfig
from ap_core.pruning import METHODS
from ap_core.retraining import RETRAINING

NUMERICS_VERSION = 1
GENERIC_FOLDER = "folder"  # the dataset whose images are whatever its folder holds
# Settings that act only from the first pruning step on (the method and its options are decided per method). Which
# layers stay dense is not among them: it decides the mask, and the per-layer densities cycle 0 reports.
_AFTER_DENSE = ("cycles", "prune_rate", "retraining", "finetune_lr")
_AP_FIELDS = ("ap", "ap_rate", "ap_score", "ap_candidates", "ap_scope")


def deciding_settings(config: TrialConfig) -> dict[str, Any]:
    """The experiment settings less those its own choices make idle (a rewind step the scheme never rewinds to, AP's
    options with AP off), and the method's options as the hparams they resolve to, defaults included."""
    settings = config.experiment_settings()
    scheme = RETRAINING.get(config.retraining.scheme)
    idle = [*(() if config.ap.enabled else _AP_FIELDS[1:])]
    idle += [] if scheme.uses_rewind_step else ["rewind_step"]
    idle += [] if scheme.uses_finetune_lr else ["finetune_lr"]
    for name in idle:
        settings.pop(name, None)
    method = METHODS.get(config.pruning.method)
    hparams = method.hparams(config.pruning.method_options, config.pruning.method)
    settings["method_options"] = dataclasses.asdict(hparams)
    return settings


def dense_settings(config: TrialConfig) -> dict[str, Any]:
    """The settings that decide cycle 0, with the method reduced to what of it shapes dense training."""
    settings = deciding_settings(config)
    method = METHODS.get(config.pruning.method)
    options = settings.pop("method_options")
    for name in (*_AFTER_DENSE, *_AP_FIELDS, "method", "rewind_step"):
        settings.pop(name, None)
    if method.shapes_dense_training:
        kept = {k: v for k, v in options.items() if k not in method.pruning_only_hparams}
        settings |= {"method": config.pruning.method, "method_options": kept}
    if RETRAINING.get(config.retraining.scheme).needs_rewind_point:  # cycle 0 snapshots the weights at step k
        settings["rewind_point"] = config.retraining.rewind_step
    return settings


def cycle_key(config: TrialConfig, cycle: int) -> str:
    """The hash of what decides the trial's state and results after `cycle` (0 = dense)."""
    if cycle == 0:
        settings = dense_settings(config)
    else:
        settings = {k: v for k, v in deciding_settings(config).items() if k != "cycles"}
    if config.dataset == GENERIC_FOLDER:  # the name says nothing of the images: where they are has to
        settings["data_dir"] = str(Path(config.runtime.data_dir).resolve())
    payload = json.dumps({"numerics": NUMERICS_VERSION, "cycle": cycle, **settings}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]
