"""A trial config checked against the registries: the names it gives, and what the named method accepts.

Kept apart from `ap_core.config`, which is plain data at the bottom of the import graph; `TrialConfig.validate`
calls `check_names` once its settings are each valid on their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ap_core.datasets import DATASETS
from ap_core.errors import ConfigError
from ap_core.models import MODELS
from ap_core.pruning import METHODS
from ap_core.retraining import RETRAINING

if TYPE_CHECKING:
    from ap_core.config import TrialConfig


def check_names(config: TrialConfig) -> None:
    """Raise ConfigError naming the first unknown name, bad method option or combination the method refuses."""
    MODELS.get(config.model)
    DATASETS.get(config.dataset)
    method = METHODS.get(config.method)
    method.hparams(config.method_options, config.method)
    method.check_model(config.model, config.method)
    if config.ap_scope == "layer" and method.removes_channels:
        raise ConfigError(f"ap_scope 'layer' needs a weight method; {config.method} removes whole channels")
    RETRAINING.get(config.retraining)
    # AP takes its share of an element method's per-cycle total; beside a channel method it stands alone.
    if config.ap and not method.removes_channels and config.ap_rate >= config.prune_rate:
        raise ConfigError(f"ap_rate {config.ap_rate} must be smaller than prune_rate {config.prune_rate}")
