"""Ray Tune function trainable around `ap_core.run_trial`: one report (with checkpoint) per pruning cycle.

Tune's config holds only the trial's name (so Tune's live table reads like the sweep); the full TrialConfig of
every trial travels once through the object store in `plans`, and each dataset once per node in `datasets`.
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


def dataset_key(config: TrialConfig) -> str:
    """Trials that share this key can share one in-memory copy of their dataset."""
    return f"{config.dataset}@{config.data_dir}"


def train_trial(
    config: dict[str, Any],
    plans: Mapping[str, dict[str, Any]],
    datasets: Mapping[str, ray.ObjectRef] | None = None,
) -> None:
    """Run the planned trial `config["trial"]`, resuming from Tune's checkpoint when there is one.

    `plans` maps trial names to TrialConfig dicts; `datasets` maps `dataset_key`s to object refs of loaded
    `ArrayDataset`s (a trial whose dataset is not there loads it itself).
    """
    # Ray Train logs one INFO line per persisted checkpoint: one per cycle per trial, thousands per sweep.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    trial_config = TrialConfig.from_dict(plans[config["trial"]])
    dataset: ArrayDataset | None = None
    if datasets and dataset_key(trial_config) in datasets:
        dataset = ray.get(datasets[dataset_key(trial_config)])
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
            run_trial(trial_config, on_cycle=report, checkpoint_dir=workdir, dataset=dataset)
            return
        with checkpoint.as_directory() as resume_dir:
            run_trial(trial_config, on_cycle=report, checkpoint_dir=workdir, resume_from=resume_dir, dataset=dataset)
