"""DemP beyond VGG-16: its ImageNet run (ResNet-50) and its ResNet-18 CIFAR-10 curve, lambda swept, with and
without AP.

Same trial shape as sweeps/table_demp.py (cycle 0: DemP's run, dead channels removed as they appear; cycle 1:
fine-tuning, with AP pruning its share first), with the launch settings of DemP's official repository for these
two networks (docs/protocol.md: which of them are confirmed as the paper's and which are not).

    python sweeps/table_demp_imagenet.py                           # smoke: generated 32 px JPEGs, tv:resnet18
    python sweeps/table_demp_imagenet.py --preset paper            # ImageNet, torchvision ResNet-50, 3 seeds
    python sweeps/table_demp_imagenet.py --preset paper-resnet18   # CIFAR-10, torchvision ResNet-18, 3 seeds
"""

from sweeps.engine.spec import NO_AP, WITH_AP, Preset, SweepSpec
from sweeps.engine.structured_report import demp_table, params_figure
from sweeps.smoke_images import SMOKE_DATA, run_table
from sweeps.table_demp import DEMP, RECIPE, lambdas

# The lambdas of the VGG-16 curve (structured-methods.md); the repository gives none per network for these two.
LAMBDAS = lambdas(1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.125)

# Maxwell_demon, source/mila_cluster_scripts/imgnet_structured_baseline.sh (ResNet-50, ImageNet): 90,083 steps at
# batch 256 (18 epochs of 1,281,167 images), AdamW lr 2e-3, weight decay 1e-4, one-cycle LR; dead neurons checked
# every 1,000 steps as in imgnet_controlling_overfitting.sh.
IMAGENET = {
    **RECIPE,
    "epochs": 18,
    "batch_size": 256,
    "lr": 2e-3,
    "weight_decay": 1e-4,
    "image_size": 224,
    "method_options": {"prune_every": 1000},
}

# structured-methods.md (from the repository's launch scripts): ResNet-18 on CIFAR-10, 97,656 steps = 250 epochs at
# batch 128, AdamW lr 5e-3, wd 5e-4, LR x0.2 every 77 epochs, removal every 5,000 steps, regulariser span 85,000 steps.
RESNET18_CIFAR10 = {
    **RECIPE,
    "epochs": 250,
    "batch_size": 128,
    "lr": 5e-3,
    "weight_decay": 5e-4,
    "schedule": "multistep",
    "milestones": (77 / 250, 154 / 250, 231 / 250),
    "lr_gamma": 0.2,
    "method_options": {"prune_every": 5000, "span": 85_000 / 97_656},
}

SPEC = SweepSpec(
    name="table_demp_imagenet",
    title="DemP on ResNet-50 (ImageNet) and ResNet-18 (CIFAR-10): lambda swept, with and without AP",
    methods=(DEMP,),
    variants=(NO_AP, WITH_AP),
    settings=LAMBDAS,
    table=demp_table,
    figure=params_figure,
    presets={
        "smoke": Preset(
            description="offline check: generated 4-class folder of 32 px JPEGs, torchvision ResNet-18 standing in "
            "for ResNet-50, two lambdas, 1 + 1 cycles of 1 epoch, 1 seed",
            networks=("tv:resnet18",),
            datasets=("folder",),
            seeds=1,
            settings=lambdas(1e-2, 5e-2),
            trial={
                **RECIPE,
                **SMOKE_DATA,
                "epochs": 1,
                "batch_size": 16,
                "lr": 0.03,
                "method_options": {"prune_every": 2},
            },
        ),
        "paper": Preset(
            description="DemP's ImageNet setting: torchvision ResNet-50 at 224 px, AdamW one-cycle, 18 + 18 epochs, "
            "3 seeds",
            networks=("tv:resnet50",),
            datasets=("imagenet",),
            seeds=3,
            trial=IMAGENET,
        ),
        "paper-resnet18": Preset(
            description="DemP's ResNet-18 curve on real CIFAR-10: torchvision ResNet-18, AdamW, 250 + 250 epochs, "
            "3 seeds",
            networks=("tv:resnet18",),
            datasets=("cifar10",),
            seeds=3,
            trial=RESNET18_CIFAR10,
        ),
    },
)

if __name__ == "__main__":
    run_table(SPEC)
