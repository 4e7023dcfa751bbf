"""Overhead of the core's bookkeeping, measured side by side on the same model and data in one run.

- masked vs dense training: gradient + weight masking after every step (mask at 10.7% density) vs a plain step
- DNR counting on vs off: forward hooks counting dead outputs on the device vs no hooks at all

Variants are interleaved repeat by repeat and the median per-variant time is used, so machine noise hits all
variants alike; the ratios are what to compare across machines.
Usage: python benchmarks/core_overhead.py [--model resnet20 --dataset synthetic --steps 20 --repeats 5]
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import time
from collections.abc import Callable, Iterator

import torch

from ap_core import Mask, TrialConfig, build_model, load_dataset, prune
from ap_core.data import train_batches
from ap_core.dnr import DeadNeuronCounter
from ap_core.network import PrunableNet
from ap_core.training import build_optimizer, resolve_device, train_batches_step


def time_variant(
    model_name: str,
    data,
    device: torch.device,
    steps: int,
    batch_size: int,
    masked_density: float | None,
    count_dnr: bool,
    use_amp: bool,
) -> float:
    """Seconds for `steps` training steps of a fresh model in one configuration (after one warm-up step)."""
    torch.manual_seed(0)
    model = build_model(model_name, data.num_classes, data.input_shape).to(device)
    if use_amp and data.x_train.dim() == 4:
        model = model.to(memory_format=torch.channels_last)
    mask = Mask.ones(model)
    if masked_density is not None:
        mask = prune("global_magnitude", model, mask, 1.0 - masked_density)
    # The training loop takes the net and looks up its optimizer and masking every step; no hooks (dense or masked
    # training with no method acting inside the loop).
    net = PrunableNet(
        model,
        mask if masked_density is not None else Mask({}),
        data.x_train[:1],
        lambda m: build_optimizer(TrialConfig(), m),
    )
    counter = DeadNeuronCounter(model) if count_dnr else None
    if counter is not None:
        counter.enabled = True
    generator = torch.Generator(device=device).manual_seed(0)
    batches = list(itertools.islice(epochs_of_batches(data, batch_size, generator), steps + 1))
    lrs = iter(lambda: 0.01, None)
    train_batches_step(net, batches[:1], lrs, use_amp, 0)  # warm-up
    synchronize(device)
    started = time.perf_counter()
    train_batches_step(net, batches[1:], lrs, use_amp, 1)
    if counter is not None:
        counter.read()  # the per-epoch read-back belongs to the measured cost
    synchronize(device)
    return time.perf_counter() - started


def epochs_of_batches(data, batch_size: int, generator: torch.Generator) -> Iterator:
    while True:
        yield from train_batches(data, batch_size, generator)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    use_amp = device.type == "cuda"
    data = load_dataset(args.dataset).to(device)
    variants: dict[str, Callable[[], float]] = {
        "dense": lambda: time_variant(args.model, data, device, args.steps, args.batch_size, None, False, use_amp),
        "masked": lambda: time_variant(args.model, data, device, args.steps, args.batch_size, 0.107, False, use_amp),
        "dnr_on": lambda: time_variant(args.model, data, device, args.steps, args.batch_size, None, True, use_amp),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, run in variants.items():
            times[name].append(run())
    median = {name: statistics.median(values) for name, values in times.items()}
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(
        f"model={args.model} dataset={args.dataset} batch={args.batch_size} steps={args.steps} "
        f"repeats={args.repeats} device={device} ({where}) threads={torch.get_num_threads()} amp={use_amp}"
    )
    print(f"{'variant':<8} {'median s':>9} {'ms/step':>8}")
    for name, seconds in median.items():
        print(f"{name:<8} {seconds:>9.3f} {1000 * seconds / args.steps:>8.2f}")
    print(f"masked / dense training time: {median['masked'] / median['dense']:.3f}  (target <= 1.05)")
    print(f"DNR on / off training time:   {median['dnr_on'] / median['dense']:.3f}  (target <= 1.10)")


if __name__ == "__main__":
    main()
