"""A trial trained by several data-parallel workers through Ray Train, inside its Tune trial.

The Tune trial stays the one that reports: Tune's scheduler, checkpoints, resume and the MLflow logging see a trial
like any other. Ray Train starts the workers and their process group (gloo on CPUs, NCCL on GPUs); the core trains
them as replicas (`ap_core.replicas`). After every cycle the first worker sends its result and its checkpoint file to
the Tune trial through a queue, and the Tune trial reports them as a one-process trial would. A checkpoint is the
whole trial's state, whatever the number of workers that wrote it: a trial resumes on any number of workers.

A failing worker fails the Ray Train run and with it the Tune trial, which Tune retries from its last checkpoint
(`--max-failures`), so there is one retry policy for every trial.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ray
from ray.train import FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer, get_device
from ray.util.queue import Empty, Queue

from ap_core import ArrayDataset, CycleResult, TrialConfig, run_trial
from ap_core.checkpoint import CHECKPOINT_FILE

# How long the Tune trial waits on the queue before looking whether the workers have stopped.
POLL_SECONDS = 1.0


def train_replicated(
    settings: TrialConfig,
    workers: int,
    resources_per_worker: Mapping[str, float],
    dataset: ray.ObjectRef | None,
    resume_from: Path | None,
    workdir: Path,
    report: Callable[[CycleResult], None],
) -> None:
    """Train the trial on `workers` replicas; after each cycle, write its checkpoint to `workdir` and `report` it.

    `resume_from`: a folder holding a checkpoint of this trial (written by any number of workers).
    """
    # A preempted node fails the trial, which Tune retries from its last checkpoint like any failure; Ray Train's own
    # preemption watcher would only add an actor (and an error line on the console) per trial.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    cycles: Queue = Queue(maxsize=1, actor_options={"num_cpus": 0})  # the first worker waits for each report
    start = (resume_from / CHECKPOINT_FILE).read_bytes() if resume_from is not None else None
    use_gpu = resources_per_worker.get("GPU", 0) > 0
    trainer = TorchTrainer(
        _replica,
        train_loop_config={
            "settings": settings,
            "dataset": dataset,
            "start": start,
            "cycles": cycles,
            "use_gpu": use_gpu,
        },
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=use_gpu, resources_per_worker=dict(resources_per_worker)
        ),
        run_config=RunConfig(
            name="replicas",
            storage_path=str(workdir / "ray-train"),
            failure_config=FailureConfig(max_failures=0, controller_failure_limit=0),
            # Ray Train's own lines (a lost worker's tracebacks too) stay in its log files in Ray's session folder;
            # the failure reaches the console once, as the trial's error.
            logging_config=LoggingConfig(log_level="CRITICAL"),
        ),
    )
    failure: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as err:  # raised again in the trial's thread, after the reports that preceded it
            failure.append(err)

    training = threading.Thread(target=fit, name="ray-train", daemon=True)
    training.start()
    try:
        while training.is_alive() or not cycles.empty():
            try:
                result, state = cycles.get(timeout=POLL_SECONDS)
            except Empty:
                continue
            (workdir / CHECKPOINT_FILE).write_bytes(state)
            report(CycleResult.from_dict(result))
    finally:
        training.join()
        cycles.shutdown()
    if failure:
        raise failure[0]


def _replica(loop_config: dict[str, Any]) -> None:
    """One worker: train the trial as a replica; the first one also sends each cycle's result and state."""
    device = str(get_device()) if loop_config["use_gpu"] else "cpu"
    settings: TrialConfig = loop_config["settings"].replace(device=device)
    dataset: ArrayDataset | None = ray.get(loop_config["dataset"]) if loop_config["dataset"] is not None else None
    first = ray.train.get_context().get_world_rank() == 0
    cycles: Queue = loop_config["cycles"]
    with tempfile.TemporaryDirectory(prefix="ap-replica-") as folder:
        workdir = Path(folder)
        resume_from = None
        if loop_config["start"] is not None:
            resume_from = workdir / "start"
            resume_from.mkdir()
            (resume_from / CHECKPOINT_FILE).write_bytes(loop_config["start"])

        def send(result: CycleResult) -> None:
            cycles.put((result.to_dict(), (workdir / CHECKPOINT_FILE).read_bytes()))

        run_trial(
            settings,
            on_cycle=send if first else None,
            checkpoint_dir=workdir if first else None,
            resume_from=resume_from,
            dataset=dataset,
        )
