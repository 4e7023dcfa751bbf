"""Ray Tune function trainable around `ap_core.run_trial`: one report (with checkpoint) per pruning cycle.

Tune's config is the trial's experiment (the TrialConfig fields that decide its numbers), so Tune's tables,
result files and `ResultGrid.get_dataframe()` show the real settings. Where it runs (device, threads, data folder)
comes separately as `runtime`, so a resumed sweep may change it; each dataset travels once per node in `datasets`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from typing import Any

import ray
from ray import tune

from ap_core import ArrayDataset, CycleResult, TrialConfig, run_trial

# Tune's Repeater numbers the repeats of one searched point 0, 1, ...: they are the point's seeds 1, 2, ...
REPEAT_INDEX = "__trial_index__"


def trial_config(config: Mapping[str, Any], runtime: Mapping[str, Any] | None = None) -> TrialConfig:
    """The TrialConfig of a Tune config (plus the sweep's runtime settings)."""
    values = {k: v for k, v in config.items() if k != REPEAT_INDEX}
    if REPEAT_INDEX in config:
        values["seed"] = int(config[REPEAT_INDEX]) + 1
    return TrialConfig.from_dict({**values, **(runtime or {})})


def dataset_key(config: TrialConfig) -> str:
    """Trials that share this key can share one in-memory copy of their dataset."""
    return f"{config.dataset}@{config.data_dir}"


def train_trial(
    config: dict[str, Any],
    runtime: Mapping[str, Any] | None = None,
    datasets: Mapping[str, ray.ObjectRef] | None = None,
) -> None:
    """Run the trial whose experiment settings are `config`, resuming from Tune's checkpoint when there is one.

    `datasets` maps `dataset_key`s to object refs of loaded `ArrayDataset`s (a trial whose dataset is not there
    loads it itself).
    """
    # Ray Train logs one INFO line per persisted checkpoint: one per cycle per trial, thousands per sweep.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    settings = trial_config(config, runtime)
    dataset: ArrayDataset | None = None
    if datasets and dataset_key(settings) in datasets:
        dataset = ray.get(datasets[dataset_key(settings)])
    node_id = ray.get_runtime_context().get_node_id()

    with tempfile.TemporaryDirectory(prefix="ap-trial-") as workdir:

        def report(result: CycleResult) -> None:
            # run_trial has just written workdir/trial.pt; report() persists it before returning.
            tune.report(
                {**result.metrics(), "node_id": node_id, "removal_events": json.dumps(result.removal_events)},
                checkpoint=tune.Checkpoint.from_directory(workdir),
            )

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            run_trial(settings, on_cycle=report, checkpoint_dir=workdir, dataset=dataset)
            return
        with checkpoint.as_directory() as resume_dir:
            run_trial(settings, on_cycle=report, checkpoint_dir=workdir, resume_from=resume_dir, dataset=dataset)
