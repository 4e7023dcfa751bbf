"""AP on ImageNet: ResNet-50 and ViT-B/16 (torchvision's architectures, untrained), GP with and without AP.

The AP paper reports +2-3% from AP on ImageNet and on a vision transformer. ResNet-50 trains with the standard
ImageNet recipe, the ViT with Dosovitskiy et al.'s; between cycles the pruned net keeps its weights and replays the
learning-rate schedule (Renda et al.'s learning-rate rewinding, which, unlike rewinding to initialisation, holds up
on ImageNet). In a ViT the DNR counts GELU outputs <= 0 (docs/protocol.md says why).

    python sweeps/table_imagenet.py                  # smoke preset: generated 32 px JPEG folder, resnet20 + vit_tiny
    python sweeps/table_imagenet.py --preset paper   # ImageNet (--data-dir: train/ and val/ or shards), 3 seeds
"""

from sweeps.engine.spec import GP, NO_AP, WITH_AP, Preset, SweepSpec
from sweeps.presets import PRUNING
from sweeps.smoke_images import SMOKE_DATA, run_table

# The paper's pruning schedule with learning-rate rewinding to step 0 (Renda et al. 2020 prune ResNet-50 on
# ImageNet this way).
IMAGENET_PRUNING = {**PRUNING, "retraining": "lr_rewind", "rewind_step": 0, "augment": True, "image_size": 224}
# He et al. 2016 / torchvision's reference recipe: SGD 0.1, momentum 0.9, wd 1e-4, batch 256, x0.1 every 30 of 90.
RESNET50 = {
    "optimizer": "sgd",
    "epochs": 90,
    "batch_size": 256,
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "schedule": "multistep",
    "milestones": (1 / 3, 2 / 3),
    "lr_gamma": 0.1,
}
# Dosovitskiy et al. 2021, ViT-B/16 trained on ImageNet-1k: Adam(W) 0.9/0.999, batch 4096, 300 epochs, peak LR 3e-3
# with a linear warm-up of 10k steps (~32 epochs at batch 4096) and cosine decay, weight decay 0.3.
VIT_B16 = {
    "optimizer": "adamw",
    "epochs": 300,
    "batch_size": 4096,
    "lr": 3e-3,
    "momentum": 0.9,
    "weight_decay": 0.3,
    "schedule": "cosine",
    "warmup_epochs": 32,
}

SPEC = SweepSpec(
    name="table_imagenet",
    title="AP on ImageNet: ResNet-50 and ViT-B/16, GP with and without AP",
    methods=(GP,),
    variants=(NO_AP, WITH_AP),
    presets={
        "smoke": Preset(
            description="offline check: generated 4-class folder of 32 px JPEGs, our resnet20 (ReLU) and vit_tiny "
            "(GELU) standing in for ResNet-50 and ViT-B/16, 1 cycle of 1 epoch, 1 seed",
            networks=("resnet20", "vit_tiny"),
            datasets=("folder",),
            seeds=1,
            trial={
                **IMAGENET_PRUNING,
                **SMOKE_DATA,
                "cycles": 1,
                "epochs": 1,
                "batch_size": 32,
                "lr": 0.05,
            },
            per_network={"vit_tiny": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05}},
        ),
        "paper": Preset(
            description="ImageNet-1k at 224 px: torchvision ResNet-50 (90 epochs) and ViT-B/16 (300 epochs), "
            "16 cycles with learning-rate rewinding, 3 seeds",
            networks=("tv:resnet50", "tv:vit_b_16"),
            datasets=("imagenet",),
            seeds=3,
            trial=IMAGENET_PRUNING,
            per_network={"tv:resnet50": RESNET50, "tv:vit_b_16": VIT_B16},
        ),
    },
)

if __name__ == "__main__":
    run_table(SPEC)
