"""Table 1 of the AP paper: global magnitude pruning (GP) with and without AP, per network.

Iterative pruning at 20% of the remaining weights per cycle, AP's share 2%; cells are test accuracy
mean +- std over seeds per level of weights remaining, with a Delta(AP) row.

    python sweeps/table1.py                  # smoke preset: digits + mlp, GP and LP, 3 seeds, minutes on a laptop
    python sweeps/table1.py --preset paper   # CIFAR-10, ResNet-20 and VGG-19, 5 seeds (GPU cluster)
"""

from sweeps.engine.driver import main
from sweeps.engine.spec import GP, LP, NO_AP, WITH_AP, SweepSpec
from sweeps.presets import PAPER_CIFAR10, SMOKE

SPEC = SweepSpec(
    name="table1",
    title="Table 1: magnitude pruning with and without AP (the paper's preset: GP; smoke adds LP)",
    methods=(GP, LP),
    variants=(NO_AP, WITH_AP),
    presets={
        "smoke": SMOKE,
        "paper": PAPER_CIFAR10.replace(methods=("GP",)),
    },
)

if __name__ == "__main__":
    main(SPEC)
