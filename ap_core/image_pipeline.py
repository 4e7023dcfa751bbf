"""Decoding and augmenting encoded images, one sample at a time, in a DataLoader's worker processes.

Workers do what needs the CPU per image and return uint8: read the bytes, decode them (libjpeg-turbo through
`torchvision.io`), crop and resize to the model's square input, flip. A uint8 batch is a quarter of its float32 form
through the workers' shared memory and the host-to-device copy; standardisation runs on the device
(`ap_core.folder_data`).

Every sample carries its own augmentation seed, drawn from the epoch's generator in the trial's process: its crop and
flip are the same whichever worker (or none) handles it, so the number of workers never changes results.
"""

from __future__ import annotations

import os

import torch
import torchvision.transforms.v2.functional as F
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms import RandomResizedCrop

from ap_core.image_files import ImageSamples

# The share of its resized side an evaluation crop keeps: 224 of 256, as torchvision's ImageNet references.
CENTRE_CROP_SHARE = 7 / 8
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
NO_AUGMENTATION = -1  # the seed of a sample drawn un-augmented


class DecodedImages(Dataset[tuple[Tensor, int]]):
    """The images of `samples` as uint8 CHW tensors of side `size`; item (index, seed) is image `index`,
    random-resized-cropped and flipped with `seed`, or resized and centre-cropped when seed is NO_AUGMENTATION."""

    def __init__(self, samples: ImageSamples, size: int) -> None:
        self.samples = samples
        self.size = size
        self._shards: dict[str, int] = {}  # open shard file descriptors of this process

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: tuple[int, int]) -> tuple[Tensor, int]:
        index, seed = item
        image = decode_image(self.encoded(index), mode=ImageReadMode.RGB)
        if seed == NO_AUGMENTATION:
            image = centre_crop(image, self.size)
        else:
            image = random_crop_and_flip(image, self.size, seed)
        return image, int(self.samples.labels[index])

    def encoded(self, index: int) -> Tensor:
        """Image `index`'s encoded bytes: a whole file, or one member of a tar shard read at its offset."""
        samples = self.samples
        path = samples.files[samples.file_index[index]]
        size = int(samples.sizes[index])
        if size < 0:
            return read_file(path)
        if path not in self._shards:
            self._shards[path] = os.open(path, os.O_RDONLY)
        # pread: no shared file position, so descriptors inherited by forked workers never race
        data = os.pread(self._shards[path], size, int(samples.offsets[index]))
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_shards": {}}  # descriptors stay in their process


def centre_crop(image: Tensor, size: int) -> Tensor:
    """Evaluation view: the shorter side resized to size / CENTRE_CROP_SHARE, then the centred size x size square."""
    image = F.resize(image, [int(size / CENTRE_CROP_SHARE)], antialias=True)
    return F.center_crop(image, [size, size])


def random_crop_and_flip(image: Tensor, size: int, seed: int) -> Tensor:
    """Training view: torchvision's RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) to size x size, then a
    horizontal flip half the time, all drawn from `seed` alone (the process's random state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        # the CPU generator alone: torch.manual_seed also queues CUDA seeding with a stack trace (~0.6 ms a call)
        torch.default_generator.manual_seed(seed)
        top, left, height, width = RandomResizedCrop.get_params(image, list(CROP_SCALE), list(CROP_RATIO))
        flip = bool(torch.rand(()) < 0.5)
    image = F.resized_crop(image, top, left, height, width, [size, size], antialias=True)
    return F.horizontal_flip(image) if flip else image
