"""DemP's accuracy / size curve: lambda swept, with and without AP, plotted as accuracy against parameters left.

Cycle 0 is DemP's run: a one-cycle L1 on the BatchNorm scales plus noise lets neurons die, and the dead channels are
removed every `prune_every` steps. Cycle 1 fine-tunes the smaller net with the same schedule; with AP, it starts by
pruning AP's share of negative, least-changed weights inside the remaining channels. The parent MLflow run holds the
table and `comparison.png` (accuracy against parameters remaining).

    python sweeps/table_demp.py                  # smoke preset: digits + vgg_small, minutes on a laptop
    python sweeps/table_demp.py --preset paper   # CIFAR-10, VGG-16, AdamW, lambda 1e-6 ... 0.125, 3 seeds
"""

from sweeps.engine.driver import main
from sweeps.engine.spec import NO_AP, WITH_AP, AxisValue, Preset, SweepSpec
from sweeps.engine.structured_report import demp_table, params_figure

DEMP = AxisValue("DemP", "demp", {"method": "demp"})


def lambdas(*values: float) -> tuple[AxisValue, ...]:
    return tuple(AxisValue(f"λ={v:g}", f"lam{v:g}", {"method_options": {"lam": v}}) for v in values)


# structured-methods.md: AdamW (0.9/0.999, wd 5e-4) at 5e-3 with a one-cycle LR, batch 256, about 80 epochs;
# dead channels found on ~1,500 un-augmented training images every 1,000 steps.
RECIPE = {
    "cycles": 1,
    "epochs": 80,
    "batch_size": 256,
    "optimizer": "adamw",
    "lr": 5e-3,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": "onecycle",
    "retraining": "lr_rewind",
    "rewind_step": 0,
    "dead_unit_window": 1500,
    "method_options": {"prune_every": 1000},
}

SPEC = SweepSpec(
    name="table_demp",
    title="DemP: accuracy against parameters remaining as lambda grows, with and without AP",
    methods=(DEMP,),
    variants=(NO_AP, WITH_AP),
    settings=lambdas(1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.125),
    table=demp_table,
    figure=params_figure,
    presets={
        "smoke": Preset(
            description="offline check: digits + vgg_small, three lambdas, 6 epochs per cycle, 2 seeds",
            networks=("vgg_small",),
            datasets=("digits",),
            seeds=2,
            settings=lambdas(1e-3, 1e-2, 5e-2),
            # A few hundred steps instead of tens of thousands: a larger LR lets the scales reach zero in time.
            trial={
                **RECIPE,
                "epochs": 6,
                "batch_size": 64,
                "lr": 0.03,
                "dead_unit_window": 500,
                "method_options": {"prune_every": 20},
            },
        ),
        "paper": Preset(
            description="DemP's VGG-16 setting on real CIFAR-10: AdamW, one-cycle, 80 + 80 epochs, 3 seeds",
            networks=("vgg16",),
            datasets=("cifar10",),
            seeds=3,
            trial=RECIPE,
        ),
    },
)

if __name__ == "__main__":
    main(SPEC)
