"""The `--hparams FILE` format: `{network: {pruning method: {batch_size, lr, epochs, ...}}}` as JSON.

`sweeps/hparam_grid.py` writes it; every table sweep reads it. Values may be any TrialConfig field except the
sweep's axes; each is type-checked here so a bad file fails with one line naming the entry.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, get_type_hints

from ap_core import METHODS, MODELS, TrialConfig
from ap_core.errors import ConfigError

Hparams = dict[str, dict[str, dict[str, Any]]]
AXIS_FIELDS = ("model", "dataset", "method", "seed", "ap")


def load_hparams(path: str | Path) -> Hparams:
    """Read and validate an hparams file; raises ConfigError with a one-line reason."""
    where = f"--hparams {str(path)!r}"
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{where} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must hold a JSON object {{network: {{method: {{setting: value}}}}}}")
    hints = get_type_hints(TrialConfig)
    settable = sorted(f.name for f in dataclasses.fields(TrialConfig) if f.name not in AXIS_FIELDS)
    for network, methods in data.items():
        if network not in MODELS:
            raise ConfigError(f"{where}: unknown network {network!r}; valid: {', '.join(MODELS.names())}")
        if not isinstance(methods, dict):
            raise ConfigError(f"{where}: {network} must map pruning methods to settings")
        for method, settings in methods.items():
            if method not in METHODS:
                raise ConfigError(
                    f"{where}: unknown method {method!r} under {network}; valid: {', '.join(METHODS.names())}"
                )
            if not isinstance(settings, dict):
                raise ConfigError(f"{where}: {network}.{method} must map settings to values")
            for key, value in settings.items():
                if key not in settable:
                    raise ConfigError(
                        f"{where}: unknown setting {network}.{method}.{key!r}; valid: {', '.join(settable)}"
                    )
                if not _fits(value, hints[key]):
                    raise ConfigError(
                        f"{where}: {network}.{method}.{key} must be {_describe(hints[key])}, got {value!r}"
                    )
    return data


def write_hparams(path: str | Path, hparams: Hparams) -> None:
    Path(path).write_text(json.dumps(hparams, indent=2, sort_keys=True) + "\n")


def _fits(value: Any, hint: Any) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return isinstance(value, list) and all(_fits(v, float) for v in value)  # tuple[float, ...]


def _describe(hint: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, "a list of numbers")
