"""Data-parallel trial on CPU: step time of a 2-worker trial vs a 1-worker trial on the same global batch, side by
side in one run.

Each variant is a group of spawned processes joined by gloo over 127.0.0.1, as Ray Train joins a trial's workers;
every process trains the trial's own epochs (`ap_core.cost.epoch_timer`: batches, masks, DNR counting, test
evaluation) and the core finds the group itself (`Replicas.current()`): each worker trains its share of every global
batch, and the gradients are all-reduced every step. One torch thread per process, so the 2-worker trial uses two
cores where the 1-worker trial uses one: a ratio of 0.5 would be perfect scaling. Variants alternate (1, 2, 2, 1,
...); a step is an epoch's seconds over its steps, the first epoch of every group (warm-up) left out. Besides the wall
time, the CPU time of all the group's processes per step is reported: what data parallelism costs in all (every
worker draws the whole batch, then the all-reduce), which other processes on a shared machine do not move.

    python benchmarks/data_parallel.py [--model resnet20] [--train 1024] [--epochs 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone

import torch
import torch.distributed as dist
from harness import cifar_shaped, interleaved, machine_line, medians, paired_ratio, run_replicas

from ap_core.checks import checked_config
from ap_core.cost import epoch_timer

BATCH = 128  # the global batch, whatever the number of workers
TEST = 256


def epoch_seconds(model: str, train: int, epochs: int) -> list[tuple[float, float]]:
    """Per epoch after the first, of a trial trained by this process's group (run in each member): its wall seconds
    and the CPU seconds of every process of the group."""
    torch.set_num_threads(1)
    settings = {
        "model": model,
        "dataset": "synthetic",  # a label only: the data is passed in
        "batch_size": BATCH,
        "epochs": epochs,
        "cycles": 1,
        "device": "cpu",
        "cpu_threads": 1,
        "dead_unit_window": 100,
    }
    _, next_epoch = epoch_timer(checked_config(settings), cifar_shaped(train, TEST))
    measured = []
    for _ in range(epochs):
        cpu_before = time.process_time()
        wall = next_epoch()
        cpu = torch.tensor([time.process_time() - cpu_before], dtype=torch.float64)
        dist.all_reduce(cpu)
        measured.append((wall, float(cpu)))
    return measured[1:]


def step_ms(workers: int, model: str, train: int, epochs: int, cpu_ms: list[float]) -> Callable[[], float]:
    """A variant: a fresh group of `workers` processes; its median epoch, per step, in wall milliseconds (the CPU
    milliseconds of the group's processes per step are appended to `cpu_ms`)."""
    steps = -(-train // BATCH)

    def run() -> float:
        measured = sorted(run_replicas(workers, "gloo", epoch_seconds, model, train, epochs))
        wall, cpu = measured[len(measured) // 2]
        cpu_ms.append(cpu / steps * 1000)
        return wall / steps * 1000

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--train", type=int, default=1024, help="training images (CIFAR-shaped, random)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per group, the first one not timed")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be >= 2: the first epoch is warm-up")
    load_before = os.getloadavg()[0]
    names = {1: "1 worker", 2: "2 workers"}
    cpu_ms: dict[str, list[float]] = {name: [] for name in names.values()}
    variants = {name: step_ms(w, args.model, args.train, args.epochs, cpu_ms[name]) for w, name in names.items()}
    measured = interleaved(variants, args.repeats)
    print(f"benchmarks/data_parallel.py {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    torch.set_num_threads(1)
    print(f"{machine_line(torch.device('cpu'))} (per process) repeats={args.repeats}")
    print(f"load average before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f}")
    print(
        f"{args.model}, {args.train} CIFAR-shaped images, global batch {BATCH}, {args.epochs - 1} timed epochs per "
        f"group (masks, DNR, test eval of {TEST}), gloo over 127.0.0.1"
    )
    walls, costs = medians(measured), medians(cpu_ms)
    print("variant     wall ms/step  CPU ms/step, all processes (medians)")
    for name in names.values():
        print(f"{name:<10} {walls[name]:13.1f} {costs[name]:12.1f}")
    ratio = paired_ratio(measured, "2 workers", "1 worker")
    cpu_ratio = paired_ratio(cpu_ms, "2 workers", "1 worker")
    print(f"2-worker / 1-worker step time: {ratio:.2f} (0.5 = perfect scaling on 2 cores); CPU time: {cpu_ratio:.2f}")


if __name__ == "__main__":
    main()
