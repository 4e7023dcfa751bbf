"""Overhead of the core's bookkeeping, measured side by side on the same model and data in one run.

- masked vs dense training: gradient + weight masking after every step (mask at 10.7% density) vs a plain step
- DNR counting on vs off: forward hooks counting dead outputs on the device vs no hooks at all

Variants are interleaved repeat by repeat and the median per-variant time is used, so machine noise hits all
variants alike; the ratios are what to compare across machines. `benchmarks/run.py` prints the same rows for
ResNet-20 and the MLP together with the other benchmarks; this script times one model with any settings.
Usage: python benchmarks/core_overhead.py [--model resnet20 --dataset synthetic --steps 20 --repeats 5]
"""

from __future__ import annotations

import argparse

import torch
from harness import MASKED_DENSITY, interleaved, machine_line, medians, time_training_steps

from ap_core import load_dataset
from ap_core.training import resolve_device


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

    def variant(density: float | None, dnr: bool):
        return lambda: time_training_steps(args.model, data, device, args.steps, args.batch_size, density, dnr, use_amp)

    median = medians(
        interleaved(
            {"dense": variant(None, False), "masked": variant(MASKED_DENSITY, False), "dnr_on": variant(None, True)},
            args.repeats,
        )
    )
    print(
        f"model={args.model} dataset={args.dataset} batch={args.batch_size} steps={args.steps} "
        f"repeats={args.repeats} {machine_line(device)} amp={use_amp}"
    )
    print(f"{'variant':<8} {'median s':>9} {'ms/step':>8}")
    for name, seconds in median.items():
        print(f"{name:<8} {seconds:>9.3f} {1000 * seconds / args.steps:>8.2f}")
    print(f"masked / dense training time: {median['masked'] / median['dense']:.3f}  (target <= 1.05)")
    print(f"DNR on / off training time:   {median['dnr_on'] / median['dense']:.3f}  (target <= 1.10)")


if __name__ == "__main__":
    main()
