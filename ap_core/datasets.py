"""The datasets a trial can name: torchvision's image sets, scikit-learn's digits and synthetic data, each loaded
whole into an `ArrayDataset` on the CPU, and image folders too large for that, indexed as `ImageFiles`.

torchvision and scikit-learn are imported inside the loaders that need them: listing or checking names (`ap-trial
--list`, a config's validation) should not pay seconds for importing them.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ap_core.array_dataset import ArrayDataset
from ap_core.errors import ConfigError, DatasetUnavailableError
from ap_core.image_files import ImageFiles, load_image_files
from ap_core.registry import Registry

if TYPE_CHECKING:
    from torchvision.datasets import VisionDataset


DIGITS_TEST_SIZE = 360
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
DIGITS_PIXEL_MAX = 16.0


DATASETS: Registry[Callable[..., ArrayDataset | ImageFiles]] = Registry("dataset")


def load_dataset(
    name: str,
    data_dir: str | Path = "data",
    download: bool = False,
    max_train_samples: int = 0,
    **options: Any,
) -> ArrayDataset | ImageFiles:
    """Load dataset `name` on the CPU (an image folder: its index); `options` are loader-specific (see each
    loader's keyword arguments).

    Raises ConfigError for an unknown name or option and DatasetUnavailableError when files are missing.
    """
    loader = DATASETS.get(name)
    valid = [p.name for p in inspect.signature(loader).parameters.values() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r} for dataset {name!r}; valid: {', '.join(valid) or 'none'}")
    data = loader(Path(data_dir), download, **options)
    return data.limit_train(max_train_samples)


def _open_torchvision(
    name: str, class_name: str, folder: str, data_dir: Path, download: bool, train: bool
) -> VisionDataset:
    """Construct torchvision's dataset `class_name`, turning its missing-file / download errors into one line."""
    import torchvision.datasets  # seconds to import: only when a torchvision dataset is loaded

    cls = getattr(torchvision.datasets, class_name)
    try:
        return cls(root=data_dir, train=train, download=download)
    except (RuntimeError, OSError) as err:  # OSError: network failures (URLError), unwritable folders
        if not download:
            raise DatasetUnavailableError(
                f"{name} not found (or incomplete) under {str(data_dir)!r}; pass --download (needs internet) "
                f"or copy the torchvision {folder!r} folder there"
            ) from None
        reason = " ".join(str(err).split())
        raise DatasetUnavailableError(
            f"{name} could not be downloaded into {str(data_dir)!r} ({reason}); "
            f"copy the torchvision {folder!r} folder there instead"
        ) from None


def _load_cifar(
    name: str,
    class_name: str,
    folder: str,
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    data_dir: Path,
    download: bool,
) -> ArrayDataset:
    """CIFAR: torchvision keeps `.data` as uint8 NHWC numpy and `.targets` as a list; stored as uint8 NCHW."""
    splits = []
    for train in (True, False):
        ds = _open_torchvision(name, class_name, folder, data_dir, download, train)
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        splits.append((x, torch.as_tensor(ds.targets, dtype=torch.int64)))
    (x_train, y_train), (x_test, y_test) = splits
    return cifar_like(x_train, y_train, x_test, y_test, num_classes, name, mean, std)


def cifar_like(
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    num_classes: int,
    name: str,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> ArrayDataset:
    """uint8 NCHW 32x32 colour images with CIFAR's augmentation (pad-4 crop with black, flips) and statistics."""
    black = tuple(-m / s for m, s in zip(mean, std, strict=True))
    return ArrayDataset(
        x_train,
        y_train,
        x_test,
        y_test,
        num_classes,
        (3, 32, 32),
        name,
        crop_padding=4,
        flip=True,
        pad_value=black,
        pixel_max=255.0,
        mean=mean,
        std=std,
    )


def _load_mnist_like(
    name: str,
    class_name: str,
    mean: float,
    std: float,
    data_dir: Path,
    download: bool,
) -> ArrayDataset:
    """MNIST / FashionMNIST: torchvision keeps `.data` as a uint8 NHW tensor and `.targets` as int64."""
    folder = f"{class_name}/raw"
    splits = []
    for train in (True, False):
        ds = _open_torchvision(name, class_name, folder, data_dir, download, train)
        splits.append((ds.data.unsqueeze(1).contiguous(), ds.targets.to(torch.int64).contiguous()))
    (x_train, y_train), (x_test, y_test) = splits
    return ArrayDataset(
        x_train, y_train, x_test, y_test, 10, (1, 28, 28), name, pixel_max=255.0, mean=(mean,), std=(std,)
    )


@DATASETS.register("cifar10")
def _cifar10(data_dir: Path, download: bool) -> ArrayDataset:
    return _load_cifar("cifar10", "CIFAR10", "cifar-10-batches-py", 10, CIFAR10_MEAN, CIFAR10_STD, data_dir, download)


@DATASETS.register("cifar100")
def _cifar100(data_dir: Path, download: bool) -> ArrayDataset:
    return _load_cifar("cifar100", "CIFAR100", "cifar-100-python", 100, CIFAR100_MEAN, CIFAR100_STD, data_dir, download)


@DATASETS.register("mnist")
def _mnist(data_dir: Path, download: bool) -> ArrayDataset:
    return _load_mnist_like("mnist", "MNIST", 0.1307, 0.3081, data_dir, download)


@DATASETS.register("fashion_mnist")
def _fashion_mnist(data_dir: Path, download: bool) -> ArrayDataset:
    return _load_mnist_like("fashion_mnist", "FashionMNIST", 0.2860, 0.3530, data_dir, download)


@DATASETS.register("digits")
def _digits(data_dir: Path, download: bool) -> ArrayDataset:
    """scikit-learn's bundled 8x8 digits: needs no files, so it is the offline default.

    The split is fixed (stratified, random_state=0: numpy's RandomState is identical on every machine) and
    both splits are standardised with the train split's mean/std, computed before any `max_train_samples` cut.
    """
    from sklearn.datasets import load_digits  # scikit-learn takes seconds to import: only when digits are loaded
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)  # integers 0..16 stored as float64
    x_train, x_test, y_train, y_test = train_test_split(
        images, bunch.target, test_size=DIGITS_TEST_SIZE, random_state=0, stratify=bunch.target
    )
    scaled = x_train.astype(np.float32) / np.float32(DIGITS_PIXEL_MAX)
    mean, std = float(scaled.mean()), float(scaled.std())
    return ArrayDataset(
        torch.from_numpy(x_train).unsqueeze(1).contiguous(),
        torch.from_numpy(y_train).to(torch.int64),
        torch.from_numpy(x_test).unsqueeze(1).contiguous(),
        torch.from_numpy(y_test).to(torch.int64),
        10,
        (1, 8, 8),
        "digits",
        pixel_max=DIGITS_PIXEL_MAX,
        mean=(mean,),
        std=(std,),
    )


@DATASETS.register("synthetic")
def _synthetic(
    data_dir: Path,
    download: bool,
    *,
    num_samples: int = 2048,
    num_test: int = 512,
    input_shape: tuple[int, ...] | list[int] = (3, 32, 32),
    num_classes: int = 10,
    seed: int = 0,
) -> ArrayDataset:
    """Deterministic class-conditional Gaussian images, for throughput work and training smoke tests.

    Each class has a fixed random prototype image; a sample is (prototype[label] + unit noise) / sqrt(2), so
    pixels have roughly zero mean and unit variance and the classes are separable well above chance.
    Everything is drawn from one CPU generator seeded with `seed`, so the data is identical on every machine
    (for a given torch version).
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"synthetic input_shape {tuple(input_shape)} must be three positive ints (C, H, W)")
    if num_classes < 2:
        raise ConfigError(f"synthetic num_classes {num_classes} must be >= 2")
    if num_samples < 1 or num_test < 1:
        raise ConfigError(f"synthetic num_samples {num_samples} and num_test {num_test} must be >= 1")
    gen = torch.Generator().manual_seed(seed)
    prototypes = torch.randn((num_classes, *shape), generator=gen)

    def draw(n: int) -> tuple[Tensor, Tensor]:
        labels = torch.randint(num_classes, (n,), generator=gen)
        noise = torch.randn((n, *shape), generator=gen)
        return (prototypes[labels] + noise).div_(math.sqrt(2.0)), labels

    x_train, y_train = draw(num_samples)
    x_test, y_test = draw(num_test)
    return ArrayDataset(x_train, y_train, x_test, y_test, num_classes, shape, "synthetic")


@DATASETS.register("folder")
def _folder(data_dir: Path, download: bool) -> ImageFiles:
    return load_image_files("folder", data_dir)  # any tree of class folders, or its shards: nothing to download


@DATASETS.register("imagenet")
def _imagenet(data_dir: Path, download: bool) -> ImageFiles:
    return load_image_files("imagenet", data_dir)  # torchvision cannot download it: the error says where to get it
