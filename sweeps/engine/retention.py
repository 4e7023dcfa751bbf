"""Old trial checkpoints deleted at Tune's own experiment snapshots, so storage holds about two per trial.

Tune's `CheckpointConfig(num_to_keep)` would do the deleting, but each time a trial has checkpointed that many
times it forces a snapshot of the whole experiment's state: a JSON dump of every trial, so a sweep's cost per
trial grew with its number of trials. Here a checkpoint is deleted only once no saved snapshot can point at it:
it is older than what the previous snapshot recorded for its trial (the one being written now records newer
ones), and it is not among the trial's newest `KEEP`. So `--resume` after a crash always finds the checkpoint
the last snapshot names. Each trial's saved state names its newest checkpoint only (`forget_older_checkpoints`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from ray.tune import Callback, Checkpoint
from ray.tune.experiment import Trial

KEEP = 2  # a trial's newest checkpoints kept while it runs and after it ends


@dataclass
class _TrialCheckpoints:
    paths: list[str] = field(default_factory=list)  # oldest first, the ones not deleted yet
    saved: str = ""  # the newest one when the previous snapshot was written
    ended: bool = False


class CheckpointRetention(Callback):
    """Deletes a trial's checkpoints older than the previous snapshot's, keeping its newest `KEEP`.

    Tune calls `get_state` while it writes each snapshot of the experiment; that is the moment this acts. Its
    bookkeeping covers the trials of this invocation that still have something to delete, and it saves no state.
    """

    def __init__(self) -> None:
        self._trials: dict[str, _TrialCheckpoints] = {}
        self._filesystem: Any = None
        self._warned = False

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_trials": {}, "_filesystem": None, "_warned": False}

    def on_checkpoint(self, iteration: int, trials: list[Trial], trial: Trial, checkpoint: Checkpoint, **info: Any):
        self._filesystem = checkpoint.filesystem
        self._trials.setdefault(trial.trial_id, _TrialCheckpoints()).paths.append(checkpoint.path)
        forget_older_checkpoints(trial)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._end(trial)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._end(trial)

    def get_state(self) -> None:
        """A snapshot is being written: delete what the previous one no longer needs; record what this one does."""
        for trial_id, kept in list(self._trials.items()):
            self._delete_before(kept, kept.saved)
            kept.saved = kept.paths[-1] if kept.paths else ""
            if kept.ended and len(kept.paths) <= KEEP:
                del self._trials[trial_id]  # nothing left to delete: stop tracking it
        return None

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        """Tune wrote its final snapshot just before: only each trial's newest checkpoints are referenced now."""
        for kept in self._trials.values():
            self._delete_before(kept, kept.paths[-1] if kept.paths else "")
        self._trials.clear()

    def _end(self, trial: Trial) -> None:
        if trial.trial_id in self._trials:
            self._trials[trial.trial_id].ended = True

    def _delete_before(self, kept: _TrialCheckpoints, newest_needed: str) -> None:
        if newest_needed not in kept.paths:
            return
        deletable = kept.paths[: min(kept.paths.index(newest_needed), max(0, len(kept.paths) - KEEP))]
        for path in deletable:
            self._delete(path)
        kept.paths = kept.paths[len(deletable) :]

    def _delete(self, path: str) -> None:
        try:
            self._filesystem.delete_dir(path)
        except FileNotFoundError:
            pass  # gone already (a trial restarted from an earlier one, or a person tidied up)
        except OSError as err:  # storage refused: keep the sweep going, say it once
            if not self._warned:
                self._warned = True
                print(f"warning: cannot delete old checkpoint {path} ({err}); others may stay too", file=sys.stderr)


def forget_older_checkpoints(trial: Trial) -> None:
    """Tune is about to register a trial's new checkpoint: drop the ones it listed before from its saved state.

    Tune lists every checkpoint a trial made, for `num_to_keep`'s ranking (unused here: the newest is the one
    resumed, and Tune holds it apart), in every snapshot: without this a trial's saved state grows by a
    checkpoint per cycle, and a snapshot with the trials x cycles of the sweep.
    """
    manager = trial.run_metadata.checkpoint_manager
    if manager is not None and manager.latest_checkpoint_result is not None:
        manager._checkpoint_results.clear()  # Tune's own list; no public way to shorten it without num_to_keep
        trial.run_metadata.invalidate_cache()
