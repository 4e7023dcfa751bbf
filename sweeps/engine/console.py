"""What a sweep prints: `--list` (its choices), `--dry-run` (every planned trial or searched group), and nothing
else from the libraries unless `--verbose`."""

from __future__ import annotations

import logging
import os

from sweeps.engine.spec import SweepPlan, SweepSpec


def print_choices(spec: SweepSpec) -> None:
    from ap_core import DATASETS, METHODS, MODELS  # the registries import torch: not for --help

    print(f"{spec.name}: {spec.title}")
    print(f"networks: {', '.join(MODELS.names())}")
    print(f"datasets: {', '.join(DATASETS.names())}")
    print(f"pruning methods: {', '.join(METHODS.names())}")
    print("methods of this sweep:")
    for method in spec.methods:
        print(f"  {method.label} ({method.tag}): {dict(method.overrides)}")
    print(f"compared: {', '.join(v.label for v in spec.variants)} (Delta against {spec.variants[0].label})")
    if spec.settings:
        print(f"settings (a column each): {', '.join(f'{s.label} {dict(s.overrides)}' for s in spec.settings)}")
    print("presets:")
    for name, preset in spec.presets.items():
        default = " [default]" if name == spec.default_preset else ""
        print(f"  {name}{default}: {preset.description}")
        print(f"    networks {', '.join(preset.networks)}; datasets {', '.join(preset.datasets)}; {preset.seeds} seeds")


def print_plan(plan: SweepPlan) -> None:
    """Every trial (or searched group) with its key settings, then the count and the training epochs."""
    for trial in plan.trials:
        c = trial.config
        options = "".join(f" {k}={v}" for k, v in c.method_options.items())
        ap = f" ap_rate={c.ap_rate:g} ap_score={c.ap_score} ap_candidates={c.ap_candidates} ap_scope={c.ap_scope}"
        print(
            f"{trial.name}: model={c.model} dataset={c.dataset} method={c.method}{options} ap={c.ap}"
            f"{ap if c.ap else ''} "
            f"retraining={c.retraining} seed={c.seed} cycles={c.cycles} epochs={c.epochs} "
            f"batch_size={c.batch_size} lr={c.lr:g}"
        )
    if plan.search is not None:
        axes = "; ".join(f"{k} {len(v)} values {v[0]}..{v[-1]}" for k, v in plan.search.axes.items())
        for group in plan.search_groups:
            c = group.base
            print(
                f"{group.key}: model={c.model} dataset={c.dataset} method={c.method} ap={c.ap} cycles={c.cycles}; "
                f"{plan.search_mode} search over {axes}: {plan.points_per_group} points x {plan.seeds} seeds"
            )
    bound = " (an upper bound: early stopping skips most of it)" if plan.search is not None else ""
    print(
        f"{plan.trial_count} trials in {max(len(plan.groups), 1)} Tune experiment(s); "
        f"{plan.total_epochs} training epochs in total{bound}"
    )


def quiet_libraries() -> None:
    """Leave the console to the progress bar and the table: Ray's and MLflow's INFO lines and Ray's hint on how
    to switch token authentication off (which it should stay) go; warnings and errors still show."""
    os.environ.setdefault("RAY_LOGGER_LEVEL", "warning")  # read when ray is first imported, workers inherit it
    # Tune's newer console output prints its experiment box and a TensorBoard hint even at verbose=0
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
