"""Masks, pruning methods and AP on hand-built tensors and small models."""

import pytest
import torch
from torch import nn

from ap_core import Mask, ap_prune, prune
from ap_core.pruning import ap_select, prune_cycle, target_alive, weight_methods
from ap_core.pruning.layerwise_magnitude import split_count


def two_layer_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4))


def test_mask_covers_only_conv_and_linear_weights():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    assert list(Mask.ones(model)) == ["0.weight", "4.weight"]
    assert list(Mask.ones(model, keep_first_dense=True)) == ["4.weight"]
    assert list(Mask.ones(model, keep_classifier_dense=True)) == ["0.weight"]


def test_mask_density_apply_and_save_roundtrip(tmp_path):
    model = two_layer_net()
    mask = Mask.ones(model)
    assert mask.density() == 1.0
    mask = mask.prune({"0.weight": torch.ones(5, 6, dtype=torch.bool)})
    assert mask.alive() == 20 and mask.total() == 50
    assert mask.density() == pytest.approx(0.4)
    assert mask.layer_density() == {"0.weight": 0.0, "2.weight": 1.0}
    mask.apply(model)
    assert torch.count_nonzero(model[0].weight) == 0 and torch.count_nonzero(model[2].weight) == 20
    mask.save(tmp_path / "mask.pt")
    assert Mask.load(tmp_path / "mask.pt").equal(mask)


def test_global_magnitude_removes_smallest_across_layers_with_stable_ties():
    model = two_layer_net()
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(30, dtype=torch.float).view(5, 6) + 1)
        model[2].weight.fill_(2.5)  # ties across a whole layer
    mask = prune("global_magnitude", model, Mask.ones(model), fraction=0.1)  # 5 of 50
    # |w| 1 and 2 of layer 0 are smallest, then three of the tied 2.5s of layer 2 (1, 2 < 2.5 < 3).
    removed0 = (~mask["0.weight"]).flatten().nonzero().flatten().tolist()
    removed2 = (~mask["2.weight"]).flatten().nonzero().flatten().tolist()
    assert removed0 == [0, 1]
    assert removed2 == [0, 1, 2]  # ties: earliest flat index first


def test_layerwise_magnitude_takes_the_same_share_of_every_layer():
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 30))
    with torch.no_grad():
        model[0].weight.fill_(0.01)  # all tiny: global pruning would take only these
    mask = prune("layerwise_magnitude", model, Mask.ones(model), fraction=0.2)
    assert mask.layer_counts() == {"0.weight": (80, 100), "1.weight": (240, 300)}


def test_split_count_is_exact_and_proportional():
    shares = split_count(7, {"a": 10, "b": 10, "c": 10})
    assert sum(shares.values()) == 7 and sorted(shares.values()) == [2, 2, 3]


@pytest.mark.parametrize("method", weight_methods())
@pytest.mark.parametrize("ap", [False, True])
def test_density_after_k_cycles_is_exact(method, ap):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(37, 23), nn.ReLU(), nn.Linear(23, 11))
    mask = Mask.ones(model)
    start = {n: p.detach().clone() for n, p in model.named_parameters() if n in mask}
    for cycle in range(1, 16):
        with torch.no_grad():  # some training happens between cycles
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        weights = {n: p.detach() for n, p in model.named_parameters() if n in mask}
        new = prune_cycle(method, weights, start, mask, cycle, 0.2, ap_rate=0.02 if ap else None)
        # pruning only ever removes
        for n in mask:
            assert not (new[n] & ~mask[n]).any()
        mask = new
        expected = mask.total() * 0.8**cycle
        assert abs(mask.alive() - expected) <= 1, (cycle, mask.alive(), expected)
    assert mask.alive() == target_alive(mask.total(), 0.2, 15)


def test_ap_prunes_negative_weights_that_changed_least():
    start = {"w": torch.tensor([[-1.0, -1.0, -1.0, 2.0, -3.0, 0.5]])}
    final = {"w": torch.tensor([[-1.1, -0.5, -1.01, 2.0, -3.0, 0.4]])}
    mask = Mask({"w": torch.ones(1, 6, dtype=torch.bool)})
    # changes: 0.1, 0.5, 0.01, 0 (positive), 0 (negative), 0.1 (positive)
    removal = ap_select(final, start, mask, count=3)
    assert removal["w"].flatten().nonzero().flatten().tolist() == [0, 2, 4]


def test_ap_ties_are_broken_by_position():
    start = {"a": torch.zeros(4), "b": torch.zeros(4)}
    final = {"a": torch.tensor([1.0, -1.0, -1.0, 1.0]), "b": torch.tensor([-1.0, -1.0, 1.0, -1.0])}
    mask = Mask({"a": torch.ones(4, dtype=torch.bool), "b": torch.ones(4, dtype=torch.bool)})
    removal = ap_select(final, start, mask, count=3)
    assert removal["a"].tolist() == [False, True, True, False]
    assert removal["b"].tolist() == [True, False, False, False]


def test_ap_never_picks_already_pruned_weights_and_reports_shortfall():
    start = {"w": torch.zeros(5)}
    final = {"w": torch.tensor([-1.0, -2.0, 3.0, 4.0, 5.0])}
    mask = Mask({"w": torch.tensor([False, True, True, True, True])})
    removal = ap_select(final, start, mask, count=3)
    assert removal["w"].tolist() == [False, True, False, False, False]  # only one negative alive candidate


@pytest.mark.parametrize(
    ("score", "candidates", "expected"),
    [
        ("change", "negative", [0, 2]),  # negative, smallest change
        ("magnitude", "negative", [1, 2]),  # negative, smallest |w|
        ("change", "all", [0, 3]),  # any sign, smallest change
        ("magnitude", "all", [2, 4]),  # any sign, smallest |w|
    ],
)
def test_ap_ablation_switches(score, candidates, expected):
    start = {"w": torch.tensor([-2.0, -0.2, -0.4, 1.0, 0.1, 5.0])}
    final = {"w": torch.tensor([-2.0, -0.5, -0.3, 1.0, 0.15, 6.0])}
    # change: 0, .3, .1, 0, .05, 1  |w|: 2, .5, .3, 1, .15, 6
    mask = Mask({"w": torch.ones(6, dtype=torch.bool)})
    removal = ap_select(final, start, mask, count=2, score=score, candidates=candidates)
    assert removal["w"].nonzero().flatten().tolist() == expected


def test_ap_prune_on_a_model_uses_the_fraction_of_alive_weights():
    model = two_layer_net()
    mask = Mask.ones(model)
    start = {n: torch.zeros_like(p) for n, p in model.named_parameters() if n in mask}
    new = ap_prune(model, mask, start, fraction=0.1)
    assert mask.alive() - new.alive() == 5
    removed_values = torch.cat([model.state_dict()[n][~new[n]] for n in new])
    assert (removed_values < 0).all()
    # smallest change from zero among the negatives = the negatives closest to zero
    negatives = torch.cat([p.detach().flatten() for n, p in model.named_parameters() if n in mask])
    negatives = negatives[negatives < 0]
    assert sorted(removed_values.tolist()) == sorted(negatives.sort(descending=True).values[:5].tolist())


def test_cycle_with_ap_splits_the_total_between_x_and_ap():
    torch.manual_seed(0)
    weights = {"w": torch.randn(1000)}
    start = {"w": weights["w"] + torch.randn(1000) * 0.01}
    mask = Mask({"w": torch.ones(1000, dtype=torch.bool)})
    with_ap = prune_cycle("global_magnitude", weights, start, mask, 1, 0.2, ap_rate=0.02)
    without = prune_cycle("global_magnitude", weights, start, mask, 1, 0.2)
    assert with_ap.alive() == without.alive() == 800
    only_ap = without["w"] & ~with_ap["w"]  # pruned by AP instead of by magnitude
    assert int(only_ap.sum()) == 20 and (weights["w"][only_ap] < 0).all()


def test_random_pruning_is_seeded():
    model = two_layer_net()
    a = prune("random", model, Mask.ones(model), 0.5, generator=torch.Generator().manual_seed(3))
    b = prune("random", model, Mask.ones(model), 0.5, generator=torch.Generator().manual_seed(3))
    c = prune("random", model, Mask.ones(model), 0.5, generator=torch.Generator().manual_seed(4))
    assert a.equal(b) and not a.equal(c) and a.alive() == 25


def test_a_model_with_nothing_prunable_still_trains():
    from ap_core.masks import MaskedParameters

    model = nn.Sequential(nn.Linear(3, 2))
    mask = Mask.ones(model, keep_first_dense=True)
    assert len(mask) == 0 and mask.density() == 1.0
    masked = MaskedParameters(model, mask)
    model(torch.ones(1, 3)).sum().backward()
    masked.mask_grads()
    masked.mask_weights()
    assert model[0].weight.grad is not None


@pytest.mark.parametrize("method", ["global_magnitude", "layerwise_magnitude"])
def test_ap_scope_layer_keeps_the_per_layer_allocation_of_x(method):
    torch.manual_seed(0)
    # Layer b's weights are large: global magnitude prunes it little, so a global AP would move pruning there.
    weights = {"a": torch.randn(2000), "b": torch.randn(500) * 5}
    start = {n: w + torch.randn_like(w) * 0.01 for n, w in weights.items()}
    mask = Mask({n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()})
    without = prune_cycle(method, weights, start, mask, 1, 0.2)
    per_layer = prune_cycle(method, weights, start, mask, 1, 0.2, ap_rate=0.05, ap_scope="layer")
    global_ap = prune_cycle(method, weights, start, mask, 1, 0.2, ap_rate=0.05)
    assert per_layer.alive() == global_ap.alive() == without.alive() == 2000
    assert per_layer.layer_counts() == without.layer_counts()  # each layer loses exactly what X alone takes
    assert global_ap.layer_counts() != without.layer_counts()  # the official global pick reallocates
    for name in weights:  # AP's picks (pruned instead of X's) are negative weights of that layer
        only_ap = without[name] & ~per_layer[name]
        assert int(only_ap.sum()) > 0 and (weights[name][only_ap] < 0).all()
