"""Data-parallel trial on CPU: step time of a 2-worker trial vs a 1-worker trial on the same global batch, side by
side in one run.

Each variant is a group of spawned processes joined by gloo over 127.0.0.1, as Ray Train joins a trial's workers;
every process trains the trial's own epochs (`ap_core.cost.epoch_timer`: batches, masks, DNR counting, test
evaluation) and the core finds the group itself (`Replicas.current()`): each worker trains its share of every global
batch, and the gradients are all-reduced every step. One torch thread per process, so the 2-worker trial uses two
cores where the 1-worker trial uses one: a ratio of 0.5 would be perfect scaling. Variants alternate (1, 2, 2, 1,
...); a step is an epoch's seconds over its steps, the first epoch of every group (warm-up) left out.

    python benchmarks/data_parallel.py [--model resnet20] [--train 1024] [--epochs 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from datetime import datetime, timezone

import torch
from harness import cifar_shaped, interleaved, machine_line, medians, paired_ratio, run_replicas

from ap_core.checks import checked_config
from ap_core.cost import epoch_timer

BATCH = 128  # the global batch, whatever the number of workers
TEST = 256


def epoch_seconds(model: str, train: int, epochs: int) -> list[float]:
    """The seconds of each epoch after the first, of a trial trained by this process's group (run in each member)."""
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
    return [next_epoch() for _ in range(epochs)][1:]


def step_ms(workers: int, model: str, train: int, epochs: int) -> Callable[[], float]:
    """A variant: a fresh group of `workers` processes; its median epoch, per step, in milliseconds."""
    steps = -(-train // BATCH)

    def run() -> float:
        seconds = run_replicas(workers, "gloo", epoch_seconds, model, train, epochs)
        return sorted(seconds)[len(seconds) // 2] / steps * 1000

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
    variants = {f"{w} worker{'s' * (w > 1)}": step_ms(w, args.model, args.train, args.epochs) for w in (1, 2)}
    measured = interleaved(variants, args.repeats)
    print(f"benchmarks/data_parallel.py {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    torch.set_num_threads(1)
    print(f"{machine_line(torch.device('cpu'))} (per process) repeats={args.repeats}")
    print(f"load average before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f}")
    print(
        f"{args.model}, {args.train} CIFAR-shaped images, global batch {BATCH}, {args.epochs - 1} timed epochs per "
        f"group (masks, DNR, test eval of {TEST}), gloo over 127.0.0.1"
    )
    for name, value in medians(measured).items():
        print(f"{name:<10} {value:8.1f} ms/step (median)")
    ratio = paired_ratio(measured, "2 workers", "1 worker")
    print(f"2-worker / 1-worker step time: {ratio:.2f} (0.5 = perfect scaling on 2 cores)")


if __name__ == "__main__":
    main()
