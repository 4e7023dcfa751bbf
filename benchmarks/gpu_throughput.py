"""GPU rows of issue 18: images/s into a ResNet-50 training step (bf16 autocast, channels-last; target >= 2,500 on one
H100), the folder pipeline's rate into the GPU, and data-parallel scaling from 1 GPU to every GPU present.

- training step: `tv:resnet50` (the zoo's model) trained by the core's own loop (`ap_core.training.train_epoch`: all-
  ones mask applied to gradients and weights, DNR counted), on synthetic uint8 224x224 batches held on the GPU and
  standardised there into channels-last float32 every step, as a trial's batches are;
- folder pipeline: a trial's training epoch of generated ImageNet-sized JPEGs (`FolderTrialData.epoch`: loader
  workers decode, crop and flip; standardised on the GPU), worker start-up included as every epoch pays it;
- scaling: the same step in one process per GPU joined by NCCL (the core's replicas: gradients all-reduced every
  step), the batch per GPU fixed; images/s on N GPUs over images/s on one.

Without CUDA it prints one line and exits 0; a missed target exits 1. Prints the rows for benchmarks/RESULTS.md.

    python benchmarks/gpu_throughput.py [--batch 256] [--steps 30] [--repeats 3] [--images 1024]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import torch
from folder_pipeline import write_images
from harness import machine_line, run_replicas, synchronize

from ap_core import Mask, TrialConfig, build_model
from ap_core.dnr import DeadNeuronCounter
from ap_core.folder_data import open_trial_data
from ap_core.image_files import IMAGENET_MEAN, IMAGENET_STD
from ap_core.network import PrunableNet
from ap_core.replicas import Replicas
from ap_core.settings import OptimizerSettings
from ap_core.training import build_optimizer, train_epoch

MODEL = "tv:resnet50"
SIZE = 224
CLASSES = 1000
WARMUP_STEPS = 5  # cudnn's autotuning (benchmark mode, as a trial on CUDA) and the allocator settle here
TARGET_IMAGES_PER_S = 2500
MOST_LOADER_WORKERS = 16


def device_batches(count: int, batch: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`count` batches of random uint8 images (two distinct ones, in turn) standardised on `device` into
    channels-last float32, as `FolderTrialData` delivers a trial's batches."""
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(0, 256, (2, batch, 3, SIZE, SIZE), dtype=torch.uint8, device=device, generator=generator)
    labels = torch.randint(0, CLASSES, (2, batch), device=device, generator=generator)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    pixel_max = torch.tensor(255.0, device=device)
    for step in range(count):
        x = images[step % 2].to(torch.float32, memory_format=torch.channels_last).div_(pixel_max)
        yield x.sub_(mean).div_(std), labels[step % 2]


def training_images_per_s(batch: int, steps: int) -> float:
    """This process's images/s through `steps` training steps of ResNet-50 on its current GPU (bf16 autocast,
    channels-last, masks applied, DNR counted), after warm-up steps; in a group, each process trains its own batch
    and the gradients are all-reduced."""
    device = torch.device("cuda", torch.cuda.current_device())
    torch.backends.cudnn.benchmark = True  # as `ap_core.environment` sets it for a trial on CUDA
    torch.manual_seed(0)
    model = build_model(MODEL, CLASSES, (3, SIZE, SIZE)).to(device).to(memory_format=torch.channels_last)
    example = next(device_batches(1, 1, device))[0]
    net = PrunableNet(
        model, Mask.ones(model), example, lambda m: build_optimizer(OptimizerSettings(), m), channels_last=True
    )
    counter = DeadNeuronCounter(model)
    counter.enabled = True
    replicas = Replicas.current()
    lrs = iter(lambda: 0.01, None)
    train_epoch(net, device_batches(WARMUP_STEPS, batch, device), lrs, True, 0, replicas=replicas)
    synchronize(device)
    started = time.perf_counter()
    train_epoch(net, device_batches(steps, batch, device), lrs, True, WARMUP_STEPS, replicas=replicas)
    counter.read(replicas)
    synchronize(device)
    return steps * batch / (time.perf_counter() - started)


def group_images_per_s(gpus: int, batch: int, steps: int) -> float:
    """Images/s of `gpus` processes, one per GPU, training together (each its own batch, all at the same pace)."""
    return gpus * run_replicas(gpus, "nccl", training_images_per_s, batch, steps)


def folder_images_per_s(root: Path, workers: int, batch: int, epochs: int) -> float:
    """Training images/s of a trial's folder epochs into the GPU (decoded by `workers` processes), the median of
    `epochs` after a warm-up epoch (file cache, imports in the workers)."""
    config = TrialConfig.from_dict(
        {"dataset": "folder", "data_dir": str(root), "batch_size": batch, "loader_workers": workers, "device": "cuda"}
    )
    device = torch.device("cuda")
    data = open_trial_data(config, None, device)
    rates = []
    for epoch in range(epochs + 1):
        generator = torch.Generator(device=device).manual_seed(epoch)
        started = time.perf_counter()
        seen = sum(len(y) for _, y in data.epoch(generator, 0, True))
        synchronize(device)
        rates.append(seen / (time.perf_counter() - started))
    later = sorted(rates[1:])
    return later[len(later) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256, help="images per step (per GPU for the scaling row)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=1024, help="JPEGs of the folder-pipeline row")
    args = parser.parse_args()
    if args.images < 2 * args.batch:
        parser.error(f"--images must be at least two batches ({2 * args.batch})")
    if not torch.cuda.is_available():
        print("no CUDA: the GPU rows need a CUDA GPU; nothing measured")
        return 0
    warnings.filterwarnings("ignore", message="The image decoding and encoding", category=DeprecationWarning)
    device = torch.device("cuda")
    gpus, gpu = torch.cuda.device_count(), torch.cuda.get_device_name(device)
    date = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    print(f"benchmarks/gpu_throughput.py {date}")
    print(f"{machine_line(device)} gpus={gpus} repeats={args.repeats}")

    step_rate = statistics.median(training_images_per_s(args.batch, args.steps) for _ in range(args.repeats))
    met = step_rate >= TARGET_IMAGES_PER_S
    verdict = f">= {TARGET_IMAGES_PER_S:,}: {'ok' if met else 'MISSED'}"
    print(f"{MODEL} training step, batch {args.batch}, bf16 + channels-last: {step_rate:,.0f} images/s ({verdict})")

    workers = min(os.cpu_count() or 1, MOST_LOADER_WORKERS)
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        write_images(Path(tmp), args.images)
        folder_rate = folder_images_per_s(Path(tmp), workers, args.batch, args.repeats)
    print(
        f"folder pipeline into the GPU, {args.images} JPEGs 500x375, {workers} workers: {folder_rate:,.0f} images/s "
        f"({folder_rate / step_rate:.2f}x the training step's)"
    )

    rows = [
        (f"{MODEL} training step, batch {args.batch}, bf16 + channels-last (images/s)", f"{step_rate:,.0f}", verdict),
        (f"folder pipeline into the GPU, {workers} loader workers (images/s)", f"{folder_rate:,.0f}", "—"),
    ]
    if gpus > 1:
        one, every = group_images_per_s(1, args.batch, args.steps), group_images_per_s(gpus, args.batch, args.steps)
        print(f"data parallel, batch {args.batch} per GPU: 1 GPU {one:,.0f} images/s, {gpus} GPUs {every:,.0f}")
        rows.append((f"data-parallel scaling, 1 -> {gpus} GPUs (images/s ratio)", f"{every / one:.2f}x", "—"))
    else:
        print("data-parallel scaling: one GPU here, nothing to scale (needs 2)")
        rows.append(("data-parallel scaling, 1 -> N GPUs", "unmeasured: 1 GPU", "—"))
    print("\nRows for benchmarks/RESULTS.md:\n")
    print("| row | measured | target | GPU | date |")
    print("|---|---:|---|---|---|")
    for name, value, target in rows:
        print(f"| {name} | {value} | {target} | {gpus} x {gpu} | {date} |")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
