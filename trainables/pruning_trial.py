"""Ray Tune function trainable around `ap_core.run_trial`: one report (with checkpoint) per pruning cycle.

Tune's config is what sets the trial apart within its group (`trainables.tune_config`), so Tune's tables, result
files and `ResultGrid.get_dataframe()` show the settings that vary; the group's shared ones come once as `shared`.
Where it runs (device, threads, data folder) comes separately as `runtime`, so a resumed sweep may change it; each
dataset travels once per node in `datasets`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ray
from ray import tune

from ap_core import ArrayDataset, ConfigError, CycleResult, TrialConfig, run_trial
from ap_core.checkpoint import CHECKPOINT_FILE
from ap_core.cycle_keys import cycle_key
from ap_core.results import EpochProgress
from ap_core.trial import TrialRunner
from trainables.replicated_trial import train_replicated
from trainables.shared_cycles import REUSED_FROM, STORED_CYCLE, RejectedEntry, Reuse, fetch_entry, write_entry
from trainables.tune_config import REUSE, trial_config

# Metrics Tune keeps as its own numbers (the weights-remaining tables, searches and schedulers read them). Tune
# keeps running statistics of every number a trial reports, in every trial's saved state, so the rest (what remains
# of channels, parameters and FLOPs, per-layer DNR, density, dead units, losses, ...) travel packed as one JSON
# string, `PACKED_METRICS`, unpacked for MLflow and for the report's rows (`ROW_METRICS`).
TUNE_METRICS = ("cycle", "weights_remaining", "test_acc", "val_acc", "dnr")
ROW_METRICS = (*TUNE_METRICS, "params_remaining", "channels_remaining", "flops_remaining")
PACKED_METRICS = "more_metrics"
# A stage-one trial's (`dense_stage`) reports also after every epoch of its dense cycle but the last: the validation
# accuracy then, the epochs trained by then (ASHA's time, `sweeps.engine.tune_runner.EpochASHA`) and the epoch of
# the cycle, from 0. They have no `cycle`: every result that has one ends a cycle, and what counts cycles reads those.
TRAINED_EPOCHS = "trained_epochs"
EPOCH = "epoch"
# Inside every checkpoint: each cycle's metrics so far, and the trial's artifacts as of that cycle.
HISTORY_FILE = "cycles.json"
ARTIFACTS_DIR = "artifacts"

# Draws a trial's artifacts (name, every cycle's metrics so far) into a folder; runs where the trial runs.
ArtifactWriter = Callable[[Path, str, list[dict[str, float]]], None]


def dataset_key(config: TrialConfig) -> str:
    """Trials that share this key can share one in-memory copy of their dataset."""
    return f"{config.dataset}@{config.runtime.data_dir}"


def train_trial(
    config: dict[str, Any],
    runtime: Mapping[str, Any] | None = None,
    datasets: Mapping[str, ray.ObjectRef] | None = None,
    write_artifacts: ArtifactWriter | None = None,
    shared: Mapping[str, Any] | None = None,
    cycle_store: str = "",
    workers: int = 1,
    resources_per_worker: Mapping[str, float] | None = None,
    dense_stage: bool = False,
) -> None:
    """Run the trial whose experiment settings are `config` over `shared`, resuming from Tune's checkpoint if any.

    `datasets` maps `dataset_key`s to object refs of loaded `ArrayDataset`s (a trial whose dataset is not there
    loads it itself). `write_artifacts` draws the trial's artifacts into every checkpoint, here on the worker, so
    the driver only uploads them. With a `cycle_store` folder the trial stores its dense cycle and its last one
    there, and starts from the stored cycles its config names (`REUSE`), which the driver verified. With several
    `workers` (each with `resources_per_worker`) it trains data-parallel through Ray Train (`replicated_trial`).
    A `dense_stage` trial (stage one of a staged search) also reports after every epoch, so that ASHA can stop it
    within its dense cycle; data-parallel trials report once a cycle only.
    """
    # Ray Train logs one INFO line per persisted checkpoint: one per cycle per trial, thousands per sweep.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    settings = trial_config(config, runtime, shared)
    dataset_ref = (datasets or {}).get(dataset_key(settings))
    node_id = ray.get_runtime_context().get_node_id()
    name = tune.get_context().get_trial_name()
    history: list[dict[str, float]] = []
    store = Path(cycle_store) if cycle_store else None
    last = settings.pruning.cycles
    stored_keys = {0: cycle_key(settings, 0), last: cycle_key(settings, last)} if store else {}
    reuse = Reuse.from_dict(config[REUSE]) if config.get(REUSE) else None

    with tempfile.TemporaryDirectory(prefix="ap-trial-") as workdir:

        def report(result: CycleResult, reused: Reuse | None = None) -> None:
            # workdir/trial.pt holds the state after this cycle (none for a replayed cycle before the last one
            # reused); the history and artifacts join it in the checkpoint, which report() persists before returning.
            metrics = result.metrics()
            history.append({k: float(v) for k, v in metrics.items()})
            (Path(workdir) / HISTORY_FILE).write_text(json.dumps(history))
            with_state = reused is None or result.cycle == reused.cycle
            if write_artifacts is not None and with_state:
                write_artifacts(Path(workdir) / ARTIFACTS_DIR, name, history)
            sharing: dict[str, str] = {}
            if reused is not None:
                sharing[REUSED_FROM] = json.dumps({**reused.computed_by, "key": reused.key, "cycle": reused.cycle})
            elif store is not None and result.cycle in stored_keys:
                digests = _stored(store, stored_keys[result.cycle], Path(workdir))
                if digests is not None:
                    stored = {"key": stored_keys[result.cycle], "cycle": result.cycle, "files": digests}
                    sharing[STORED_CYCLE] = json.dumps(stored)
            tune.report(
                {
                    **{k: v for k, v in metrics.items() if k in TUNE_METRICS},
                    PACKED_METRICS: json.dumps({k: v for k, v in metrics.items() if k not in TUNE_METRICS}),
                    "node_id": node_id,
                    "removal_events": json.dumps(result.removal_events),
                    **sharing,
                },
                checkpoint=tune.Checkpoint.from_directory(workdir) if with_state else None,
            )

        def report_epoch(progress: EpochProgress) -> None:
            trained = progress.cycle * settings.training.epochs + progress.epoch + 1
            validation = {} if progress.val_acc is None else {"val_acc": progress.val_acc}  # as in a cycle's result
            tune.report({**validation, TRAINED_EPOCHS: trained, EPOCH: progress.epoch})

        checkpoint = tune.get_checkpoint()
        with checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as resume_dir:
            resume_from = Path(resume_dir) if resume_dir else None
            if resume_from is not None:
                history.extend(_history(resume_from))
            if workers > 1:
                resources = resources_per_worker or {}
                train_replicated(settings, workers, resources, dataset_ref, resume_from, Path(workdir), report)
                return
            dataset: ArrayDataset | None = ray.get(dataset_ref) if dataset_ref is not None else None
            if resume_from is not None:
                run_trial(settings, on_cycle=report, checkpoint_dir=workdir, resume_from=resume_from, dataset=dataset)
                return
        trial = TrialRunner(settings, dataset)
        if reuse is not None and store is not None and _started_from(trial, store, reuse, Path(workdir)):
            for result in trial.results:  # the stored cycles, as the trial that computed them reported them
                report(result, reuse)
        trial.run(report, Path(workdir), report_epoch if dense_stage else None)


def _stored(store: Path, key: str, workdir: Path) -> dict[str, str] | None:
    """Store the state in `workdir` as entry `key` if it is new; sharing is an optimisation: a store this node
    cannot write (full, or not mounted here) costs one line on the trial's log, not the trial."""
    try:
        return write_entry(store, key, workdir)
    except OSError as err:
        print(f"warning: cannot store cycle {key} in {store} ({err.strerror or err})", file=sys.stderr, flush=True)
        return None


def _started_from(trial: TrialRunner, store: Path, reuse: Reuse, workdir: Path) -> bool:
    """Bring `trial` to the stored state after cycle `reuse.cycle` and save it as its own checkpoint; False (with
    one line on the trial's log) when the entry is not the one the driver verified: the trial then trains it."""
    fetched = workdir / "stored"
    try:
        fetch_entry(store, reuse, fetched)
        trial.restore(fetched / CHECKPOINT_FILE, shared_cycle=reuse.cycle)
    except (RejectedEntry, ConfigError) as err:
        print(f"warning: {err}; training those cycles instead", file=sys.stderr, flush=True)
        return False
    finally:
        shutil.rmtree(fetched, ignore_errors=True)
    trial.save(workdir)
    return True


def _history(checkpoint_dir: Path) -> list[dict[str, float]]:
    """The cycles' metrics a checkpoint holds (JSON: nothing in it is executed); none in older checkpoints."""
    path = checkpoint_dir / HISTORY_FILE
    if not path.is_file():
        return []
    return [{str(k): float(v) for k, v in row.items()} for row in json.loads(path.read_text())]
