"""A trial that fails because its storage is full stops the sweep (resumably) instead of failing every trial.

Trials write their checkpoints to the storage themselves; once it is full, each would fail, be retried and end
FAILED, and the sweep would be lost. This Tune callback sees the first such failure and stops the sweep as Ctrl-C
does; the driver then says what is full and exits 3 with the resume hint (sweeps.engine.state_signing.FULL).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from sweeps.engine import state_signing

DISK_FULL = ("No space left on device", "[Errno 28]", "database or disk is full")


class StopWhenStorageFull(Callback):
    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._check(trial)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._check(trial)

    def _check(self, trial: Trial) -> None:
        try:
            error = Path(trial.error_file).read_text(errors="replace") if trial.error_file else ""
        except OSError:
            return
        if any(text in error for text in DISK_FULL):
            state_signing.storage_full(trial.storage.experiment_fs_path if trial.storage else str(trial.path))
