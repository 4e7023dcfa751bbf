"""Image datasets too large to hold whole: an index of where each image's encoded bytes lie, on disk, and its label.

Two layouts under a dataset folder, each with a training split and a test split (`val/`, else `test/`):
- class folders (torchvision's ImageFolder / ImageNet layout): `train/<class>/<image>.jpg`, the label being the class
  folder's position among the sorted folder names;
- WebDataset-style shards (`train-000000.tar`, ...): tar files of `<key>.jpg` (or `.png`) and `<key>.cls` members,
  the `.cls` holding the label as decimal text; one open file per shard instead of millions of small ones.

Only the index is built here (file names, tar offsets, labels): a few MB even for ImageNet, so a sweep builds it once
and ships it to every trial. Decoding happens in `ap_core.image_pipeline`, in the trial's loader workers.
"""

from __future__ import annotations

import dataclasses
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ap_core.errors import ConfigError, DatasetUnavailableError

FOLDER_DATASETS = ("folder", "imagenet")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TEST_SPLITS = ("val", "test")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_CLASSES = 1000
# Folder listings are sorted (class, file); the stored order is this fixed shuffle of them, as CIFAR's files mix the
# classes: the "first N" images (max_train_samples, the dead-unit window) then span the classes, for every seed.
STORED_ORDER_SEED = 18


@dataclass(frozen=True)
class ImageSamples:
    """Where each image of one split lies: `files[file_index[i]]`, at `offsets[i]` for `sizes[i]` bytes (size -1:
    the whole file), with label `labels[i]`."""

    files: tuple[str, ...]
    file_index: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray | torch.Tensor) -> ImageSamples:
        index = np.asarray(index)
        return dataclasses.replace(
            self,
            file_index=self.file_index[index],
            offsets=self.offsets[index],
            sizes=self.sizes[index],
            labels=self.labels[index],
        )


@dataclass(frozen=True)
class ImageFiles:
    """A dataset of encoded images: its two splits' indices, its classes and the images' statistics.

    `image_size` is the side of the square crops the model sees: a trial sets it from its config (`input_shape`).
    """

    train: ImageSamples
    test: ImageSamples
    num_classes: int
    name: str
    root: str
    image_size: int = 224
    sharded: bool = False
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    @property
    def num_train(self) -> int:
        return len(self.train)

    def limit_train(self, max_train_samples: int) -> ImageFiles:
        """Keep only the first `max_train_samples` training images of the stored order (0: keep all)."""
        if max_train_samples < 0:
            raise ConfigError(f"max_train_samples {max_train_samples} must be >= 0")
        if max_train_samples == 0 or max_train_samples >= self.num_train:
            return self
        return dataclasses.replace(self, train=self.train.subset(np.arange(max_train_samples)))

    def with_num_classes(self, num_classes: int) -> ImageFiles:
        """Check the classes found against `num_classes` (0: any number; ImageNet's 1000 for imagenet): class
        folders must match it exactly, shard labels must lie below it (a shard subset may lack some classes)."""
        expected = num_classes or (IMAGENET_CLASSES if self.name == "imagenet" else 0)
        if not expected or expected == self.num_classes:
            return self
        if self.sharded and expected > self.num_classes:
            return dataclasses.replace(self, num_classes=expected)
        found = (
            f"labels up to {self.num_classes - 1} in the shards"
            if self.sharded
            else (f"the {self.num_classes} class folders")
        )
        raise ConfigError(f"num_classes {expected} does not match {found} of {self.name} in {self.root!r}")


def load_image_files(name: str, data_dir: Path) -> ImageFiles:
    """Index the dataset under `data_dir`: its shards when it has `train-*.tar`, else its class folders."""
    if not data_dir.is_dir():
        raise DatasetUnavailableError(f"{name} not found: {str(data_dir)!r} is not a folder; {layout_hint(name)}")
    shards = sorted(data_dir.glob("train-*.tar"))
    if shards:
        train = scan_shards(shards)
        test = scan_shards(next((found for s in TEST_SPLITS if (found := sorted(data_dir.glob(f"{s}-*.tar")))), []))
        if not len(train) or not len(test):
            raise DatasetUnavailableError(
                f"{name}: {str(data_dir)!r} needs images in both train-*.tar and val-*.tar (or test-*.tar) shards"
            )
        found = int(max(train.labels.max(), test.labels.max())) + 1
        return ImageFiles(train, test, found, name, str(data_dir), sharded=True)
    test_dir = next((data_dir / s for s in TEST_SPLITS if (data_dir / s).is_dir()), None)
    if not (data_dir / "train").is_dir() or test_dir is None:
        raise DatasetUnavailableError(f"{name} not found (or incomplete) under {str(data_dir)!r}; {layout_hint(name)}")
    classes, train = scan_folder(data_dir / "train")
    test_classes, test = scan_folder(test_dir)
    if test_classes != classes:
        raise DatasetUnavailableError(
            f"{name}: the class folders of {str(test_dir)!r} ({len(test_classes)}) differ from those of "
            f"{str(data_dir / 'train')!r} ({len(classes)}); both splits need the same class folders"
        )
    return ImageFiles(train, test, len(classes), name, str(data_dir))


def layout_hint(name: str) -> str:
    """What a dataset folder must contain (and, for ImageNet, where to get it)."""
    hint = (
        "it must contain train/ and val/ (or test/) with one folder of JPEGs per class, or train-000000.tar... and "
        "val-000000.tar... shards of <key>.jpg/<key>.cls (python -m ap_core.shards writes them); pass --data-dir"
    )
    if name == "imagenet":
        hint += (
            "; torchvision cannot download ImageNet: get ILSVRC2012 from https://image-net.org and lay val/ out in "
            "class folders (n01440764/...) like train/"
        )
    return hint


def scan_folder(split_dir: Path) -> tuple[list[str], ImageSamples]:
    """The sorted class names and the images of one split's class folders, in the stored order."""
    classes = sorted(entry.name for entry in split_dir.iterdir() if entry.is_dir())
    if not classes:
        raise DatasetUnavailableError(
            f"{str(split_dir)!r} has no class folders: it must hold one folder per class with that class's images"
        )
    files, labels = [], []
    for label, name in enumerate(classes):
        images = sorted(p for p in (split_dir / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        files += [str(p) for p in images]
        labels += [label] * len(images)
    if not files:
        raise DatasetUnavailableError(f"the class folders of {str(split_dir)!r} hold no {'/'.join(IMAGE_SUFFIXES)}")
    n = len(files)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(STORED_ORDER_SEED)).numpy()
    samples = ImageSamples(
        tuple(files), np.arange(n), np.zeros(n, np.int64), np.full(n, -1, np.int64), np.asarray(labels, np.int64)
    )
    return classes, samples.subset(order)


def scan_shards(shards: list[Path]) -> ImageSamples:
    """The images of tar shards in stored (tar) order, from their members' headers and `.cls` labels."""
    file_index, offsets, sizes, labels = [], [], [], []
    for number, shard in enumerate(shards):
        images: dict[str, tarfile.TarInfo] = {}
        classes: dict[str, int] = {}
        with tarfile.open(shard) as tar:
            for member in tar:
                key, _, suffix = member.name.rpartition("/")[2].partition(".")
                if f".{suffix.lower()}" in IMAGE_SUFFIXES:
                    images[key] = member
                elif suffix == "cls":
                    classes[key] = int(tar.extractfile(member).read())  # type: ignore[union-attr]
        missing = sorted(set(images) - set(classes))
        if missing:
            raise DatasetUnavailableError(f"shard {str(shard)!r}: image {missing[0]!r} has no {missing[0]}.cls label")
        for key, member in images.items():
            file_index.append(number)
            offsets.append(member.offset_data)
            sizes.append(member.size)
            labels.append(classes[key])
    return ImageSamples(
        tuple(str(s) for s in shards),
        np.asarray(file_index, np.int64),
        np.asarray(offsets, np.int64),
        np.asarray(sizes, np.int64),
        np.asarray(labels, np.int64),
    )
