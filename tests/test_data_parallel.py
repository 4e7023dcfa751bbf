"""Data-parallel trials in the core: replicas in real processes joined by a gloo group on 127.0.0.1 train as one
process on the whole batch would, stay identical (masks, removed channels, weights), and a checkpoint written by the
first of two replicas resumes on two or on one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port

from ap_core import TrialConfig
from ap_core.checkpoint import CHECKPOINT_FILE
from ap_core.errors import ConfigError
from ap_core.replicas import Replicas
from ap_core.trial import TrialRunner
from ap_core.trial_data import last_batch_dropped

# digits' 1,437 training images in batches of 64: a last batch of 29, shared 15 + 14
LENET = dict(
    model="lenet5", dataset="digits", method="global_magnitude", ap=True, epochs=1, batch_size=64, device="cpu"
)
DEMP = dict(
    model="vgg_small",
    dataset="digits",
    method="demp",
    method_options={"lam": 0.5, "prune_every": 4},
    cycles=1,
    epochs=1,
    batch_size=64,
    device="cpu",
)


def _replica(rank: int, world: int, port: int, values: dict[str, Any], out: Path, keep_after: int) -> None:
    """One replica: train the trial (resuming from `out/start` if there), save its final state as `rank<r>.pt`; the
    first also writes the results and keeps a copy of its checkpoint after cycle `keep_after`."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        _train(values, out, f"rank{rank}", rank == 0, keep_after)
    finally:
        dist.destroy_process_group()


def _train(values: dict[str, Any], out: Path, name: str, first: bool, keep_after: int) -> None:
    trial = TrialRunner(TrialConfig.from_dict(values))
    if (out / "start" / CHECKPOINT_FILE).exists():
        trial.restore(out / "start" / CHECKPOINT_FILE)
    workdir = out / f"{name}-work"
    samples = [0]  # training images this process ran forward

    def count(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        samples[0] += len(inputs[0]) if module.training else 0

    trial.net.model.register_forward_pre_hook(count)

    def keep(result: Any) -> None:
        if result.cycle == keep_after:
            (out / "kept").mkdir()
            shutil.copy(workdir / CHECKPOINT_FILE, out / "kept" / CHECKPOINT_FILE)

    results = trial.run(keep if first else None, workdir if first else None)
    state = {"model": trial.net.model.state_dict(), "mask": trial.net.mask.state_dict(), "samples": samples[0]}
    torch.save(state, out / f"{name}.pt")
    if first:
        timeless = [{k: v for k, v in r.to_dict().items() if k != "seconds"} for r in results]
        (out / f"{name}.json").write_text(json.dumps(timeless))


def train(values: dict[str, Any], out: Path, workers: int, keep_after: int = -1) -> tuple[list[dict], list[dict]]:
    """(results, final states per replica) of the trial trained by `workers` processes (1: this one, no group)."""
    out.mkdir(parents=True, exist_ok=True)
    if workers == 1:
        torch.set_num_threads(1)
        _train(values, out, "rank0", True, keep_after)
    else:
        mp.spawn(_replica, args=(workers, free_port(), values, out, keep_after), nprocs=workers)
    states = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(workers)]
    return json.loads((out / "rank0.json").read_text()), states


def close(a: list[dict], b: list[dict], keys: tuple[str, ...], rel: float) -> None:
    for x, y in zip(a, b, strict=True):
        for key in keys:
            assert x[key] == pytest.approx(y[key], rel=rel, abs=1e-9), (x["cycle"], key)


def assert_identical(states: list[dict]) -> None:
    for state in states[1:]:
        for part in ("model", "mask"):
            assert state[part].keys() == states[0][part].keys()
            assert all(torch.equal(state[part][k], states[0][part][k]) for k in state[part])


def test_two_replicas_train_as_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    values = {**LENET, "cycles": 1}
    alone, (one,) = train(values, tmp_path / "one", workers=1)
    shared, states = train(values, tmp_path / "two", workers=2)
    assert_identical(states)  # every replica holds the same network and mask, bit for bit
    first, second = (state["samples"] for state in states)  # each trained on its share of every batch
    assert first + second == one["samples"] and first - second == 2  # 2 epochs of 22 x (32 + 32) and 15 + 14
    close(shared, alone, ("train_loss", "test_loss", "dnr"), rel=1e-4)  # DNR: counted over both replicas' shares
    assert [r["test_acc"] for r in shared] == pytest.approx([r["test_acc"] for r in alone], abs=0.3)  # one image
    assert all(torch.equal(states[0]["mask"][k], one["mask"][k]) for k in one["mask"])  # the same weights pruned
    for name, weight in one["model"].items():
        assert torch.allclose(states[0]["model"][name], weight, rtol=1e-3, atol=1e-3), name


def test_a_channel_removal_is_decided_once_and_applied_by_every_replica(tmp_path: Path) -> None:
    results, states = train(DEMP, tmp_path, workers=2)
    assert_identical(states)
    assert results[-1]["channels_remaining"] < 100  # DemP removed channels while the replicas trained


def test_a_checkpoint_of_two_replicas_resumes_on_two_or_on_one(tmp_path: Path) -> None:
    values = {**LENET, "cycles": 2}
    uninterrupted, _ = train(values, tmp_path / "whole", workers=2, keep_after=1)
    for workers in (2, 1):
        out = tmp_path / f"resumed-on-{workers}"
        shutil.copytree(tmp_path / "whole" / "kept", out / "start")
        resumed, _ = train(values, out, workers=workers)
        assert [r["cycle"] for r in resumed] == [0, 1, 2]  # the checkpoint's cycles, then the one trained here
        if workers == 2:
            assert resumed == uninterrupted  # same replicas: bit for bit
        else:
            close(resumed, uninterrupted, ("train_loss", "dnr", "weights_remaining"), rel=1e-4)


def test_shares_split_every_batch_and_refuse_batches_too_small_to_share() -> None:
    items = list(range(7))
    shares = [list(Replicas(rank, 3).share(items)) for rank in range(3)]
    assert shares == [[0, 1, 2], [3, 4], [5, 6]]
    x, y = Replicas(1, 2).shard((torch.arange(10).view(5, 2), torch.arange(5)))
    assert y.tolist() == [3, 4] and x.tolist() == [[6, 7], [8, 9]]
    assert last_batch_dropped(101, 50, Replicas(0, 2)) and not last_batch_dropped(104, 50, Replicas(0, 2))
    with pytest.raises(ConfigError, match="batch_size 3 cannot be shared by 2 workers"):
        last_batch_dropped(100, 3, Replicas(0, 2))
