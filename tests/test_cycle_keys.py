"""Cycle keys: trials with equal keys compute the same cycles, so one's stored state can start the other bit for bit."""

import shutil
from pathlib import Path

import pytest
from conftest import comparable, run_killed_after_cycle

from ap_core import ConfigError, TrialConfig, load_dataset, run_trial
from ap_core.checkpoint import CHECKPOINT_FILE
from ap_core.checks import checked_config
from ap_core.cycle_keys import cycle_key

BASE = {"model": "mlp", "dataset": "digits", "epochs": 2, "cycles": 2, "cpu_threads": 1, "max_train_samples": 600}
DEMP_OPTIONS = {"lam": 0.05, "prune_every": 2, "noise": 0.0}
CHANNELS = {"model": "vgg_small", "epochs": 1, "max_train_samples": 200, "batch_size": 50, "method": "network_slimming"}


DEMP = {**CHANNELS, "method": "demp", "method_options": DEMP_OPTIONS}


def config(**changes):
    return checked_config({**BASE, **changes})


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_cycle_zero_is_shared_by_what_acts_only_when_pruning():
    gp = config()
    same_dense = [
        config(method="layerwise_magnitude"),
        config(method="random"),
        config(ap=True, ap_rate=0.1),
        config(prune_rate=0.5, cycles=5),
        config(retraining="finetune", finetune_lr=0.01),
    ]
    assert {cycle_key(c, 0) for c in same_dense} == {cycle_key(gp, 0)}
    other_dense = [
        config(seed=1),
        config(epochs=3),
        config(lr=0.2),
        config(retraining="rewind_iteration", rewind_step=5),
    ]
    assert len({cycle_key(c, 0) for c in [gp, *other_dense]}) == 5
    # after the first prune every experiment setting counts, except how many cycles are still to come
    assert cycle_key(config(cycles=5), 1) == cycle_key(gp, 1)
    assert len({cycle_key(c, 1) for c in [gp, *same_dense[:4]]}) == 5


def test_a_channel_methods_ratio_is_not_part_of_its_regularised_cycle_zero():
    ratios = {cycle_key(config(**CHANNELS, method_options={"channel_ratio": r}), 0) for r in (0.3, 0.6)}
    assert len(ratios) == 1
    stronger = config(**CHANNELS, method_options={"sparsity": 1e-3})
    assert cycle_key(stronger, 0) not in ratios
    assert cycle_key(config(**{**CHANNELS, "method": "global_magnitude"}), 0) not in ratios


def _state_after_cycle_zero(trial_config, dataset, folder: Path) -> Path:
    run_killed_after_cycle(trial_config, 0, folder, dataset)
    return folder


@pytest.mark.parametrize(
    ("computed", "started"),
    [
        ({}, {"method": "layerwise_magnitude", "ap": True}),
        ({"ap": True}, {"method": "random", "prune_rate": 0.5}),
        (
            {**CHANNELS, "method_options": {"channel_ratio": 0.3}},
            {**CHANNELS, "method_options": {"channel_ratio": 0.6}, "ap": True},
        ),
        ({"ap": True}, {"ap": True, "ap_score": "magnitude", "ap_candidates": "all", "ap_scope": "layer"}),
        (DEMP, {**DEMP, "ap": True}),  # channels removed during cycle 0 travel with the stored state
    ],
    ids=["gp-to-lp-ap", "gp-ap-to-random", "slimming-ratios", "ablation-variant", "demp-ap"],
)
def test_a_trial_started_from_a_shared_cycle_zero_equals_one_that_trained_it(digits, tmp_path, computed, started):
    trunk = _state_after_cycle_zero(config(**computed), digits, tmp_path / "trunk")
    branch = config(**started)
    alone = run_trial(branch, checkpoint_dir=tmp_path / "alone", dataset=digits)
    shared = run_trial(branch, checkpoint_dir=tmp_path / "shared", resume_from=trunk, dataset=digits, shared_cycle=0)
    assert comparable(shared) == comparable(alone)
    assert (tmp_path / "shared" / CHECKPOINT_FILE).read_bytes() != b""
    import torch

    a = torch.load(tmp_path / "alone" / CHECKPOINT_FILE, weights_only=True)
    b = torch.load(tmp_path / "shared" / CHECKPOINT_FILE, weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["mask"][k], b["mask"][k]) for k in a["mask"])


def test_a_state_of_another_dense_training_is_refused(digits, tmp_path):
    trunk = _state_after_cycle_zero(config(seed=1), digits, tmp_path / "trunk")
    with pytest.raises(ConfigError, match="another experiment"):
        run_trial(config(), resume_from=trunk, dataset=digits, shared_cycle=0)
    shutil.copytree(trunk, tmp_path / "copy")
    with pytest.raises(ConfigError, match="not the state right after cycle 1"):
        run_trial(config(seed=1), resume_from=tmp_path / "copy", dataset=digits, shared_cycle=1)


def test_a_generic_folder_datasets_cycles_are_keyed_by_its_folder():
    a, b = (TrialConfig.from_dict({**BASE, "dataset": "folder", "data_dir": d}) for d in ("/data/a", "/data/b"))
    assert cycle_key(a, 0) != cycle_key(b, 0) and cycle_key(a, 2) != cycle_key(b, 2)
    assert cycle_key(config(data_dir="/data/a"), 0) == cycle_key(config(data_dir="/data/b"), 0)  # a named dataset


def test_settings_a_trial_leaves_idle_do_not_set_its_cycles_apart(digits, tmp_path):
    last = BASE["cycles"]
    idle = [
        (config(), config(rewind_step=7)),  # rewind_init never rewinds to step k
        (config(), config(finetune_lr=0.5)),  # only the finetune scheme reads it
        (config(), config(ap_rate=0.1, ap_score="magnitude")),  # AP is off
        (config(method="network_slimming", model="vgg_small"), config(method="network_slimming", model="vgg_small",
                                                                       method_options={"channel_ratio": 0.5})),
    ]  # fmt: skip
    for a, b in idle:
        assert cycle_key(a, last) == cycle_key(b, last)
    assert cycle_key(config(retraining="lr_rewind"), last) != cycle_key(
        config(retraining="lr_rewind", rewind_step=7), last
    )
    assert cycle_key(config(ap=True), last) != cycle_key(config(ap=True, ap_rate=0.1), last)
    a, b = idle[0]
    assert comparable(run_trial(a, dataset=digits)) == comparable(run_trial(b, dataset=digits))
