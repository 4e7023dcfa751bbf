"""Dataset loading, fixed splits, vectorised augmentation and batch iteration (CPU, seconds).

Torchvision datasets are exercised through torchvision's real classes on tiny files in the real on-disk
layouts, written by the helpers below (other test modules may import them).
"""

from __future__ import annotations

import pickle
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import calculate_md5

from ap_core.array_dataset import ArrayDataset
from ap_core.batches import augment_batch, eval_batches, train_batches
from ap_core.datasets import DATASETS, load_dataset
from ap_core.errors import ConfigError, DatasetUnavailableError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def write_fake_cifar(
    root: Path,
    n_train: int,
    n_test: int,
    monkeypatch: pytest.MonkeyPatch,
    cls: type[CIFAR10] = CIFAR10,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Write random images in `cls`'s pickle layout under `root` and make torchvision accept them.

    torchvision verifies each file against the md5 of the real download, so the fake files' own md5s (from
    torchvision's `calculate_md5`) replace the class's checksum table for this test only; everything else,
    reading included, is torchvision's real code. Returns uint8 NCHW images and int64 labels (train, test).
    """
    rng = np.random.default_rng(seed)
    num_classes = 100 if issubclass(cls, CIFAR100) else 10
    label_key = "fine_labels" if issubclass(cls, CIFAR100) else "labels"
    folder = root / cls.base_folder
    folder.mkdir(parents=True, exist_ok=True)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, num_classes, n)

    def dump(filename: str, entry: dict) -> list[str]:
        with open(folder / filename, "wb") as f:
            pickle.dump(entry, f)
        return [filename, calculate_md5(folder / filename)]

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    chunks = np.array_split(np.arange(n_train), len(cls.train_list))
    train_list = [
        dump(name, {"data": x_train[idx].reshape(len(idx), -1), label_key: y_train[idx].tolist()})
        for (name, _), idx in zip(cls.train_list, chunks, strict=True)
    ]
    (test_name, _), *_ = cls.test_list
    test_list = [dump(test_name, {"data": x_test.reshape(n_test, -1), label_key: y_test.tolist()})]
    _, meta_md5 = dump(cls.meta["filename"], {cls.meta["key"]: [f"c{i}" for i in range(num_classes)]})
    monkeypatch.setattr(cls, "train_list", train_list)
    monkeypatch.setattr(cls, "test_list", test_list)
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": meta_md5})
    return x_train, y_train, x_test, y_test


def write_fake_mnist(
    root: Path, n_train: int, n_test: int, folder: str = "MNIST", seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Write random 28x28 images as big-endian IDX files in `root/<folder>/raw` (torchvision's MNIST layout).

    torchvision's MNIST classes only check that the four raw files exist, so no patching is needed.
    `folder` is the class name: "MNIST" or "FashionMNIST". Returns uint8 NHW images and labels.
    """
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    arrays = []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        header = np.array([0x0803, n, 28, 28], dtype=">i4").tobytes()
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(np.array([0x0801, n], ">i4").tobytes() + labels.tobytes())
        arrays += [images, labels.astype(np.int64)]
    return arrays[0], arrays[1], arrays[2], arrays[3]


def _cifar_like(n: int = 37, crop_padding: int = 4, flip: bool = True) -> ArrayDataset:
    """A small in-memory dataset whose labels are the sample ids, to track coverage."""
    x = torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(n)
    return ArrayDataset(x, y, x[:5].clone(), y[:5].clone(), n, (3, 8, 8), "fake", crop_padding, flip)


# ---------------------------------------------------------------- digits / synthetic


def test_digits_shapes_fixed_split_and_normalisation() -> None:
    data = load_dataset("digits")
    assert data.name == "digits" and data.num_classes == 10 and data.input_shape == (1, 8, 8)
    assert data.x_train.shape == (1437, 1, 8, 8) and data.x_test.shape == (360, 1, 8, 8)
    assert data.x_train.dtype == torch.uint8 and data.y_train.dtype == torch.int64  # raw 0..16, a quarter of float32
    assert int(data.x_train.max()) == 16 and data.pixel_max == 16.0
    assert data.x_train.is_contiguous() and data.x_test.is_contiguous()
    assert set(data.y_train.tolist()) == set(range(10)) == set(data.y_test.tolist())
    assert (data.crop_padding, data.flip) == (0, False)
    standardised = data.standardised(data.x_train)
    assert standardised.dtype == torch.float32
    assert abs(standardised.mean().item()) < 1e-4
    assert abs(standardised.std().item() - 1) < 1e-3
    again = load_dataset("digits")
    for a, b in ((data.x_train, again.x_train), (data.y_train, again.y_train), (data.y_test, again.y_test)):
        assert torch.equal(a, b)


def test_max_train_samples_keeps_the_first_samples_in_their_own_storage() -> None:
    full = load_dataset("digits")
    small = load_dataset("digits", max_train_samples=100)
    assert torch.equal(small.x_train, full.x_train[:100]) and torch.equal(small.y_train, full.y_train[:100])
    assert torch.equal(small.x_test, full.x_test)
    assert small.x_train.untyped_storage().nbytes() == small.x_train.nbytes  # pickles only its own samples
    assert load_dataset("digits", max_train_samples=10**6).num_train == full.num_train
    with pytest.raises(ConfigError, match="max_train_samples"):
        load_dataset("digits", max_train_samples=-1)


def test_synthetic_is_deterministic_shaped_and_learnable() -> None:
    options = {"num_samples": 300, "num_test": 100, "input_shape": [2, 6, 5], "num_classes": 4}
    data = load_dataset("synthetic", seed=3, **options)
    same = load_dataset("synthetic", seed=3, **options)
    other = load_dataset("synthetic", seed=4, **options)
    assert data.x_train.shape == (300, 2, 6, 5) and data.x_test.shape == (100, 2, 6, 5)
    assert data.input_shape == (2, 6, 5) and data.num_classes == 4
    assert data.y_train.dtype == torch.int64 and set(data.y_train.tolist()) == {0, 1, 2, 3}
    assert torch.equal(data.x_train, same.x_train) and torch.equal(data.y_test, same.y_test)
    assert not torch.equal(data.x_train, other.x_train)
    # Class-conditional means: a nearest-class-mean classifier fitted on train beats chance (25%) easily.
    means = torch.stack([data.x_train[data.y_train == k].mean(0) for k in range(4)]).flatten(1)
    predicted = torch.cdist(data.x_test.flatten(1), means).argmin(1)
    assert (predicted == data.y_test).float().mean() > 0.9
    default = load_dataset("synthetic")
    assert default.x_train.shape == (2048, 3, 32, 32) and default.num_test == 512


def test_unknown_dataset_and_option_are_config_errors_naming_them() -> None:
    with pytest.raises(ConfigError, match="'imagenet21k'") as err:
        load_dataset("imagenet21k")
    assert "digits" in str(err.value) and "synthetic" in str(err.value)
    with pytest.raises(ConfigError, match=r"'num_sample'.*num_samples"):
        load_dataset("synthetic", num_sample=10)
    with pytest.raises(ConfigError, match="'seed'"):
        load_dataset("digits", seed=1)
    assert {"cifar10", "cifar100", "mnist", "fashion_mnist", "digits", "synthetic"} <= set(DATASETS.names())


def test_array_dataset_pickles_and_moves() -> None:
    data = load_dataset("digits", max_train_samples=50)
    copy = pickle.loads(pickle.dumps(data))
    assert torch.equal(copy.x_train, data.x_train) and copy.name == "digits"
    assert copy.x_train.dtype == torch.uint8 and (copy.mean, copy.std) == (data.mean, data.std)
    moved = data.to("cpu")
    assert moved is not data and moved.device == torch.device("cpu")


def test_array_dataset_pickles_as_out_of_band_arrays_and_wraps_read_only_buffers_without_copying() -> None:
    """What Ray's object store does: protocol 5 with out-of-band buffers, handed back read-only."""
    data = load_dataset("digits")
    buffers: list[pickle.PickleBuffer] = []
    payload = pickle.dumps(data, protocol=5, buffer_callback=buffers.append)
    assert sum(b.raw().nbytes for b in buffers) >= data.x_train.nbytes + data.x_test.nbytes
    assert len(payload) < 4096  # the images are not in the pickle stream itself
    read_only = [memoryview(b.raw().tobytes()).toreadonly() for b in buffers]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "not writable" warning is handled, not leaked
        copy = pickle.loads(payload, buffers=read_only)
    assert torch.equal(copy.x_train, data.x_train) and torch.equal(copy.y_test, data.y_test)
    image_buffer = next(b for b in read_only if b.nbytes == data.x_train.nbytes)
    assert copy.x_train.data_ptr() == np.frombuffer(image_buffer, dtype=np.uint8).ctypes.data  # not copied


# ---------------------------------------------------------------- torchvision datasets on tiny files


def test_fake_cifar10_loads_through_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x_train, y_train, x_test, y_test = write_fake_cifar(tmp_path, 23, 7, monkeypatch)
    data = load_dataset("cifar10", data_dir=tmp_path)
    assert data.x_train.shape == (23, 3, 32, 32) and data.x_test.shape == (7, 3, 32, 32)
    assert data.num_classes == 10 and data.input_shape == (3, 32, 32)
    assert (data.crop_padding, data.flip) == (4, True)
    assert data.x_train.is_contiguous() and data.y_train.dtype == torch.int64
    assert data.y_train.tolist() == y_train.tolist() and data.y_test.tolist() == y_test.tolist()
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    for got, raw in ((data.x_train, x_train), (data.x_test, x_test)):
        assert torch.equal(got, torch.from_numpy(raw))  # stored raw, as uint8 NCHW
        expected = (torch.from_numpy(raw).float() / 255 - mean) / std
        torch.testing.assert_close(data.standardised(got), expected)


def test_fake_cifar100_uses_fine_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, y_train, _, _ = write_fake_cifar(tmp_path, 11, 3, monkeypatch, cls=CIFAR100)
    data = load_dataset("cifar100", data_dir=tmp_path, max_train_samples=5)
    assert data.num_classes == 100 and data.x_train.shape == (5, 3, 32, 32)
    assert data.y_train.tolist() == y_train[:5].tolist()


@pytest.mark.parametrize(
    ("name", "folder", "mean", "std"),
    [("mnist", "MNIST", 0.1307, 0.3081), ("fashion_mnist", "FashionMNIST", 0.2860, 0.3530)],
)
def test_fake_mnist_loads_through_torchvision(tmp_path: Path, name: str, folder: str, mean: float, std: float) -> None:
    x_train, y_train, x_test, y_test = write_fake_mnist(tmp_path, 19, 6, folder=folder)
    data = load_dataset(name, data_dir=str(tmp_path))
    assert data.x_train.shape == (19, 1, 28, 28) and data.x_test.shape == (6, 1, 28, 28)
    assert data.num_classes == 10 and data.input_shape == (1, 28, 28) and data.name == name
    assert (data.crop_padding, data.flip) == (0, False)
    assert data.y_train.dtype == torch.int64
    assert data.y_train.tolist() == y_train.tolist() and data.y_test.tolist() == y_test.tolist()
    for got, raw in ((data.x_train, x_train), (data.x_test, x_test)):
        assert got.dtype == torch.uint8 and torch.equal(got, torch.from_numpy(raw).unsqueeze(1))
        expected = (torch.from_numpy(raw).float().unsqueeze(1) / 255 - mean) / std
        torch.testing.assert_close(data.standardised(got), expected)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist", "fashion_mnist"])
def test_missing_files_raise_one_line_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetUnavailableError) as err:
        load_dataset(name, data_dir=tmp_path / "nowhere")
    message = str(err.value)
    assert "\n" not in message
    assert name in message and str(tmp_path / "nowhere") in message and "--download" in message
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_corrupt_cifar_file_raises_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fake_cifar(tmp_path, 5, 2, monkeypatch)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"truncated")
    with pytest.raises(DatasetUnavailableError, match="cifar10 not found"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_failed_download_raises_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(self: CIFAR10) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure\nin name resolution")

    monkeypatch.setattr(CIFAR10, "download", offline)
    with pytest.raises(DatasetUnavailableError, match="could not be downloaded") as err:
        load_dataset("cifar10", data_dir=tmp_path, download=True)
    assert "\n" not in str(err.value) and "name resolution" in str(err.value)


# ---------------------------------------------------------------- augmentation


def test_flip_only_flips_some_samples_whole() -> None:
    x = torch.randn(64, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    out = augment_batch(x, crop_padding=0, flip=True, generator=torch.Generator().manual_seed(1))
    flipped = [torch.equal(o, s.flip(-1)) for o, s in zip(out, x, strict=True)]
    unchanged = [torch.equal(o, s) for o, s in zip(out, x, strict=True)]
    assert all(f != u for f, u in zip(flipped, unchanged, strict=True))  # exactly one of the two, per sample
    assert 10 < sum(flipped) < 54


def test_crop_matches_a_shifted_window_of_the_zero_padded_input() -> None:
    p = 2
    x = torch.randn(48, 2, 6, 5, generator=torch.Generator().manual_seed(0))
    out = augment_batch(x, crop_padding=p, flip=False, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    offsets = set()
    for i in range(len(x)):  # slow reference: find the window each sample was cut from
        matches = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + 6, dx : dx + 5])
        ]
        assert len(matches) == 1, f"sample {i} matches {matches}"
        offsets.add(matches[0])
    assert len(offsets) > 10  # offsets vary per sample


def test_crop_pads_with_the_given_per_channel_value() -> None:
    x = torch.zeros(64, 2, 4, 4)
    out = augment_batch(
        x, crop_padding=2, flip=False, generator=torch.Generator().manual_seed(0), pad_value=(-1.0, 3.0)
    )
    # Pixels from the image are 0, padding shows up as each channel's fill value and nothing else.
    assert set(out[:, 0].unique().tolist()) == {0.0, -1.0}
    assert set(out[:, 1].unique().tolist()) == {0.0, 3.0}


def test_cifar_pads_with_black_in_normalised_units(tmp_path, monkeypatch) -> None:
    write_fake_cifar(tmp_path, 10, 4, monkeypatch)
    data = load_dataset("cifar10", data_dir=tmp_path)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    assert data.pad_value == pytest.approx([(0 - m) / s for m, s in zip(mean, std, strict=True)])


def test_augmentation_is_seeded() -> None:
    x = torch.randn(32, 3, 8, 8)

    def run(seed: int) -> torch.Tensor:
        return augment_batch(x, crop_padding=4, flip=True, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))
    assert augment_batch(x, 0, False, torch.Generator()) is x


# ---------------------------------------------------------------- batch iteration


def test_train_batches_cover_every_sample_once_and_are_reproducible() -> None:
    data = _cifar_like(n=37)

    def epoch(seed: int, **kwargs: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(train_batches(data, 8, torch.Generator().manual_seed(seed), **kwargs))

    batches = epoch(0)
    assert [len(y) for _, y in batches] == [8, 8, 8, 8, 5]
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == list(range(37))
    assert torch.cat([y for _, y in batches]).tolist() != list(range(37))  # shuffled
    again = epoch(0)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again, strict=True))
    assert not torch.equal(torch.cat([y for _, y in epoch(1)]), torch.cat([y for _, y in batches]))
    assert [len(y) for _, y in epoch(0, drop_last=True)] == [8, 8, 8, 8]
    plain = epoch(0, augment=False)
    for x, y in plain:
        assert torch.equal(x, data.x_train[y])
    assert any(not torch.equal(x, data.x_train[y]) for x, y in batches)  # augmented


@pytest.mark.parametrize("cls", [CIFAR10, CIFAR100])
def test_standardising_raw_pixels_matches_the_whole_set_float_arithmetic_bit_for_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cls: type[CIFAR10]
) -> None:
    """Every uint8 value in every channel: per-batch standardising computes exactly what the loaders used to store
    ((x / 255 - mean) / std in float32, in that order)."""
    write_fake_cifar(tmp_path, 5, 2, monkeypatch, cls=cls)
    data = load_dataset("cifar10" if cls is CIFAR10 else "cifar100", data_dir=tmp_path)
    every_value = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    shape = (1, 3, 1, 1)
    expected = every_value.float().div_(255.0).sub_(torch.tensor(data.mean).view(shape))
    expected.div_(torch.tensor(data.std).view(shape))
    assert torch.equal(data.standardised(every_value), expected)


def test_train_batches_match_augmenting_the_whole_standardised_set_bit_for_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Standardising per batch, then cropping with the standardised black, gives the batches the float32 dataset
    gave before (same draws, same padding, same values)."""
    write_fake_cifar(tmp_path, 40, 2, monkeypatch)
    data = load_dataset("cifar10", data_dir=tmp_path)
    whole = data.standardised(data.x_train)
    got = list(train_batches(data, 16, torch.Generator().manual_seed(3)))
    generator = torch.Generator().manual_seed(3)
    order = torch.randperm(data.num_train, generator=generator)
    for start, (x, y) in zip(range(0, data.num_train, 16), got, strict=True):
        index = order[start : start + 16]
        expected = augment_batch(whole[index], 4, True, generator, data.pad_value)
        assert torch.equal(x, expected) and torch.equal(y, data.y_train[index])


def test_train_batches_skip_augmentation_the_dataset_does_not_call_for() -> None:
    data = _cifar_like(n=20, crop_padding=0, flip=False)
    for x, y in train_batches(data, 6, torch.Generator().manual_seed(0)):
        assert torch.equal(x, data.x_train[y])


def test_eval_batches_cover_all_samples_in_order() -> None:
    x, y = torch.randn(23, 1, 2, 2), torch.arange(23)
    batches = list(eval_batches(x, y, 10))
    assert [len(b) for _, b in batches] == [10, 10, 3]
    assert torch.equal(torch.cat([b for _, b in batches]), y)
    assert torch.equal(torch.cat([a for a, _ in batches]), x)
    with pytest.raises(ConfigError, match="batch_size"):
        list(eval_batches(x, y, 0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batches_on_cuda_with_cuda_or_cpu_generator() -> None:
    data = _cifar_like(n=37).to("cuda")
    for generator in (torch.Generator(device="cuda").manual_seed(0), torch.Generator().manual_seed(0)):
        batches = list(train_batches(data, 8, generator))
        assert all(x.is_cuda and y.is_cuda and x.shape[1:] == (3, 8, 8) for x, y in batches)
        assert sorted(torch.cat([y for _, y in batches]).tolist()) == list(range(37))
    cpu = list(train_batches(data.to("cpu"), 8, torch.Generator().manual_seed(0)))
    gpu = list(train_batches(data, 8, torch.Generator().manual_seed(0)))
    for (xc, yc), (xg, yg) in zip(cpu, gpu, strict=True):  # a CPU generator gives the same stream anywhere
        assert torch.equal(yc, yg.cpu()) and torch.equal(xc, xg.cpu())
