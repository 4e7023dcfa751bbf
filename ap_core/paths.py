"""Output paths checked before the work whose results they will hold: a typo must not cost a finished run."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ap_core.errors import ConfigError


def check_writable_dir(path: Path, flag: str, value: Path | None = None) -> None:
    """Refuse a folder that cannot be created or written, without leaving anything behind in it.

    `value` is what the user gave, when that is a file inside `path`.
    """
    shown = str(value or path)
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag} {shown!r} cannot be created: {str(existing)!r} is a file, not a folder")
    try:
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as err:
        raise ConfigError(f"{flag} {shown!r} is not writable ({err.strerror or err}); pick a writable folder") from None


def check_writable_file(path: Path, flag: str) -> None:
    """Refuse an output file whose folder cannot be written (or that names a folder)."""
    if path.is_dir():
        raise ConfigError(f"{flag} {str(path)!r} is a folder; give a file path")
    check_writable_dir(path.parent, flag, path)


def write_atomic(path: Path, data: bytes | str, mode: int = 0o644, durable: bool = True) -> None:
    """Replace `path` with `data` all at once: a temporary file beside it, flushed to disk, then renamed over it.

    A write that fails part-way (a full disk, a killed process) leaves the previous version whole, and the
    temporary file is removed; the error (OSError, ENOSPC for a full disk) is raised to the caller. `mode` is the
    file's permissions (a temporary file starts private); `durable` False skips the flushes to disk (for files a
    crash may lose, as long as it cannot leave them half-written).
    """
    payload = data.encode() if isinstance(data, str) else data
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(payload)
            file.flush()
            if durable:
                os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    if not durable:
        return
    try:  # the rename itself survives a crash once the folder is synced
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(folder)
    except OSError:
        pass
    finally:
        os.close(folder)
