"""Plain typed settings at the bottom of the import graph: the groups the training primitives take, and the
coercion of loose values (Tune's 64.0, numpy's int64, JSON's lists) to a dataclass field's type.

`TrialConfig` (ap_core.config) keeps one flat field per CLI flag, Tune key and MLflow param; the groups here are
views of those fields, so a primitive asks for what it uses rather than for a whole experiment.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

import numpy as np

from ap_core.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("multistep", "cosine", "onecycle", "constant")
AP_SCORES = ("change", "magnitude")
AP_CANDIDATES = ("negative", "all")
AP_SCOPES = ("global", "layer")


@dataclass(frozen=True)
class OptimizerSettings:
    """Which optimizer updates the weights, and with what peak learning rate and regularisation."""

    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False


@dataclass(frozen=True)
class ScheduleSettings:
    """The learning-rate schedule of one cycle, as a factor of the peak LR."""

    epochs: int = 10
    schedule: str = "multistep"
    milestones: tuple[float, ...] = (0.5, 0.75)
    lr_gamma: float = 0.1
    warmup_epochs: float = 0.0


@dataclass(frozen=True)
class APSettings:
    """Activate-While-Pruning beside a method: its share of the alive weights, ranking, candidates and scope."""

    rate: float = 0.02
    score: str = "change"
    candidates: str = "negative"
    scope: str = "global"


@dataclass(frozen=True)
class RetrainingSettings:
    """What the retraining schemes read: the rewind step k and the fine-tuning learning rate."""

    rewind_step: int = 0
    finetune_lr: float = 0.001


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def coerce_setting(cls: type, name: str, value: Any) -> Any:
    """`value` as the type of field `name` of dataclass `cls`, or a ConfigError naming it.

    Tune and numpy hand over 64.0 or np.int64 where an int is meant; JSON gives lists for tuples.
    """
    hint = _field_types(cls)[name]
    if get_origin(hint) in (Union, UnionType) and type(None) in get_args(hint):
        if value is None:
            return None
        hint = next(arg for arg in get_args(hint) if arg is not type(None))
    if get_origin(hint) is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{name} {value!r} must be a mapping of option names to values")
        return dict(sorted(value.items()))
    if get_origin(hint) is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_coerce(f"{name} item", item, get_args(hint)[0]) for item in items)
    return _coerce(name, value, hint)


def _coerce(name: str, value: Any, kind: type) -> Any:
    is_bool = isinstance(value, (bool, np.bool_))
    is_number = isinstance(value, (int, float, np.integer, np.floating)) and not is_bool
    if kind is bool and is_bool:
        return bool(value)
    if kind is int and is_number and float(value).is_integer():
        return int(value)
    if kind is float and is_number:
        return float(value)
    if kind is str and isinstance(value, str):
        return value
    raise ConfigError(f"{name} {value!r} must be a{'n' if kind is int else ''} {kind.__name__}")
