"""The one driver every sweep module shares: parse -> plan -> run on Ray Tune (tracked in MLflow) -> report.

Everything that can be wrong with the input (names, presets, the hparams file, the tracking server, missing data)
is checked before Ray starts or anything is written. Ray, Tune and MLflow are imported only once a sweep really
runs, so `--help`, `--dry-run`, `--list` and input errors stay fast and start nothing.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from ap_core.config import RUNTIME_FIELDS
from ap_core.errors import ConfigError
from sweeps.engine.console import print_choices, print_cost, print_plan, quiet_libraries
from sweeps.engine.hparams_file import load_hparams
from sweeps.engine.options import ParsedArgs, SweepError, flat_options, parse_args
from sweeps.engine.spec import SweepPlan, SweepSpec, expand
from sweeps.engine.sweep_state import SweepState, experiment_paths, read_state

EXIT_INPUT_ERROR = 2
EXIT_TRIALS_FAILED = 1
EXIT_INTERRUPTED = 130


def main(spec: SweepSpec, argv: Sequence[str] | None = None) -> None:
    """Command-line entry of a sweep module: one-line `error: ...` and exit 2 for any input problem."""
    try:
        code = run(spec, list(argv) if argv is not None else None)
    except (ConfigError, SweepError) as err:
        print(f"error: {err}", file=sys.stderr)
        code = EXIT_INPUT_ERROR
    sys.exit(code)


def run(spec: SweepSpec, argv: list[str] | None = None) -> int:
    """Run (or dry-run, list, resume) the sweep `spec` as the command line says; returns the exit status."""
    args = parse_args(argv, spec)
    if args.options.list:
        print_choices(spec)
        return 0
    if args.options.estimate and not args.options.dry_run:
        raise ConfigError("--estimate goes with --dry-run (it times a short epoch instead of running the sweep)")
    plan = plan_sweep(spec, args)
    if args.options.dry_run:
        print_plan(plan)
        if args.options.estimate:
            print_cost(plan)
        return 0
    return execute(plan, args)


def plan_sweep(spec: SweepSpec, args: ParsedArgs) -> SweepPlan:
    options = args.options
    overrides = dict(args.overrides)
    overrides.setdefault("device", "cuda" if options.gpus_per_trial > 0 else "cpu")
    plan = expand(
        spec,
        options.preset or spec.default_preset,
        networks=options.networks,
        datasets=options.datasets,
        methods=options.methods,
        seeds=options.seeds,
        hparams=load_hparams(options.hparams) if options.hparams else None,
        overrides=overrides,
        search_mode=args.search.search if args.search else "grid",
        num_samples=args.search.num_samples if args.search else 0,
    )
    if options.levels and plan.spec.table is None and plan.search is None:
        from sweeps.engine.result_table import expected_levels  # pandas: not for --help

        valid = expected_levels(plan)
        unknown = next((level for level in options.levels if round(level, 1) not in valid), None)
        if unknown is not None:
            raise ConfigError(f"--levels {unknown:g} is not a level of this sweep; valid: {', '.join(map(str, valid))}")
    datasets = sorted({g.base.dataset for g in plan.search_groups})
    if len(datasets) > 1:
        # The best-settings file is keyed by network and method: runs on two datasets would overwrite each other.
        raise ConfigError(
            f"a hyperparameter search tunes one dataset at a time, got {', '.join(datasets)}; "
            f"pass --datasets {datasets[0]} (then again for the others, with --name)"
        )
    return plan


def execute(plan: SweepPlan, args: ParsedArgs) -> int:
    """Run the planned sweep: state, parent run, Tune, table; returns the exit status."""
    options = args.options
    if not options.verbose:
        quiet_libraries()
    from sweeps.engine import parent_view, report, tracking, tune_runner  # Ray and MLflow: only when running

    name = options.name or f"{plan.spec.name}-{plan.preset_name}"
    results_dir = Path(options.results_dir).resolve()
    sweep_dir = results_dir / name
    storage = options.storage or str(results_dir / "ray")
    storage = storage if "://" in storage else str(Path(storage).resolve())  # Tune wants absolute paths
    state = read_state(sweep_dir, plan) if options.resume else None
    if options.resume and state is None:
        print(f"nothing to resume in {sweep_dir}; starting sweep {name} afresh")
    local_store = f"sqlite:///{results_dir / 'mlflow.db'}"  # MLflow's own default backend, in the results folder
    tracking_uri = tracking.choose_tracking_uri(options, state.tracking_uri if state else None, local_store)
    if tracking_uri:
        tracking.check_tracking_uri(tracking_uri)
    runtime = runtime_settings(plan)
    datasets = load_datasets(plan)  # missing data fails here, before anything starts

    sweep_dir.mkdir(parents=True, exist_ok=True)
    sweep_tags = {"sweep": name, "table": plan.spec.name, "preset": plan.preset_name, **tracking.code_version()}
    description = plan.spec.presets[plan.preset_name].description
    parent = tracking.open_parent_run(
        tracking_uri,
        state.experiment_id if state else "",
        state.parent_run_id if state else "",
        name,
        tags={
            **sweep_tags,
            "sweep.role": "parent",
            "sweep.flags": json.dumps(flat_options(args)),  # how it was run; the params say what it computes
            "mlflow.note.content": f"{plan.spec.title}: {description}",
        },
        params={**parent_view.protocol_params(plan), "trials": str(plan.trial_count), "preset": plan.preset_name},
        # The embedded store keeps artifacts next to it; a server decides for itself.
        artifact_location=(results_dir / "mlartifacts" / name).as_uri() if tracking_uri == local_store else None,
    )
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    experiments = experiment_paths(plan, storage, name, stamp, state.experiments if state else {})
    SweepState(
        name,
        plan.fingerprint(),
        tracking_uri,
        parent.experiment_id if parent else "",
        parent.run_id if parent else "",
        experiments,
    ).write(sweep_dir)

    status, artifacts, summary = "FAILED", [], {}
    try:
        grids = tune_runner.run_experiments(
            plan, options, args.search, parent, datasets, experiments, runtime, sweep_tags
        )
        rows, failed, unfinished = report.collect(grids, plan)
        if parent is not None and not unfinished:
            tracking.close_dangling_child_runs(parent, set(failed))
        output = Path(args.search.output) if args.search and args.search.output else None
        artifacts, summary, table = report.write_report(rows, plan, sweep_dir, name, output, options.levels)
        if parent is not None:
            parent_view.log_results(parent, rows, plan, table)
        if unfinished:
            status = "KILLED"
            print(f"interrupted with {unfinished} trial(s) unfinished; rerun the same command with --resume")
            return EXIT_INTERRUPTED
        status = "FINISHED"
        if failed:
            print(
                f"{len(failed)} of {plan.trial_count} trial(s) FAILED: {', '.join(failed)} "
                "(their errors: MLflow tag `error` and artifact error.txt, or error.txt in the Tune trial folder)",
                file=sys.stderr,
            )
        return EXIT_TRIALS_FAILED if failed else 0
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if parent is not None:
            tracking.finish_parent_run(parent, status, artifacts, summary)


def runtime_settings(plan: SweepPlan) -> dict[str, object]:
    """Where the trials run (device, threads, data folder): the same for every trial of a sweep."""
    configs = [t.config for t in plan.trials] + [g.base for g in plan.search_groups]
    settings = [c.runtime_settings() for c in configs]
    differing = next((k for k in RUNTIME_FIELDS if any(s[k] != settings[0][k] for s in settings)), None)
    if differing is not None:
        raise ConfigError(
            f"{differing} differs between this sweep's trials; set it once with --{differing.replace('_', '-')}"
        )
    return settings[0] if settings else {}


def load_datasets(plan: SweepPlan) -> dict[str, object]:
    """Load each distinct dataset once on the driver (this is also the check that its files exist)."""
    from ap_core import load_dataset
    from trainables.pruning_trial import dataset_key

    datasets: dict[str, object] = {}
    for config in [t.config for t in plan.trials] + [g.base for g in plan.search_groups]:
        key = dataset_key(config)
        if key not in datasets:
            datasets[key] = load_dataset(config.dataset, config.data_dir, download=config.download)
    return datasets
