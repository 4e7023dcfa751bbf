"""`ap-sweeps <sweep> [flags]`: every sweep module as one installed command (`python sweeps/<sweep>.py` and
`python -m sweeps.<sweep>` work too)."""

from __future__ import annotations

import importlib
import sys

from sweeps.engine.driver import EXIT_INPUT_ERROR
from sweeps.engine.driver import main as run_sweep_module

SWEEPS = {
    "table1": "Table 1: GP with and without AP",
    "table_gp_lp": "GP and LP with and without AP, CIFAR-10 and CIFAR-100",
    "table_lottery": "lottery-ticket rewinding with and without AP",
    "table_lrr": "learning-rate rewinding and fine-tuning with and without AP",
    "table_ap_ablation": "AP ablation: ranking score x candidate weights",
    "table_structured": "Network Slimming vs RNI, with and without AP",
    "table_demp": "DemP's lambda swept, with and without AP",
    "table_densenet_mobilenet": "DenseNet-40 and MobileNetV2: GP and LP with and without AP",
    "table_imagenet": "ImageNet: ResNet-50 and ViT-B/16 with and without AP",
    "table_demp_imagenet": "DemP on ResNet-50 (ImageNet) and ResNet-18 (CIFAR-10)",
    "hparam_grid": "the paper's hyperparameter grid (or Optuna / HyperOpt / random search over it)",
}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print("usage: ap-sweeps <sweep> [flags]   (ap-sweeps <sweep> --help for its flags)\n\nsweeps:")
        print("\n".join(f"  {name:<18} {about}" for name, about in SWEEPS.items()))
        sys.exit(0 if args else EXIT_INPUT_ERROR)
    if args[0] not in SWEEPS:
        print(f"error: unknown sweep {args[0]!r}; valid: {', '.join(SWEEPS)}", file=sys.stderr)
        sys.exit(EXIT_INPUT_ERROR)
    module = importlib.import_module(f"sweeps.{args[0]}")
    sys.argv[0] = f"ap-sweeps {args[0]}"
    run_sweep_module(module.SPEC, args[1:])
