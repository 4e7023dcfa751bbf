"""ap_core: a framework-free pruning core (PyTorch only) for Activate-While-Pruning research.

Never imports Ray or MLflow: the trainables and sweeps wrap it. Names load on first use, so a command that only
parses its flags (`--help`) does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it
_EXPORTS = {
    "TrialConfig": "ap_core.config",
    "DATASETS": "ap_core.datasets",
    "ArrayDataset": "ap_core.array_dataset",
    "load_dataset": "ap_core.datasets",
    "DeadRate": "ap_core.dnr",
    "DeadUnits": "ap_core.dnr",
    "count_dead_units": "ap_core.dnr",
    "measure_dnr": "ap_core.dnr",
    "ConfigError": "ap_core.errors",
    "DatasetUnavailableError": "ap_core.errors",
    "NonFiniteLossError": "ap_core.errors",
    "Mask": "ap_core.masks",
    "MODELS": "ap_core.models",
    "build_model": "ap_core.models",
    "METHODS": "ap_core.pruning",
    "ap_prune": "ap_core.pruning",
    "prune": "ap_core.pruning",
    "prune_cycle": "ap_core.pruning",
    "CycleResult": "ap_core.results",
    "run_trial": "ap_core.trial",
}
__all__ = [
    "DATASETS",
    "METHODS",
    "MODELS",
    "ArrayDataset",
    "ConfigError",
    "CycleResult",
    "DatasetUnavailableError",
    "DeadRate",
    "DeadUnits",
    "Mask",
    "NonFiniteLossError",
    "TrialConfig",
    "ap_prune",
    "build_model",
    "count_dead_units",
    "load_dataset",
    "measure_dnr",
    "prune",
    "prune_cycle",
    "run_trial",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ap_core' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


if TYPE_CHECKING:
    from ap_core.array_dataset import ArrayDataset
    from ap_core.config import TrialConfig
    from ap_core.datasets import DATASETS, load_dataset
    from ap_core.dnr import DeadRate, DeadUnits, count_dead_units, measure_dnr
    from ap_core.errors import ConfigError, DatasetUnavailableError, NonFiniteLossError
    from ap_core.masks import Mask
    from ap_core.models import MODELS, build_model
    from ap_core.pruning import METHODS, ap_prune, prune, prune_cycle
    from ap_core.results import CycleResult
    from ap_core.trial import run_trial
