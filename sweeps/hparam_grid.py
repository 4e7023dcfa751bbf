"""The paper's hyperparameter grid per network and pruning method, searched with Ray Tune's ASHA scheduler.

batch size {64, 128, 256, 512, 1024} x learning rate 0.001..0.099 (step 0.002) x epochs 80..500 (step 20):
5 x 50 x 22 = 5,500 points per (network, method), one Tune experiment each so ASHA compares like with like.
Every search holds out 10% of the training set: ASHA and the choice of the best point read the validation
accuracy (`val_acc`), never the test accuracy the tables report. The best point per network and method (highest
mean final validation accuracy over its seeds, among points whose every seed ran every cycle) is written
as JSON that every table sweep takes with `--hparams FILE`.

    python sweeps/hparam_grid.py --preset paper --dry-run             # 22,000 trials, nothing started
    python sweeps/hparam_grid.py                                      # smoke preset: a 2 x 2 x 2 grid on digits
    python sweeps/hparam_grid.py --preset paper --search random --num-samples 200 --address auto
"""

from sweeps.engine.driver import main
from sweeps.engine.spec import GP, LP, AxisValue, SearchSpace, SweepSpec
from sweeps.presets import PAPER_CIFAR10, SMOKE

PAPER_GRID = SearchSpace(
    {
        "batch_size": (64, 128, 256, 512, 1024),
        "lr": tuple(round(0.001 + 0.002 * i, 3) for i in range(50)),
        "epochs": tuple(range(80, 501, 20)),
    }
)
# Points are judged on a validation split held out of the training set, never on the test set (which the tables
# report): 10% of it, as is common for CIFAR.
VAL_FRACTION = 0.1
SMOKE_GRID = SearchSpace({"batch_size": (64, 128), "lr": (0.01, 0.05), "epochs": (2, 4)})

SPEC = SweepSpec(
    name="hparam_grid",
    title="Hyperparameter grid of the AP paper",
    methods=(GP, LP),
    variants=(AxisValue("no AP", "", {"ap": False}),),  # tuned for method X; AP rides along with its settings
    presets={
        "paper": PAPER_CIFAR10.replace(
            description="the paper's grid on CIFAR-10 (ResNet-20, VGG-19), 16 cycles, 1 seed, 10% held out",
            seeds=1,
            trial={**PAPER_CIFAR10.trial, "val_fraction": VAL_FRACTION},
        ),
        "smoke": SMOKE.replace(
            description="a 2 x 2 x 2 grid on digits + mlp, 4 cycles, 1 seed, 10% held out",
            seeds=1,
            trial={**SMOKE.trial, "cycles": 4, "val_fraction": VAL_FRACTION},
            search=SMOKE_GRID,
        ),
    },
    search=PAPER_GRID,
)

if __name__ == "__main__":
    main(SPEC)
