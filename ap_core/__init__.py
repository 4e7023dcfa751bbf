"""ap_core: a framework-free pruning core (PyTorch only) for Activate-While-Pruning research.

Never imports Ray or MLflow: the trainables and sweeps wrap it.
"""

from ap_core.config import TrialConfig
from ap_core.data import DATASETS, ArrayDataset, load_dataset
from ap_core.dnr import DeadRate, DeadUnits, count_dead_units, measure_dnr
from ap_core.errors import ConfigError, DatasetUnavailableError, NonFiniteLossError
from ap_core.masks import Mask
from ap_core.models import MODELS, build_model
from ap_core.pruning import METHODS, ap_prune, prune, prune_cycle
from ap_core.results import CycleResult
from ap_core.trial import run_trial

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
