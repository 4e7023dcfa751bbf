"""What a sweep prints: `--list` (its choices), `--dry-run` (every planned trial or searched group), and nothing
else from the libraries unless `--verbose`."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sweeps.engine.expected_cost import ExpectedCost
from sweeps.engine.options import SweepOptions
from sweeps.engine.preflight import storage_location
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
        options = "".join(f" {k}={v}" for k, v in c.pruning.method_options.items())
        ap = f" ap_rate={c.ap.rate:g} ap_score={c.ap.score} ap_candidates={c.ap.candidates} ap_scope={c.ap.scope}"
        print(
            f"{trial.name}: model={c.model} dataset={c.dataset} method={c.pruning.method}{options} ap={c.ap.enabled}"
            f"{ap if c.ap.enabled else ''} "
            f"retraining={c.retraining.scheme} seed={c.seed} cycles={c.pruning.cycles} epochs={c.training.epochs} "
            f"batch_size={c.training.batch_size} lr={c.optimizer.lr:g}"
        )
    if plan.search is not None:
        axes = "; ".join(f"{k} {len(v)} values {v[0]}..{v[-1]}" for k, v in plan.search.axes.items())
        for group in plan.search_groups:
            c = group.base
            print(
                f"{group.key}: model={c.model} dataset={c.dataset} method={c.pruning.method} ap={c.ap.enabled} "
                f"cycles={c.pruning.cycles}; "
                f"{plan.search_mode} search over {axes}: {plan.points_per_group} points x {plan.seeds} seeds"
            )
    bound = " (an upper bound: every point to its last cycle)" if plan.search is not None else ""
    print(
        f"{plan.trial_count} trials in {max(len(plan.groups), 1)} Tune experiment(s); "
        f"{plan.total_epochs} training epochs in total{bound}"
    )


def print_savings(plan: SweepPlan, options: SweepOptions) -> None:
    """What the cycle store already holds of the plan and what sharing dense cycles saves (nothing is read but the
    store's list of signed entries)."""
    from sweeps.engine.cycle_store import savings, store_root, stored_keys

    storage = storage_location(options.storage, Path(options.results_dir).resolve())
    root = store_root(storage, options.shares_cycles)
    if root is None:
        if not options.reuse:
            print("reuse: off")
        elif not options.shares_cycles:
            print("reuse: off (data-parallel trials neither share nor store cycles yet)")
        else:
            print(f"reuse: off (the cycle store needs a filesystem, not {storage})")
        return
    found, _ = savings((t.config for t in plan.trials), stored_keys(root))
    print(f"{found.describe()}; store: {root}")


def quiet_libraries() -> None:
    """Leave the console to the progress bar and the table: Ray's and MLflow's INFO lines and Ray's hint on how
    to switch token authentication off (which it should stay) go; warnings and errors still show."""
    os.environ.setdefault("RAY_LOGGER_LEVEL", "warning")  # read when ray is first imported, workers inherit it
    # Tune's newer console output prints its experiment box and a TensorBoard hint even at verbose=0
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)


def print_cost(plan: SweepPlan, cost: ExpectedCost, sample_images: int = 1024) -> None:
    """Measure a short epoch per (network, dataset) here and print the compute hours of the plan's expected epochs.

    Each measured epoch trains on `sample_images` training images (masks, DNR and test evaluation included);
    its time per image, times the full training set and the expected epochs, is the estimate: for this machine's
    device, so run it where the trials will run (`--epoch-seconds` or the recorded figures stand in elsewhere).
    """
    import torch

    from ap_core import load_dataset
    from ap_core.cost import measure_epochs, probe_config
    from ap_core.training import resolve_device

    configs = {}
    for config in [t.config for t in plan.trials] + [g.base for g in plan.search_groups]:
        configs.setdefault((config.model, config.dataset), config)
    total_seconds = 0.0
    for key, config in configs.items():
        dataset = load_dataset(config.dataset, config.runtime.data_dir, download=config.runtime.download)
        probe = probe_config(config, dataset.num_train, sample_images)
        seconds = measure_epochs(probe, dataset, epochs=2).steady_epoch_seconds
        per_epoch = seconds * dataset.num_train / probe.training.max_train_samples
        total_seconds += per_epoch * cost.epochs.get(key, 0.0)
        batch = config.training.batch_size
        print(f"  {config.model} on {config.dataset}, batch {batch}: {per_epoch:.2f} s per epoch here")
    device = resolve_device(next(iter(configs.values())).runtime.device) if configs else torch.device("cpu")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"this machine's CPU ({os.cpu_count()})"
    amount = (
        f"{total_seconds / 3600:.1f} {device.type.upper()}-hours"
        if total_seconds >= 3600
        else (f"{total_seconds / 60:.1f} {device.type.upper()}-minutes")
    )
    print(
        f"estimated compute: {amount} on {where}, measured on {sample_images}-image epochs and scaled, for the "
        f"{cost.total:,.0f} epochs expected ({cost.how}); divide by the trials running at once"
    )
