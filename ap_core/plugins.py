"""Plugins: methods, models, datasets or schemes that live outside this repository, registered before any registry
is read, in the driver and in every Ray worker alike.

Two sources, both trusted as much as `PYTHONPATH` is (they run code on import, by the user's own choice):
- the `AP_SWEEPS_PLUGINS` environment variable: comma-separated entries, each a module name or a `.py` file's path,
  optionally followed by `:function` to call once it is imported (`my_methods`, `/lab/methods.py:register`);
- installed packages' entry points in the group `ap_sweeps.plugins` (a module, or a function to call).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from importlib import metadata
from pathlib import Path

from ap_core.errors import ConfigError

PLUGINS_VARIABLE = "AP_SWEEPS_PLUGINS"
ENTRY_POINT_GROUP = "ap_sweeps.plugins"

_loaded = False
_error: ConfigError | None = None  # the first failure, raised again at every later read


def load_plugins() -> None:
    """Import every plugin once per process; a plugin that fails gives the same one-line ConfigError every time."""
    global _loaded, _error
    if _error is not None:
        raise _error
    if _loaded:
        return
    _loaded = True  # before importing: a plugin that reads a registry must not load the plugins again
    entry = ""
    try:
        for entry in plugin_entries():
            _load(entry)
        for point in metadata.entry_points(group=ENTRY_POINT_GROUP):
            entry = f"{point.value} (entry point {point.name!r})"
            loaded = point.load()
            if callable(loaded):
                loaded()
    except Exception as err:  # a plugin can fail any way: one line, naming it
        text = str(err).strip().splitlines()
        _error = ConfigError(
            f"cannot load plugin {entry!r} (from {PLUGINS_VARIABLE} or the {ENTRY_POINT_GROUP!r} entry points): "
            f"{type(err).__name__}: {text[0] if text else 'no message'}"
        )
        raise _error from None


def plugin_entries() -> list[str]:
    """The entries of `AP_SWEEPS_PLUGINS`, in order."""
    return [entry.strip() for entry in os.environ.get(PLUGINS_VARIABLE, "").split(",") if entry.strip()]


def absolute_entries() -> str:
    """`AP_SWEEPS_PLUGINS` with every file's path made absolute: for processes that start elsewhere (Tune runs each
    trial in its own folder)."""
    entries = []
    for entry in plugin_entries():
        target, function = _split(entry)
        if target.endswith(".py"):
            target = str(Path(target).expanduser().absolute())
        entries.append(f"{target}:{function}" if function else target)
    return ",".join(entries)


def _split(entry: str) -> tuple[str, str]:
    """(module or file, function to call or "")."""
    target, _, function = entry.rpartition(":")
    if function.isidentifier() and len(target) > 1:  # else no function named (or a Windows drive letter)
        return target, function
    return entry, ""


def _load(entry: str) -> None:
    target, function = _split(entry)
    module = _import_file(Path(target).expanduser()) if target.endswith(".py") else importlib.import_module(target)
    if function:
        getattr(module, function)()


def _import_file(path: Path) -> object:
    if not path.is_file():
        raise FileNotFoundError(f"no file {str(path)!r}")
    name = f"ap_sweeps_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None  # a .py file always has a source loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look a module up by name
    spec.loader.exec_module(module)
    return module
