"""Learning-rate rewinding (Renda et al. 2020) with and without AP, next to fine-tuning.

LRR keeps the trained weights after each prune and replays the original learning-rate schedule; FT keeps them and
trains at a small constant rate. Renda et al.'s recipe: 182 epochs, lr 0.1 x0.1 at epochs 91 and 136, wd 2e-4.

    python sweeps/table_lrr.py                  # smoke preset (digits + mlp)
    python sweeps/table_lrr.py --preset paper   # CIFAR-10, ResNet-20 and VGG-19, 5 seeds
"""

from sweeps.engine.driver import main
from sweeps.engine.spec import NO_AP, WITH_AP, AxisValue, SweepSpec
from sweeps.presets import PAPER_CIFAR10, SMOKE

LRR = AxisValue("LRR", "lrr", {"method": "global_magnitude", "retraining": "lr_rewind", "rewind_step": 0})
FT = AxisValue("FT", "ft", {"method": "global_magnitude", "retraining": "finetune"})

RENDA_RECIPE = {"epochs": 182, "milestones": (91 / 182, 136 / 182), "weight_decay": 2e-4}

SPEC = SweepSpec(
    name="table_lrr",
    title="Learning-rate rewinding (LRR) and fine-tuning (FT) with and without AP",
    methods=(LRR, FT),
    variants=(NO_AP, WITH_AP),
    presets={
        "paper": PAPER_CIFAR10.replace(trial={**PAPER_CIFAR10.trial, **RENDA_RECIPE}),
        "smoke": SMOKE,
    },
)

if __name__ == "__main__":
    main(SPEC)
