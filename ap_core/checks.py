"""A trial config checked against the registries: the names it gives, and what the named method accepts.

Kept apart from `ap_core.config`, which is plain data at the bottom of the import graph: a config's settings are each
checked when it is built, its names here, by whoever takes a config from a user (the CLIs, the sweep planner) and by
`TrialRunner` before it builds anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ap_core.config import TrialConfig, file_sha256
from ap_core.datasets import DATASETS
from ap_core.errors import ConfigError
from ap_core.models import MODELS
from ap_core.pruning import METHODS
from ap_core.retraining import RETRAINING


def check_names(config: TrialConfig) -> None:
    """Raise ConfigError naming the first unknown name, bad method option or combination the method refuses."""
    MODELS.get(config.model)
    check_pretrained_weights(config)
    DATASETS.get(config.dataset)
    method = METHODS.get(config.pruning.method)
    method.hparams(config.pruning.method_options, config.pruning.method)
    method.check_model(config.model, config.pruning.method)
    if config.ap.scope == "layer" and method.removes_channels:
        raise ConfigError(f"ap_scope 'layer' needs a weight method; {config.pruning.method} removes whole channels")
    RETRAINING.get(config.retraining.scheme)
    # AP takes its share of an element method's per-cycle total; beside a channel method it stands alone.
    if config.ap.enabled and not method.removes_channels and config.ap.rate >= config.pruning.prune_rate:
        raise ConfigError(f"ap_rate {config.ap.rate} must be smaller than prune_rate {config.pruning.prune_rate}")


def check_pretrained_weights(config: TrialConfig) -> None:
    """The starting-weights file exists and, when the experiment recorded its sha256, still holds those weights."""
    path, recorded = config.training.pretrained_weights, config.training.pretrained_sha256
    if path and (actual := file_sha256(path)) != recorded and recorded:
        raise ConfigError(
            f"pretrained_weights '{path}' has sha256 {actual[:12]}..., not the {recorded[:12]}... the experiment "
            "recorded: the file changed"
        )


def checked_config(values: Mapping[str, Any]) -> TrialConfig:
    """The TrialConfig of flat settings `values`, its names checked against the registries."""
    config = TrialConfig.from_dict(values)
    check_names(config)
    return config
