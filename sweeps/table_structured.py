"""RNI's comparison table: Network Slimming vs RNI at 50% and 90% of channels pruned, with and without AP.

Each trial trains the dense net with its method's regulariser (cycle 0), removes the requested share of channels
(global threshold, at least 3 per layer; ResNets only inside their blocks) and fine-tunes with the same schedule
(cycle 1). With AP, that pruning cycle also prunes AP's share of negative, least-changed weights inside the
remaining channels. The printed table puts the authors' published numbers (no AP) beside ours.

    python sweeps/table_structured.py                  # smoke preset: digits, vgg_small and resnet20, minutes
    python sweeps/table_structured.py --preset paper   # CIFAR-10/100, VGG-16 and ResNet-56, 3 seeds (GPU cluster)
"""

from sweeps.engine.driver import main
from sweeps.engine.spec import NO_AP, WITH_AP, AxisValue, Preset, SweepSpec
from sweeps.engine.structured_report import params_figure, structured_table
from sweeps.presets import PAPER_RECIPE

# Nesterov for both: the RNI authors' code, which produced the reference numbers of both methods, uses it for both.
NS = AxisValue("NS", "ns", {"method": "network_slimming", "nesterov": True})
RNI = AxisValue("RNI", "rni", {"method": "rni", "nesterov": True})
RATIOS = (
    AxisValue("50%", "r50", {"method_options": {"channel_ratio": 0.5}}),
    AxisValue("90%", "r90", {"method_options": {"channel_ratio": 0.9}}),
)

# structured-methods.md: the CIFAR recipe of the other tables (SGD 0.1, momentum 0.9, wd 1e-4, x0.1 at 50% and 75% of
# 160 epochs) at batch 64, then the same schedule again for fine-tuning (learning-rate rewinding to step 0 keeps the
# trained weights): one pruning cycle.
RECIPE = {**PAPER_RECIPE, "cycles": 1, "batch_size": 64, "retraining": "lr_rewind", "rewind_step": 0}

SPEC = SweepSpec(
    name="table_structured",
    title="Channel pruning: Network Slimming vs RNI, with and without AP",
    methods=(NS, RNI),
    variants=(NO_AP, WITH_AP),
    settings=RATIOS,
    table=structured_table,
    figure=params_figure,
    presets={
        "smoke": Preset(
            description="offline check: digits, vgg_small and resnet20, 6 epochs per cycle, 2 seeds",
            networks=("vgg_small", "resnet20"),
            datasets=("digits",),
            seeds=2,
            trial={**RECIPE, "epochs": 6, "lr": 0.05, "dead_unit_window": 500},
        ),
        "paper": Preset(
            description="RNI's protocol on CIFAR-10 and CIFAR-100: VGG-16 and ResNet-56, 160 + 160 epochs, 3 seeds",
            networks=("vgg16", "resnet56"),
            datasets=("cifar10", "cifar100"),
            seeds=3,
            trial=RECIPE,
        ),
    },
)

if __name__ == "__main__":
    main(SPEC)
