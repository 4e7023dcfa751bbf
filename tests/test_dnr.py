"""Dynamic DNR and dead units on hand-built networks with known answers."""

import pytest
import torch
from torch import nn

from ap_core import count_dead_units, measure_dnr
from ap_core.dnr import DeadNeuronCounter


def hand_built_mlp() -> nn.Sequential:
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2), nn.ReLU())
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]))
        net[2].bias.zero_()
    return net


INPUTS = torch.tensor([[1.0, 1.0], [2.0, -1.0]])
# layer 1 pre-activations: [1, -1, 1] and [2, -2, -1] -> 3 of 6 outputs dead
# layer 3 pre-activations: [2, -2] and [2, -2] -> 2 of 4 outputs dead


def test_measure_dnr_is_exact_globally_and_per_layer():
    rate = measure_dnr(hand_built_mlp(), [INPUTS[:1], INPUTS[1:]])
    assert rate.layers == {"1": 0.5, "3": 0.5}
    assert rate.dnr == 5 / 10


def test_measure_dnr_counts_nonpositive_gelu_outputs_as_dead():
    net = nn.Sequential(nn.Linear(1, 4, bias=False), nn.GELU())
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0], [-1.0], [0.0], [2.0]]))
    rate = measure_dnr(net, [torch.tensor([[1.0]])])  # GELU of 1, -1, 0, 2 -> two outputs <= 0
    assert rate.dnr == 0.5


def test_counter_accumulates_across_batches_and_resets():
    net = hand_built_mlp()
    counter = DeadNeuronCounter(net)
    net(INPUTS)  # not enabled: not counted
    assert counter.read().dnr == 0.0
    counter.enabled = True
    net(INPUTS)
    net(INPUTS[:1])  # layer 1: 1 of 3 dead, layer 3: 1 of 2 dead
    rate = counter.read()
    assert rate.layers == {"1": pytest.approx(4 / 9), "3": pytest.approx(3 / 6)}
    counter.reset()
    assert counter.read().dnr == 0.0
    counter.remove()


def test_dead_units_need_zero_output_for_every_sample():
    units = count_dead_units(hand_built_mlp(), [INPUTS])
    # layer 1: unit 1 is dead for both inputs; units 0 and 2 fire at least once. layer 3: unit 1 never fires.
    assert units.layers == {"1": 1, "3": 1}
    assert (units.dead, units.total) == (2, 5)


def test_dead_units_of_conv_layers_are_channels():
    net = nn.Sequential(nn.Conv2d(1, 3, 1, bias=False), nn.ReLU())
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([1.0, -1.0, 0.5]).view(3, 1, 1, 1))
    x = torch.zeros(2, 1, 4, 4)
    x[0, 0, 1, 1] = 1.0  # one positive pixel: channels 0 and 2 fire there, channel 1 never does
    units = count_dead_units(net, [x])
    assert units.layers == {"1": 1} and units.total == 3


def test_dead_units_restore_training_mode():
    net = hand_built_mlp().train()
    count_dead_units(net, [INPUTS])
    assert net.training


def test_counting_stays_out_of_autograd():
    net = nn.Sequential(nn.Linear(2, 3), nn.GELU(), nn.Linear(3, 3), nn.ReLU())
    counter = DeadNeuronCounter(net)
    counter.enabled = True
    for _ in range(3):
        net(torch.randn(4, 2, requires_grad=True)).sum().backward()
    counts = [c for c in counter.alive_counts if c is not None]
    assert len(counts) == 2
    assert not any(c.requires_grad or c.grad_fn is not None for c in counts)
