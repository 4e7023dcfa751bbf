"""Channel pruning: the network's surgery, Network Slimming, RNI and DemP, and trials that shrink and resume."""

import subprocess
import sys

import pytest
import torch
from conftest import comparable, resumed_from_checkpoint_where, run_killed_after_cycle
from torch import nn

from ap_core import ConfigError, build_model, load_dataset, run_trial
from ap_core.channel_graph import find_channel_groups
from ap_core.checkpoint import CHECKPOINT_FILE, read_checkpoint
from ap_core.checks import checked_config
from ap_core.dnr import fired_units
from ap_core.hooks import CycleContext
from ap_core.masks import Mask
from ap_core.network import PrunableNet
from ap_core.pruning import METHODS
from ap_core.pruning.channels import lowest_channels
from ap_core.pruning.demp import DemonHook, DempHparams, dead_channels, schedule_factor
from ap_core.pruning.rni import BoundedBatchNorm2d, receding_penalty
from ap_core.training import build_optimizer

DIGITS_IMAGE = torch.zeros(1, 1, 8, 8)
QUICK = {"dataset": "digits", "epochs": 2, "cycles": 2, "cpu_threads": 1, "max_train_samples": 256}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def make_net(model_name: str, method: str = "network_slimming", momentum: float = 0.9) -> PrunableNet:
    torch.manual_seed(0)
    model = build_model(model_name, 10, (1, 8, 8))
    method_obj = METHODS.get(method)
    hparams = method_obj.hparams({}, method)
    method_obj.prepare(model, hparams)
    config = checked_config(dict(model=model_name, method=method, momentum=momentum))
    groups = find_channel_groups(model, DIGITS_IMAGE)
    return PrunableNet(
        model,
        Mask.ones(model),
        DIGITS_IMAGE,
        lambda m: build_optimizer(config.optimizer, m, method_obj.param_groups(m, hparams)),
        groups,
    )


def take_a_step(net: PrunableNet) -> None:
    """One SGD step on random data, so the optimizer holds momentum for every parameter."""
    torch.manual_seed(1)
    loss = nn.functional.cross_entropy(net.model(torch.randn(8, 1, 8, 8)), torch.randint(0, 10, (8,)))
    loss.backward()
    net.optimizer.step()


# ---- the network and its surgery --------------------------------------------------------------------------------


def test_resnet_channel_groups_are_the_inner_channels_of_each_block():
    groups = find_channel_groups(build_model("resnet20", 10, (1, 8, 8)), DIGITS_IMAGE)
    assert [g.root for g in groups] == [f"blocks.{i}.conv1" for i in range(9)]
    assert all(g.norm == g.root.replace("conv1", "bn1") and g.activation.endswith("relu1") for g in groups)


def test_removal_cuts_every_tensor_by_the_kept_indices_and_keeps_residual_shapes():
    net = make_net("resnet20")
    take_a_step(net)
    before = {n: p.detach().clone() for n, p in net.model.named_parameters()}
    momentum = {n: net.optimizer.state[p]["momentum_buffer"].clone() for n, p in net.model.named_parameters()}
    net.references["init"] = {k: v.clone() for k, v in net.model.state_dict().items()}
    net.remove_channels({"blocks.0.conv1": [0, 5, 15], "blocks.4.conv1": [31]})
    params = dict(net.model.named_parameters())
    assert params["blocks.0.conv1.weight"].shape == (13, 16, 3, 3)
    assert params["blocks.0.conv2.weight"].shape == (16, 13, 3, 3)  # the residual stream keeps its 16 channels
    assert params["blocks.4.conv1.weight"].shape == (31, 32, 3, 3)
    kept0 = [i for i in range(16) if i not in (0, 5, 15)]
    assert torch.equal(params["blocks.0.conv1.weight"], before["blocks.0.conv1.weight"][kept0])
    assert torch.equal(params["blocks.0.conv2.weight"], before["blocks.0.conv2.weight"][:, kept0])
    assert torch.equal(params["blocks.0.bn1.bias"], before["blocks.0.bn1.bias"][kept0])
    moved = net.optimizer.state[params["blocks.0.conv2.weight"]]["momentum_buffer"]
    assert torch.equal(moved, momentum["blocks.0.conv2.weight"][:, kept0])
    assert net.references["init"]["blocks.0.bn1.running_mean"].shape == (13,)
    assert net.mask["blocks.0.conv2.weight"].shape == (16, 13, 3, 3)
    assert net.model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_params_and_flops_drop_by_what_the_kept_channels_imply():
    net = make_net("vgg_small")
    # vgg_small on 8x8: conv(1->32) conv(32->32) pool conv(32->64) conv(64->64) pool conv(64->128) conv(128->128).
    net.remove_channels({"features.0": list(range(16))})  # first conv 32 -> 16 channels, at 8x8
    left = net.remaining()
    removed_params = 16 * 1 * 9 + 2 * 16 + 32 * 16 * 9  # its filters, its BN scale+shift, the next conv's inputs
    assert left.params == pytest.approx(100 * (net.dense.params - removed_params) / net.dense.params)
    removed_macs = 16 * 9 * 64 + 32 * 16 * 9 * 64  # per output position at 8x8: its filters and the next conv's
    assert left.flops == pytest.approx(100 * (net.dense.flops - removed_macs - 16 * 2 * 64) / net.dense.flops, abs=0.3)
    assert left.channels == pytest.approx(100 * (net.dense.channels - 16) / net.dense.channels)


def test_replaying_the_removal_log_rebuilds_the_architecture():
    net = make_net("vgg_small")
    net.remove_channels({"features.3": [1, 2, 3], "features.10": [0]})
    net.remove_channels({"features.3": [0]})
    fresh = make_net("vgg_small")
    fresh.load_state(net.removals, net.model.state_dict(), net.optimizer.state_dict(), net.mask, {})
    for name, tensor in net.model.state_dict().items():
        assert torch.equal(fresh.model.state_dict()[name], tensor), name


# ---- RNI --------------------------------------------------------------------------------------------------------


def test_bounded_batchnorm_importances_stay_in_open_unit_interval():
    bn = BoundedBatchNorm2d(64)
    with torch.no_grad():
        bn.weight.mul_(5)  # well into both tails (float32's sigmoid only saturates past |w| ~ 17)
    importance = torch.sigmoid(bn.weight.float())
    assert bool(((importance > 0) & (importance < 1)).all()) and bn.bias is None
    assert bn(torch.randn(4, 64, 3, 3)).shape == (4, 64, 3, 3)


@pytest.mark.parametrize("b", [0.0, 3.0])
def test_receding_regulariser_gradient_is_minus_s_one_minus_s_log_s(b):
    w = torch.linspace(-6, 6, 101, dtype=torch.float64, requires_grad=True)
    receding_penalty(w, b).sum().backward()
    s = torch.sigmoid(w.detach() + b)
    assert torch.allclose(w.grad, -s * (1 - s) * torch.log(s), atol=1e-12)
    assert bool((w.grad >= 0).all())
    assert abs(float(w.detach()[w.grad.argmax()]) + b + 1.18) < 0.13  # largest near w + b = -1.18


def test_global_channel_ranking_takes_the_exact_share_with_a_floor():
    importance = {
        "a": torch.tensor([0.01, 0.02, 0.03, 0.04, 0.05]),  # all smallest: the floor stops it at 3 kept
        "b": torch.tensor([0.5, 0.9, 0.06, 0.8]),
        "c": torch.tensor([0.07, 0.95, 0.97, 0.99, 0.2, 0.3]),
    }
    removal = lowest_channels(importance, 5, floor=3)
    assert removal == {"a": [0, 1], "b": [2], "c": [0, 4]}
    assert sum(len(v) for v in removal.values()) == 5


@pytest.mark.parametrize(("ratio", "kept"), [(0.5, 168), (0.9, 34), (0.95, 27)])
def test_rni_prune_removes_the_requested_share_of_channels_with_the_floor(ratio, kept, digits, tmp_path):
    config = checked_config(dict(model="resnet20", method="rni", method_options={"channel_ratio": ratio}, **QUICK))
    results = run_trial(config.replace(cycles=1), checkpoint_dir=tmp_path, dataset=digits)
    # 9 inner convs of 16/32/64 channels = 336; round((1 - ratio) * 336) stay, but never fewer than 3 per conv
    # (at 95% the floor binds: 9 x 3 = 27).
    assert results[0].channels_remaining == 100.0
    assert results[1].channels_remaining == pytest.approx(100 * kept / 336)
    shapes = {k: v.shape for k, v in read_checkpoint(tmp_path / CHECKPOINT_FILE)["model"].items()}
    inner = [shapes[f"blocks.{i}.conv1.weight"][0] for i in range(9)]
    assert sum(inner) == kept and min(inner) >= 3
    assert [shapes[f"blocks.{i}.conv2.weight"][0] for i in range(9)] == [16] * 3 + [32] * 3 + [64] * 3
    assert results[1].params_remaining < 100 and results[1].flops_remaining < 100


# ---- DemP -------------------------------------------------------------------------------------------------------


def test_demp_schedule_start_peak_end_and_hold():
    span = 1000
    assert schedule_factor(0, span) == pytest.approx(1 / 25)
    assert schedule_factor(300, span) == pytest.approx(1.0)
    assert max(schedule_factor(s, span) for s in range(span)) == schedule_factor(300, span)
    assert schedule_factor(span, span) == pytest.approx(1 / 2.5e5)
    assert schedule_factor(5 * span, span) == schedule_factor(span, span)


def demon_context(net: PrunableNet, hparams: DempHparams, removed: list) -> CycleContext:
    return CycleContext(
        net=net,
        hparams=hparams,
        cycle=0,
        cycle_steps=1000,
        fired_units=lambda: {},
        remove_channels=lambda removal, step: removed.append((removal, step)),
        seed=lambda *parts: sum(parts),
    )


@pytest.mark.parametrize("noise", [0.0, 1e-2])
def test_demp_noise_is_zero_when_off_and_of_the_specified_scale_when_on(noise):
    net = make_net("vgg_small", "demp")
    hook = DemonHook(demon_context(net, DempHparams(noise=noise, prune_every=10**6), []))
    before = torch.cat([p.detach().flatten().clone() for p in net.model.parameters()])
    hook.on_epoch_start(0)
    hook.after_step(300)  # the peak of the schedule
    change = torch.cat([p.detach().flatten() for p in net.model.parameters()]) - before
    if noise == 0:
        assert torch.count_nonzero(change) == 0
    else:
        assert float(change.std()) == pytest.approx(noise, rel=0.02)
        assert abs(float(change.mean())) < noise * 0.02


def test_a_channel_dead_by_construction_is_found_removed_and_the_outputs_do_not_change(digits):
    net = make_net("vgg_small", "demp")
    net.model.eval()
    x = digits.standardised(digits.x_train[:200])
    naturally_dead = dead_channels(net, fired_units(net.model, [x]), floor=1)
    assert 7 not in naturally_dead.get("features.3", [])
    with torch.no_grad():  # channel 7 of the second conv can never fire: its BatchNorm outputs -5 everywhere
        net.model.features[4].weight[7] = 0.0
        net.model.features[4].bias[7] = -5.0
    dead = dead_channels(net, fired_units(net.model, [x]), floor=1)
    # Channel 7 is now dead too (a later layer may lose a unit that depended on it).
    assert dead["features.3"] == sorted([*naturally_dead.get("features.3", []), 7])
    expected = net.model(x)
    net.remove_channels(dead)
    assert net.model.features[3].out_channels == 32 - len(dead["features.3"])
    assert torch.allclose(net.model(x), expected, atol=1e-5)


def test_demp_removes_channels_during_training_and_reports_every_event(digits):
    config = checked_config(
        dict(model="vgg_small", method="demp", method_options={"lam": 0.5, "prune_every": 4}, **{**QUICK, "cycles": 1})
    )
    results = run_trial(config, dataset=digits)
    events = results[0].removal_events
    assert events and all(e["step"] % 4 == 0 for e in events)
    assert [e["channels_remaining"] for e in events] == sorted((e["channels_remaining"] for e in events), reverse=True)
    assert results[0].channels_remaining == events[-1]["channels_remaining"] < 100
    assert results[0].params_remaining < 100 and results[0].flops_remaining < 100


# ---- whole trials -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "method", "options"),
    [
        ("resnet20", "network_slimming", {"channel_ratio": 0.5}),
        ("vgg_small", "rni", {"channel_ratio": 0.5}),
        ("vgg_small", "demp", {"lam": 0.5, "prune_every": 4}),
    ],
)
def test_killed_after_a_removal_and_resumed_gives_the_same_numbers(model, method, options, digits, tmp_path):
    config = checked_config(
        dict(model=model, method=method, method_options=options, ap=True, retraining="lr_rewind", **QUICK)
    ).replace(checkpoint_every_epoch=True)
    uninterrupted = run_trial(config, dataset=digits)
    assert uninterrupted[1].channels_remaining < 100
    run_killed_after_cycle(config, 1, tmp_path, digits)
    resumed = run_trial(config, checkpoint_dir=tmp_path, resume_from=tmp_path, dataset=digits)
    assert comparable(resumed) == comparable(uninterrupted)


def test_ap_prunes_its_share_inside_the_remaining_structure(digits):
    base = {"model": "vgg_small", "method": "rni", "method_options": {"channel_ratio": 0.5}, **QUICK}
    without = run_trial(checked_config(base), dataset=digits)
    with_ap = run_trial(checked_config(dict(**base, ap=True, ap_rate=0.05)), dataset=digits)
    for a, b in zip(without, with_ap, strict=True):
        assert a.channels_remaining == b.channels_remaining  # AP removes weights, never channels
    assert without[2].weights_remaining == without[1].weights_remaining
    assert with_ap[1].weights_remaining == pytest.approx(without[1].weights_remaining * 0.95, abs=0.01)
    assert with_ap[2].weights_remaining == pytest.approx(without[1].weights_remaining * 0.95**2, abs=0.01)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"method": "rni", "method_options": {"channel_ratio": 1.5}}, "channel_ratio 1.5"),
        ({"method": "network_slimming", "method_options": {"channel_ratio": 0}}, "channel_ratio 0"),
        ({"method": "demp", "method_options": {"lam": -0.1}}, "lam -0.1"),
        ({"method": "demp", "method_options": {"lamda": 1}}, "'lamda'"),
        ({"method": "rni", "method_options": {"alpha": "big"}}, "alpha 'big'"),
        ({"method": "demp", "model": "mlp"}, "'mlp'"),
        ({"method": "global_magnitude", "method_options": {"channel_ratio": 0.5}}, "'channel_ratio'"),
        ({"method": "demp", "method_options": {"lam": float("nan")}}, "lam nan"),
        ({"method": "demp", "method_options": {"noise": float("inf")}}, "noise inf"),
        ({"method": "demp", "method_options": {"span": 1.5}}, "span 1.5"),
        ({"method": "rni", "method_options": {"b": float("nan")}}, "b nan"),
        ({"method": "network_slimming", "method_options": {"bn_init": -1}}, "bn_init -1"),
    ],
)
def test_bad_method_options_are_one_line_errors(changes, named):
    with pytest.raises(ConfigError) as err:
        checked_config(dict(**{"model": "resnet20", **changes}))
    assert named in str(err.value) and "\n" not in str(err.value)


def test_ap_beside_a_channel_method_is_not_bound_by_the_unused_prune_rate():
    assert checked_config(dict(model="resnet20", method="rni", ap=True, ap_rate=0.25)).ap.rate == 0.25
    with pytest.raises(ConfigError, match=r"ap_rate 0\.25"):
        checked_config(dict(model="resnet20", method="global_magnitude", ap=True, ap_rate=0.25))


def test_removal_keeps_channels_last_weights_channels_last():
    net = make_net("vgg_small")
    net.model.to(memory_format=torch.channels_last)
    net.channels_last = True
    net.remove_channels({"features.3": [0, 1]})
    weight = net.model.features[3].weight
    assert weight.shape == (30, 32, 3, 3) and weight.is_contiguous(memory_format=torch.channels_last)


def test_resumed_from_a_mid_epoch_checkpoint_after_demp_removed_channels(digits, tmp_path, monkeypatch):
    config = checked_config(
        dict(
            model="vgg_small",
            method="demp",
            method_options={"lam": 0.5, "prune_every": 3},
            checkpoint_every_epoch=True,
            **{**QUICK, "epochs": 3},
        )
    )
    uninterrupted = run_trial(config, dataset=digits)
    resumed = resumed_from_checkpoint_where(
        config,
        digits,
        tmp_path,
        monkeypatch,
        lambda meta: meta["cycle"] == 0 and meta["cycle_begun"] and meta["removals"],
    )
    assert comparable(resumed) == comparable(uninterrupted)


def test_cli_takes_method_options_and_refuses_bad_ones(tmp_path):
    base = [sys.executable, "-m", "ap_core", "--model", "vgg_small", "--method", "rni", "--cycles", "1"]
    ok = subprocess.run(
        [*base, "--epochs", "1", "--max-train-samples", "128", "--method-options", "channel_ratio=0.25"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert "channels  75.0%" in ok.stdout
    bad = subprocess.run([*base, "--method-options", "ratio=0.5"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "'ratio'" in bad.stderr
