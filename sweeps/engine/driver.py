"""The one driver every sweep module shares: parse -> plan -> run on Ray Tune (tracked in MLflow) -> report.

Everything that can be wrong with the input (names, presets, the hparams file, paths, the tracking store, the
sweep's earlier state, missing data) is checked before Ray starts or anything is written; the Ray cluster and the
room it has for a trial are checked right after connecting, still before the first write. Ray, Tune and MLflow are
imported only once a sweep really runs, so `--help`, `--dry-run`, `--list` and input errors stay fast and start
nothing. Ctrl-C and SIGTERM stop a running sweep resumably (exit 130).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import shutil
import signal
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ap_core.config import RUNTIME_FIELDS
from ap_core.errors import ConfigError
from ap_core.paths import check_writable_dir, check_writable_file
from sweeps.engine import console_log, leftover_ray, preflight, state_signing, trial_checks
from sweeps.engine.console import print_choices, print_cost, print_plan, print_savings, quiet_libraries
from sweeps.engine.expected_cost import confirm, describe, expected_cost
from sweeps.engine.hparams_file import load_hparams
from sweeps.engine.options import AUTO_GPUS, ParsedArgs, SweepError, SweepOptions, flat_options, parse_args
from sweeps.engine.spec import SweepPlan, SweepSpec, expand
from sweeps.engine.sweep_state import (
    CYCLES_FILE,
    STATE_FILE,
    SweepState,
    check_not_moved,
    check_state_format,
    choose_tracking_uri,
    claim_sweep_dir,
    experiment_paths,
    new_stamp,
    state_to_continue,
)

if TYPE_CHECKING:
    from sweeps.engine.tracking import TrackingStore

EXIT_INPUT_ERROR = 2
EXIT_TRIALS_FAILED = 1
EXIT_LOGGING_INCOMPLETE = 3
EXIT_STORAGE_FULL = 3  # like a logging gap: nothing lost, `--resume` once there is room
EXIT_INTERRUPTED = 130
RESUME_HINT = "rerun the same command with --resume to continue"


def main(spec: SweepSpec, argv: Sequence[str] | None = None) -> None:
    """Command-line entry of a sweep module: one-line `error: ...` and exit 2 for any input problem."""
    try:
        code = run(spec, list(argv) if argv is not None else None)
    except (ConfigError, SweepError) as err:
        print(f"error: {err}", file=sys.stderr)
        code = EXIT_INPUT_ERROR
    except KeyboardInterrupt:  # outside Tune's own handling (setting up, writing the table): no traceback
        print(f"interrupted; {RESUME_HINT}", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except Exception as err:  # a full disk anywhere (a table, the SQLite store, Tune's state): one line, resumable
        if not is_disk_full(err):
            raise
        where = state_signing.FULL.get("path") or getattr(err, "filename", None) or "the results folder or --storage"
        print(f"error: {full_disk_message(str(where))}", file=sys.stderr)
        code = EXIT_STORAGE_FULL
    sys.exit(code)


def is_disk_full(err: BaseException) -> bool:
    return (isinstance(err, OSError) and err.errno == errno.ENOSPC) or any(
        text in str(err) for text in ("No space left on device", "database or disk is full")
    )


def full_disk_message(where: str, needs: str = "") -> str:
    """What is full, how much room is left there (and the sweep needs), and how to go on."""
    folder = Path(where)
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    room = f" ({shutil.disk_usage(folder).free / 2**20:.0f} MiB free{needs})" if folder.is_absolute() else ""
    return (
        f"no space left on the device holding {where}{room}; free some space or move "
        f"--results-dir/--storage, then {RESUME_HINT} (it continues from the last complete state)"
    )


def checkpoint_needs(storage: str, trials: int) -> str:
    """`; the sweep needs about N MiB`: two checkpoints kept per trial, sized by the largest written so far."""
    root = Path(storage)
    sizes = [sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) for d in root.glob("*/*/checkpoint_*")]
    return f"; its checkpoints need about {2 * max(sizes) * trials / 2**20:.0f} MiB" if sizes else ""


def run(spec: SweepSpec, argv: list[str] | None = None) -> int:
    """Run (or dry-run, list, resume) the sweep `spec` as the command line says; returns the exit status."""
    args = parse_args(argv, spec)
    if args.options.list:
        print_choices(spec)
        return 0
    if args.options.estimate and not args.options.dry_run:
        raise ConfigError("--estimate goes with --dry-run (it times a short epoch instead of running the sweep)")
    plan = plan_sweep(spec, args)
    cost = expected_cost(plan, args.search, args.options.reuse)
    if args.options.dry_run:
        print_plan(plan)
        if plan.search is None:
            print_savings(plan, args.options)
        if args.options.gpus_per_trial == AUTO_GPUS:
            from sweeps.engine.packing import dry_run_note

            print(dry_run_note(args.options))
        print(describe(cost, args.options, trial_device(args.options))[0])
        if args.options.estimate:
            print_cost(plan, cost)
        return 0
    if not args.options.resume:  # the user agreed to its cost when it started
        confirm(cost, args.options, trial_device(args.options))
    return execute(plan, args)


def trial_device(options: SweepOptions) -> str:
    """Where the trials will run, as the expected cost's epoch times are recorded: "cuda" or "cpu" (`auto`: a GPU
    on a cluster joined, else one here)."""
    if options.gpus_per_trial != AUTO_GPUS:
        return "cuda" if options.gpus_per_trial > 0 else "cpu"
    if options.address:
        return "cuda"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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
        top_k=args.search.top_k if args.search else 0,
    )
    if options.levels and plan.spec.table is None and plan.search is None:
        from sweeps.engine.result_table import expected_levels, nearest_levels  # pandas: not for --help

        nearest_levels(options.levels, expected_levels(plan), say=True)
    datasets = sorted({g.base.dataset for g in plan.search_groups})
    if len(datasets) > 1:
        # The best-settings file is keyed by network and method: runs on two datasets would overwrite each other.
        raise ConfigError(
            f"a hyperparameter search tunes one dataset at a time, got {', '.join(datasets)}; "
            f"pass --datasets {datasets[0]} (then again for the others, with --name)"
        )
    return plan


def execute(plan: SweepPlan, args: ParsedArgs) -> int:
    """Run the planned sweep: checks, state, parent run, Tune, table; returns the exit status.

    The sweep folder's lock is taken first, so the same sweep started twice is refused at once. Every check that
    can refuse the sweep (paths, tracking store, earlier state, data, what every trial would refuse, the Ray
    cluster and its resources) runs before the first write, so a refusal leaves nothing behind.
    """
    options = args.options
    name = options.name or default_name(plan)
    results_dir = Path(options.results_dir).resolve()
    sweep_dir = results_dir / name
    check_writable_dir(results_dir, "--results-dir")
    with claim_sweep_dir(sweep_dir):
        return execute_claimed(plan, args, name, results_dir, sweep_dir)


def execute_claimed(plan: SweepPlan, args: ParsedArgs, name: str, results_dir: Path, sweep_dir: Path) -> int:
    options = args.options
    if args.search and args.search.output:
        check_writable_file(Path(args.search.output), "--output")
    state = state_to_continue(sweep_dir, plan, options.resume, options.overwrite)
    if state is not None:
        check_not_moved(state, results_dir, sweep_dir / STATE_FILE)
    local_store = f"sqlite:///{results_dir / 'mlflow.db'}"  # MLflow's own default backend, in the results folder
    tracking_uri = choose_tracking_uri(options, state.tracking_uri if state else None, local_store)
    if state is not None and state.finished and (sweep_dir / CYCLES_FILE).exists():
        return reprint_finished(plan, args, name, sweep_dir, state)
    if state is not None:
        check_state_format(state, sweep_dir / STATE_FILE)
    leftover_ray.end_leftovers(sweep_dir)  # this sweep's last driver was killed: its private Ray's agents linger
    if not options.verbose:
        quiet_libraries()  # before ray is imported: it reads its log level then
    import ray

    from sweeps.engine import tracking, tracking_checks, tune_runner  # Ray and MLflow: only for a sweep that runs

    storage = preflight.resolve_storage(options.storage, results_dir)
    if state is not None:
        for path in state.experiments.values():  # Tune's state on storage: nothing unpickled unless ours
            state_signing.verify(path)
    if state is not None and not options.resume:
        print(f"continuing sweep {name} (same protocol, found {sweep_dir / STATE_FILE}); --overwrite starts it over")
    tracking.configure_client()
    store = None  # not logging
    if tracking_uri:
        tracking_checks.check_tracking_uri(tracking_uri)
        store = tracking.TrackingStore(tracking_uri)  # this invocation's one MLflow client, built on first use
        if state is not None and state.parent_run_id:
            store.check_parent_run(state.parent_run_id, sweep_dir / STATE_FILE)
    runtime = runtime_settings(plan)
    if not options.address:  # trials run on this machine: what they would refuse at start is refused now
        from ap_core.environment import check_compile_toolchain
        from ap_core.training import resolve_device

        check_compile_toolchain(str(runtime["torch_compile"]), resolve_device(str(runtime["device"])))
    datasets = load_datasets(plan)  # missing data fails here, before anything starts
    gpus_asked = options.gpus_per_trial > 0  # then the resource check below names what is missing
    trial_checks.check_planned_trials(plan, datasets, runtime, here=not options.address, gpus_asked=gpus_asked)

    if options.gpus_per_trial == AUTO_GPUS and args.overrides.get("device") == "cpu":
        options = dataclasses.replace(options, gpus_per_trial=0.0)  # CPU trials asked for: nothing to measure

    previous = signal.getsignal(signal.SIGTERM)
    try:
        gpus_per_trial = tune_runner.connect(options, plan, datasets)
        # `auto` resolved: Tune's resources and the parent run's flags carry the number from here on
        args = dataclasses.replace(args, options=dataclasses.replace(options, gpus_per_trial=gpus_per_trial))
        if options.gpus_per_trial == AUTO_GPUS and gpus_per_trial > 0:  # planned as CPU trials while `auto`
            plan = plan_sweep(plan.spec, args)
            runtime = runtime_settings(plan)
        trial_checks.check_trials_get_their_device(runtime, gpus_per_trial)
        # `kill`, `timeout`, `docker stop` and batch schedulers send SIGTERM: stop as cleanly as Ctrl-C (exit 130,
        # runs marked KILLED, resumable) instead of dying with the runs left RUNNING. Set after ray.init, which
        # installs a handler of its own that just exits.
        signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
        if not options.address:
            leftover_ray.record_session(sweep_dir)
        with console_log.tracebacks_to_log(sweep_dir):  # one line per failed trial on screen
            return run_on_ray(plan, args, name, sweep_dir, storage, store, state, datasets, runtime, results_dir)
    finally:
        ray.shutdown()
        leftover_ray.forget_session(sweep_dir)
        signal.signal(signal.SIGTERM, previous)


def reprint_finished(plan: SweepPlan, args: ParsedArgs, name: str, sweep_dir: Path, state: SweepState) -> int:
    """A finished sweep run again (to see other levels, say): its table from the rows it saved, with nothing run."""
    import pandas as pd

    from sweeps.engine import report

    print(f"sweep {name} finished at {state.finished}: its results again, nothing re-run (--overwrite runs it again)")
    output = Path(args.search.output) if args.search and args.search.output else None
    rows = pd.read_csv(sweep_dir / CYCLES_FILE)
    report.write_report(rows, plan, sweep_dir, name, output, args.options.levels, args.options.pool_below)
    return 0


def default_name(plan: SweepPlan) -> str:
    """`<table>-<preset>-<protocol>`: a sweep whose trials compute anything else gets its own folder and experiment."""
    return f"{plan.spec.name}-{plan.preset_name}-{plan.fingerprint()[:8]}"


def run_on_ray(
    plan: SweepPlan,
    args: ParsedArgs,
    name: str,
    sweep_dir: Path,
    storage: str,
    store: TrackingStore | None,
    state: SweepState | None,
    datasets: dict[str, object],
    runtime: dict[str, object],
    results_dir: Path,
) -> int:
    """Open the parent run, write the state, run Tune, bring MLflow level with Tune, write the table."""
    from sweeps.engine import cycle_store, parent_view, report, staged, tracking, tune_runner
    from sweeps.engine.trial_logger import sync_with_tune

    options = args.options
    tracking_uri = store.uri if store is not None else ""
    fingerprint = plan.fingerprint()
    sweep_tags = {
        "sweep": name,
        "table": plan.spec.name,
        "preset": plan.preset_name,
        "protocol": fingerprint,
        **tracking.code_version(),
    }
    description = plan.spec.presets[plan.preset_name].description
    parent = None  # not logging
    if store is not None:
        parent = store.open_parent_run(
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
            # A SQLite store (ours or the user's) keeps artifacts in the results folder, not in ./mlruns wherever the
            # sweep was started; a server decides for itself.
            artifact_location=(
                (results_dir / "mlartifacts" / name).as_uri() if tracking_uri.startswith("sqlite:") else None
            ),
        )
    experiments = experiment_paths(plan, storage, name, new_stamp(), state.experiments if state else {})
    sweep_state = SweepState(
        name,
        fingerprint,
        tracking_uri,
        parent.experiment_id if parent else "",
        parent.run_id if parent else "",
        experiments,
        str(results_dir),
    )
    sweep_state.write(sweep_dir)

    status, artifacts, summary = "FAILED", [], {}
    try:
        shared_cycles = cycle_store.store_root(storage, options.shares_cycles)

        def run_stage(stage: SweepPlan) -> list[report.Outcome]:
            grids = tune_runner.run_experiments(
                stage,
                options,
                args.search,
                parent,
                dict(datasets) if stage.dense_stage else datasets,  # each run hands its own to Ray's object store
                experiments,
                runtime,
                sweep_tags,
                state is not None,
                shared_cycles,
            )
            return [outcome for grid in grids for outcome in report.trial_outcomes(grid, grid.experiment_path)]

        if plan.search_mode == "staged":
            outcomes, plan = staged.run_stages(plan, run_stage, report.collect)
        else:
            outcomes = run_stage(plan)
        rows, failed, unfinished = report.collect(outcomes, plan)
        not_logged = sync_with_tune(parent, plan.catalog(), sweep_tags, outcomes) if parent is not None else ""
        output = Path(args.search.output) if args.search and args.search.output else None
        artifacts, summary, table = report.write_report(
            rows, plan, sweep_dir, name, output, options.levels, options.pool_below
        )
        if parent is not None and not unfinished and not not_logged:
            figure = next((path for path in artifacts if path.name == report.COMPARISON_FILE), None)
            parent_view.log_results(parent, rows, plan, table, figure)  # once, when the sweep's results are whole
        if unfinished and state_signing.FULL:  # Tune's state could not be saved: stopped, resumable
            status = "KILLED"
            needs = checkpoint_needs(storage, plan.trial_count) if "://" not in storage else ""
            print(f"error: {full_disk_message(state_signing.FULL['path'], needs)}", file=sys.stderr)
            return EXIT_STORAGE_FULL
        if unfinished:
            status = "KILLED"
            print(f"interrupted with {unfinished} trial(s) unfinished; {RESUME_HINT}", file=sys.stderr)
            return EXIT_INTERRUPTED
        if not_logged:
            status = "KILLED"
            print(
                f"every trial ended, but MLflow at {tracking_uri} could not be reached to log them all "
                f"({not_logged}); once it answers again, {RESUME_HINT} (it logs what is missing)",
                file=sys.stderr,
            )
            return EXIT_LOGGING_INCOMPLETE
        status = "FINISHED"
        if not failed:
            dataclasses.replace(sweep_state, finished=datetime.now().isoformat(timespec="seconds")).write(sweep_dir)
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
            parent.store.finish_parent_run(parent, status, artifacts, summary)


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
            datasets[key] = load_dataset(config.dataset, config.runtime.data_dir, download=config.runtime.download)
    return datasets
