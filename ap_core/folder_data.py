"""A trial's data streamed from encoded images (class folders or tar shards): `TrialData`'s interface, fed by
DataLoader workers instead of slices of tensors held whole.

Where each step runs: the trial's process draws the epoch's order and one augmentation seed per sample from the
epoch's generator (so results are the same for any number of workers); workers read, decode, crop and flip each
image to uint8; batches travel to the device as uint8 through pinned memory and are standardised (and made
channels-last) there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from ap_core.array_dataset import ArrayDataset
from ap_core.config import TrialConfig
from ap_core.datasets import load_dataset
from ap_core.errors import ConfigError
from ap_core.image_files import FOLDER_DATASETS, ImageFiles, ImageSamples
from ap_core.image_pipeline import NO_AUGMENTATION, DecodedImages
from ap_core.replicas import ALONE, Replicas
from ap_core.trial_data import Batches, TrialData, held_out_indices, last_batch_dropped

SEED_LIMIT = 2**62


def open_trial_data(
    config: TrialConfig,
    dataset: ArrayDataset | ImageFiles | None,
    device: torch.device,
    replicas: Replicas = ALONE,
) -> TrialData:
    """The trial's data (this replica's share of every batch): streamed for an image-file dataset (given, or named by
    `config`), else held whole."""
    if dataset is None and config.dataset in FOLDER_DATASETS:
        dataset = load_dataset(config.dataset, config.runtime.data_dir, download=config.runtime.download)
    if isinstance(dataset, ImageFiles):
        return FolderTrialData(config, dataset, device, replicas)
    return TrialData(config, dataset, device, replicas)


class FolderTrialData(TrialData):
    """`TrialData` for an `ImageFiles` dataset: the same methods, each batch decoded by loader workers.

    Shares no state with the array form (hence no call to its constructor): only its interface.
    """

    def __init__(self, config: TrialConfig, dataset: ImageFiles, device: torch.device, replicas: Replicas) -> None:
        self.replicas = replicas
        training = config.training
        files = dataset.with_num_classes(training.num_classes).limit_train(training.max_train_samples)
        self.dataset = dataset = dataclasses.replace(files, image_size=training.image_size)
        self.device, self.workers = device, config.runtime.loader_workers
        self.train_samples: ImageSamples = dataset.train
        self.validation_samples: ImageSamples | None = None
        if training.val_fraction:
            val, train = held_out_indices(len(dataset.train), training.val_fraction)
            self.train_samples, self.validation_samples = dataset.train.subset(train), dataset.train.subset(val)
        n_train = len(self.train_samples)
        if training.batch_size > n_train:
            raise ConfigError(f"batch_size {training.batch_size} is larger than the {n_train} training samples")
        self.batch_size, self.augment, self.window_size = (
            training.batch_size,
            training.augment,
            training.dead_unit_window,
        )
        self.drop_last = last_batch_dropped(n_train, self.batch_size, replicas)
        self.steps_per_epoch = n_train // self.batch_size if self.drop_last else -(-n_train // self.batch_size)
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(dataset.mean, device=device).view(shape)
        self.std = torch.tensor(dataset.std, device=device).view(shape)
        self.pixel_max = torch.tensor(255.0, device=device)

    @property
    def images(self) -> bool:
        return True

    def example(self) -> torch.Tensor:
        return next(iter(self._batches(self.train_samples, [[(0, NO_AUGMENTATION)]], False)))[0]

    def epoch(self, generator: torch.Generator, first_step: int, channels_last: bool) -> Batches:
        """One epoch in the generator's order from step `first_step` of it: skipped batches are never read."""
        n = len(self.train_samples)
        order = torch.randperm(n, generator=generator, device=generator.device).tolist()
        seeds = torch.randint(SEED_LIMIT, (n,), generator=generator, device=generator.device).tolist()
        if not self.augment:
            seeds = [NO_AUGMENTATION] * n
        starts = range(0, n - 1 if self.drop_last else n, self.batch_size)
        batches = [
            list(zip(order[s : s + self.batch_size], seeds[s : s + self.batch_size], strict=True)) for s in starts
        ]
        shares = [list(self.replicas.share(batch)) for batch in batches[first_step % self.steps_per_epoch :]]
        return self._batches(self.train_samples, shares, channels_last)

    def window(self) -> Iterator[torch.Tensor]:
        """The first `dead_unit_window` training images, un-augmented: where dead units are counted."""
        count = min(self.window_size, len(self.train_samples))
        return (x for x, _ in self._batches(self.train_samples, self._in_order(count), False))

    def test_batches(self) -> Batches:
        return self._batches(self.dataset.test, self._shares(len(self.dataset.test)), False)

    def validation_batches(self) -> Batches | None:
        if self.validation_samples is None:
            return None
        return self._batches(self.validation_samples, self._shares(len(self.validation_samples)), False)

    def _shares(self, count: int) -> list[list[tuple[int, int]]]:
        """This replica's share of every in-order batch (replicas without a share of the last one skip it)."""
        return [share for batch in self._in_order(count) if (share := list(self.replicas.share(batch)))]

    def _in_order(self, count: int) -> list[list[tuple[int, int]]]:
        """Samples 0..count-1, un-augmented, in batches of the training batch size (memory scales with the images)."""
        items = [(i, NO_AUGMENTATION) for i in range(count)]
        return [items[s : s + self.batch_size] for s in range(0, count, self.batch_size)]

    def _batches(
        self, samples: ImageSamples, batches: list[list[tuple[int, int]]], channels_last: bool
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """`batches` of (index, seed) decoded by the loader workers, standardised on the device."""
        loader = DataLoader(
            DecodedImages(samples, self.dataset.image_size),
            batch_sampler=batches,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if self.workers else None,
        )
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        for images, labels in loader:
            images = images.to(self.device, non_blocking=True)
            x = images.to(torch.float32, memory_format=memory_format).div_(self.pixel_max)
            yield x.sub_(self.mean).div_(self.std), labels.to(self.device, non_blocking=True)
