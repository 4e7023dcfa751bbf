"""Tune's state on shared storage is signed by the user who wrote it, and checked before anything unpickles it.

Tune restores an experiment by unpickling files from its storage folder: `tuner.pkl`, `searcher-state-*.pkl`,
`callback-states-*.pkl`, a trial's `error.pkl`, and the cloudpickled blobs inside `experiment_state-*.json`.
`--storage` may be an NFS folder or a bucket many people can write, and a pickle runs whatever code it names. So
every such file this driver writes gets an HMAC-SHA256 under a key kept outside the storage, listed in a manifest
beside the state (`ap-sweeps-state.sig`), and before `Tuner.restore` every one of them must carry a valid HMAC:
a tampered, foreign or unsigned file is refused in one line naming it, and nothing in it runs.

The key: `$AP_SWEEPS_STATE_KEY` when the operator sets it (a secret, like the cluster's Ray token), else
`~/.config/ap-sweeps/state.key` (`$XDG_CONFIG_HOME` respected), made on first use with mode 0600. Only the
driver signs and checks, so workers never need it.

How the signatures stay true to the files after a crash: Tune writes its state into a local staging folder and
uploads it (`ray.train._internal.storage._upload_to_fs_path`) in a background thread. That upload is wrapped:
the manifest is first rewritten to accept both the files' previous and their new contents, then the files are
uploaded, then the manifest keeps the new ones only. Killed at any point, every file on storage is one this
user signed. Files Tune downloads back into staging on restore are checked again once downloaded (the window
between the check and the read is closed for them). `tuner.pkl`, which Tune writes straight to storage when a
Tuner is built, is signed right after that.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import hmac
import json
import os
import posixpath
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sweeps.engine.options import SweepError

KEY_ENV = "AP_SWEEPS_STATE_KEY"
MANIFEST = "ap-sweeps-state.sig"  # neither .json nor .pkl: Tune's restore does not copy it into staging
TOP_LEVEL = ("*.json", "*.pkl")  # in the experiment folder: Tune's own state, the searcher's, the callbacks'
ANYWHERE = ("*.pkl",)  # in trial folders: error.pkl is unpickled when results are read back
DOMAIN = b"ap-sweeps tune state v1\0"


class UnsignedState(SweepError):
    """A state file without a valid signature of this user's key."""


# ---- the key -------------------------------------------------------------------------------------------------------


def key_path() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "ap-sweeps" / "state.key"


def load_key(create: bool) -> bytes | None:
    """The signing key: the operator's secret, else the user's key file (made, private, when `create`)."""
    secret = os.environ.get(KEY_ENV, "")
    if secret:
        return hashlib.sha256(secret.encode()).digest()
    path = key_path()
    if not path.exists():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another sweep made it just now
            return load_key(create=False)
        with os.fdopen(handle, "w") as file:
            file.write(secrets.token_hex(32) + "\n")
    if path.stat().st_mode & 0o077:
        raise SweepError(
            f"the state signing key {path} can be read by others (mode {path.stat().st_mode & 0o777:o}); "
            f"whoever reads it can make this user's sweeps run their code: chmod 600 {path}"
        )
    text = path.read_text().strip()
    if not text:
        raise SweepError(f"the state signing key {path} is empty; delete it to make a new one")
    return hashlib.sha256(text.encode()).digest()


# ---- the manifest on storage ---------------------------------------------------------------------------------------


def _fs(experiment_path: str) -> tuple[Any, str]:
    from ray.train._internal.storage import get_fs_and_path

    return get_fs_and_path(experiment_path)


def _signed_names(relpaths: list[str]) -> list[str]:
    """The files of an experiment folder that Tune may unpickle (paths relative to the folder, with `/`)."""
    chosen = []
    for rel in relpaths:
        name = posixpath.basename(rel)
        if name == MANIFEST:
            continue
        patterns = TOP_LEVEL if "/" not in rel else ANYWHERE
        if any(fnmatch.fnmatch(name, p) for p in patterns):
            chosen.append(rel)
    return sorted(chosen)


def _digest(key: bytes, rel: str, content: bytes) -> str:
    return hmac.new(key, DOMAIN + rel.encode() + b"\0" + content, hashlib.sha256).hexdigest()


def _read_manifest(fs: Any, fs_path: str) -> dict[str, list[str]]:
    import pyarrow.fs

    path = posixpath.join(fs_path, MANIFEST)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return {}
    with fs.open_input_stream(path) as stream:
        raw = stream.readall()
    try:
        files = json.loads(raw)["files"]
        return {str(k): [str(d) for d in v] for k, v in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}  # damaged: every file then reads as unsigned


def _write_manifest(fs: Any, fs_path: str, files: dict[str, list[str]]) -> None:
    import pyarrow.fs

    payload = (json.dumps({"version": 1, "files": files}, indent=1, sort_keys=True) + "\n").encode()
    path = posixpath.join(fs_path, MANIFEST)
    fs.create_dir(fs_path, recursive=True)
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        from ap_core.paths import write_atomic

        write_atomic(Path(path), payload)
    else:  # an object store replaces an object whole
        with fs.open_output_stream(path) as stream:
            stream.write(payload)


def _list(fs: Any, fs_path: str) -> list[str]:
    import pyarrow.fs

    infos = fs.get_file_info(pyarrow.fs.FileSelector(fs_path, recursive=True, allow_not_found=True))
    prefix = fs_path.rstrip("/") + "/"
    return [i.path.removeprefix(prefix) for i in infos if i.type == pyarrow.fs.FileType.File]


def _read(fs: Any, path: str) -> bytes:
    with fs.open_input_stream(path) as stream:
        return stream.readall()


# ---- checking ------------------------------------------------------------------------------------------------------


def verify(experiment_path: str) -> None:
    """Refuse (one line naming the file) unless every state file of the experiment carries this user's HMAC."""
    fs, fs_path = _fs(experiment_path)
    names = _signed_names(_list(fs, fs_path))
    if not names:
        return
    key = load_key(create=False)
    manifest = _read_manifest(fs, fs_path)
    for rel in names:
        _check(key, manifest, rel, _read(fs, posixpath.join(fs_path, rel)), posixpath.join(experiment_path, rel))


def _check(key: bytes | None, manifest: dict[str, list[str]], rel: str, content: bytes, shown: str) -> None:
    if key is None or rel not in manifest:
        why = "no signing key here" if key is None else "it is not signed"
        raise UnsignedState(
            f"refusing to restore from {shown}: {why} (a file this user's sweep writes is signed with the key in "
            f"{key_path()} or ${KEY_ENV}); it may run code if loaded, so nothing was loaded. If you trust it, "
            "start the sweep over with --overwrite"
        )
    if not any(hmac.compare_digest(_digest(key, rel, content), d) for d in manifest[rel]):
        raise UnsignedState(
            f"refusing to restore from {shown}: it does not match its signature (changed since this user's sweep "
            "wrote it, or signed with another key); it may run code if loaded, so nothing was loaded. Start the "
            "sweep over with --overwrite, or restore the file"
        )


# ---- signing -------------------------------------------------------------------------------------------------------


_PROTECTED: dict[str, str] = {}  # storage fs path of an experiment -> its path as the sweep names it
_LOCK = threading.Lock()
_installed = False


def sign_files(experiment_path: str, relpaths: list[str]) -> None:
    """Sign files this process has just written to the experiment folder (Tune's `tuner.pkl`)."""
    key = load_key(create=True)
    assert key is not None
    fs, fs_path = _fs(experiment_path)
    with _LOCK:
        manifest = _read_manifest(fs, fs_path)
        for rel in relpaths:
            manifest[rel] = [_digest(key, rel, _read(fs, posixpath.join(fs_path, rel)))]
        _write_manifest(fs, fs_path, manifest)


def protect(experiment_path: str) -> None:
    """From now on, sign every state file Tune uploads to this experiment, and check every one it downloads."""
    load_key(create=True)
    _, fs_path = _fs(experiment_path)
    _PROTECTED[fs_path.rstrip("/")] = experiment_path
    _install()


def _staged(local_dir: str) -> Iterator[tuple[str, bytes]]:
    root = Path(local_dir)
    relpaths = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    for rel in _signed_names(relpaths):
        try:
            yield rel, (root / rel).read_bytes()
        except OSError:
            continue  # gone since listed: Tune rewrites its staging folder


# Tune keeps the sync command it last ran and pickles it with its experiment: the wrappers are module functions,
# which pickle by name (a closure would be pickled by value, lock and all).
_ORIGINAL: dict[str, Callable[..., None]] = {}


def signed_upload(local_path: str, fs: Any, fs_path: str, exclude: list[str] | None = None) -> None:
    """Tune's upload of its staging folder, with the manifest rewritten around it."""
    target = fs_path.rstrip("/")
    if target not in _PROTECTED or not os.path.isdir(local_path):
        return _ORIGINAL["upload"](local_path=local_path, fs=fs, fs_path=fs_path, exclude=exclude)
    try:
        _upload_signed(Path(local_path), fs, target, exclude)
    except OSError as err:
        if err.errno == errno.ENOSPC or "No space left on device" in str(err):
            storage_full(fs_path)
        raise


def _upload_signed(local: Path, fs: Any, target: str, exclude: list[str] | None) -> None:
    import pyarrow.fs

    key = load_key(create=True)
    assert key is not None
    new = {rel: _digest(key, rel, content) for rel, content in _staged(str(local))}
    with _LOCK:
        manifest = _read_manifest(fs, target)
        # Both versions are valid while the upload runs: killed half-way, each file is one or the other.
        _write_manifest(fs, target, {**manifest, **{rel: [d, *manifest.get(rel, [])][:2] for rel, d in new.items()}})
    if isinstance(fs, pyarrow.fs.LocalFileSystem) and not exclude:
        _upload_atomically(local, Path(target), set(new))
    else:
        _ORIGINAL["upload"](local_path=str(local), fs=fs, fs_path=target, exclude=exclude)
    with _LOCK:
        manifest = _read_manifest(fs, target)
        _write_manifest(fs, target, {**manifest, **{rel: [d] for rel, d in new.items()}})


def _upload_atomically(local: Path, target: Path, state_files: set[str]) -> None:
    """Copy the staging folder file by file, each replaced whole: a full disk or a kill leaves the last complete
    version on storage (pyarrow's copy writes in place, and a full disk left a truncated experiment state)."""
    from ap_core.paths import write_atomic

    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        rel = path.relative_to(local).as_posix()
        try:
            content = path.read_bytes()
        except OSError:
            continue  # gone since listed: Tune rewrites its staging folder
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target / rel, content, durable=rel in state_files)


# Set when storage ran out of room while this sweep saved its state: the driver stops the sweep with one line.
FULL: dict[str, str] = {}


def storage_full(where: str) -> None:
    """Stop the sweep as Ctrl-C does (Tune saves what it can, trials stay resumable), noting what is full."""
    import _thread

    if not FULL:
        FULL["path"] = where
        _thread.interrupt_main()


def checked_download(fs: Any, fs_path: str, local_path: str, filelock: bool = True) -> None:
    """Tune's download of a state file into staging, checked once it is there (the copy Tune will unpickle)."""
    _ORIGINAL["download"](fs=fs, fs_path=fs_path, local_path=local_path, filelock=filelock)
    folder, _, name = fs_path.rstrip("/").rpartition("/")
    if folder in _PROTECTED and _signed_names([name]):
        _check(load_key(create=False), _read_manifest(fs, folder), name, Path(local_path).read_bytes(), fs_path)


def _install() -> None:
    global _installed
    if _installed:
        return
    from ray.train._internal import storage
    from ray.tune.execution import experiment_state

    _ORIGINAL["upload"] = storage._upload_to_fs_path
    _ORIGINAL["download"] = experiment_state._download_from_fs_path
    storage._upload_to_fs_path = signed_upload
    experiment_state._download_from_fs_path = checked_download
    _installed = True
