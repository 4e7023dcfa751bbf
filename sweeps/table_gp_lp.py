"""GP and LP on the CIFAR networks: global vs layer-wise magnitude pruning, each with and without AP.

python sweeps/table_gp_lp.py                  # smoke preset (digits + mlp)
python sweeps/table_gp_lp.py --preset paper   # CIFAR-10 and CIFAR-100, ResNet-20 and VGG-19, 5 seeds
"""

from sweeps.engine.driver import main
from sweeps.engine.spec import GP, LP, NO_AP, WITH_AP, SweepSpec
from sweeps.presets import PAPER_CIFAR, SMOKE

SPEC = SweepSpec(
    name="table_gp_lp",
    title="Global (GP) and layer-wise (LP) magnitude pruning with and without AP on CIFAR",
    methods=(GP, LP),
    variants=(NO_AP, WITH_AP),
    presets={"smoke": SMOKE, "paper": PAPER_CIFAR},
)

if __name__ == "__main__":
    main(SPEC)
