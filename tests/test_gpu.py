"""GPU acceptance (issue 18), run with `pytest -m gpu`; every test skips, with the reason, where torch sees no CUDA.

What only a GPU exercises: bf16 autocast and channels-last through a channel removal and a resume, a folder dataset
streamed through pinned memory into the GPU, Tune's fractional GPUs shared by two trials, data-parallel workers joined
by NCCL, and `--gpus-per-trial auto`'s probe measuring a real GPU's memory. The same code on CPU is tested elsewhere
(tests/test_structured.py, test_folder_data.py, test_sweep_packing.py, test_data_parallel.py): not repeated here.
`bash benchmarks/gpu_check.sh` runs these and the GPU benchmark rows.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from conftest import MlflowServer, comparable, run_cli
from mlflow.tracking import MlflowClient
from torch import nn

from ap_core import ArrayDataset, CycleResult
from ap_core.checkpoint import CHECKPOINT_FILE
from ap_core.checks import checked_config
from ap_core.config import TrialConfig
from ap_core.cost import MIB
from ap_core.datasets import CIFAR10_MEAN, CIFAR10_STD, cifar_like
from ap_core.trial import TrialRunner
from sweeps import table1
from sweeps.engine.driver import load_datasets, plan_sweep
from sweeps.engine.options import parse_args
from sweeps.engine.packing import MAX_TRIALS_PER_GPU, probe_memory, resolve_locally
from sweeps.smoke_images import write_tree

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(GPUS == 0, reason="needs a CUDA GPU; torch sees none here")]

# Results of a trial resumed on a GPU match the uninterrupted trial within what kernels that add in a varying order
# (cuDNN's backward passes) explain; what pruning decided (how much remains) matches exactly.
LOSS_TOLERANCE = 0.02  # relative
TEST_IMAGES = 64  # the generated tree's test split: 4 classes x 16
ACCURACY_TOLERANCE = 2 * 100 / TEST_IMAGES  # two test images, in percent


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CIFAR-sized (32 px) JPEGs in class folders: 4 classes x (64 train + 16 test)."""
    return write_tree(tmp_path_factory.mktemp("gpu") / "images", classes=4, train=64, val=TEST_IMAGES // 4, size=32)


def slimming_on_cuda(image_tree: Path) -> TrialConfig:
    """Network Slimming on ResNet-20 (shortcuts: channel groups span blocks), half the channels removed after the
    dense cycle, bf16 autocast and channels-last on (`amp`), the folder read by two loader workers."""
    return checked_config(
        {
            "model": "resnet20",
            "dataset": "folder",
            "data_dir": str(image_tree),
            "image_size": 32,
            "loader_workers": 2,
            "dead_unit_window": 64,
            "method": "network_slimming",
            "method_options": {"channel_ratio": 0.5},
            "epochs": 2,
            "cycles": 1,
            "batch_size": 32,
            "device": "cuda",
            "amp": True,
        }
    )


def convolution_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]


def assert_finite(results: Sequence[CycleResult]) -> None:
    for result in results:
        values = (result.train_loss, result.test_loss, result.test_acc, result.dnr)
        assert all(math.isfinite(v) for v in values), result


def test_bf16_channels_last_trial_removes_channels_stays_channels_last_and_resumes(
    image_tree: Path, tmp_path: Path
) -> None:
    config = slimming_on_cuda(image_tree)
    trial = TrialRunner(config)
    assert trial.device.type == "cuda" and trial.parts.environment.use_amp and trial.parts.channels_last
    training_forwards: list[tuple[torch.dtype, bool]] = []  # (output dtype, input channels-last) of the first conv

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if module.training and torch.is_grad_enabled():
            training_forwards.append((output.dtype, inputs[0].is_contiguous(memory_format=torch.channels_last)))

    first_conv = next(m for m in trial.net.model.modules() if isinstance(m, nn.Conv2d))
    first_conv.register_forward_hook(record)
    after_dense = tmp_path / "after-cycle-0"

    def keep_dense_checkpoint(result: CycleResult) -> None:  # the checkpoint is written before on_cycle
        if result.cycle == 0:
            shutil.copytree(tmp_path / "run", after_dense)

    uninterrupted = trial.run(keep_dense_checkpoint, tmp_path / "run")

    steps = (config.pruning.cycles + 1) * config.training.epochs * trial.data.steps_per_epoch
    assert training_forwards.count((torch.bfloat16, True)) >= steps  # every training step: bf16 on channels-last
    assert_finite(uninterrupted)
    removed = uninterrupted[1]
    assert trial.net.channels() < trial.net.dense.channels and removed.channels_remaining < 100
    assert removed.params_remaining < 100 and removed.flops_remaining < 100
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convolution_weights(trial.net.model))

    resumed_trial = TrialRunner(config)
    resumed_trial.restore(after_dense / CHECKPOINT_FILE)
    resumed = resumed_trial.run(None, None)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convolution_weights(resumed_trial.net.model))
    assert comparable(resumed[:1]) == comparable(uninterrupted[:1])  # restored from the checkpoint as written
    again = resumed[1]
    for field in ("weights_remaining", "channels_remaining", "params_remaining", "flops_remaining", "total_units"):
        assert getattr(again, field) == getattr(removed, field), field
    assert again.test_acc == pytest.approx(removed.test_acc, abs=ACCURACY_TOLERANCE)
    for field in ("train_loss", "test_loss", "dnr"):
        assert getattr(again, field) == pytest.approx(getattr(removed, field), rel=LOSS_TOLERANCE), field


def report_windows(client: MlflowClient, runs: Sequence) -> list[tuple[int, int]]:
    """Per run, the times (ms) its first and its last cycle reached the driver: the run trained between them."""
    windows = []
    for run in runs:
        stamps = [m.timestamp for m in client.get_metric_history(run.info.run_id, "test_acc")]
        windows.append((min(stamps), max(stamps)))
    return windows


def most_at_once(windows: Sequence[tuple[int, int]]) -> int:
    """The most windows open at one instant (a window closing at the instant another opens counts as closed)."""
    events = sorted([(start, 1) for start, _ in windows] + [(end, -1) for _, end in windows])
    open_now = most = 0
    for _, change in events:
        open_now += change
        most = max(most, open_now)
    return most


@pytest.mark.integration
def test_two_trials_share_one_gpu_through_tunes_fractional_gpus(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    # One GPU visible, half of it per trial and CPUs for four: the GPU alone limits the trials to two at a time.
    # Trials run with --device cuda (a GPU share sets it) and refuse to start without a GPU, so FINISHED ones
    # trained on it.
    done = run_cli(
        "table1", "--preset", "smoke", "--methods", "GP", "--seeds", "2", "--cycles", "5",
        "--gpus-per-trial", "0.5", "--num-cpus", "4", "--no-reuse", "--progress", "false",
        "--results-dir", str(tmp_path), "--tracking-uri", mlflow_server.uri, "--name", "gpu-share",
        timeout_s=400, CUDA_VISIBLE_DEVICES="0",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("gpu-share")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parent = next(r for r in runs if r.data.tags.get("sweep.role") == "parent")
    assert json.loads(parent.data.tags["sweep.flags"])["gpus_per_trial"] == "0.5"  # how it was run
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
    for run in children:
        accuracies = client.get_metric_history(run.info.run_id, "test_acc")
        assert sorted(m.step for m in accuracies) == list(range(6))
        assert all(math.isfinite(m.value) and m.value > 0 for m in accuracies)
    assert most_at_once(report_windows(client, children)) == 2  # two trials trained at once, never three


@pytest.mark.integration
@pytest.mark.skipif(GPUS < 2, reason=f"needs 2 GPUs, torch sees {GPUS}: each NCCL worker needs a GPU of its own")
def test_a_data_parallel_trial_on_every_gpu_matches_the_one_worker_trial(tmp_path: Path) -> None:
    # Ray Train reserves one whole GPU per worker and joins the workers by NCCL; fp32 (amp off), so the two trials
    # differ by the order of the gradient sums alone. What pruning decided matches exactly.
    sweep = [
        "--preset", "smoke", "--methods", "GP", "--seeds", "1", "--epochs", "2", "--cycles", "3",
        "--gpus-per-trial", "1", "--amp", "false", "--no-reuse", "--progress", "false", "--results-dir", str(tmp_path),
    ]  # fmt: skip
    histories = {}
    for workers in (GPUS, 1):
        name = f"workers-{workers}"
        done = run_cli("table1", *sweep, "--workers-per-trial", str(workers), "--name", name, timeout_s=500)
        assert done.returncode == 0, done.stderr[-3000:]
        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        experiment = client.get_experiment_by_name(name)
        children = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
        assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
        histories[workers] = {
            (run.info.run_name, key): {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
            for run in children
            for key in ("test_acc", "weights_remaining")
        }
    assert histories[GPUS].keys() == histories[1].keys()
    for (trial, key), by_cycle in histories[GPUS].items():
        alone = histories[1][(trial, key)]
        assert sorted(by_cycle) == sorted(alone) == list(range(4))
        for cycle, value in by_cycle.items():
            if key == "weights_remaining":
                assert value == alone[cycle], (trial, cycle)
            else:
                assert value == pytest.approx(alone[cycle], abs=1.0), (trial, cycle)  # 1% of digits' 360 test images


def cifar_shaped(train: int, test: int) -> ArrayDataset:
    """Random CIFAR-sized uint8 images (the probe measures memory, nothing is learned)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (train + test, 3, 32, 32), dtype=torch.uint8, generator=generator)
    y = torch.randint(0, 10, (train + test,), generator=generator)
    return cifar_like(x[:train], y[:train], x[train:], y[train:], 10, "cifar_shaped", CIFAR10_MEAN, CIFAR10_STD)


def test_the_auto_probe_measures_the_gpus_memory_and_grows_with_the_batch() -> None:
    data = cifar_shaped(1024, 64)
    config = checked_config({"model": "resnet20", "dataset": "synthetic", "epochs": 1, "cycles": 1})
    small, large = (probe_memory(config.replace(batch_size=batch), data, "cuda") for batch in (64, 256))
    smallest = min((torch.cuda.get_device_properties(i) for i in range(GPUS)), key=lambda gpu: gpu.total_memory)
    assert small.device_name == large.device_name == smallest.name
    assert small.device_mib == smallest.total_memory / MIB
    assert 0 < small.peak_mib < large.peak_mib < small.device_mib  # activations of 4x the images take more


def test_auto_resolves_the_smoke_preset_to_a_share_the_gpu_and_cpus_allow(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse_args(["--preset", "smoke"], table1.SPEC)  # --gpus-per-trial auto is the default
    plan = plan_sweep(table1.SPEC, args)
    share = resolve_locally(plan, args.options, load_datasets(plan))
    out = capsys.readouterr().out
    assert f"measured on {torch.cuda.get_device_name(0)}" in out
    # An MLP on digits needs about the CUDA context's 0.5 GiB: memory never bounds it on a GPU of 5 GiB or more, so
    # the share is the CPUs', the trial count's or the cap's.
    assert "bounded by memory" not in out
    cpus = args.options.num_cpus or os.cpu_count() or 1
    expected = min(MAX_TRIALS_PER_GPU, cpus // GPUS, math.ceil(plan.trial_count / GPUS))
    assert share == 1 / max(1, expected)
