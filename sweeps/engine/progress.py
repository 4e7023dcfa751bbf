"""The sweep's one live display: cycles done over all trials with ETA, and trials done/running/failed."""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial
from tqdm import tqdm

from trainables.pruning_trial import trial_config

REFRESH_SECONDS = 1.0


class OverallProgress(Callback):
    """Counts finished training cycles over all trials (a stopped or failed trial counts as done)."""

    def __init__(self, total_cycles: int, description: str) -> None:
        self.total_cycles = total_cycles
        self.description = description
        self._bar: tqdm | None = None
        self._last_refresh = 0.0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_bar": None}

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        now = time.monotonic()
        if now - self._last_refresh >= REFRESH_SECONDS:
            self._last_refresh = now
            self._update(trials)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self._update(trials)
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _update(self, trials: list[Trial]) -> None:
        if self._bar is None:
            self._bar = tqdm(total=self.total_cycles, desc=self.description, unit="cycle")
        done = 0
        for trial in trials:
            if trial.status in (Trial.TERMINATED, Trial.ERROR):
                done += trial_config(trial.config).cycles + 1
            else:
                done += int(trial.last_result.get("cycle", -1)) + 1
        counts = {status: sum(t.status == status for t in trials) for status in (Trial.RUNNING, Trial.ERROR)}
        finished = sum(t.status == Trial.TERMINATED for t in trials)
        self._bar.set_postfix_str(
            f"trials: {finished} done, {counts[Trial.RUNNING]} running, {counts[Trial.ERROR]} failed", refresh=False
        )
        self._bar.update(done - self._bar.n)
