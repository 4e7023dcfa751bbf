"""AP with DenseNet-40 and MobileNetV2 on CIFAR-10/100: GP and LP, each with and without AP.

The AP paper prunes these two networks besides ResNet and VGG and takes their training recipes from Zhao et al. 2019
(DenseNet-40) and Chin et al. 2020 (MobileNetV2). The pruning schedule is the paper's (20% per cycle, AP's share 2%,
16 cycles); each network trains every cycle with its own recipe (docs/protocol.md says where each number comes from
and which ones could not be verified).

    python sweeps/table_densenet_mobilenet.py                  # smoke preset: generated 32 px JPEG folder, minutes
    python sweeps/table_densenet_mobilenet.py --preset paper   # CIFAR-10 and CIFAR-100, 5 seeds (GPU cluster)
"""

from sweeps.engine.spec import GP, LP, NO_AP, WITH_AP, Preset, SweepSpec
from sweeps.presets import PAPER_RECIPE
from sweeps.smoke_images import SMOKE_DATA, run_table

# DenseNet's own CIFAR recipe (Huang et al. 2017): Zhao et al.'s settings could not be verified (docs/protocol.md).
DENSENET40 = {
    "epochs": 300,
    "batch_size": 64,
    "lr": 0.1,
    "nesterov": True,
    "weight_decay": 1e-4,
    "milestones": (0.5, 0.75),
    "lr_gamma": 0.1,
}
# LeGR's fine-tuning of MobileNetV2 on CIFAR-100 (cmu-enyac/LeGR: legr.py, scripts/legr_fig2.sh).
MOBILENETV2 = {
    "epochs": 60,
    "batch_size": 128,
    "lr": 0.01,
    "nesterov": True,
    "weight_decay": 5e-4,
    "milestones": (0.3, 0.6, 0.8),
    "lr_gamma": 0.2,
}

# A generated class-folder tree of 32 px JPEGs (sweeps/smoke_images.py), decoded in the trial's process.
SPEC = SweepSpec(
    name="table_densenet_mobilenet",
    title="DenseNet-40 and MobileNetV2: GP and LP with and without AP",
    methods=(GP, LP),
    variants=(NO_AP, WITH_AP),
    presets={
        "smoke": Preset(
            description="offline check: generated 4-class folder of 32 px JPEGs, densenet40 + mobilenetv2, "
            "1 cycle of 1 epoch, 1 seed",
            networks=("densenet40", "mobilenetv2"),
            datasets=("folder",),
            seeds=1,
            trial={**PAPER_RECIPE, **SMOKE_DATA, "cycles": 1, "epochs": 1, "batch_size": 32, "lr": 0.05},
        ),
        "paper": Preset(
            description="CIFAR-10 and CIFAR-100: DenseNet-40 (Huang et al. recipe) and MobileNetV2 (LeGR's), "
            "16 cycles, 5 seeds",
            networks=("densenet40", "mobilenetv2"),
            datasets=("cifar10", "cifar100"),
            seeds=5,
            trial=PAPER_RECIPE,
            per_network={"densenet40": DENSENET40, "mobilenetv2": MOBILENETV2},
        ),
    },
)

if __name__ == "__main__":
    run_table(SPEC)
