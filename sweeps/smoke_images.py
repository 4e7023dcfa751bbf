"""A small class-folder tree of JPEGs for the offline smoke presets of the folder / ImageNet tables.

    python -m sweeps.smoke_images DIR [--classes 4] [--train 24] [--val 8] [--size 32]

writes `DIR/train/<class>/*.jpg` and `DIR/val/<class>/*.jpg`: the layout `--dataset folder` reads. The images are
deterministic (a fixed seed), so two trees written with the same arguments hold the same bytes, and learnable: each
class has its own colour and stripe direction under per-image noise, so a few epochs lift accuracy above chance.
The paper tables' smoke presets point `data_dir` at `DEFAULT_DIR` and write it there when a run needs it and it is
missing (`ensure_for_run`).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torchvision.io import encode_jpeg

from ap_core.errors import ConfigError
from sweeps.engine.driver import main as run_sweep
from sweeps.engine.options import parse_args
from sweeps.engine.spec import SweepSpec

# Inside the repository's data/ folder (git-ignored), absolute: Ray workers do not share the driver's cwd.
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "data" / "smoke_images"
# What a smoke preset's trials need to read the generated tree: its folder, the images' size, no loader processes
# (32 px images decode faster than workers start) and a dead-unit window the tree's 96 training images fill.
SMOKE_DATA = {"data_dir": str(DEFAULT_DIR), "image_size": 32, "loader_workers": 0, "dead_unit_window": 64}
SEED = 18
JPEG_QUALITY = 90


def class_image(label: int, classes: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """One uint8 (3, size, size) image of class `label`: a class colour, stripes in a class direction, noise."""
    hue = torch.tensor([(label * 97 + c * 61) % 256 for c in range(3)], dtype=torch.float32).view(3, 1, 1)
    coords = torch.arange(size, dtype=torch.float32)
    angle = math.pi * label / classes
    phase = float(torch.rand((), generator=generator)) * 2 * math.pi
    wave = torch.sin((coords.view(1, -1) * math.cos(angle) + coords.view(-1, 1) * math.sin(angle)) * 0.6 + phase)
    noise = torch.randn((3, size, size), generator=generator) * 20
    image = 0.6 * hue + 60 * wave.unsqueeze(0) + 60 + noise
    return image.clamp(0, 255).to(torch.uint8)


def write_tree(root: Path, classes: int = 4, train: int = 24, val: int = 8, size: int = 32) -> Path:
    """Write the tree under `root` (replacing nothing: it is built in a sibling temporary folder and renamed into
    place, so an interrupted write never leaves a half tree that later runs would take as complete)."""
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(SEED)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        for split, count in (("train", train), ("val", val)):
            for label in range(classes):
                folder = staging / split / f"class{label:02d}"
                folder.mkdir(parents=True)
                for index in range(count):
                    data = encode_jpeg(class_image(label, classes, size, generator), quality=JPEG_QUALITY)
                    (folder / f"{index:04d}.jpg").write_bytes(data.numpy().tobytes())
        os.replace(staging, root)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (root / "train").is_dir():
            raise
        # Another run wrote the same tree first (same seed, same bytes): use theirs.
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def ensure(root: Path = DEFAULT_DIR) -> Path:
    """The tree at `root`, written first if it is not there."""
    return root if (Path(root) / "train").is_dir() else write_tree(root)


def ensure_for_run(spec: SweepSpec, argv: Sequence[str]) -> None:
    """Write `DEFAULT_DIR` before a sweep whose trials read it, and only then (not for --help, --list, --dry-run,
    another --data-dir or a preset on other data); a command line the driver will refuse is left to the driver."""
    if any(flag in argv for flag in ("-h", "--help", "--list", "--dry-run")):
        return
    try:
        parsed = parse_args(list(argv), spec)
        preset = spec.preset(parsed.options.preset or spec.default_preset)
    except ConfigError:
        return
    data_dir = parsed.overrides.get("data_dir", preset.trial.get("data_dir"))
    if data_dir is not None and Path(data_dir).resolve() == DEFAULT_DIR:
        ensure(DEFAULT_DIR)


def run_table(spec: SweepSpec) -> None:
    """A folder table's command line: the smoke images written first where the run reads them, then the sweep."""
    ensure_for_run(spec, sys.argv[1:])
    run_sweep(spec)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, nargs="?", default=DEFAULT_DIR, help=f"target folder ({DEFAULT_DIR})")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--train", type=int, default=24, help="training images per class")
    parser.add_argument("--val", type=int, default=8, help="test images per class")
    parser.add_argument("--size", type=int, default=32, help="side of the square images")
    args = parser.parse_args(argv)
    if args.dir.exists():
        print(f"error: {str(args.dir)!r} exists; give a new folder", file=sys.stderr)
        sys.exit(2)
    write_tree(args.dir, args.classes, args.train, args.val, args.size)
    print(f"wrote {args.classes} classes x ({args.train} train + {args.val} val) {args.size}px JPEGs to {args.dir}")


if __name__ == "__main__":
    main()
