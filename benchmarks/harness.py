"""Helpers the benchmark scripts share: interleaved timing, device sync, the machine line, benchmark datasets, the
timed training steps of the core-overhead rows and groups of data-parallel replicas."""

from __future__ import annotations

import itertools
import os
import platform
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ap_core import ArrayDataset, Mask, build_model, prune
from ap_core.batches import train_batches
from ap_core.datasets import CIFAR10_MEAN, CIFAR10_STD, cifar_like
from ap_core.dnr import DeadNeuronCounter
from ap_core.network import PrunableNet
from ap_core.settings import OptimizerSettings
from ap_core.training import build_optimizer, train_epoch

MASKED_DENSITY = 0.107  # AP's Table 1 end point for ResNet-20 (about 10 cycles at 20%)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run every variant once per repeat, in alternating order (A B C, C B A, ...), so drift on a shared machine
    hits all variants alike; returns each variant's measurements."""
    measured: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for repeat in range(repeats):
        for name in order if repeat % 2 == 0 else reversed(order):
            measured[name].append(variants[name]())
    return measured


def medians(measured: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in measured.items()}


def paired_ratio(measured: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """The median of per-repeat ratios: each pair ran back to back, so load that drifts between repeats (a shared
    machine) cancels within a pair instead of landing on one variant's median."""
    pairs = zip(measured[numerator], measured[denominator], strict=True)
    return statistics.median(a / b for a, b in pairs)


def machine_line(device: torch.device) -> str:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return (
        f"device={device} ({where}) cpus={os.cpu_count()} threads={torch.get_num_threads()} "
        f"torch={torch.__version__} python={platform.python_version()}"
    )


def cifar_shaped(num_train: int, num_test: int, seed: int = 0) -> ArrayDataset:
    """Random uint8 3x32x32 images stored and augmented as CIFAR-10 is (its mean/std, 4-pixel crops, flips).

    For timing only: the labels are random, so nothing is learned; every loop under test sees the same bytes.
    """
    generator = torch.Generator().manual_seed(seed)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
        return images, torch.randint(0, 10, (n,), generator=generator)

    (x_train, y_train), (x_test, y_test) = draw(num_train), draw(num_test)
    return cifar_like(x_train, y_train, x_test, y_test, 10, "cifar_shaped", CIFAR10_MEAN, CIFAR10_STD)


def pruned_mask(model: torch.nn.Module, density: float) -> Mask:
    """A global-magnitude mask keeping `density` of the prunable weights."""
    return prune("global_magnitude", model, Mask.ones(model), 1.0 - density)


def time_training_steps(
    model_name: str,
    data: ArrayDataset,
    device: torch.device,
    steps: int,
    batch_size: int,
    masked_density: float | None,
    count_dnr: bool,
    use_amp: bool,
    compile_mode: str = "off",
) -> float:
    """Seconds for `steps` training steps of a fresh model in one configuration (after one warm-up step).

    Masked: gradients and weights masked every step at `masked_density`; dense: an empty mask (no masking work).
    DNR: the trial's dead-output counting hooks, read back once at the end as once per epoch in a trial.
    `compile_mode` other than "off": torch.compile'd as `--torch-compile` does, compiled in the warm-up step.
    """
    torch.manual_seed(0)
    model = build_model(model_name, data.num_classes, data.input_shape).to(device)
    channels_last = use_amp and data.x_train.dim() == 4
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    mask = pruned_mask(model, masked_density) if masked_density is not None else Mask({})
    example = data.standardised(data.x_train[:1])
    if compile_mode != "off":
        torch.compiler.reset()  # a fresh model per call: without a reset its graphs pile up to the recompile limit
    net = PrunableNet(
        model, mask, example, lambda m: build_optimizer(OptimizerSettings(), m), compile_mode=compile_mode
    )
    counter = DeadNeuronCounter(model) if count_dnr else None
    if counter is not None:
        counter.enabled = True
    generator = torch.Generator(device=device).manual_seed(0)
    batches = list(itertools.islice(endless_batches(data, batch_size, generator), steps + 1))
    if channels_last:
        batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]
    lrs = iter(lambda: 0.01, None)
    train_epoch(net, batches[:1], lrs, use_amp, 0)  # warm-up
    synchronize(device)
    started = time.perf_counter()
    train_epoch(net, batches[1:], lrs, use_amp, 1)
    if counter is not None:
        counter.read()
    synchronize(device)
    return time.perf_counter() - started


def endless_batches(data: ArrayDataset, batch_size: int, generator: torch.Generator) -> Iterator:
    while True:
        yield from train_batches(data, batch_size, generator)


def run_replicas(world: int, backend: str, work: Callable[..., Any], *args: Any) -> Any:
    """`work(*args)` in `world` fresh (spawned) processes joined in one torch.distributed group over 127.0.0.1, as
    Ray Train joins a trial's workers (the core finds the group itself: `Replicas.current()`); returns the first
    process's value. `work` must be a module-level function (it is pickled to the processes)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    results = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_replica, (world, backend, port, results, work, args), nprocs=world)
    return results.get()


def _replica(
    rank: int, world: int, backend: str, port: int, results: Any, work: Callable[..., Any], args: tuple
) -> None:
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        value = work(*args)
        if rank == 0:
            results.put(value)
    finally:
        dist.destroy_process_group()
