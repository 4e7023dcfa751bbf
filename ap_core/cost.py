"""What one trial costs to run: seconds per training epoch and peak memory, measured on a few real epochs.

Sizing a sweep (how many trials to pack per node or GPU, what a preset will take) needs these numbers per model
and dataset; `measure_epochs` trains the trial's own dense cycle for a few epochs (masks applied and DNR counted,
test set evaluated, exactly as in a trial) and reports them. Peak host memory is the process's high-water mark,
so it is a trial's own only in a fresh process: `measure_epochs_in_subprocess` gives that.
"""

from __future__ import annotations

import multiprocessing
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ap_core.array_dataset import ArrayDataset
from ap_core.config import TrialConfig
from ap_core.trial import TrialRunner

MIB = 2**20


@dataclass(frozen=True)
class EpochCost:
    """Seconds of each measured epoch (the first includes warm-up such as cudnn autotuning) and peak memory."""

    epoch_seconds: list[float]
    peak_host_mib: float
    peak_device_mib: float | None

    @property
    def steady_epoch_seconds(self) -> float:
        """The median of the epochs after the first (the only one when just one was measured)."""
        later = sorted(self.epoch_seconds[1:] or self.epoch_seconds)
        return later[len(later) // 2]


def peak_host_mib() -> float:
    """This process's peak resident memory so far.

    Linux: VmHWM, the high-water mark of this process's own address space. ru_maxrss is not used there: it carries
    over the parent's resident size through fork and exec, so a freshly spawned child would report its parent's.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux and BSDs, bytes on macOS
    return peak / MIB if sys.platform == "darwin" else peak / 1024


def epoch_timer(config: TrialConfig, dataset: ArrayDataset | None = None) -> tuple[TrialRunner, Callable[[], float]]:
    """A trial at the start of its dense cycle and a function that trains its next epoch and returns the seconds.

    The epoch is the trial's own (`CycleRunner.train_epoch`): batches, masking, DNR counting, the loss read back
    and the test set evaluated; it ends with values read back to the host, so the device has finished.
    """
    trial = TrialRunner(config, dataset)
    dense_cycle = trial.current_cycle
    dense_cycle.begin()

    def next_epoch() -> float:
        started = time.perf_counter()
        dense_cycle.train_epoch()
        return time.perf_counter() - started

    return trial, next_epoch


def probe_config(config: TrialConfig, num_train: int, images: int) -> TrialConfig:
    """`config` cut to a probe: one cycle, no validation split, `images` training images (at least two batches)."""
    subset = min(num_train, max(images, 2 * config.training.batch_size))
    return config.replace(max_train_samples=subset, val_fraction=0.0, cycles=1)


def measure_epochs(config: TrialConfig, dataset: ArrayDataset | None = None, epochs: int = 2) -> EpochCost:
    """Train `epochs` epochs of `config`'s dense cycle (loading its dataset unless `dataset` is given)."""
    if epochs < 1:
        raise ValueError(f"epochs {epochs} must be >= 1")
    trial, next_epoch = epoch_timer(config.replace(epochs=max(config.training.epochs, epochs)), dataset)
    device = trial.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = [next_epoch() for _ in range(epochs)]
    device_mib = torch.cuda.max_memory_allocated(device) / MIB if device.type == "cuda" else None
    return EpochCost(seconds, peak_host_mib(), device_mib)


def measure_epochs_in_subprocess(
    config: TrialConfig, dataset: ArrayDataset | None = None, epochs: int = 2
) -> EpochCost:
    """`measure_epochs` in a fresh (spawned) process, so the peak host memory is the trial's alone."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure_epochs, (config, dataset, epochs))
