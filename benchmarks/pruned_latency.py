"""Inference latency of physically pruned networks vs their dense originals, measured side by side in one run.

Why: the channel methods (Network Slimming, DemP, RNI) report speed-ups, and only real removal of channels can
give one. A mask that zeroes weights leaves every tensor its dense shape, so a masked net runs exactly the dense
net's multiplies and takes the dense net's time. This script removes channels for real (`remove_channels`,
Torch-Pruning's dependency graph, as a trial does) and times what that buys.

For each model: the dense net (eval mode) and, per ratio, a deep copy with `round(ratio * channels)` of its
removable channels removed (`find_channel_groups`; for ResNets only each block's inner conv1). Which channels go
is chosen by `lowest_channels` on random importances (fixed seed) with a floor of 3 channels per group, so the
removal is spread over the layers about evenly; which method chose the channels does not change the cost of the
architecture that is left. Dense and pruned nets are timed in alternation, repeat by repeat (order reversed every
other repeat), and the median per net is used, so machine drift hits every variant alike.

Usage: python benchmarks/pruned_latency.py [--models resnet56 vgg16 --ratios 0.5 0.9 --batch-size 128 --threads 1]
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import statistics
import time

import torch
import torch_pruning as tp
from harness import synchronize
from torch import nn

from ap_core import build_model
from ap_core.channel_graph import find_channel_groups
from ap_core.channel_removal import remove_channels
from ap_core.pruning.channels import lowest_channels
from ap_core.training import resolve_device

INPUT_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
FLOOR = 3


def pruned_copy(model: nn.Module, example: torch.Tensor, ratio: float, seed: int) -> tuple[nn.Module, int, int]:
    """A deep copy of `model` with `ratio` of its removable channels physically removed; (copy, removed, total)."""
    groups = find_channel_groups(model, example)
    params = dict(model.named_parameters())
    sizes = {g.root: params[f"{g.root}.weight"].shape[0] for g in groups}
    generator = torch.Generator().manual_seed(seed)
    importance = {root: torch.rand(size, generator=generator) for root, size in sizes.items()}
    total = sum(sizes.values())
    removal = lowest_channels(importance, round(ratio * total), FLOOR)
    pruned = copy.deepcopy(model)
    remove_channels(pruned, removal, example)
    return pruned.eval(), sum(len(idxs) for idxs in removal.values()), total


def count(model: nn.Module, example: torch.Tensor) -> tuple[float, int]:
    """(MACs of one forward pass on one sample, parameters)."""
    macs, _ = tp.utils.count_ops_and_params(model, example)
    return float(macs), sum(p.numel() for p in model.parameters())


@torch.no_grad()
def time_batches(model: nn.Module, x: torch.Tensor, batches: int) -> float:
    """Seconds per batch of inference, averaged over `batches` consecutive forward passes."""
    synchronize(x.device)
    started = time.perf_counter()
    for _ in range(batches):
        model(x)
    synchronize(x.device)
    return (time.perf_counter() - started) / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet56", "vgg16"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.5, 0.9], help="share of channels removed")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2, help="untimed forward passes per net before timing")
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=0.2,
        help="each timed repeat runs enough consecutive batches to last about this long (at least one)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as trials run; the warm-up passes absorb the autotuning
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(
        f"batch={args.batch_size} repeats={args.repeats} warmup={args.warmup} min-seconds={args.min_seconds} "
        f"device={device} ({where}) threads={torch.get_num_threads()} torch={torch.__version__} "
        f"input={'x'.join(map(str, INPUT_SHAPE))} classes={NUM_CLASSES} floor={FLOOR} seed={args.seed}"
    )
    header = (
        f"{'model':<10} {'ratio':>5} {'channels removed':>16} {'params %':>8} {'MACs %':>7} "
        f"{'dense ms':>9} {'pruned ms':>9} {'speed-up':>8} {'range':>13} batches"
    )
    print(header)
    for name in args.models:
        torch.manual_seed(args.seed)
        dense = build_model(name, NUM_CLASSES, INPUT_SHAPE).eval()
        example = torch.randn(1, *INPUT_SHAPE)
        dense_macs, dense_params = count(dense, example)
        nets: dict[str, nn.Module] = {"dense": dense}
        rows = []
        for ratio in args.ratios:
            pruned, removed, total = pruned_copy(dense, example, ratio, args.seed)
            macs, params = count(pruned, example)
            key = f"pruned {ratio:g}"
            nets[key] = pruned
            rows.append((ratio, key, removed, total, 100.0 * params / dense_params, 100.0 * macs / dense_macs))
        x = torch.randn(args.batch_size, *INPUT_SHAPE, generator=torch.Generator().manual_seed(args.seed))
        x = x.to(device)
        batches: dict[str, int] = {}
        for key, net in nets.items():
            net.to(device)
            with torch.no_grad():
                out = net(x)
            expected = (args.batch_size, NUM_CLASSES)
            if tuple(out.shape) != expected:
                raise SystemExit(f"{name} {key}: output shape {tuple(out.shape)}, expected {expected}")
            time_batches(net, x, args.warmup)
            batches[key] = max(1, math.ceil(args.min_seconds / time_batches(net, x, 1)))
        times: dict[str, list[float]] = {key: [] for key in nets}
        order = list(nets)
        for repeat in range(args.repeats):
            for key in order if repeat % 2 == 0 else reversed(order):
                times[key].append(time_batches(nets[key], x, batches[key]))
        median = {key: 1000.0 * statistics.median(values) for key, values in times.items()}
        for ratio, key, removed, total, params_pct, macs_pct in rows:
            paired = [d / p for d, p in zip(times["dense"], times[key], strict=True)]
            print(
                f"{name:<10} {ratio:>5g} {f'{removed}/{total}':>16} {params_pct:>8.1f} {macs_pct:>7.1f} "
                f"{median['dense']:>9.1f} {median[key]:>9.1f} {median['dense'] / median[key]:>7.2f}x "
                f"{f'{min(paired):.2f}-{max(paired):.2f}x':>13} {batches['dense']:>3}/{batches[key]}"
            )
    print(
        "ms = median over repeats of milliseconds per batch (torch.no_grad, eval mode); speed-up = dense / pruned "
        "medians; range = lowest-highest speed-up of one repeat's dense and pruned times; batches = consecutive "
        "batches per timed repeat (dense/pruned); output shapes checked"
    )


if __name__ == "__main__":
    main()
