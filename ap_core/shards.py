"""`python -m ap_core.shards SOURCE DESTINATION`: a class-folder dataset rewritten as WebDataset-style tar shards.

Shared storage serves a few large files far faster than millions of small ones: each shard holds `<key>.jpg` (or
`.png`) and `<key>.cls` members for `--images-per-shard` images, in the dataset's stored order, so a folder dataset and
its shards give a trial the same samples in the same order.
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
from pathlib import Path

from ap_core.errors import ConfigError
from ap_core.image_files import ImageSamples, load_image_files

IMAGES_PER_SHARD = 1000


def write_shards(source: Path, destination: Path, images_per_shard: int = IMAGES_PER_SHARD) -> list[Path]:
    """Write `source`'s train/ and val/ (or test/) class folders as `train-000000.tar`... and `val-000000.tar`...
    under `destination`; returns the shards written."""
    if images_per_shard < 1:
        raise ConfigError(f"images_per_shard {images_per_shard} must be >= 1")
    files = load_image_files("folder", source)
    if files.sharded:
        raise ConfigError(f"{str(source)!r} already holds shards; give the folder with train/ and val/ class folders")
    destination.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for split, samples in (("train", files.train), ("val", files.test)):
        for number, start in enumerate(range(0, len(samples), images_per_shard)):
            path = destination / f"{split}-{number:06d}.tar"
            write_shard(path, samples, range(start, min(start + images_per_shard, len(samples))))
            written.append(path)
    return written


def write_shard(path: Path, samples: ImageSamples, positions: range) -> None:
    """One tar of the images at `positions` of `samples`, keyed by position (fixed member times: same bytes every
    run)."""
    with tarfile.open(path, "w") as tar:
        for position in positions:
            image = Path(samples.files[samples.file_index[position]])
            key = f"{position:09d}"
            add_member(tar, f"{key}{image.suffix.lower()}", image.read_bytes())
            add_member(tar, f"{key}.cls", str(int(samples.labels[position])).encode())


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ap_core.shards", description=__doc__)
    parser.add_argument("source", type=Path, help="folder with train/ and val/ (or test/) class folders")
    parser.add_argument("destination", type=Path, help="folder the shards are written to")
    parser.add_argument("--images-per-shard", type=int, default=IMAGES_PER_SHARD)
    args = parser.parse_args(argv)
    try:
        written = write_shards(args.source, args.destination, args.images_per_shard)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} shards to {args.destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
