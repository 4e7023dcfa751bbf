"""The `--hparams FILE` format: `{network: {pruning method: {batch_size, lr, epochs, ...}}}` as JSON.

`sweeps/hparam_grid.py` writes it; every table sweep reads it. Values may be any flat trial setting except the
sweep's axes; each is type-checked here so a bad file fails with one line naming the entry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ap_core.config import SETTINGS, coerce_flat
from ap_core.errors import ConfigError
from sweeps.engine.options import AXIS_FIELDS

# network -> pruning method -> flat trial settings (a search's best points); not a method's own `Hparams`
TunedSettings = dict[str, dict[str, dict[str, Any]]]


def load_hparams(path: str | Path) -> TunedSettings:
    """Read and validate an hparams file; raises ConfigError with a one-line reason."""
    where = f"--hparams {str(path)!r}"
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{where} cannot be read as a JSON text file ({type(err).__name__})") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{where} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must hold a JSON object {{network: {{method: {{setting: value}}}}}}")
    from ap_core import METHODS, MODELS  # the registries import torch: only once a file is really read

    settable = sorted(name for name in SETTINGS if name not in AXIS_FIELDS)
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
                try:
                    coerce_flat(key, value)
                except ConfigError as err:
                    raise ConfigError(f"{where}: {network}.{method}: {err}") from None
    return data


def write_hparams(path: str | Path, hparams: TunedSettings) -> None:
    Path(path).write_text(json.dumps(hparams, indent=2, sort_keys=True) + "\n")
