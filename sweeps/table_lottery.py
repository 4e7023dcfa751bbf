"""Lottery-ticket rewinding (Frankle & Carbin 2019) with and without AP.

LTR rewinds the surviving weights to their initialisation after every cycle; LTR-late rewinds to an early
iteration k instead (Frankle et al. 2020), which the deeper networks need to find winning tickets.

    python sweeps/table_lottery.py                  # smoke preset (digits + mlp)
    python sweeps/table_lottery.py --preset paper   # CIFAR-10, ResNet-20 and VGG-19, 5 seeds
"""

from sweeps.engine.driver import main
from sweeps.engine.spec import NO_AP, WITH_AP, AxisValue, SweepSpec
from sweeps.presets import PAPER_CIFAR10, SMOKE

LTR = AxisValue("LTR", "ltr", {"method": "global_magnitude", "retraining": "rewind_init"})
LTR_LATE = AxisValue("LTR-late", "ltrlate", {"method": "global_magnitude", "retraining": "rewind_iteration"})

SPEC = SweepSpec(
    name="table_lottery",
    title="Lottery-ticket rewinding with and without AP",
    methods=(LTR, LTR_LATE),
    variants=(NO_AP, WITH_AP),
    presets={
        # k = 2000 steps is about 5 epochs at batch 128 on CIFAR-10 (rewinding "early in training").
        "paper": PAPER_CIFAR10.replace(trial={**PAPER_CIFAR10.trial, "rewind_step": 2000}),
        "smoke": SMOKE.replace(trial={**SMOKE.trial, "rewind_step": 20}),
    },
    default_preset="smoke",
)

if __name__ == "__main__":
    main(SPEC)
