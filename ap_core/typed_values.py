"""Loose values as a dataclass field's type: Tune's 64.0, numpy's int64 and JSON's lists where an int or a tuple is
meant. The settings groups and every method's own options (`Hparams`) coerce what they are given this way."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

import numpy as np

from ap_core.errors import ConfigError


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def coerce_setting(cls: type, name: str, value: Any, label: str | None = None) -> Any:
    """`value` as the type of field `name` of dataclass `cls`, or a ConfigError naming it (as `label`, if given).

    Tune and numpy hand over 64.0 or np.int64 where an int is meant; JSON gives lists for tuples.
    """
    label = label or name
    hint = _field_types(cls)[name]
    if get_origin(hint) in (Union, UnionType) and type(None) in get_args(hint):
        if value is None:
            return None
        hint = next(arg for arg in get_args(hint) if arg is not type(None))
    if get_origin(hint) is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{label} {value!r} must be a mapping of option names to values")
        return dict(sorted(value.items()))
    if get_origin(hint) is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_coerce(f"{label} item", item, get_args(hint)[0]) for item in items)
    return _coerce(label, value, hint)


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
