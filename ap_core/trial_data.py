"""A trial's data on its device: the training split, the held-out validation set, and the batches of each epoch."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator

import torch

from ap_core.array_dataset import ArrayDataset
from ap_core.batches import eval_batches, train_batches
from ap_core.config import TrialConfig
from ap_core.datasets import load_dataset
from ap_core.errors import ConfigError
from ap_core.replicas import ALONE, Replicas

EVAL_BATCH_SIZE = 1000
VALIDATION_SPLIT_SEED = 20230101
Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


def hold_out(data: ArrayDataset, fraction: float) -> tuple[ArrayDataset, tuple[torch.Tensor, torch.Tensor]]:
    """Split `fraction` of the training set off for validation.

    The split depends on nothing but the dataset and the fraction: every seed and every searched point is
    judged on the same held-out samples, and none of them is ever trained on.
    """
    val, train = held_out_indices(len(data.y_train), fraction)
    val, train = val.to(data.device), train.to(data.device)
    kept = dataclasses.replace(data, x_train=data.x_train[train], y_train=data.y_train[train])
    return kept, (data.x_train[val], data.y_train[val])


def held_out_indices(n_train: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The sorted (validation, training) indices of `hold_out`'s split of `n_train` samples."""
    n_val = round(n_train * fraction)
    if not 0 < n_val < n_train - 1:
        raise ConfigError(f"val_fraction {fraction} of {n_train} training samples leaves no validation or train set")
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(VALIDATION_SPLIT_SEED))
    return order[:n_val].sort().values, order[n_val:].sort().values


def last_batch_dropped(n_train: int, batch_size: int, replicas: Replicas) -> bool:
    """Whether an epoch drops its last, partial batch: when a replica's share of it would be a single sample (or
    none), which BatchNorm cannot train on."""
    if batch_size < 2 * replicas.world:
        raise ConfigError(
            f"batch_size {batch_size} cannot be shared by {replicas.world} workers: at least 2 samples each"
        )
    return 0 < n_train % batch_size < 2 * replicas.world


class TrialData:
    """The dataset `config` names (or the one given), moved once to `device` and split as `config` asks."""

    def __init__(
        self, config: TrialConfig, dataset: ArrayDataset | None, device: torch.device, replicas: Replicas = ALONE
    ) -> None:
        self.replicas = replicas
        if dataset is None:
            dataset = load_dataset(
                config.dataset,
                config.runtime.data_dir,
                download=config.runtime.download,
                max_train_samples=config.training.max_train_samples,
            )
        elif config.training.max_train_samples:
            dataset = dataset.limit_train(config.training.max_train_samples)
        # The only copy of a shared (read-only) dataset a trial makes: to its GPU, still in its stored form (uint8).
        self.dataset = dataset.to(device)
        self.standardise = self.dataset.standardiser(device)
        self.validation: tuple[torch.Tensor, torch.Tensor] | None = None
        if config.training.val_fraction:
            self.dataset, self.validation = hold_out(self.dataset, config.training.val_fraction)
        n_train = len(self.dataset.y_train)
        if config.training.batch_size > n_train:
            raise ConfigError(f"batch_size {config.training.batch_size} is larger than the {n_train} training samples")
        self.batch_size, self.augment, self.window_size = (
            config.training.batch_size,
            config.training.augment,
            config.training.dead_unit_window,
        )
        self.drop_last = last_batch_dropped(n_train, self.batch_size, replicas)
        self.steps_per_epoch = n_train // self.batch_size if self.drop_last else math.ceil(n_train / self.batch_size)

    @property
    def images(self) -> bool:
        return self.dataset.x_train.dim() == 4

    def example(self) -> torch.Tensor:
        """One standardised training input: what the channel graph and the FLOP count trace."""
        return self.dataset.standardised(self.dataset.x_train[:1])

    def epoch(self, generator: torch.Generator, first_step: int, channels_last: bool) -> Batches:
        """The shuffled (augmented) batches of one epoch, from step `first_step` of it (a rewound schedule can start
        mid-epoch)."""
        batches = train_batches(
            self.dataset, self.batch_size, generator, augment=self.augment, drop_last=self.drop_last
        )
        batches = itertools.islice(batches, first_step % self.steps_per_epoch, None)
        if self.replicas.parallel:  # every replica draws the whole batch (the same random stream), trains its share
            batches = map(self.replicas.shard, batches)
        if channels_last:  # match the channels-last weights
            batches = ((x.contiguous(memory_format=torch.channels_last), y) for x, y in batches)
        return batches

    def window(self) -> Iterator[torch.Tensor]:
        """The first `dead_unit_window` training images, un-augmented: where dead units are counted."""
        x, y = self.dataset.x_train[: self.window_size], self.dataset.y_train[: self.window_size]
        return (x for x, _ in eval_batches(x, y, EVAL_BATCH_SIZE, self.standardise))

    def test_batches(self) -> Batches:
        """The test set in order: this replica's share of every batch."""
        return self._shares(eval_batches(self.dataset.x_test, self.dataset.y_test, EVAL_BATCH_SIZE, self.standardise))

    def validation_batches(self) -> Batches | None:
        if self.validation is None:
            return None
        return self._shares(eval_batches(*self.validation, EVAL_BATCH_SIZE, self.standardise))

    def _shares(self, batches: Batches) -> Batches:
        if not self.replicas.parallel:
            return batches
        return (share for share in map(self.replicas.shard, batches) if len(share[1]))
