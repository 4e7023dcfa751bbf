"""Protocols shared by the table sweeps: the paper's CIFAR recipe and the offline smoke version of it."""

from sweeps.engine.spec import Preset

# The paper's pruning schedule: 20% of the remaining weights per cycle, AP's share 2%, 16 cycles (2.8% remain).
PRUNING = {"prune_rate": 0.2, "ap_rate": 0.02, "cycles": 16}

# OpenLTH's ResNet-20 / CIFAR-10 recipe (paper-protocol.md): SGD 0.1, x0.1 at epochs 80 and 120 of 160,
# weight decay 1e-4, rewind to initialisation between cycles.
PAPER_RECIPE = {
    **PRUNING,
    "epochs": 160,
    "batch_size": 128,
    "optimizer": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "schedule": "multistep",
    "milestones": (0.5, 0.75),
    "lr_gamma": 0.1,
    "augment": True,
    "retraining": "rewind_init",
}
# OpenLTH keeps VGG's classifier dense and prunes ResNet's (ap.md, "Prunable weights").
PAPER_PER_NETWORK = {"vgg19": {"keep_classifier_dense": True}}

PAPER_CIFAR10 = Preset(
    description="the paper's protocol on real CIFAR-10: ResNet-20 and VGG-19, OpenLTH recipe, 16 cycles, 5 seeds",
    networks=("resnet20", "vgg19"),
    datasets=("cifar10",),
    seeds=5,
    trial=PAPER_RECIPE,
    per_network=PAPER_PER_NETWORK,
)

PAPER_CIFAR = PAPER_CIFAR10.replace(
    description="the paper's protocol on real CIFAR-10 and CIFAR-100: ResNet-20 and VGG-19, 16 cycles, 5 seeds",
    datasets=("cifar10", "cifar100"),
)

# Same schedule on scikit-learn's bundled digits with a small MLP: no downloads, about a second per trial on a CPU.
SMOKE = Preset(
    description="offline check of the whole pipeline: digits + mlp, 16 cycles of 8 epochs, 3 seeds",
    networks=("mlp",),
    datasets=("digits",),
    seeds=3,
    trial={**PRUNING, "epochs": 8, "batch_size": 64, "lr": 0.05, "dead_unit_window": 500},
)
