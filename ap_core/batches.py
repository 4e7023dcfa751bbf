"""Batch iteration over an `ArrayDataset` on its device: standardised per batch, augmented for a whole batch at once.

No DataLoader workers, no per-sample PIL decoding, no Python loop over samples: batches are sliced by index.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from ap_core.array_dataset import ArrayDataset
from ap_core.errors import ConfigError


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
