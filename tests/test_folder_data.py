"""Folder and sharded image datasets: labels, crops, standardisation, order, resume, workers, a whole trial and bad
input, on small trees of JPEGs (and their shards) written here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision.transforms.v2.functional as F
from conftest import comparable, run_killed_after_cycle
from torchvision.io import decode_jpeg, encode_jpeg, read_file, write_file

from ap_core import ConfigError, DatasetUnavailableError, TrialConfig, load_dataset, run_trial
from ap_core.folder_data import FolderTrialData, open_trial_data
from ap_core.image_files import IMAGENET_MEAN, IMAGENET_STD, ImageFiles
from ap_core.image_pipeline import DecodedImages
from ap_core.shards import main as shards_main

# torchvision 0.29 deprecates its image codecs in favour of TorchCodec (not installed here); they work as before.
CLASSES = ("ant", "bee", "cow")  # sorted: labels 0, 1, 2
CPU = torch.device("cpu")


def write_tree(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """Class folders of 40x48 JPEGs, each class a different mean colour plus noise."""
    generator = torch.Generator().manual_seed(seed)
    for split, count in per_class.items():
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                base = torch.full((3, 40, 48), 60.0 * label + 40)
                image = (base + 50 * torch.rand((3, 40, 48), generator=generator)).to(torch.uint8)
                write_file(str(root / split / name / f"{name}{i:02d}.jpg"), encode_jpeg(image))
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("tree"), {"train": 12, "val": 4})


@pytest.fixture(scope="module")
def shards(tree, tmp_path_factory) -> Path:
    destination = tmp_path_factory.mktemp("shards")
    assert shards_main([str(tree), str(destination), "--images-per-shard", "10"]) == 0
    return destination


def data(root: Path, **settings) -> FolderTrialData:
    values = {"dataset": "folder", "data_dir": str(root), "image_size": 24, "batch_size": 8, "loader_workers": 0}
    made = open_trial_data(TrialConfig.from_dict({**values, **settings}), None, CPU)
    assert isinstance(made, FolderTrialData)
    return made


def epoch(trial_data: FolderTrialData, seed: int, first_step: int = 0, channels_last: bool = False) -> list:
    return list(trial_data.epoch(torch.Generator().manual_seed(seed), first_step, channels_last))


def centre_reference(path: str, size: int) -> torch.Tensor:
    """Resize (shorter side to size * 8/7) and centre crop with torchvision's own ops, then ImageNet standardisation."""
    image = F.center_crop(F.resize(decode_jpeg(read_file(path)), [int(size * 8 / 7)], antialias=True), [size, size])
    return F.normalize(F.to_dtype(image, torch.float32, scale=True), list(IMAGENET_MEAN), list(IMAGENET_STD))


def test_folder_and_shards_load_with_labels_by_sorted_class_folder(tree, shards):
    folder, sharded = load_dataset("folder", tree), load_dataset("folder", shards)
    assert isinstance(folder, ImageFiles) and folder.num_classes == sharded.num_classes == 3
    assert (folder.num_train, len(folder.test)) == (36, 12) and (sharded.num_train, len(sharded.test)) == (36, 12)
    assert len(sharded.train.files) == 4  # 36 images, 10 per shard
    train = folder.train
    for i in range(len(train)):
        assert CLASSES[train.labels[i]] == Path(train.files[train.file_index[i]]).parent.name
    assert sorted(train.labels.tolist()) == [0] * 12 + [1] * 12 + [2] * 12
    assert train.labels[:12].tolist() != sorted(train.labels[:12].tolist())  # the stored order mixes the classes
    # The shards hold the same images and labels in the same order, read from inside the tars.
    assert sharded.train.labels.tolist() == train.labels.tolist()
    folder_images, shard_images = DecodedImages(train, 24), DecodedImages(sharded.train, 24)
    assert all(torch.equal(folder_images.encoded(i), shard_images.encoded(i)) for i in range(36))
    from_folder, from_shards = data(tree), data(shards)
    assert all(
        torch.equal(a[0], b[0]) for a, b in zip(from_folder.test_batches(), from_shards.test_batches(), strict=True)
    )
    assert all(torch.equal(a[0], b[0]) for a, b in zip(epoch(from_folder, 3), epoch(from_shards, 3), strict=True))


def test_train_crops_have_the_size_and_vary_with_the_generator(tree):
    batches = epoch(data(tree), seed=1)
    assert [x.shape for x, _ in batches] == [(8, 3, 24, 24)] * 4 + [(4, 3, 24, 24)]
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == [0] * 12 + [1] * 12 + [2] * 12
    other = epoch(data(tree), seed=2)
    assert not torch.equal(batches[0][0], other[0][0])
    unaugmented = epoch(data(tree, augment=False), seed=1)  # same order, each image its centre view
    centre = data(tree, augment=False).dataset.train
    first = int(torch.randperm(36, generator=torch.Generator().manual_seed(1))[0])
    expected = centre_reference(centre.files[centre.file_index[first]], 24)
    torch.testing.assert_close(unaugmented[0][0][0], expected, atol=1e-6, rtol=0)


def test_evaluation_is_resize_and_centre_crop_then_imagenet_standardisation(tree):
    trial_data = data(tree)
    (x, y), *_ = trial_data.test_batches()
    test = trial_data.dataset.test
    for i in range(8):
        torch.testing.assert_close(x[i], centre_reference(test.files[test.file_index[i]], 24), atol=1e-6, rtol=0)
        assert int(y[i]) == test.labels[i]
    # the stored pixels come back exactly: (x * std + mean) * 255 are the uint8 crop's integers
    pixels = (x * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]) * 255
    torch.testing.assert_close(pixels, pixels.round(), atol=1e-3, rtol=0)


def test_channels_last_on_request_with_the_same_values(tree):
    trial_data = data(tree)
    (plain, _), *_ = epoch(trial_data, seed=4)
    (last, _), *_ = epoch(trial_data, seed=4, channels_last=True)
    assert last.is_contiguous(memory_format=torch.channels_last) and plain.is_contiguous()
    assert torch.equal(plain, last)


def test_order_follows_the_generator_resumes_mid_epoch_and_ignores_the_worker_count(tree, monkeypatch):
    in_process = epoch(data(tree), seed=7)
    again = epoch(data(tree), seed=7)
    with_workers = epoch(data(tree, loader_workers=2), seed=7)
    for a, b, c in zip(in_process, again, with_workers, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])
    decoded = []
    original = DecodedImages.__getitem__
    monkeypatch.setattr(DecodedImages, "__getitem__", lambda self, item: decoded.append(item) or original(self, item))
    resumed = epoch(data(tree), seed=7, first_step=3)
    assert len(resumed) == 2 and all(torch.equal(a[0], b[0]) for a, b in zip(resumed, in_process[3:], strict=True))
    assert len(decoded) == 12  # the 3 skipped batches were never read


def test_validation_hold_out_and_the_dead_unit_window(tree):
    first, second = data(tree, val_fraction=0.25, seed=0), data(tree, val_fraction=0.25, seed=5)
    assert len(first.validation_samples) == 9 and len(first.train_samples) == 27
    assert first.validation_samples.labels.tolist() == second.validation_samples.labels.tolist()
    held, kept = set(first.validation_samples.file_index.tolist()), set(first.train_samples.file_index.tolist())
    assert held.isdisjoint(kept) and held | kept == set(range(36))
    assert sum(len(y) for _, y in first.validation_batches()) == 9
    window = torch.cat(list(data(tree, dead_unit_window=5).window()))
    train = data(tree).dataset.train
    expected = torch.stack([centre_reference(train.files[train.file_index[i]], 24) for i in range(5)])
    torch.testing.assert_close(window, expected, atol=1e-6, rtol=0)


def test_a_gp_trial_with_ap_runs_on_a_folder_dataset_and_resumes_identically(tree, tmp_path):
    values = {
        "model": "resnet20",
        "dataset": "folder",
        "data_dir": str(tree),
        "image_size": 32,
        "num_classes": 3,
        "method": "global_magnitude",
        "ap": True,
        "ap_rate": 0.05,
        "epochs": 2,
        "cycles": 1,
        "batch_size": 12,
        "cpu_threads": 1,
        "loader_workers": 1,
    }
    config = TrialConfig.from_dict(values)
    uninterrupted = run_trial(config)
    assert [r.cycle for r in uninterrupted] == [0, 1] and uninterrupted[1].weights_remaining < 100
    assert all(0 < r.dnr < 1 and r.total_units > 0 for r in uninterrupted)
    in_process = config.replace(loader_workers=0)  # a runtime setting: the numbers must not move
    run_killed_after_cycle(in_process, 0, tmp_path, None)
    resumed = run_trial(in_process, checkpoint_dir=tmp_path, resume_from=tmp_path)
    assert comparable(resumed) == comparable(uninterrupted)


def test_imagenet_cannot_be_downloaded_and_says_where_to_get_it(tmp_path):
    with pytest.raises(DatasetUnavailableError) as caught:
        load_dataset("imagenet", tmp_path / "imagenet", download=True)
    message = str(caught.value)
    assert "cannot download ImageNet" in message and "image-net.org" in message and str(tmp_path) in message


def bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, dict, str]]:
    flat = tmp_path / "flat"
    for split in ("train", "val"):
        (flat / split).mkdir(parents=True)
        write_file(str(flat / split / "a.jpg"), encode_jpeg(torch.zeros((3, 8, 8), dtype=torch.uint8)))
    three = write_tree(tmp_path / "three", {"train": 2, "val": 1})
    return {
        "no class folders": (flat, {}, f"{str(flat / 'train')!r} has no class folders"),
        "missing folder": (tmp_path / "nowhere", {}, f"{str(tmp_path / 'nowhere')!r} is not a folder"),
        "num_classes mismatch": (three, {"num_classes": 5}, "num_classes 5 does not match the 3 class folders"),
    }


@pytest.mark.parametrize("case", ["no class folders", "missing folder", "num_classes mismatch"])
def test_bad_folders_are_one_line_naming_the_folder(case, tmp_path):
    root, settings, named = bad_inputs(tmp_path)[case]
    config = TrialConfig.from_dict({"dataset": "folder", "data_dir": str(root), "model": "resnet20", **settings})
    with pytest.raises(ConfigError) as caught:
        run_trial(config, checkpoint_dir=tmp_path / "checkpoints")
    assert named in str(caught.value) and str(root) in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "checkpoints").exists()


def test_the_cli_exits_2_on_a_folder_without_class_folders_and_writes_nothing(tmp_path):
    root, _, named = bad_inputs(tmp_path)["no class folders"]
    out = tmp_path / "out"
    flags = ["--dataset", "folder", "--data-dir", str(root), "--model", "resnet20"]
    flags += ["--checkpoint-dir", str(out / "checkpoints"), "--json", str(out / "results.json")]
    done = subprocess.run([sys.executable, "-m", "ap_core", *flags], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and named in done.stderr and done.stderr.strip().count("\n") == 0
    assert not out.exists()
