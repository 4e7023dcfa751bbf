"""Channel pruning on any network the dependency graph can trace: groups from the graph, not from the model's name."""

import pytest
import torch
from conftest import comparable, run_killed_after_cycle
from torch import nn

from ap_core import ConfigError, build_model, load_dataset, run_trial
from ap_core.channel_graph import channel_layout
from ap_core.checks import checked_config
from ap_core.dnr import fired_units
from ap_core.masks import Mask
from ap_core.network import PrunableNet
from ap_core.pruning.demp import dead_channels
from ap_core.settings import OptimizerSettings
from ap_core.training import build_optimizer

IMAGE = torch.zeros(1, 1, 8, 8)
TINY = {"dataset": "digits", "epochs": 1, "cycles": 1, "cpu_threads": 1, "max_train_samples": 64, "batch_size": 32}


class Branches(nn.Module):
    """A network no registry knows: a conv feeding a depthwise conv, a side branch, both concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.stem_bn, self.stem_relu = nn.BatchNorm2d(8), nn.ReLU()
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.depthwise_bn, self.depthwise_relu = nn.BatchNorm2d(8), nn.ReLU()
        self.side = nn.Conv2d(1, 4, 1, bias=False)
        self.side_bn, self.side_relu = nn.BatchNorm2d(4), nn.ReLU()
        self.head = nn.Conv2d(12, 6, 1, bias=False)
        self.head_bn, self.head_relu = nn.BatchNorm2d(6), nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.depthwise_relu(self.depthwise_bn(self.depthwise(self.stem_relu(self.stem_bn(self.stem(x))))))
        b = self.side_relu(self.side_bn(self.side(x)))
        y = self.head_relu(self.head_bn(self.head(torch.cat([a, b], dim=1))))
        return self.fc(torch.flatten(self.pool(y), 1))


def net_of(model: nn.Module) -> PrunableNet:
    groups = channel_layout(model, IMAGE).groups
    return PrunableNet(model, Mask.ones(model), IMAGE, lambda m: build_optimizer(OptimizerSettings(), m), groups)


def test_groups_of_a_user_defined_network_follow_its_graph():
    layout = channel_layout(Branches(), IMAGE)
    sites = {g.root: [(s.norm, s.activation) for s in g.sites] for g in layout.groups}
    # The stem's channels run through the depthwise conv: they are tested after it, not at the stem's own BN.
    assert sites == {
        "stem": [("depthwise_bn", "depthwise_relu")],
        "side": [("side_bn", "side_relu")],
        "head": [("head_bn", "head_relu")],
    }
    assert layout.plain is False  # the concatenation: the head reads both branches


def test_densenet_channels_are_tested_at_every_later_layer_that_reads_them():
    layout = channel_layout(build_model("densenet40", 10, (1, 8, 8)), IMAGE)
    first = next(g for g in layout.groups if g.root == "features.0.conv")
    assert [s.norm for s in first.sites][:2] == ["features.1.bn", "features.2.bn"]
    assert first.sites[0].index == tuple(range(16, 28))  # after the stem's 16 channels in the concatenation
    assert not layout.plain and len(layout.groups) == 39


@pytest.mark.parametrize("model", ["densenet40", "mobilenetv2", "branches"])
def test_dead_channels_are_found_and_removing_them_keeps_the_outputs(model):
    torch.manual_seed(0)
    net = net_of(Branches() if model == "branches" else build_model(model, 10, (1, 8, 8)))
    net.model.eval()
    x = torch.randn(16, 1, 8, 8)
    modules = dict(net.model.named_modules())
    group = next(g for g in net.channel_groups if g.sites and g.activation is not None)
    with torch.no_grad():  # channel 1 of the group can never fire at any layer reading it
        for site in group.sites:
            modules[site.norm].weight[site.index[1]] = 0.0
            modules[site.norm].bias[site.index[1]] = -5.0
    dead = dead_channels(net, fired_units(net.model, [x]), floor=1)
    assert 1 in dead[group.root]
    expected = net.model(x)
    before = net.channels()
    net.remove_channels(dead)
    assert net.channels() == before - sum(len(v) for v in dead.values())
    assert torch.allclose(net.model(x), expected, atol=1e-5)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.mark.parametrize("model", ["densenet40", "mobilenetv2"])
@pytest.mark.parametrize(
    ("method", "options", "ap"),
    [
        ("network_slimming", {"channel_ratio": 0.3}, True),
        ("rni", {"channel_ratio": 0.3}, False),
        ("demp", {"lam": 20.0, "prune_every": 1, "noise": 0.0}, True),
    ],
)
def test_channel_methods_shrink_densenet_and_mobilenet(model, method, options, ap, digits):
    config = checked_config(dict(model=model, method=method, method_options=options, ap=ap, **TINY))
    results = run_trial(config, dataset=digits)
    assert results[-1].channels_remaining < 100
    assert results[-1].params_remaining < 100 and results[-1].flops_remaining < 100
    # AP prunes single weights inside the remaining structure; without it every kept weight stays alive.
    assert (min(results[-1].layer_density.values()) < 1) == ap


def test_a_network_without_what_a_method_reads_is_one_line_naming_it():
    with pytest.raises(ConfigError, match=r"network_slimming .* model 'mlp' has no BatchNorm layer"):
        checked_config(dict(model="mlp", method="network_slimming"))


def test_a_shrunken_densenet_resumes_from_its_checkpoint_with_the_same_numbers(digits, tmp_path):
    """The checkpoint replays the removals on a fresh DenseNet (whose concatenation offsets move) and goes on."""
    options = {"channel_ratio": 0.3}
    config = checked_config(
        dict(model="densenet40", method="network_slimming", method_options=options, ap=True, **TINY)
    )
    config = config.replace(cycles=2)
    uninterrupted = run_trial(config, dataset=digits)
    run_killed_after_cycle(config, 1, tmp_path, digits)
    resumed = run_trial(config, checkpoint_dir=tmp_path, resume_from=tmp_path, dataset=digits)
    assert uninterrupted[1].channels_remaining < 100
    assert comparable(resumed) == comparable(uninterrupted)
