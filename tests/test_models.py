"""Model zoo: every model builds, trains a step, exposes each activation as its own hooked module, and keeps
the input layer first / classifier last in module order."""

import pytest
import torch
from torch import nn

from ap_core.errors import ConfigError
from ap_core.masks import PRUNABLE_TYPES, Mask, prunable_names
from ap_core.models import MODELS, build_model

CIFAR = (3, 32, 32)
MNIST = (1, 28, 28)
DIGITS = (1, 8, 8)
NATURAL_SHAPES: dict[str, tuple[int, ...]] = {
    "resnet20": CIFAR,
    "resnet32": CIFAR,
    "resnet56": CIFAR,
    "vgg16": CIFAR,
    "vgg19": CIFAR,
    "vgg_small": CIFAR,
    "densenet40": CIFAR,
    "mobilenetv2": CIFAR,
    "vit_tiny": CIFAR,
    "lenet300_100": MNIST,
    "lenet5": MNIST,
    "mlp": (64,),
}
ACTIVATIONS = (nn.ReLU, nn.GELU)


# A model missing from NATURAL_SHAPES fails test_every_registered_model_has_a_natural_shape, not collection.
FORWARD_CASES = [
    pytest.param(name, shape, id=f"{name}-{'x'.join(map(str, shape))}")
    for name in MODELS.names()
    for shape in (NATURAL_SHAPES.get(name, CIFAR), DIGITS)
]


pytestmark = pytest.mark.usefixtures("single_thread")


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_registered_model_has_a_natural_shape() -> None:
    assert sorted(NATURAL_SHAPES) == MODELS.names()


@pytest.mark.parametrize(("name", "shape"), FORWARD_CASES)
def test_forward_backward(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(name, 10, shape)
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 10)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads if g is not None)
    assert len(Mask.ones(model)) > 0
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())


@pytest.mark.parametrize("name", MODELS.names())
def test_each_activation_is_a_distinct_module_called_once(name: str) -> None:
    shape = NATURAL_SHAPES[name]
    model = build_model(name, 10, shape)
    activations = [m for _, m in model.named_modules(remove_duplicate=False) if isinstance(m, ACTIVATIONS)]
    assert activations
    assert len({id(m) for m in activations}) == len(activations), "an activation module is reused"
    calls = {id(m): 0 for m in activations}

    def count(module: nn.Module, inputs: object, output: object) -> None:
        calls[id(module)] += 1

    for m in activations:
        m.register_forward_hook(count)
    model(torch.randn(2, *shape))
    assert set(calls.values()) == {1}


def test_vit_uses_linear_attention_and_gelu() -> None:
    model = build_model("vit_tiny", 10, CIFAR)
    assert not any(isinstance(m, nn.MultiheadAttention | nn.ReLU) for m in model.modules())
    assert sum(isinstance(m, nn.GELU) for m in model.modules()) == 4
    names = prunable_names(model)
    assert len(names) == 1 + 4 * 4 + 1  # patch embedding, (qkv, proj, fc1, fc2) per block, head
    assert names[1:3] == ["blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight"]


@pytest.mark.parametrize("name", MODELS.names())
def test_first_prunable_is_input_layer_and_last_is_classifier(name: str) -> None:
    shape = NATURAL_SHAPES[name]
    model = build_model(name, 7, shape)
    prunable = [m for m in model.modules() if isinstance(m, PRUNABLE_TYPES)]
    order: list[nn.Module] = []
    for m in prunable:
        m.register_forward_hook(lambda module, inputs, output: order.append(module))
    model(torch.randn(2, *shape))
    assert order[0] is prunable[0]
    assert order[-1] is prunable[-1]
    assert isinstance(prunable[-1], nn.Linear) and prunable[-1].out_features == 7


@pytest.mark.parametrize(
    ("name", "shape", "low", "high"),
    [
        ("resnet20", CIFAR, 0.26e6, 0.28e6),  # paper: 0.27M (option A; option B adds ~2.7k)
        ("resnet32", CIFAR, 0.45e6, 0.48e6),  # paper: 0.46M
        ("resnet56", CIFAR, 0.84e6, 0.87e6),  # paper: 0.85M
        ("vgg16", CIFAR, 14.6e6, 14.9e6),  # OpenLTH CIFAR VGG-16: ~14.7M
        ("vgg19", CIFAR, 19.9e6, 20.2e6),  # OpenLTH CIFAR VGG-19: ~20.0M
        ("vgg_small", CIFAR, 288_746, 288_746),  # exact: 3x3 convs 3-32-32-64-64-128-128, BN scale+shift, fc 128-10
        ("densenet40", CIFAR, 0.98e6, 1.06e6),  # paper: 1.0M
        ("mobilenetv2", CIFAR, 2.1e6, 2.4e6),  # CIFAR ports: ~2.2-2.3M
        ("lenet300_100", MNIST, 266_610, 266_610),  # exact: 784*300 + 300*100 + 100*10 + biases
        ("lenet5", MNIST, 61_706, 61_706),  # exact: the classic 400-120-84 LeNet-5
    ],
)
def test_parameter_counts_match_published(name: str, shape: tuple[int, ...], low: float, high: float) -> None:
    assert low <= _params(build_model(name, 10, shape)) <= high


@pytest.mark.parametrize("name", MODELS.names())
def test_same_seed_same_weights(name: str) -> None:
    shape = NATURAL_SHAPES[name]
    states = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        states.append(build_model(name, 10, shape).state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def _config_error(name: str, num_classes: object, shape: object) -> str:
    with pytest.raises(ConfigError) as info:
        build_model(name, num_classes, shape)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_name_lists_valid_names() -> None:
    message = _config_error("resnet21", 10, CIFAR)
    assert "resnet21" in message and "resnet20" in message and "vit_tiny" in message


@pytest.mark.parametrize("num_classes", [1, 0, -3, 2.5, True])
def test_bad_num_classes(num_classes: object) -> None:
    assert repr(num_classes) in _config_error("resnet20", num_classes, CIFAR)


@pytest.mark.parametrize("shape", [(3, 32), (), (0, 8, 8), (3, 32, -1), (1, 2, 3, 4), (3.0, 32, 32), 64, "3x32x32"])
def test_bad_input_shape(shape: object) -> None:
    assert repr(shape) in _config_error("mlp", 10, shape)


@pytest.mark.parametrize("name", ["resnet20", "vgg16", "densenet40", "mobilenetv2", "lenet5", "vit_tiny"])
def test_image_models_reject_flat_inputs(name: str) -> None:
    message = _config_error(name, 10, (64,))
    assert name in message and "(64,)" in message and "(C, H, W)" in message


@pytest.mark.parametrize("shape", [(64,), DIGITS, MNIST])
def test_mlps_take_flat_and_image_inputs(shape: tuple[int, ...]) -> None:
    for name in ("mlp", "lenet300_100"):
        assert build_model(name, 3, shape)(torch.randn(2, *shape)).shape == (2, 3)


@pytest.mark.parametrize("shape", [(3, 1, 1), (2, 7, 5), (1, 28, 28), (3, 64, 48)])
def test_image_models_take_odd_sizes(shape: tuple[int, int, int]) -> None:
    for name in ("resnet20", "vgg16", "densenet40", "mobilenetv2", "lenet5", "vit_tiny"):
        assert build_model(name, 4, shape)(torch.randn(2, *shape)).shape == (2, 4)
