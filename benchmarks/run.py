"""Issue 11's performance numbers in one run: overheads, speed-up over a naive loop, epoch time, packing, memory.

Rows (variants compared in a row are timed in the same run, interleaved A B, B A, ...; a ratio is the median of
the per-repeat ratios, so load drifting on a shared machine cancels within each back-to-back pair):

1. core overhead, ResNet-20 (CIFAR-shaped) and MLP (digits): masked vs dense steps, DNR counting on vs off;
2. the project's epoch vs the naive reference loop (`naive_reference.py`) on ResNet-20, CIFAR-shaped data;
3. ResNet-20 epoch time on 50,000 CIFAR-shaped images (batch 128, augmentation, masks, DNR): `--quick` times a
   smaller set in a fresh process and scales the seconds to 50,000 images;
4. packing: aggregate epochs/s of k trials sharing the CPUs through `cpu_threads` vs one trial given them all;
5. memory: a trial's peak host (and device) memory, and what a Ray worker holds after getting the dataset;
6. host syncs: `aten::item` / `aten::_local_scalar_dense` calls per epoch, for epochs of n and 2n batches;
7. `--torch-compile default` vs eager: steps after compiling (masked, DNR counted), and the seconds compiling took;
8. full runs only: the sweep service's own cost per trial at 160, 640 and 1,280 near-empty trials
   (`sweep_scale.py`: trials/s, driver peak RSS, Tune state bytes per trial, driver CPU share).

Exits 1 when a target for this device is missed (CPU: overhead ratios and the naive speed-up; CUDA: also the
H100 speed-up and epoch time), 2 on bad arguments.

Usage: python benchmarks/run.py [--quick] [--device auto|cpu|cuda] [--threads 1] [--repeats N] [--no-ray]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
from harness import (
    MASKED_DENSITY,
    cifar_shaped,
    interleaved,
    machine_line,
    medians,
    paired_ratio,
    time_training_steps,
)
from naive_reference import NaiveReference
from sweep_scale import measure as measure_sweep_scale
from sweep_scale import targets as sweep_scale_targets

from ap_core import ArrayDataset, TrialConfig, build_model, load_dataset
from ap_core.checks import checked_config
from ap_core.cost import MIB, EpochCost, epoch_timer, measure_epochs_in_subprocess, peak_host_mib
from ap_core.training import resolve_device

CIFAR_TRAIN = 50_000
BATCH = 128


@dataclass(frozen=True)
class Sizes:
    """How much work each row does: `--quick` keeps the whole run to a few minutes on 2 CPU cores."""

    overhead_steps: int
    mlp_steps: int
    naive_train: int
    epoch_train: int
    packing_train: int
    transport_images: int
    test: int


FULL = Sizes(
    overhead_steps=15,
    mlp_steps=400,
    naive_train=10_000,
    epoch_train=CIFAR_TRAIN,
    packing_train=10_000,
    transport_images=CIFAR_TRAIN,
    test=10_000,
)
QUICK = Sizes(  # train : test stays 5 : 1 as in CIFAR, so per-epoch evaluation weighs what it weighs there
    overhead_steps=5,
    mlp_steps=200,
    naive_train=1280,
    epoch_train=1280,
    packing_train=512,
    transport_images=10_000,
    test=256,
)


@dataclass(frozen=True)
class Target:
    name: str
    value: float
    limit: float
    at_most: bool

    @property
    def met(self) -> bool:
        return self.value <= self.limit if self.at_most else self.value >= self.limit

    def line(self) -> str:
        relation = "<=" if self.at_most else ">="
        return f"{self.name}: {self.value:.3f} (target {relation} {self.limit:g}) {'ok' if self.met else 'MISSED'}"


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive(text: str) -> int:
    value = int(text) if text.lstrip("-").isdigit() else -1
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(prog="run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced sizes: a few minutes on a 2-core CPU")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=positive, default=1, help="torch CPU threads for the timed rows")
    parser.add_argument("--repeats", type=positive, default=None, help="interleaved repeats (quick 5, full 7)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray transport row (starts a local Ray)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this machine has no CUDA GPU")
    return args


def overhead_rows(device: torch.device, sizes: Sizes, repeats: int) -> list[Target]:
    """Masked vs dense and DNR on vs off, ResNet-20 on CIFAR-shaped images and the MLP on digits."""
    use_amp = device.type == "cuda"
    targets = []
    cases = [
        ("resnet20", cifar_shaped(BATCH * 4, 10).to(device), BATCH, sizes.overhead_steps, repeats),
        ("mlp", load_dataset("digits").to(device), 64, sizes.mlp_steps, repeats * 3),  # short steps: more repeats
    ]
    print(f"{'model':<9} {'dense ms/step':>13} {'masked / dense':>14} {'DNR on / off':>12}   steps x repeats")
    for model, data, batch, steps, model_repeats in cases:

        def variant(density: float | None, dnr: bool, model=model, data=data, batch=batch, steps=steps):
            return lambda: time_training_steps(model, data, device, steps, batch, density, dnr, use_amp)

        measured = interleaved(
            {"dense": variant(None, False), "masked": variant(MASKED_DENSITY, False), "dnr": variant(None, True)},
            model_repeats,
        )
        times = medians(measured)
        masked, dnr = paired_ratio(measured, "masked", "dense"), paired_ratio(measured, "dnr", "dense")
        print(
            f"{model:<9} {1000 * times['dense'] / steps:>13.2f} {masked:>14.3f} {dnr:>12.3f}   "
            f"{steps} x {model_repeats}"
        )
        targets += [
            Target(f"{model} masked / dense", masked, 1.05, at_most=True),
            Target(f"{model} DNR on / off", dnr, 1.10, at_most=True),
        ]
    return targets


def compile_rows(device: torch.device, sizes: Sizes, repeats: int) -> None:
    """torch.compile vs eager on the trial's own step (masked, DNR counted); informational: no target."""
    use_amp = device.type == "cuda"
    cases = [
        ("resnet20", cifar_shaped(BATCH * 4, 10).to(device), BATCH, sizes.overhead_steps, max(2, repeats // 2)),
        ("mlp", load_dataset("digits").to(device), 64, sizes.mlp_steps, repeats),
    ]
    print(f"{'model':<9} {'eager ms/step':>13} {'compiled / eager':>16} {'compiling s':>11}   steps x repeats")
    for model, data, batch, steps, model_repeats in cases:
        warm_up: list[float] = []

        def variant(mode: str, model=model, data=data, batch=batch, steps=steps, warm_up=warm_up):
            def timed() -> float:
                started = time.perf_counter()
                seconds = time_training_steps(model, data, device, steps, batch, MASKED_DENSITY, True, use_amp, mode)
                if mode != "off":
                    warm_up.append(time.perf_counter() - started - seconds)
                return seconds

            return timed

        measured = interleaved({"eager": variant("off"), "compiled": variant("default")}, model_repeats)
        ratio = paired_ratio(measured, "compiled", "eager")
        eager_ms = 1000 * medians(measured)["eager"] / steps
        compiling = sorted(warm_up)[len(warm_up) // 2]
        print(f"{model:<9} {eager_ms:>13.2f} {ratio:>16.3f} {compiling:>11.1f}   {steps} x {model_repeats}")


def trial_config(device: torch.device, threads: int, **changes: Any) -> TrialConfig:
    """ResNet-20 as in AP's Table 1 runs: SGD, batch 128, augmentation, 100 epochs (the schedule's length only)."""
    settings = {
        "model": "resnet20",
        "dataset": "synthetic",  # a label only: the data is passed in
        "batch_size": BATCH,
        "epochs": 100,
        "cycles": 1,
        "device": device.type,
        "cpu_threads": threads if device.type == "cpu" else 0,
        "dead_unit_window": 100,
    }
    return checked_config({**settings, **changes})


def naive_row(device: torch.device, threads: int, sizes: Sizes, repeats: int) -> Target:
    """Per-epoch seconds of the project's trial epoch and of the naive loop, same model, data, masks, DNR."""
    data = cifar_shaped(sizes.naive_train, sizes.test)
    trial, project_epoch = epoch_timer(trial_config(device, threads), data)
    torch.manual_seed(0)
    model = build_model("resnet20", data.num_classes, data.input_shape).to(device)  # the model the trial trains
    mask = trial.net.mask
    naive = NaiveReference(model, data, {name: mask[name].cpu() for name in mask}, BATCH)

    def naive_epoch() -> float:
        started = time.perf_counter()
        naive.epoch()
        return time.perf_counter() - started

    measured = interleaved({"project": project_epoch, "naive": naive_epoch}, repeats)
    times, speedup = medians(measured), paired_ratio(measured, "naive", "project")
    print(
        f"ResNet-20, {sizes.naive_train} CIFAR-shaped images, batch {BATCH}, masked steps + DNR + test eval, "
        f"{repeats} repeats: project {times['project']:.2f} s/epoch, naive {times['naive']:.2f} s/epoch (medians), "
        f"speed-up {speedup:.2f}x (median of paired ratios)"
    )
    limit = 10.0 if device.type == "cuda" else 1.25
    return Target(f"project vs naive loop ({'H100' if device.type == 'cuda' else 'CPU'})", speedup, limit, False)


def epoch_row(device: torch.device, threads: int, sizes: Sizes) -> tuple[Target | None, EpochCost]:
    """ResNet-20's epoch on CIFAR-shaped data in a fresh process (its peak memory is the trial's own)."""
    data = cifar_shaped(sizes.epoch_train, sizes.test)
    cost = measure_epochs_in_subprocess(trial_config(device, threads), data, epochs=2)
    seconds = cost.steady_epoch_seconds
    per_cifar_epoch = seconds * CIFAR_TRAIN / sizes.epoch_train
    scaled = "" if sizes.epoch_train == CIFAR_TRAIN else f" (measured {seconds:.2f} s on {sizes.epoch_train}, scaled)"
    print(
        f"ResNet-20 epoch, 50,000 CIFAR-shaped images, batch {BATCH}, augmentation, masks, DNR, test eval of "
        f"{sizes.test}: {per_cifar_epoch:.1f} s{scaled}; epochs measured "
        f"{', '.join(f'{s:.2f}' for s in cost.epoch_seconds)} s"
    )
    if device.type == "cuda" and sizes.epoch_train == CIFAR_TRAIN:
        return Target("ResNet-20 CIFAR epoch seconds (H100)", per_cifar_epoch, 1.5, True), cost
    print(
        "  H100 target <= 1.5 s: " + ("needs the full size (drop --quick)" if device.type == "cuda" else "needs a GPU")
    )
    return None, cost


def _packed_worker(config: TrialConfig, data: ArrayDataset, epochs: int, start: Any, results: Any) -> None:
    _, next_epoch = epoch_timer(config, data)
    start.wait()  # every trial has built its net: time the training only, all at once
    started = time.perf_counter()
    for _ in range(epochs):
        next_epoch()
    results.put(time.perf_counter() - started)


def aggregate_epochs_per_second(config: TrialConfig, data: ArrayDataset, trials: int, epochs: int) -> float:
    """`trials` spawned processes train `epochs` epochs each, starting together: epochs finished per second."""
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(trials), context.Queue()
    workers = [
        context.Process(target=_packed_worker, args=(config, data, epochs, start, results)) for _ in range(trials)
    ]
    for worker in workers:
        worker.start()
    walls = [results.get(timeout=1800) for _ in workers]
    for worker in workers:
        worker.join()
    return trials * epochs / max(walls)


def packing_row(device: torch.device, sizes: Sizes) -> None:
    cpus = os.cpu_count() or 1
    data = cifar_shaped(sizes.packing_train, 100)
    config = trial_config(torch.device("cpu"), cpus)
    alone = aggregate_epochs_per_second(config, data, 1, 2)
    packed = aggregate_epochs_per_second(config.replace(cpu_threads=1), data, cpus, 2)
    print(
        f"CPU: {cpus} trials x cpu_threads=1: {packed:.3f} epochs/s in all; 1 trial x cpu_threads={cpus}: "
        f"{alone:.3f} epochs/s; packing gain {packed / alone:.2f}x (ResNet-20, {sizes.packing_train} images)"
    )
    if device.type != "cuda":
        print("GPU: k trials sharing one GPU through Tune fractional GPUs vs one alone: needs a GPU (none here)")
        return
    gpu = trial_config(device, 0)
    one = aggregate_epochs_per_second(gpu, data, 1, 2)
    for trials in (2, 4):
        shared = aggregate_epochs_per_second(gpu, data, trials, 2)
        print(f"GPU: {trials} trials sharing it: {shared:.3f} epochs/s in all vs {one:.3f} alone ({shared / one:.2f}x)")


@dataclass(frozen=True)
class _Float32Tensors:
    """The layout shipped before #11: standardised float32 torch tensors (torch pickles them in-band)."""

    x_train: torch.Tensor
    y_train: torch.Tensor


def transport_row(images: int) -> None:
    """Private (anonymous) memory a Ray worker gains by getting the training set: before #11's layout and now."""
    import ray

    data = cifar_shaped(images, 10)
    old = _Float32Tensors(data.standardised(data.x_train), data.y_train)

    @ray.remote
    def growth(refs: list[ray.ObjectRef]) -> float:
        before = _anonymous_mib()
        got = ray.get(refs[0])
        got.x_train.sum()  # read every byte
        return _anonymous_mib() - before

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this script by name
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        ray.get(growth.remote([ray.put(cifar_shaped(10, 10))]))  # start the worker, import the core, then measure
        old_growth = ray.get(growth.remote([ray.put(old)]))
        new_growth = ray.get(growth.remote([ray.put(data)]))
    finally:
        ray.shutdown()
    print(
        f"Ray transport, {images} CIFAR-shaped training images: float32 torch (before) payload "
        f"{old.x_train.nbytes / MIB:.0f} MiB -> worker +{old_growth:.0f} MiB private; uint8 ArrayDataset (now) "
        f"payload {data.x_train.nbytes / MIB:.0f} MiB -> worker +{new_growth:.0f} MiB private (reads the shared buffer)"
    )


def _anonymous_mib() -> float:
    with open("/proc/self/smaps_rollup") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return int(fields["Anonymous"].split()[0]) / 1024


def sync_row(device: torch.device, threads: int) -> None:
    """Host reads per epoch for an epoch of n and of 2n batches: equal counts mean none per batch."""
    from torch.profiler import ProfilerActivity, profile

    counts = []
    for batches in (4, 8):
        data = cifar_shaped(BATCH * batches, 100)
        config = trial_config(device, threads, model="mlp")
        _, next_epoch = epoch_timer(config, data)
        next_epoch()  # warm-up
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            next_epoch()
        names = ("aten::item", "aten::_local_scalar_dense")
        counts.append(sum(e.count for e in prof.key_averages() if e.key in names))
    per_batch = (counts[1] - counts[0]) / 4
    print(
        f"aten::item + aten::_local_scalar_dense per epoch: {counts[0]} (4 batches), {counts[1]} (8 batches) -> "
        f"{per_batch:g} per batch (loss, DNR and accuracy are read back once per epoch)"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    sizes = QUICK if args.quick else FULL
    repeats = args.repeats or (5 if args.quick else 7)
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    started = time.perf_counter()
    print(
        f"benchmarks/run.py {'--quick' if args.quick else '(full)'} "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(machine_line(device) + f" repeats={repeats}")
    targets: list[Target] = []
    print("\n## 1. core overhead (training steps)")
    targets += overhead_rows(device, sizes, repeats)
    print("\n## 2. project loop vs naive reference loop (per epoch)")
    targets.append(naive_row(device, args.threads, sizes, repeats))
    print("\n## 3. ResNet-20 epoch at CIFAR size")
    epoch_target, cost = epoch_row(device, args.threads, sizes)
    targets += [epoch_target] if epoch_target else []
    print("\n## 4. packing")
    packing_row(device, sizes)
    print("\n## 5. memory")
    device_memory = f", peak device {cost.peak_device_mib:.0f} MiB" if cost.peak_device_mib is not None else ""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        baseline = pool.apply(peak_host_mib)  # a fresh process that has imported what row 3's process imported
    print(
        f"ResNet-20 trial ({sizes.epoch_train} images, row 3): peak host {cost.peak_host_mib:.0f} MiB "
        f"(a fresh process with the same imports and no trial: {baseline:.0f} MiB){device_memory}"
    )
    if args.no_ray:
        print("Ray transport: skipped (--no-ray)")
    else:
        transport_row(sizes.transport_images)
    print("\n## 6. host syncs in the training loop (torch.profiler)")
    sync_row(device, args.threads)
    print("\n## 7. torch.compile (default mode) vs eager, per training step after compiling")
    compile_rows(device, sizes, repeats)
    if not args.quick:
        print("\n## 8. sweep scale: the service's own cost per trial (near-empty trials, 2 CPUs)")
        table = measure_sweep_scale([160, 640, 1280], cpus=2)
        print(table.to_markdown(index=False))
        targets += [Target(*target) for target in sweep_scale_targets(table)]
    print("\n## targets")
    for target in targets:
        print(target.line())
    print(f"wall {time.perf_counter() - started:.0f} s")
    return 0 if all(t.met for t in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
