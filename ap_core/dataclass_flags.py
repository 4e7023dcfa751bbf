"""Command-line flags from dataclass fields: one `--field-name` option per field, typed and documented by the field.

`ap-trial` and `ap-sweeps` build their flags from `TrialConfig` (and the sweep's own option records) this way, so a
new field is a new flag without touching either parser. A field that is itself a dataclass (a settings group)
contributes its own fields, each named by its metadata `flag`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Iterator, Mapping
from typing import Any, Literal, get_args, get_origin, get_type_hints

from ap_core.settings import flag_name


def _parse_bool(text: str) -> bool:
    """A flag's true/false word (1/0, yes/no, on/off too) as a bool; argparse reports anything else."""
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_dataclass_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    skip: tuple[str, ...] = (),
    shown_defaults: Mapping[str, str] | None = None,
) -> None:
    """Add one `--field-name` option per dataclass field, with the field's type, default and help.

    `shown_defaults` replaces a field's own default in the help where something else decides it (a preset);
    a field whose metadata says `switch` is a plain flag that takes no value (`--resume`), one that says
    `negatable` gets a `--no-` flag too. A field whose value has
    a word the type cannot spell (`--gpus-per-trial auto`) brings its own text-to-value function as metadata
    `parse` and value-to-text function as `show`.
    """
    shown_defaults = shown_defaults or {}
    for name, hint, f in flag_fields(cls):
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse %-formats help texts
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        shown = shown_defaults.get(name, f.metadata.get("show", str)(default))
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": f"{help_text} (default: {shown})"}
        if f.metadata.get("switch"):
            kwargs.update(action="store_const", const=True, help=help_text)
        elif "parse" in f.metadata:
            kwargs.update(type=f.metadata["parse"])
        elif hint is bool:
            kwargs.update(type=_parse_bool, nargs="?", const=True, metavar="BOOL")
        elif get_origin(hint) is dict:
            kwargs.update(type=_parse_key_value, nargs="*", metavar="KEY=VALUE", help=f"{help_text} (default: none)")
        elif get_origin(hint) is tuple:
            kwargs.update(type=get_args(hint)[0], nargs="*")
        elif get_origin(hint) is Literal:
            kwargs.update(choices=get_args(hint))
        else:
            kwargs.update(type=hint)
        parser.add_argument(flag, **kwargs)
        if f.metadata.get("negatable"):  # `--no-reuse` beside `--reuse false`
            parser.add_argument(f"--no-{flag[2:]}", dest=name, action="store_const", const=False, help=f"{flag} false")


def flag_fields(cls: type) -> Iterator[tuple[str, Any, dataclasses.Field]]:
    """(flag name, type, field) of every flag `cls` gives, a group's fields in place of the group."""
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            group_hints = get_type_hints(hints[f.name])
            for inner in dataclasses.fields(hints[f.name]):
                yield flag_name(inner), group_hints[inner.name], inner
        else:
            yield f.name, hints[f.name], f


def _parse_key_value(text: str) -> tuple[str, Any]:
    """`alpha=1e-3` -> ("alpha", 0.001): numbers, true/false and JSON literals are typed, the rest stays text."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def dataclass_overrides(namespace: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The flags the user actually set on the command line, by flag name."""
    return {
        name: dict(value) if get_origin(hint) is dict else value
        for name, hint, _ in flag_fields(cls)
        if (value := getattr(namespace, name, None)) is not None
    }
