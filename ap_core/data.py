"""Whole datasets as tensors, plus batch iteration with on-device standardisation and vectorised augmentation.

Every dataset here is small enough to hold in (GPU) memory, so a trial loads it once, moves it to its
device and slices batches by index: no DataLoader workers, no per-sample PIL decoding, no Python loop over
samples. Images whose source is 8-bit stay uint8 (a quarter of float32) until a batch is drawn, and a dataset
pickles as numpy arrays, so Ray's object store shares it with every trial on a node without copying it.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor

from ap_core.errors import ConfigError, DatasetUnavailableError
from ap_core.registry import Registry

DIGITS_TEST_SIZE = 360
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
DIGITS_PIXEL_MAX = 16.0


@dataclass
class ArrayDataset:
    """A train/test split held as NCHW images and int64 labels.

    Images from an 8-bit source are stored raw (uint8, `pixel_max` > 0) with the per-channel `mean`/`std` beside
    them; `standardiser` turns each drawn batch into float32 on its device, so the whole set never exists as float32.
    Other images (synthetic) are stored as the float32 the model sees (`pixel_max` 0).

    `crop_padding` and `flip` record the augmentation the dataset calls for, so the training loop needs no
    per-dataset knowledge. Instances pickle their tensors as numpy arrays: Ray's object store then hands every
    trial on a node a read-only view of one shared buffer instead of a private copy. `limit_train` copies its
    slice so a subset never drags the full storage along when pickled.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    name: str
    crop_padding: int = 0
    flip: bool = False
    # The standardised value of a black pixel per channel: crops pad with it, as torchvision's RandomCrop pads the
    # raw image with zeros before normalisation.
    pad_value: tuple[float, ...] = ()
    # Stored images are standardised per batch as (x / pixel_max - mean) / std per channel; pixel_max 0: as stored.
    pixel_max: float = 0.0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __reduce__(self) -> tuple[Callable[..., ArrayDataset], tuple[dict[str, Any]]]:
        fields = {
            f.name: _as_array(value) if isinstance(value := getattr(self, f.name), Tensor) else value
            for f in dataclasses.fields(self)
        }
        return _from_arrays, (fields,)

    @property
    def num_train(self) -> int:
        return self.x_train.shape[0]

    @property
    def num_test(self) -> int:
        return self.x_test.shape[0]

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def to(self, device: torch.device | str) -> ArrayDataset:
        """A copy whose tensors live on `device` (tensors already there are shared, not duplicated)."""
        return dataclasses.replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
        )

    def limit_train(self, max_train_samples: int) -> ArrayDataset:
        """Keep only the first `max_train_samples` training samples (0 or more than available: keep all)."""
        if max_train_samples < 0:
            raise ConfigError(f"max_train_samples {max_train_samples} must be >= 0")
        if max_train_samples == 0 or max_train_samples >= self.num_train:
            return self
        return dataclasses.replace(
            self,
            x_train=self.x_train[:max_train_samples].clone(),
            y_train=self.y_train[:max_train_samples].clone(),
        )

    def standardiser(self, device: torch.device) -> Callable[[Tensor], Tensor]:
        """A function from stored images (a batch, on `device`) to the float32 images the model sees.

        Builds its constants on `device` once, so per-batch calls copy nothing from the host. The arithmetic is
        `_standardise`'s, which the loaders used on whole sets: results are the same bit for bit.
        """
        if not self.pixel_max:
            return lambda images: images
        shape = (1, len(self.mean), 1, 1)
        pixel_max = torch.tensor(self.pixel_max, device=device)
        mean = torch.tensor(self.mean, device=device).view(shape)
        std = torch.tensor(self.std, device=device).view(shape)
        return lambda images: _standardise(images, pixel_max, mean, std)

    def standardised(self, images: Tensor) -> Tensor:
        """`images` (stored form, e.g. a slice of `x_train`) as the model sees them; for one-off uses."""
        return self.standardiser(images.device)(images)


def _as_array(tensor: Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def _from_arrays(fields: dict[str, Any]) -> ArrayDataset:
    """Unpickle: wrap each array without copying it.

    Arrays from Ray's object store are read-only views of shared memory. torch cannot mark a tensor read-only and
    warns; nothing here writes into a dataset's tensors (batches are gathered into new tensors), so the warning is
    silenced for exactly this call rather than paid for with a private copy of the data.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        tensors = {k: torch.from_numpy(v) for k, v in fields.items() if isinstance(v, np.ndarray)}
    return ArrayDataset(**{**fields, **tensors})


def _standardise(images: Tensor, pixel_max: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Integer NCHW images (any strides) -> contiguous float32 (x / pixel_max - mean) / std, in one new tensor.

    The divisors are device tensors, never Python scalars: on CUDA a scalar divisor becomes a multiplication by its
    reciprocal, which can differ from the division in the last bit.
    """
    x = images.to(torch.float32, memory_format=torch.contiguous_format)  # a new tensor: images are never float32
    return x.div_(pixel_max).sub_(mean).div_(std)


DATASETS: Registry[Callable[..., ArrayDataset]] = Registry("dataset")


def load_dataset(
    name: str,
    data_dir: str | Path = "data",
    download: bool = False,
    max_train_samples: int = 0,
    **options: Any,
) -> ArrayDataset:
    """Load dataset `name` on the CPU; `options` are loader-specific (see each loader's keyword arguments).

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
    name: str, cls: type, folder: str, data_dir: Path, download: bool, train: bool
) -> torchvision.datasets.VisionDataset:
    """Construct a torchvision dataset, turning its missing-file / download errors into one-line messages."""
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
    cls: type,
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
        ds = _open_torchvision(name, cls, folder, data_dir, download, train)
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
    cls: type,
    mean: float,
    std: float,
    data_dir: Path,
    download: bool,
) -> ArrayDataset:
    """MNIST / FashionMNIST: torchvision keeps `.data` as a uint8 NHW tensor and `.targets` as int64."""
    folder = f"{cls.__name__}/raw"
    splits = []
    for train in (True, False):
        ds = _open_torchvision(name, cls, folder, data_dir, download, train)
        splits.append((ds.data.unsqueeze(1).contiguous(), ds.targets.to(torch.int64).contiguous()))
    (x_train, y_train), (x_test, y_test) = splits
    return ArrayDataset(
        x_train, y_train, x_test, y_test, 10, (1, 28, 28), name, pixel_max=255.0, mean=(mean,), std=(std,)
    )


@DATASETS.register("cifar10")
def _cifar10(data_dir: Path, download: bool) -> ArrayDataset:
    return _load_cifar(
        "cifar10",
        torchvision.datasets.CIFAR10,
        "cifar-10-batches-py",
        10,
        CIFAR10_MEAN,
        CIFAR10_STD,
        data_dir,
        download,
    )


@DATASETS.register("cifar100")
def _cifar100(data_dir: Path, download: bool) -> ArrayDataset:
    return _load_cifar(
        "cifar100",
        torchvision.datasets.CIFAR100,
        "cifar-100-python",
        100,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        data_dir,
        download,
    )


@DATASETS.register("mnist")
def _mnist(data_dir: Path, download: bool) -> ArrayDataset:
    return _load_mnist_like("mnist", torchvision.datasets.MNIST, 0.1307, 0.3081, data_dir, download)


@DATASETS.register("fashion_mnist")
def _fashion_mnist(data_dir: Path, download: bool) -> ArrayDataset:
    return _load_mnist_like("fashion_mnist", torchvision.datasets.FashionMNIST, 0.2860, 0.3530, data_dir, download)


@DATASETS.register("digits")
def _digits(data_dir: Path, download: bool) -> ArrayDataset:
    """scikit-learn's bundled 8x8 digits: needs no files, so it is the offline default.

    The split is fixed (stratified, random_state=0: numpy's RandomState is identical on every machine) and
    both splits are standardised with the train split's mean/std, computed before any `max_train_samples` cut.
    """
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


def _randint(high: int, size: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    """Draw on the generator's device (so any generator works), then move to where the data lives."""
    return torch.randint(high, size, generator=generator, device=generator.device).to(device)


def augment_batch(
    x: Tensor,
    crop_padding: int,
    flip: bool,
    generator: torch.Generator,
    pad_value: tuple[float, ...] | Tensor = (),
) -> Tensor:
    """Per-sample random crop (padding `crop_padding` with `pad_value` per channel, default 0) and horizontal flip
    of a whole NCHW batch at once.

    The crop pads once and gathers each sample's window with advanced indexing; the flip picks per sample with
    torch.where. Random draws come from `generator` in a fixed order (crop offsets, then flip mask). `pad_value` may
    be a tensor of x's dtype on x's device, so that a loop over batches builds it once instead of per batch.
    """
    if crop_padding < 0:
        raise ConfigError(f"crop_padding {crop_padding} must be >= 0")
    n, c, h, w = x.shape
    device = x.device
    if crop_padding > 0:
        p = crop_padding
        if len(pad_value):
            fill = torch.as_tensor(pad_value, dtype=x.dtype, device=device)[:, None, None]
            padded = F.pad(x - fill, (p, p, p, p)) + fill
        else:
            padded = F.pad(x, (p, p, p, p))
        offsets = _randint(2 * p + 1, (2, n), generator, device)
        rows = (offsets[0, :, None] + torch.arange(h, device=device))[:, None, :, None]
        cols = (offsets[1, :, None] + torch.arange(w, device=device))[:, None, None, :]
        samples = torch.arange(n, device=device)[:, None, None, None]
        channels = torch.arange(c, device=device)[None, :, None, None]
        x = padded[samples, channels, rows, cols]
    if flip:
        flipped = _randint(2, (n,), generator, device).bool()
        x = torch.where(flipped[:, None, None, None], x.flip(-1), x)
    return x


def train_batches(
    data: ArrayDataset,
    batch_size: int,
    generator: torch.Generator,
    augment: bool = True,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """One shuffled epoch of (images, labels) batches, standardised on the data's device and augmented as the
    dataset calls for when `augment`.

    The permutation and augmentation draws come from `generator` on its own device: a generator on the data's
    device avoids any transfer, a CPU generator also works (small index tensors are copied) and gives the same
    stream wherever the data lives. Standardising before augmenting keeps the numbers of the whole-set
    standardisation this replaced, bit for bit (standardising is element-wise, so it commutes with the gather).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size {batch_size} must be >= 1")
    n = data.num_train
    device = data.device
    standardise = data.standardiser(device)
    augmenting = augment and (data.crop_padding > 0 or data.flip)
    fill = torch.tensor(data.pad_value, dtype=torch.float32, device=device)
    order = torch.randperm(n, generator=generator, device=generator.device).to(device)
    for start in range(0, n, batch_size):
        index = order[start : start + batch_size]
        if drop_last and index.numel() < batch_size:
            break
        x = standardise(data.x_train[index])
        if augmenting:
            x = augment_batch(x, data.crop_padding, data.flip, generator, fill)
        yield x, data.y_train[index]


def eval_batches(
    x: Tensor, y: Tensor, batch_size: int, standardise: Callable[[Tensor], Tensor] | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """Every sample in order, in batches of `batch_size` (the last one may be smaller), images passed through
    `standardise` (an `ArrayDataset.standardiser`) when given."""
    if batch_size < 1:
        raise ConfigError(f"batch_size {batch_size} must be >= 1")
    for start in range(0, x.shape[0], batch_size):
        images = x[start : start + batch_size]
        yield (standardise(images) if standardise else images), y[start : start + batch_size]
