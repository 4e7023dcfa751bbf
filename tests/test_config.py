"""The trial config as typed groups: the flat settings users know (flags, Tune keys, MLflow params, the protocol hash)
stay as they were, a group checks its own values, and the registry check is a step of its own."""

import pickle
import re
import subprocess
import sys

import pytest
from conftest import REPO

from ap_core import run_trial
from ap_core.checks import checked_config
from ap_core.cli import build_parser
from ap_core.config import RUNTIME_FIELDS, SETTINGS, TrialConfig
from ap_core.errors import ConfigError
from ap_core.settings import APSettings, PruningSettings

# experiment_id of these configs as the flat TrialConfig (commit 508c0f7, before the groups) computed them: a sweep
# saved before the change keeps its trials' identities.
IDS_BEFORE_THE_GROUPS = [
    ({}, "c94a183c5350"),
    (
        {
            "ap": True,
            "dataset": "digits",
            "method": "network_slimming",
            "method_options": {"channel_ratio": 0.5},
            "model": "vgg_small",
        },
        "534292f2b447",
    ),
    (
        {
            "ap": True,
            "ap_rate": 0.05,
            "cpu_threads": 1,
            "device": "cpu",
            "epochs": 4,
            "milestones": [0.3],
            "optimizer": "adamw",
            "prune_rate": 0.3,
            "retraining": "lr_rewind",
            "rewind_step": 3,
            "schedule": "cosine",
            "seed": 7,
            "warmup_epochs": 1.5,
        },
        "42838d539ca3",
    ),
    (
        {
            "amp": False,
            "ap_rate": 0.07,
            "augment": False,
            "batch_size": 32,
            "dead_unit_window": 300,
            "keep_first_dense": True,
            "lr": 0.1,
            "max_train_samples": 200,
            "val_fraction": 0.1,
        },
        "cea16f4b2238",
    ),
]


@pytest.mark.parametrize(("values", "expected"), IDS_BEFORE_THE_GROUPS)
def test_the_protocol_hash_is_the_one_the_flat_config_gave(values, expected):
    config = TrialConfig.from_dict(values)
    assert config.experiment_id() == expected
    assert TrialConfig.from_dict(config.to_dict()) == config  # flat settings round-trip exactly


def test_every_flat_setting_is_one_cli_flag_and_one_group_field():
    flags = {action.dest for action in build_parser()._actions} - {"help", "checkpoint_dir", "resume", "json", "list"}
    assert flags == set(SETTINGS) and len(SETTINGS) == 44
    assert {"pretrained_weights", "pretrained_weights_sha256", "image_size", "num_classes", "loader_workers"} <= flags
    assert {
        "device",
        "cpu_threads",
        "torch_compile",
        "data_dir",
        "download",
        "checkpoint_every_epoch",
        "loader_workers",
    } == RUNTIME_FIELDS
    config = TrialConfig.from_dict({"ap": True, "ap_rate": 0.05, "retraining": "finetune", "cpu_threads": 2})
    assert config.ap == APSettings(enabled=True, rate=0.05)
    assert config.retraining.scheme == "finetune" and config.runtime.cpu_threads == 2
    assert config.replace(cycles=3).pruning == PruningSettings(cycles=3)
    assert "cpu_threads" not in config.experiment_settings() and config.runtime_settings()["cpu_threads"] == 2


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"ap_rate": 1.5}, "ap_rate 1.5"),
        ({"optimizer": "adam"}, "unknown optimizer 'adam'"),
        ({"retraining": 3}, "retraining 3 must be a str"),
        ({"warmup_epochs": 5, "epochs": 2}, "warmup_epochs 5.0 must be in [0, epochs=2]"),
        ({"lerning_rate": 0.1}, "unknown trial setting 'lerning_rate'"),
    ],
)
def test_a_bad_value_is_named_by_its_flat_setting(values, named):
    with pytest.raises(ConfigError) as caught:
        TrialConfig.from_dict(values)
    assert named in str(caught.value)


def test_the_config_is_plain_data_and_the_registry_check_a_separate_step():
    config = TrialConfig.from_dict({"method": "no_such_method"})  # plain data: nothing looked up
    assert config.pruning.method == "no_such_method"
    with pytest.raises(ConfigError, match="no_such_method"):
        checked_config(config.to_dict())
    with pytest.raises(ConfigError, match="no_such_method"):
        run_trial(config)  # a runner checks the names before it builds anything
    probe = "import sys, ap_core.config; print(sorted(m for m in ('torch', 'ap_core.checks') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr


def test_the_readmes_python_example_runs_as_written(tmp_path):
    readme = (REPO / "README.md").read_text()
    (example,) = [b for b in re.findall(r"```python\n(.+?)\n```", readme, re.S) if "run_trial" in b]
    done = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    cycles = [line.split() for line in done.stdout.splitlines()]
    assert [int(c[0]) for c in cycles] == list(range(11)) and float(cycles[-1][1]) == pytest.approx(10.74, abs=0.01)


def test_a_config_pickled_before_the_groups_loads_as_the_same_experiment():
    """Tune's saved callbacks hold configs: a sweep interrupted under the flat config (state format 2, pickled by
    commit 508c0f7) resumes with the groups. A config now pickles as its flat settings."""
    before = pickle.loads((REPO / "tests" / "data" / "trial_config_before_groups.pkl").read_bytes())
    assert before.experiment_id() == "010b0961bfa1"  # what the flat config computed for it
    assert before.pruning.method_options == {"channel_ratio": 0.5} and before.schedule.milestones == (0.3,)
    assert before == TrialConfig.from_dict(before.to_dict())
    assert pickle.loads(pickle.dumps(before)) == before
