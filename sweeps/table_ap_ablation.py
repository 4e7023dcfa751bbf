"""The AP ablation (ap.md): which of AP's two choices matter, the score and the candidate weights.

AP proper ranks *negative* weights by how little they *changed* during the cycle; the ablations swap the score
for the magnitude |theta_T| and/or the candidates for all weights. Each is compared with GP alone.

    python sweeps/table_ap_ablation.py                  # smoke preset (digits + mlp)
    python sweeps/table_ap_ablation.py --preset paper   # CIFAR-10, ResNet-20 and VGG-19, 5 seeds
"""

from sweeps.engine.driver import main
from sweeps.engine.spec import GP, NO_AP, AxisValue, SweepSpec
from sweeps.presets import PAPER_CIFAR10, SMOKE


def ap_variant(label: str, tag: str, score: str, candidates: str) -> AxisValue:
    return AxisValue(label, tag, {"ap": True, "ap_score": score, "ap_candidates": candidates})


SPEC = SweepSpec(
    name="table_ap_ablation",
    title="AP ablation: ranking score x candidate weights, on top of GP",
    methods=(GP,),
    variants=(
        NO_AP,
        ap_variant("AP (change/negative)", "ap", "change", "negative"),
        ap_variant("magnitude/negative", "apmagneg", "magnitude", "negative"),
        ap_variant("change/all", "apchgall", "change", "all"),
        ap_variant("magnitude/all", "apmagall", "magnitude", "all"),
    ),
    presets={"paper": PAPER_CIFAR10, "smoke": SMOKE},
    note=(
        "'magnitude/all' equals 'no AP' in every cell by construction: AP's share, taken from all weights by "
        "magnitude, is simply more magnitude pruning, so the masks are the same."
    ),
)

if __name__ == "__main__":
    main(SPEC)
