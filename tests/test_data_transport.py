"""A dataset shipped through a real local Ray object store reaches the trial without a copy, and trains the same.

The sweep driver `ray.put`s one `ArrayDataset` per node and every trial `ray.get`s it. These tests check the
trial's side: its images are a read-only view of the shared object-store buffer (not private memory), reading
and batching them grows its private memory by far less than the data, and a trial trained on that view gives
exactly the results of one trained in-process (CPU, one thread).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
import ray
import torch

from ap_core import ArrayDataset, TrialConfig, load_dataset, run_trial
from ap_core.batches import train_batches
from ap_core.checks import checked_config

pytestmark = pytest.mark.integration

MIB = 2**20
SHIPPED_IMAGES = (8000, 3, 32, 32)  # 23 MiB of uint8: large enough to tell a copy from a view


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    # Workers cannot import this test module by name: ship its task functions by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=1, include_dashboard=False)
    yield
    ray.shutdown()
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _anonymous_bytes() -> int:
    """This process's anonymous (heap) memory: a private copy of the data would land here, a view of the
    object store's shared memory would not."""
    with open("/proc/self/smaps_rollup") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return int(fields["Anonymous"].split()[0]) * 1024


def _mapping_of(address: int) -> str:
    """The /proc/self/maps line of the memory region holding `address`."""
    with open("/proc/self/maps") as f:
        for line in f:
            low, high = (int(bound, 16) for bound in line.split()[0].split("-"))
            if low <= address < high:
                return line.strip()
    raise AssertionError(f"address {address:#x} is in no mapping")


@ray.remote
def _inspect_shipped(refs: list[ray.ObjectRef]) -> dict[str, Any]:
    """In a Ray worker: get the dataset as the trainable does and read every image, then draw an epoch."""
    before = _anonymous_bytes()
    data: ArrayDataset = ray.get(refs[0])
    checksum = int(data.x_train.sum(dtype=torch.int64))  # touches every byte of the images
    after_get = _anonymous_bytes()
    for _ in train_batches(data, 256, torch.Generator().manual_seed(0)):
        pass
    return {
        "checksum": checksum,
        "dtype": str(data.x_train.dtype),
        "mapping": _mapping_of(data.x_train.data_ptr()),
        "same_buffer_again": ray.get(refs[0]).x_train.data_ptr() == data.x_train.data_ptr(),
        "get_growth": after_get - before,
        "epoch_growth": _anonymous_bytes() - after_get,
    }


@ray.remote
def _get_growth_of_a_torch_tensor(refs: list[ray.ObjectRef]) -> int:
    """The control: a plain torch tensor (torch's own pickling) is copied into the worker's private memory."""
    before = _anonymous_bytes()
    images = ray.get(refs[0])
    int(images.sum(dtype=torch.int64))
    return _anonymous_bytes() - before


def test_a_trial_reads_the_shipped_dataset_in_shared_memory_without_a_private_copy(local_ray: None) -> None:
    images = torch.randint(0, 256, SHIPPED_IMAGES, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 10, SHIPPED_IMAGES[:1])
    data = ArrayDataset(
        images,
        labels,
        images[:100].clone(),
        labels[:100].clone(),
        10,
        SHIPPED_IMAGES[1:],
        "shipped",
        crop_padding=4,
        flip=True,
        pad_value=(-2.0, -2.0, -1.7),
        pixel_max=255.0,
        mean=(0.49, 0.48, 0.45),
        std=(0.25, 0.24, 0.26),
    )
    report = ray.get(_inspect_shipped.remote([ray.put(data)]))
    copied = ray.get(_get_growth_of_a_torch_tensor.remote([ray.put(images)]))

    assert report["checksum"] == int(images.sum(dtype=torch.int64)) and report["dtype"] == "torch.uint8"
    permissions, path = report["mapping"].split()[1], report["mapping"].split()[5]
    assert permissions[3] == "s" and "plasma" in path, report["mapping"]  # Ray's shared plasma file, not the heap
    assert report["same_buffer_again"]  # a second get (another trial on the node) sees the very same bytes
    assert copied > 0.9 * images.nbytes  # the measurement sees a private copy when there is one...
    assert report["get_growth"] < 0.1 * images.nbytes, report["get_growth"] / MIB  # ...and there is none here
    # Standardised float32 batches are drawn a few at a time: the set never exists as float32 (4x the uint8).
    assert report["epoch_growth"] < 4 * images.nbytes, report["epoch_growth"] / MIB


@ray.remote
def _train_shipped(refs: list[ray.ObjectRef], config: dict[str, Any]) -> list[dict[str, Any]]:
    data: ArrayDataset = ray.get(refs[0])
    assert "plasma" in _mapping_of(data.x_train.data_ptr())  # trains on the shared buffer, not on a copy of it
    return [r.to_dict() for r in run_trial(TrialConfig.from_dict(config), dataset=data)]


def test_a_trial_on_the_shipped_dataset_gives_the_results_of_the_in_process_path(local_ray: None) -> None:
    config = checked_config(
        dict(model="mlp", dataset="digits", epochs=2, cycles=1, ap=True, cpu_threads=1, device="cpu")
    )
    digits = load_dataset("digits")
    shipped = ray.get(_train_shipped.remote([ray.put(digits)], config.to_dict()))
    in_process = [r.to_dict() for r in run_trial(config, dataset=digits)]
    for result in (*shipped, *in_process):
        result.pop("seconds")
    assert shipped == in_process
    assert len(shipped) == 2 and shipped[-1]["weights_remaining"] < 100
