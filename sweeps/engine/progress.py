"""The sweep's one live display: cycles done over all trials with ETA, and trials done/running/failed."""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial
from tqdm import tqdm

from sweeps.engine.spec import TrialCatalog

REFRESH_SECONDS = 1.0


class OverallProgress(Callback):
    """Counts finished training cycles over all trials (a stopped or failed trial counts as done).

    Counted as Tune's events arrive, so a refresh costs the same at 40 trials as at 40,000; only the first one
    looks at every trial, for those a resumed sweep had already ended.
    """

    dense_stage = False  # class default: a sweep resumed from a release without it

    def __init__(self, total_cycles: int, description: str, catalog: TrialCatalog, dense_stage: bool = False) -> None:
        self.total_cycles = total_cycles
        self.dense_stage = dense_stage  # stage one of a staged search: a trial plans its dense cycle only
        self.description = description
        self.catalog = catalog
        self._bar: tqdm | None = None
        self._last_refresh = 0.0
        self._ended_cycles = 0  # planned cycles of every ended trial
        self._ended: set[str] = set()
        self._failed = 0
        self._last_cycle: dict[str, int] = {}  # trials started and not ended -> last cycle reported

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_bar": None}

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._last_cycle.setdefault(trial.trial_id, -1)

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        if "cycle" in result:  # not a stage-one trial's per-epoch result
            self._last_cycle[trial.trial_id] = int(result["cycle"])

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._end(trial)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._end(trial)

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

    def _end(self, trial: Trial) -> None:
        self._last_cycle.pop(trial.trial_id, None)
        if trial.trial_id not in self._ended:
            self._ended.add(trial.trial_id)
            config = self.catalog.trial_of(trial.config, trial.trial_id).config
            self._ended_cycles += 1 if self.dense_stage else config.pruning.cycles + 1
            self._failed += trial.status == Trial.ERROR

    def _update(self, trials: list[Trial]) -> None:
        if self._bar is None:
            self._bar = tqdm(total=self.total_cycles, desc=self.description, unit="cycle")
            for trial in trials:  # restored by --resume: no events for what had ended before
                if trial.status in (Trial.TERMINATED, Trial.ERROR):
                    self._end(trial)
                elif trial.last_result:
                    self._last_cycle[trial.trial_id] = int(trial.last_result.get("cycle", -1))
        done = self._ended_cycles + sum(cycle + 1 for cycle in self._last_cycle.values())
        self._bar.set_postfix_str(
            f"trials: {len(self._ended) - self._failed} done, {len(self._last_cycle)} running, {self._failed} failed",
            refresh=False,
        )
        self._bar.update(done - self._bar.n)
