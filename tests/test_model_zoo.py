"""The model zoos (`tv:<name>`, `timm:<name>`): built by name, traced into our models' conventions, pruned end to end
by weight and channel methods, resumable, and started from a pretrained state-dict file that decides the experiment's
identity by its content."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, comparable, run_killed_after_cycle
from torch import nn

from ap_core import ConfigError, TrialConfig, build_model, load_dataset, prune, run_trial
from ap_core.channel_graph import find_channel_groups
from ap_core.checkpoint import CHECKPOINT_FILE, read_checkpoint
from ap_core.checks import checked_config
from ap_core.dnr import ACTIVATIONS, NONNEGATIVE_ACTIVATIONS, activation_layers
from ap_core.masks import PRUNABLE_TYPES, Mask

CIFAR = (3, 32, 32)
ZOO = ["tv:resnet18", "tv:mobilenet_v2"]
TINY = {
    "dataset": "synthetic",
    "epochs": 1,
    "cycles": 1,
    "max_train_samples": 64,
    "batch_size": 32,
    "dead_unit_window": 32,
    "augment": False,
    "cpu_threads": 1,
}


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic")


def activation_calls(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, dict[int, int]]:
    """How many activation modules `model` holds (counting reuse) and how often each is called in one forward."""
    activations = [m for _, m in model.named_modules(remove_duplicate=False) if isinstance(m, ACTIVATIONS)]
    calls = {id(m): 0 for m in activations}
    handles = [m.register_forward_hook(lambda m, i, o: calls.__setitem__(id(m), calls[id(m)] + 1)) for m in activations]
    model(torch.randn(2, *shape))
    for handle in handles:
        handle.remove()
    return len(activations), calls


@pytest.mark.parametrize("name", ZOO)
def test_a_zoo_model_keeps_the_conventions_of_our_models(name: str) -> None:
    torch.manual_seed(3)
    model = build_model(name, 10, CIFAR)
    states = [{k: v.clone() for k, v in model.state_dict().items()}]  # before forwards move BatchNorm's statistics
    instances, calls = activation_calls(model, CIFAR)
    assert instances == len(calls) > 10, "an activation module is reused"
    assert set(calls.values()) == {1}, "an activation module is called more than once, or never"
    assert not any(getattr(m, "inplace", False) for m in activation_layers(model).values())
    prunable = [m for m in model.modules() if isinstance(m, PRUNABLE_TYPES)]
    order: list[nn.Module] = []
    for m in prunable:
        m.register_forward_hook(lambda module, inputs, output: order.append(module))
    assert model(torch.randn(2, *CIFAR)).shape == (2, 10)
    assert order[0] is prunable[0] and order[-1] is prunable[-1]
    assert isinstance(prunable[-1], nn.Linear) and prunable[-1].out_features == 10
    for seed in (3, 4):
        torch.manual_seed(seed)
        states.append(build_model(name, 10, CIFAR).state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_torchvision_resnet_blocks_reuse_their_relu_and_the_zoo_splits_it() -> None:
    """What the tracing is for: torchvision's BasicBlock calls one `self.relu` twice."""
    import torchvision

    instances, calls = activation_calls(torchvision.models.resnet18(num_classes=10), CIFAR)
    assert instances > len(calls) or max(calls.values()) > 1
    zoo = build_model("tv:resnet18", 10, CIFAR)
    assert {"layer1.0.relu", "layer1.0.relu_1"} <= set(activation_layers(zoo))


def test_mobilenet_v2_channel_groups_pass_a_norm_and_a_relu6() -> None:
    model = build_model("tv:mobilenet_v2", 10, CIFAR)
    groups = find_channel_groups(model, torch.randn(2, *CIFAR))
    modules = dict(model.named_modules())
    with_relu6 = [g for g in groups if g.activation and isinstance(modules[g.activation], nn.ReLU6)]
    assert len(with_relu6) >= 17 and all(isinstance(modules[g.norm], nn.BatchNorm2d) for g in with_relu6)
    assert issubclass(nn.ReLU6, NONNEGATIVE_ACTIVATIONS)  # DemP's dead-unit test reads them


def masks_after(config: TrialConfig, dataset, folder: Path) -> tuple[list, dict[str, torch.Tensor]]:
    results = run_trial(config, checkpoint_dir=folder, dataset=dataset)
    return results, read_checkpoint(folder / CHECKPOINT_FILE)["mask"]


def test_resnet18_global_magnitude_prunes_with_and_without_ap(synthetic, tmp_path) -> None:
    config = checked_config({**TINY, "model": "tv:resnet18"})
    plain, plain_mask = masks_after(config, synthetic, tmp_path / "gp")
    with_ap, ap_mask = masks_after(config.replace(ap=True), synthetic, tmp_path / "ap")
    for results in (plain, with_ap):
        assert [round(r.weights_remaining, 1) for r in results] == [100.0, 80.0]
        assert all(0.0 < r.dnr < 1.0 and len(r.dnr_layers_per_epoch[-1]) == 17 for r in results)
    assert any(not torch.equal(plain_mask[k], ap_mask[k]) for k in plain_mask), "AP changed no pruning decision"


@pytest.mark.parametrize("name", ZOO)
def test_network_slimming_removes_channels_and_resumes_identically(name: str, synthetic, tmp_path) -> None:
    config = checked_config(
        {**TINY, "model": name, "method": "network_slimming", "retraining": "lr_rewind", "cycles": 2}
    )
    uninterrupted = run_trial(config, dataset=synthetic)
    assert [round(r.channels_remaining) for r in uninterrupted] == [100, 50, 50]
    assert uninterrupted[-1].flops_remaining < 100.0 and uninterrupted[-1].params_remaining < 100.0
    run_killed_after_cycle(config, 1, tmp_path, synthetic)  # resumed: the smaller net is rebuilt from the removals
    resumed = run_trial(config, checkpoint_dir=tmp_path, resume_from=tmp_path, dataset=synthetic)
    assert comparable(resumed) == comparable(uninterrupted)


def saved_weights(path: Path, name: str = "tv:resnet18", num_classes: int = 10, seed: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(name, num_classes, CIFAR)
    torch.save(model.state_dict(), path)
    return model


def test_pretrained_weights_load_and_a_head_of_another_shape_starts_untrained(tmp_path) -> None:
    source = saved_weights(tmp_path / "resnet18.pt", num_classes=1000).state_dict()
    same = build_model("tv:resnet18", 1000, CIFAR, weights=str(tmp_path / "resnet18.pt")).state_dict()
    assert all(torch.equal(same[k], source[k]) for k in source)
    cifar = build_model("tv:resnet18", 10, CIFAR, weights=str(tmp_path / "resnet18.pt")).state_dict()
    assert cifar["fc.weight"].shape == (10, 512)
    assert all(torch.equal(cifar[k], source[k]) for k in source if not k.startswith("fc."))
    older = {k: v for k, v in source.items() if not k.endswith("num_batches_tracked")}  # torchvision's 2017 files
    torch.save(older, tmp_path / "older.pt")
    assert torch.equal(
        build_model("tv:resnet18", 10, CIFAR, weights=str(tmp_path / "older.pt")).conv1.weight, older["conv1.weight"]
    )
    saved_weights(tmp_path / "mobilenet.pt", "tv:mobilenet_v2")
    with pytest.raises(ConfigError, match=r"mobilenet\.pt' lacks entry 'conv1\.weight'"):
        build_model("tv:resnet18", 10, CIFAR, weights=str(tmp_path / "mobilenet.pt"))


def test_a_missing_weights_file_is_one_line_naming_it(tmp_path) -> None:
    missing = str(tmp_path / "nowhere.pt")
    for attempt in (
        lambda: build_model("tv:resnet18", 10, CIFAR, weights=missing),
        lambda: checked_config({"model": "tv:resnet18", "pretrained_weights": missing}),
    ):
        with pytest.raises(ConfigError) as caught:
            attempt()
        assert missing in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--model", "tv:nonexistent"], "tv:nonexistent"),
        (["--model", "tv:resnet18", "--pretrained-weights", "nowhere.pt"], "nowhere.pt"),
    ],
)
def test_the_cli_refuses_a_bad_zoo_model_or_weights_file_in_one_line_writing_nothing(flags, named, tmp_path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ap_core",
            *flags,
            "--dataset",
            "synthetic",
            "--checkpoint-dir",
            "run",
            "--json",
            "r.json",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and named in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_experiment_id_follows_the_weights_files_content(tmp_path) -> None:
    weights = tmp_path / "weights.pt"
    saved_weights(weights)
    untrained = TrialConfig.from_dict({"model": "tv:resnet18"})
    pretrained = untrained.replace(pretrained_weights=str(weights))
    first = pretrained.experiment_id()
    assert first != untrained.experiment_id()
    assert "pretrained_weights" not in untrained.experiment_settings()
    recorded = pretrained.experiment_settings()  # what a Tune worker gets: it rebuilds the same experiment
    assert TrialConfig.from_dict(recorded).experiment_id() == first
    saved_weights(tmp_path / "other.pt", seed=6)
    os.replace(tmp_path / "other.pt", weights)  # other weights under the same name
    assert pretrained.experiment_id() != first
    with pytest.raises(ConfigError, match=r"weights\.pt' has sha256 .* the file changed"):
        checked_config(recorded)


def test_a_trial_starts_from_the_pretrained_weights(synthetic, tmp_path) -> None:
    from ap_core.network import Reference
    from ap_core.trial import TrialRunner

    source = saved_weights(tmp_path / "weights.pt").state_dict()
    config = checked_config({**TINY, "model": "tv:resnet18", "pretrained_weights": str(tmp_path / "weights.pt")})
    init = TrialRunner(config, synthetic).net.references[Reference.INIT]
    assert all(torch.equal(init[k], source[k]) for k in source)


def test_timm_models_build_run_and_prune() -> None:
    pytest.importorskip("timm")
    torch.manual_seed(0)
    model = build_model("timm:resnet10t", 10, CIFAR)
    instances, calls = activation_calls(model, CIFAR)
    assert instances == len(calls) > 0 and set(calls.values()) == {1}
    mask = prune("global_magnitude", model, Mask.ones(model), 0.2)
    mask.apply(model)
    assert mask.density() == pytest.approx(0.8, abs=1e-6)
    assert torch.isfinite(model(torch.randn(2, *CIFAR))).all()
    with pytest.raises(ConfigError, match="timm has no model 'nonexistent'"):
        build_model("timm:nonexistent", 10, CIFAR)


def test_a_timm_model_without_timm_installed_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # what `import timm` meets where it is not installed
    with pytest.raises(ConfigError, match=r"needs timm: pip install 'ap-sweeps\[timm\]'"):
        build_model("timm:resnet10t", 10, CIFAR)
