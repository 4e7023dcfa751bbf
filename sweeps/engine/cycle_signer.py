"""The Tune callback that signs each cycle-store entry a trial of the sweep writes (`sweeps.engine.cycle_store`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from sweeps.engine.cycle_store import sign_entry
from trainables.shared_cycles import STORED_CYCLE
from trainables.tune_config import TRIAL_NAME


class CycleStoreSigner(Callback):
    """Signs every entry a trial of this sweep stored, as its result arrives (before the searcher hands out the
    trials waiting for it). Picklable: Tune saves it with the experiment."""

    def __init__(self, root: Path, sweep: str, parent_run_id: str) -> None:
        self.root, self.sweep, self.parent_run_id = root, sweep, parent_run_id

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        stored = result.get(STORED_CYCLE)
        if isinstance(stored, str) and stored:
            name = str(trial.config.get(TRIAL_NAME) or trial)
            computed_by = {"sweep": self.sweep, "trial": name, "parent_run_id": self.parent_run_id}
            sign_entry(self.root, json.loads(stored), computed_by)
