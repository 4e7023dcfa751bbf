"""`--gpus-per-trial auto`: how many trials share a GPU, from each planned network's measured peak GPU memory.

Resolved once, before any trial starts or anything is written. Where the trials' machines have no GPU it is 0, a
CPU sweep exactly as `--gpus-per-trial 0`, silently. Otherwise each distinct network (model, dataset, batch size)
trains one short probe epoch on a GPU, in a fresh process (or a Ray task on a cluster) so the peak is its own,
and `trials_per_gpu` turns the peaks into a share; that decision is plain arithmetic, tested without a GPU.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ap_core import ArrayDataset, TrialConfig
from ap_core.cost import MIB, measure_epochs, probe_config
from sweeps.engine.options import SweepError, SweepOptions
from sweeps.engine.spec import SweepPlan

# Every process that uses CUDA holds a context (kernels, cuBLAS/cuDNN workspaces), typically 300-500 MiB, that
# torch's allocator does not count in the measured peak; each packed trial is its own process, so each pays it.
CUDA_CONTEXT_MIB = 500.0
# The measured peak is what torch allocated: its caching allocator reserves more (fragmentation), and other
# processes may hold some of the GPU. Pack into this share of the GPU's memory only.
USABLE_SHARE = 0.9
# Past a handful of trials per GPU they mostly wait for each other's kernels: more buys little throughput.
MAX_TRIALS_PER_GPU = 8
# Training images of the probe epoch: enough for the steady state of the allocator, a second or two on a GPU.
PROBE_IMAGES = 512


@dataclass(frozen=True)
class Probe:
    """One probe's result: the peak memory and the device it was measured on."""

    peak_mib: float
    device_name: str
    device_mib: float  # the smallest memory among the devices of this kind that the probing process sees


@dataclass(frozen=True)
class Packing:
    """Trials per GPU, what bounded it, and the largest network's need that the choice is explained by."""

    trials_per_gpu: int
    bound: str
    largest: str
    need_mib: float  # the largest network's peak plus the CUDA context
    fits: bool  # False: even one trial needs more than the usable share of the GPU

    @property
    def gpus_per_trial(self) -> float:
        return 1.0 / self.trials_per_gpu


def trials_per_gpu(
    peaks_mib: Mapping[str, float],
    gpu_mib: float,
    gpu_count: int,
    cpus_per_gpu: float,
    cpus_per_trial: float,
    trial_count: int,
    cap: int = MAX_TRIALS_PER_GPU,
) -> Packing:
    """As many trials per GPU as the largest network's memory allows, within the CPUs beside each GPU, the cap,
    and what the trial count needs to keep every GPU busy; at least 1 (see `Packing.fits`)."""
    largest = max(peaks_mib, key=lambda name: peaks_mib[name])
    need_mib = peaks_mib[largest] + CUDA_CONTEXT_MIB
    tolerance = 1e-9  # 0.6 / 0.2 is 2.9999999999999996 in floats
    limits = {  # ties go to the first: memory is the most telling reason
        "memory": math.floor(USABLE_SHARE * gpu_mib / need_mib + tolerance),
        "CPUs per GPU": math.floor(cpus_per_gpu / cpus_per_trial + tolerance),
        "the trial count": math.ceil(trial_count / gpu_count),
        f"the cap of {cap}": cap,
    }
    bound = min(limits, key=lambda reason: limits[reason])
    return Packing(max(1, limits[bound]), bound, largest, need_mib, fits=limits["memory"] >= 1)


def describe(packing: Packing, peaks_mib: Mapping[str, float], probe: Probe) -> str:
    """The one line a sweep prints about its choice."""
    k = packing.trials_per_gpu
    return (
        f"GPU packing: {k} trial{'s' if k > 1 else ''} per GPU, bounded by {packing.bound} ({packing.largest} peaks "
        f"at {peaks_mib[packing.largest] / 1024:.1f} GiB + {CUDA_CONTEXT_MIB / 1024:.1f} GiB CUDA context, of "
        f"{probe.device_mib / 1024:.1f} GiB measured on {probe.device_name}); --gpus-per-trial overrides"
    )


def probe_memory(config: TrialConfig, dataset: ArrayDataset, device: str) -> Probe:
    """Train one short probe epoch of `config`'s dense cycle on `device` in this process and report its peak.

    On CUDA the peak is the most torch allocated on the GPU, and the device memory the smallest visible GPU's. On
    CPU, which has no memory of its own to measure, it is this process's peak resident memory (interpreter and
    libraries included) against the machine's: honest numbers for the host, which exist to run this path in tests.
    """
    import torch

    cost = measure_epochs(probe_config(config.replace(device=device), dataset.num_train, PROBE_IMAGES), dataset, 1)
    if cost.peak_device_mib is None:
        host_mib = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / MIB
        return Probe(cost.peak_host_mib, "CPU", host_mib)
    gpus = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    smallest = min(gpus, key=lambda gpu: gpu.total_memory)
    return Probe(cost.peak_device_mib, smallest.name, smallest.total_memory / MIB)


def probe_configs(plan: SweepPlan) -> dict[str, TrialConfig]:
    """One config per distinct network, dataset and batch size of the plan (a searched batch size at its largest),
    by the label the packing line names it by."""
    configs = [t.config for t in plan.trials]
    if plan.search is not None:
        batch_sizes = plan.search.axes.get("batch_size")
        configs += [g.base.replace(batch_size=max(batch_sizes)) if batch_sizes else g.base for g in plan.search_groups]
    labelled: dict[str, TrialConfig] = {}
    for config in configs:
        labelled.setdefault(f"{config.model} on {config.dataset}, batch {config.training.batch_size}", config)
    return labelled


def resolve_locally(plan: SweepPlan, options: SweepOptions, datasets: Mapping[str, Any]) -> float:
    """`auto` for a private local Ray: 0 without a GPU, else measured here (before Ray starts)."""
    import torch

    gpu_count = torch.cuda.device_count()
    if gpu_count == 0:
        return 0.0
    probes = _probe_arguments(plan, datasets)
    # A fresh process per probe: each peak is its network's alone, and the driver never holds a CUDA context.
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        results = _out_of_memory_is_refused(lambda: pool.starmap(probe_memory, probes.values()))
    cpus_per_gpu = (options.num_cpus or os.cpu_count() or 1) / gpu_count
    measured = dict(zip(probes, results, strict=True))
    return choose(measured, gpu_count, cpus_per_gpu, options.cpus_per_trial, plan.trial_count)


def resolve_on_cluster(plan: SweepPlan, options: SweepOptions, datasets: Mapping[str, Any]) -> float:
    """`auto` on the joined Ray cluster: 0 if it has no GPU, else each network measured by a one-GPU Ray task.

    The GPU memory is the smallest among the GPUs the probes ran on; a cluster mixing GPU sizes may need
    `--gpus-per-trial` set by hand.
    """
    import ray

    gpu_count = int(ray.cluster_resources().get("GPU", 0))
    if gpu_count == 0:
        return 0.0
    probes = _probe_arguments(plan, datasets)
    task = ray.remote(num_gpus=1, max_calls=1)(probe_memory)  # max_calls=1: a fresh worker, its peak its own
    results = _out_of_memory_is_refused(lambda: ray.get([task.remote(*arguments) for arguments in probes.values()]))
    gpu_nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive") and node["Resources"].get("GPU")]
    cpus_per_gpu = min(node.get("CPU", 0.0) / node["GPU"] for node in gpu_nodes)
    measured = dict(zip(probes, results, strict=True))
    return choose(measured, gpu_count, cpus_per_gpu, options.cpus_per_trial, plan.trial_count)


def dry_run_note(options: SweepOptions) -> str:
    """What `--dry-run` says about `auto` instead of measuring: the count only where it is free (no GPU here)."""
    import torch

    if options.address:
        return "GPU packing: auto, measured on the cluster at start (CPU trials if it has no GPU)"
    if torch.cuda.device_count() == 0:
        return "GPU packing: auto; no GPU here, so trials run on CPU"
    return "GPU packing: auto, trials per GPU measured at start from each network's peak GPU memory"


def _probe_arguments(plan: SweepPlan, datasets: Mapping[str, Any]) -> dict[str, tuple[TrialConfig, Any, str]]:
    from trainables.pruning_trial import dataset_key  # Ray: only for a sweep that runs

    return {label: (c, datasets[dataset_key(c)], "cuda") for label, c in probe_configs(plan).items()}


def _out_of_memory_is_refused(measure: Callable[[], list[Probe]]) -> list[Probe]:
    import torch

    try:
        return measure()
    except torch.cuda.OutOfMemoryError:  # Ray raises RayTaskError(OutOfMemoryError), an instance of it too
        raise SweepError(
            f"a network's {PROBE_IMAGES}-image probe ran out of GPU memory; lower --batch-size, or pass "
            "--gpus-per-trial 1 to skip measuring"
        ) from None


def choose(
    probes: Mapping[str, Probe], gpu_count: int, cpus_per_gpu: float, cpus_per_trial: float, trial_count: int
) -> float:
    """GPUs per trial from the networks' probes; prints the choice in one line (and a warning if none fits)."""
    peaks = {label: probe.peak_mib for label, probe in probes.items()}
    smallest = min(probes.values(), key=lambda probe: probe.device_mib)
    packing = trials_per_gpu(peaks, smallest.device_mib, gpu_count, cpus_per_gpu, cpus_per_trial, trial_count)
    if not packing.fits:
        print(
            f"warning: {packing.largest} needs {packing.need_mib / 1024:.1f} GiB per trial (peak + CUDA context), "
            f"more than {USABLE_SHARE:.0%} of the {smallest.device_mib / 1024:.1f} GiB of {smallest.device_name}: "
            "1 trial per GPU, which may run out of memory; a smaller --batch-size needs less",
            file=sys.stderr,
        )
    print(describe(packing, peaks, smallest))
    return packing.gpus_per_trial
