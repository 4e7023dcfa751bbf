"""Folder pipeline: training images/s decoded, augmented and standardised, the project's folder pipeline vs
torchvision's `ImageFolder` with PIL transforms, in a DataLoader with the same workers, side by side in one run.

Both read the same generated ImageNet-sized JPEGs (500x375, smooth content plus noise: about ImageNet's file sizes)
and deliver standardised float32 batches of RandomResizedCrop(224) + flip crops to the trial's process:
- project: `FolderTrialData.epoch` (workers decode with torchvision.io / libjpeg-turbo, crop and resize uint8 tensors;
  the trial's process standardises, here on the CPU, on a GPU on the device);
- baseline: `ImageFolder` + RandomResizedCrop, RandomHorizontalFlip, ToTensor, Normalize (PIL, in the workers).

Besides images/s (wall clock), each variant's CPU time per image (the trial's process plus its workers, which
finish with each epoch) is reported: on a shared machine other processes take cores from the workers, while the CPU
an image costs stays put.

    python benchmarks/folder_pipeline.py [--images 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as nnf
from harness import interleaved, machine_line, medians, paired_ratio
from torch.utils.data import DataLoader
from torchvision import datasets, transforms
from torchvision.io import encode_jpeg, write_file

from ap_core import TrialConfig
from ap_core.folder_data import open_trial_data
from ap_core.image_files import IMAGENET_MEAN, IMAGENET_STD

CLASSES = 8
BATCH = 32
TARGET_SPEEDUP = 1.5


def write_images(root: Path, count: int) -> None:
    """`count` 500x375 JPEGs (quality 90) in CLASSES class folders, under train/ and (one each) val/."""
    generator = torch.Generator().manual_seed(0)
    for split, n in (("train", count), ("val", CLASSES)):
        for i in range(n):
            folder = root / split / f"class{i % CLASSES}"
            folder.mkdir(parents=True, exist_ok=True)
            coarse = torch.rand((1, 3, 24, 32), generator=generator) * 255
            smooth = nnf.interpolate(coarse, size=(375, 500), mode="bicubic", align_corners=False)[0]
            image = (smooth + 8 * torch.randn(smooth.shape, generator=generator)).clamp(0, 255).to(torch.uint8)
            write_file(str(folder / f"{i:05d}.jpg"), encode_jpeg(image, quality=90))


def project_epoch(root: Path, workers: int) -> Callable[[], float]:
    config = TrialConfig.from_dict(
        {"dataset": "folder", "data_dir": str(root), "batch_size": BATCH, "loader_workers": workers}
    )
    data = open_trial_data(config, None, torch.device("cpu"))
    epoch = [0]

    def run() -> float:
        epoch[0] += 1
        started = time.perf_counter()
        seen = sum(len(y) for _, y in data.epoch(torch.Generator().manual_seed(epoch[0]), 0, False))
        return seen / (time.perf_counter() - started)

    return run


def pil_epoch(root: Path, workers: int) -> Callable[[], float]:
    augment = transforms.Compose(
        [
            transforms.RandomResizedCrop(224),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    folder = datasets.ImageFolder(str(root / "train"), transform=augment)

    def run() -> float:
        loader = DataLoader(folder, batch_size=BATCH, shuffle=True, num_workers=workers, prefetch_factor=4)
        started = time.perf_counter()
        seen = sum(len(y) for _, y in loader)
        return seen / (time.perf_counter() - started)

    return run


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the DataLoader workers of finished epochs)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def with_cpu_time(run: Callable[[], float], images: int, cpu_ms: list[float]) -> Callable[[], float]:
    """`run`, also appending its CPU milliseconds per image to `cpu_ms`."""

    def measured() -> float:
        before = cpu_seconds()
        rate = run()
        cpu_ms.append((cpu_seconds() - before) / images * 1000)
        return rate

    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="The image decoding and encoding", category=DeprecationWarning)
    load_before = os.getloadavg()[0]
    torch.set_num_threads(1)  # the trial's process: standardising; the workers decode (one thread each)
    with tempfile.TemporaryDirectory(prefix="folder-bench-") as tmp:
        root = Path(tmp)
        write_images(root, args.images)
        size_kib = sum(p.stat().st_size for p in (root / "train").rglob("*.jpg")) / args.images / 1024
        cpu_ms: dict[str, list[float]] = {}
        variants = {
            f"{name} {workers}w": with_cpu_time(
                make(root, workers), args.images, cpu_ms.setdefault(f"{name} {workers}w", [])
            )
            for workers in (1, 2)
            for name, make in (("project", project_epoch), ("pil", pil_epoch))
        }
        for run in variants.values():
            run()  # warm-up: file cache, imports in the workers
        for values in cpu_ms.values():
            values.clear()
        measured = interleaved(variants, args.repeats)
    print(f"benchmarks/folder_pipeline.py {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"{machine_line(torch.device('cpu'))} repeats={args.repeats}")
    print(f"load average before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f} (other processes)")
    print(f"{args.images} JPEGs 500x375 (mean {size_kib:.0f} KiB), RandomResizedCrop 224 + flip, batch {BATCH}")
    print("variant        images/s  CPU ms/image (medians)")
    rates, costs = medians(measured), medians(cpu_ms)
    for name, value in rates.items():
        print(f"{name:<14} {value:8.1f}  {costs[name]:12.2f}")
    for workers in (1, 2):
        ratio = paired_ratio(measured, f"project {workers}w", f"pil {workers}w")
        cpu_ratio = paired_ratio(cpu_ms, f"pil {workers}w", f"project {workers}w")
        verdict = "ok" if ratio >= TARGET_SPEEDUP else "MISSED"
        print(
            f"project / ImageFolder+PIL, {workers} workers: {ratio:.2f}x images/s (target >= {TARGET_SPEEDUP}) "
            f"{verdict}; {cpu_ratio:.2f}x fewer CPU ms per image"
        )
    for name in ("project", "pil"):
        print(f"{name} 2 workers / 1 worker: {paired_ratio(measured, f'{name} 2w', f'{name} 1w'):.2f}x")


if __name__ == "__main__":
    main()
