"""A whole dataset as tensors: small enough to hold in (GPU) memory, so a trial loads it once and slices batches.

Images whose source is 8-bit stay uint8 (a quarter of float32) until a batch is drawn, and a dataset pickles as
numpy arrays, so Ray's object store shares it with every trial on a node without copying it.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ap_core.errors import ConfigError


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
