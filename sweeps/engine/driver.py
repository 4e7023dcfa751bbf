"""The one driver every sweep module shares: parse, validate, plan, run on Ray Tune, track in MLflow, tabulate.

Everything that can be wrong with the input (names, presets, the hparams file, the tracking server, missing data)
is checked before Ray starts or anything is written. Ray, Tune and MLflow are imported only once a sweep really
runs, so `--dry-run`, `--list` and input errors stay fast and start nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ap_core import DATASETS, METHODS, MODELS, load_dataset
from ap_core.errors import ConfigError
from ap_core.trial import RESUME_MAY_CHANGE
from sweeps.engine.hparams_file import Hparams, load_hparams, write_hparams
from sweeps.engine.options import ParsedArgs, SweepError, flat_options, parse_args
from sweeps.engine.spec import PlannedTrial, SweepPlan, SweepSpec, expand

if TYPE_CHECKING:
    from ray.tune import ResultGrid

    from sweeps.engine.trial_logger import SweepRun

EXIT_INPUT_ERROR = 2
EXIT_TRIALS_FAILED = 1
EXIT_INTERRUPTED = 130
STATE_FILE = "sweep.json"
# Per-cycle metrics the tables and plots read (older results without the structured axes lack the last three).
ROW_METRICS = (
    "cycle",
    "weights_remaining",
    "test_acc",
    "dnr",
    "params_remaining",
    "channels_remaining",
    "flops_remaining",
)


def main(spec: SweepSpec, argv: Sequence[str] | None = None) -> None:
    """Command-line entry of a sweep module: one-line `error: ...` and exit 2 for any input problem."""
    try:
        code = run_sweep(spec, list(argv) if argv is not None else None)
    except (ConfigError, SweepError) as err:
        print(f"error: {err}", file=sys.stderr)
        code = EXIT_INPUT_ERROR
    sys.exit(code)


def run_sweep(spec: SweepSpec, argv: list[str] | None = None) -> int:
    """Run (or dry-run, list, resume) the sweep `spec` as the command line says; returns the exit status."""
    args = parse_args(argv, spec.title, with_search=spec.search is not None)
    options = args.options
    if options.list:
        print_choices(spec)
        return 0
    plan = plan_sweep(spec, args)
    if options.dry_run:
        print_plan(plan)
        return 0
    return SweepRunner(plan, args).run()


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
    datasets = sorted({t.config.dataset for t in plan.trials})
    if plan.search is not None and len(datasets) > 1:
        # The best-settings file is keyed by network and method: runs on two datasets would overwrite each other.
        raise ConfigError(
            f"a hyperparameter search tunes one dataset at a time, got {', '.join(datasets)}; "
            f"pass --datasets {datasets[0]} (then again for the others, with --name)"
        )
    return plan


def print_choices(spec: SweepSpec) -> None:
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
    """Every trial with its key settings, then the count and the training epochs they add up to."""
    for trial in plan.trials:
        c = trial.config
        options = "".join(f" {k}={v}" for k, v in c.method_options.items())
        print(
            f"{trial.name}: model={c.model} dataset={c.dataset} method={c.method}{options} ap={c.ap} "
            f"retraining={c.retraining} seed={c.seed} cycles={c.cycles} epochs={c.epochs} "
            f"batch_size={c.batch_size} lr={c.lr:g}"
        )
    bound = " (an upper bound: early stopping skips most of it)" if plan.search is not None else ""
    print(
        f"{len(plan.trials)} trials in {max(len(plan.groups), 1)} Tune experiment(s); "
        f"{plan.total_epochs} training epochs in total{bound}"
    )


class SweepRunner:
    """One invocation of a sweep that actually runs: state, MLflow parent run, Ray, Tune, table."""

    def __init__(self, plan: SweepPlan, args: ParsedArgs) -> None:
        self.plan = plan
        self.args = args
        self.options = args.options
        self.name = self.options.name or f"{plan.spec.name}-{plan.preset_name}"
        self.results_dir = Path(self.options.results_dir).resolve()
        self.sweep_dir = self.results_dir / self.name
        storage = self.options.storage or str(self.results_dir / "ray")
        self.storage = storage if "://" in storage else str(Path(storage).resolve())  # Tune wants absolute paths
        self.plans = plan.by_name()
        # MLflow's own default backend (SQLite), kept in the results folder rather than the working directory.
        self._local_store = f"sqlite:///{self.results_dir / 'mlflow.db'}"

    def run(self) -> int:
        state = self._previous_state()
        tracking_uri = self._tracking_uri(state)
        if tracking_uri:
            from sweeps.engine.trial_logger import check_tracking_uri

            check_tracking_uri(tracking_uri)
        datasets = self._load_datasets()  # missing data fails here, before anything starts

        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        sweep_run = self._sweep_run(state, tracking_uri)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        experiments = dict(state["experiments"]) if state else {}
        for group in self.plan.groups:
            experiments.setdefault(
                group, f"{self.storage.rstrip('/')}/{self.name}{'-' + group if group else ''}-{stamp}"
            )
        self._write_state(sweep_run, experiments)

        status, artifacts, summary = "FAILED", [], {}
        try:
            grids = self._run_tune(sweep_run, datasets, experiments)
            rows, failed, unfinished = self._collect(grids)
            if sweep_run is not None and not unfinished:
                from sweeps.engine.trial_logger import close_dangling_child_runs

                close_dangling_child_runs(sweep_run, set(failed))
            artifacts, summary = self._report(rows)
            if unfinished:
                status = "KILLED"
                print(f"interrupted with {unfinished} trial(s) unfinished; rerun the same command with --resume")
                return EXIT_INTERRUPTED
            status = "FINISHED"
            if failed:
                print(
                    f"{len(failed)} of {len(self.plans)} trial(s) FAILED: {', '.join(failed)} "
                    "(their errors: MLflow tag `error` and artifact error.txt, or error.txt in the Tune trial folder)",
                    file=sys.stderr,
                )
            return EXIT_TRIALS_FAILED if failed else 0
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            if sweep_run is not None:
                from sweeps.engine.trial_logger import finish_parent_run

                finish_parent_run(sweep_run, status, artifacts, summary)

    # ---- before Ray -------------------------------------------------------------------------------------------

    def _previous_state(self) -> dict[str, Any] | None:
        """The state of this sweep's last invocation when resuming (None: start afresh)."""
        path = self.sweep_dir / STATE_FILE
        if not self.options.resume:
            return None
        if not path.exists():
            print(f"nothing to resume in {self.sweep_dir}; starting sweep {self.name} afresh")
            return None
        try:
            state = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise SweepError(f"cannot resume: {path} is not valid JSON ({err.msg})") from None
        if not isinstance(state, dict) or not isinstance(state.get("experiments"), dict):
            raise SweepError(f"cannot resume: {path} is not a sweep state file (no 'experiments' object)")
        if state.get("fingerprint") != fingerprint(self.plan):
            raise SweepError(
                f"cannot resume {self.name}: its trials changed since it started (preset, axes or settings); "
                "run without --resume to start it over"
            )
        return state

    def _tracking_uri(self, state: dict[str, Any] | None) -> str:
        """Where to log ("" = nowhere). A resumed sweep keeps logging where it started: Tune restores its logger."""
        if state is not None:
            started_on = state.get("tracking_uri", "")
            asked = self.options.tracking_uri if self.options.mlflow else ""
            if (asked and asked != started_on) or (not self.options.mlflow and started_on):
                raise SweepError(
                    f"cannot resume {self.name} with different MLflow logging: it started with "
                    f"{started_on or 'MLflow off'!r}; leave out --tracking-uri/--mlflow to continue as it began"
                )
            return started_on
        if not self.options.mlflow:
            return ""
        return self.options.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "") or self._local_store

    def _load_datasets(self) -> dict[str, Any]:
        """Load each distinct dataset once on the driver (this is also the check that its files exist)."""
        from trainables.pruning_trial import dataset_key

        datasets = {}
        for trial in self.plan.trials:
            key = dataset_key(trial.config)
            if key not in datasets:
                c = trial.config
                datasets[key] = load_dataset(c.dataset, c.data_dir, download=c.download)
        return datasets

    def _sweep_run(self, state: dict[str, Any] | None, tracking_uri: str) -> SweepRun | None:
        if not tracking_uri:
            return None
        from sweeps.engine.trial_logger import SweepRun, reopen_parent_run, start_parent_run

        if state and state.get("parent_run_id"):
            sweep_run = SweepRun(tracking_uri, state["experiment_id"], state["parent_run_id"])
            reopen_parent_run(sweep_run)
            return sweep_run
        # The embedded store keeps artifacts next to it; a server decides for itself.
        local = tracking_uri == self._local_store
        artifacts = (self.results_dir / "mlartifacts" / self.name).as_uri() if local else None
        description = self.plan.spec.presets[self.plan.preset_name].description
        tags = {
            **self._sweep_tags(),
            "sweep.role": "parent",
            "mlflow.note.content": f"{self.plan.spec.title}: {description}",
        }
        params = {**flat_options(self.args), "trials": str(len(self.plans)), "preset": self.plan.preset_name}
        stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        return start_parent_run(tracking_uri, self.name, artifacts, f"{self.name} {stamp}", tags, params)

    def _sweep_tags(self) -> dict[str, str]:
        return {"sweep": self.name, "table": self.plan.spec.name, "preset": self.plan.preset_name, **code_version()}

    def _write_state(self, sweep_run: SweepRun | None, experiments: dict[str, str]) -> None:
        state = {
            "sweep": self.name,
            "fingerprint": fingerprint(self.plan),
            "tracking_uri": sweep_run.tracking_uri if sweep_run else "",
            "experiment_id": sweep_run.experiment_id if sweep_run else "",
            "parent_run_id": sweep_run.parent_run_id if sweep_run else "",
            "experiments": experiments,
        }
        path = self.sweep_dir / STATE_FILE
        path.with_suffix(".tmp").write_text(json.dumps(state, indent=2) + "\n")
        path.with_suffix(".tmp").replace(path)

    # ---- Ray Tune ---------------------------------------------------------------------------------------------

    def _run_tune(
        self, sweep_run: SweepRun | None, datasets: dict[str, Any], experiments: dict[str, str]
    ) -> list[ResultGrid]:
        import ray

        # The snapshots forced by num_to_keep are intended; Tune would warn about them on every cycle.
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        if self.options.address:
            ray.init(address=self.options.address)
        else:  # "local": a fresh instance even when `ray start` left a cluster address on this machine
            ray.init(address="local", num_cpus=self.options.num_cpus or None, include_dashboard=False)
        try:
            dataset_refs = {key: ray.put(data) for key, data in datasets.items()}
            datasets.clear()  # the object store holds them now; free the driver's copies
            grids = []
            for group in self.plan.groups:
                trials = [t for t in self.plan.trials if t.group == group]
                grid = self._fit_group(group, trials, sweep_run, dataset_refs, experiments[group])
                grids.append(grid)
                if grid.num_terminated + grid.num_errors < len(grid):
                    break  # Tune caught Ctrl-C and returned: do not start the next group
            return grids
        finally:
            ray.shutdown()

    def _fit_group(
        self,
        group: str,
        trials: list[PlannedTrial],
        sweep_run: SweepRun | None,
        dataset_refs: dict[str, Any],
        path: str,
    ) -> ResultGrid:
        from ray import tune

        from sweeps.engine.progress import OverallProgress
        from trainables.pruning_trial import train_trial

        configs = {t.name: t.config.to_dict() for t in trials}
        trainable = tune.with_resources(
            tune.with_parameters(train_trial, plans=configs, datasets=dataset_refs),
            {"cpu": self.options.cpus_per_trial, "gpu": self.options.gpus_per_trial},
        )
        if self.options.resume and tune.Tuner.can_restore(path):
            print(f"resuming {path}")
            return tune.Tuner.restore(path, trainable=trainable).fit()

        callbacks: list[Any] = []
        if sweep_run is not None:
            from sweeps.engine.trial_logger import MlflowTrialLogger

            callbacks.append(MlflowTrialLogger(sweep_run, {t.name: t for t in trials}, self._sweep_tags()))
        if self.options.progress:
            callbacks.append(OverallProgress({t.name: t.config.cycles + 1 for t in trials}, group or self.name))
        storage_path, _, name = path.rpartition("/")
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search([t.name for t in trials])},
            tune_config=tune.TuneConfig(
                scheduler=self._scheduler(trials),
                max_concurrent_trials=self.options.max_concurrent or None,
                reuse_actors=True,  # a worker that finished one trial starts the next: torch stays imported
                trial_name_creator=tune_trial_name,
                trial_dirname_creator=tune_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage_path,
                callbacks=callbacks,
                failure_config=tune.FailureConfig(max_failures=self.options.max_failures),
                # Old checkpoints are deleted (a VGG-19 trial would otherwise keep GBs); Tune snapshots its
                # experiment state each time it does, which keeps --resume pointing at a checkpoint that exists.
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                verbose=1,  # Tune's live trial table, without a result box per trial
            ),
        )
        return tuner.fit()

    def _scheduler(self, trials: list[PlannedTrial]) -> Any:
        search = self.args.search
        if self.plan.search is None or search is None or search.scheduler == "none":
            return None
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(
            time_attr="training_iteration",
            metric="test_acc",
            mode="max",
            max_t=max(t.config.cycles + 1 for t in trials),
            grace_period=search.grace_period,
            reduction_factor=search.reduction_factor,
        )

    # ---- after Ray --------------------------------------------------------------------------------------------

    def _collect(self, grids: list[ResultGrid]) -> tuple[pd.DataFrame, list[str], int]:
        """Per-cycle rows of finished trials, the names of failed ones, and how many never finished."""
        frames, failed = [], []
        # Trials of groups never started (the sweep was interrupted before them) count as unfinished too.
        unfinished = len(self.plan.trials) - sum(grid.num_terminated + grid.num_errors for grid in grids)
        for grid in grids:
            for result in grid:
                name = result.config["trial"]
                if result.error is not None:
                    failed.append(name)
                    continue
                history = result.metrics_dataframe
                if history is None or history.empty or "cycle" not in history:
                    continue
                plan = self.plans[name]
                cycles = history.drop_duplicates("cycle", keep="last").sort_values("cycle")
                frame = cycles[[c for c in ROW_METRICS if c in cycles]].assign(
                    trial=name, group=plan.group, **plan.labels
                )
                frames.append(frame)
        # In plan order (not completion order), so tables and plots list variants and settings as declared.
        order = {name: index for index, name in enumerate(self.plans)}
        frames.sort(key=lambda frame: order[frame["trial"].iloc[0]])
        rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        if not rows.empty:
            rows["level"] = rows["weights_remaining"].round(1)
        return rows, sorted(failed), unfinished

    def _report(self, rows: pd.DataFrame) -> tuple[list[Path], dict[str, float]]:
        """Print and write the table (or the best search settings); returns the parent run's artifacts/metrics."""
        from sweeps.engine import plots
        from sweeps.engine.result_table import build_table

        spec = self.plan.spec
        artifacts: list[Path] = []
        rows_path = self.sweep_dir / "trial_cycles.csv"
        rows.to_csv(rows_path, index=False)
        artifacts.append(rows_path)
        if self.plan.search is not None:
            artifacts += self._write_best_settings(rows)
        else:
            table = (spec.table or build_table)(rows, self.plan)
            print(f"\n{table.title}\n\n{table.to_markdown()}\n")
            artifacts += table.write(self.sweep_dir, self.name)
        if not rows.empty:
            figure_path = self.sweep_dir / "comparison.png"
            plots.save((spec.figure or plots.comparison_figure)(rows, spec.title), str(figure_path))
            artifacts.append(figure_path)
        print(f"results in {self.sweep_dir}")
        finished = rows["trial"].nunique() if not rows.empty else 0
        return artifacts, {"trials": len(self.plans), "trials_finished": finished}

    def _write_best_settings(self, rows: pd.DataFrame) -> list[Path]:
        """Best point per (network, pruning method): highest final accuracy among trials that ran every cycle."""
        assert self.plan.search is not None
        keys = list(self.plan.search.axes)
        best: Hparams = {}
        summary = []
        if not rows.empty:
            finals = rows.sort_values("cycle").groupby("trial").tail(1)
            complete = finals[[row.cycle == self.plans[row.trial].config.cycles for row in finals.itertuples()]]
            for _, group in complete.groupby("group", sort=False):
                # A point is judged by its mean over seeds, and only once every seed of it has completed.
                points = group.assign(
                    point=[tuple(getattr(self.plans[t].config, k) for k in keys) for t in group.trial]
                )
                by_point = points.groupby("point")["test_acc"].agg(["mean", "count"])
                by_point = by_point[by_point["count"] == self.plan.seeds]
                if by_point.empty:
                    continue
                point = by_point["mean"].idxmax()
                winner = self.plans[points.loc[points["point"] == point, "trial"].iloc[0]]
                settings = dict(zip(keys, point, strict=True))
                best.setdefault(winner.config.model, {})[winner.config.method] = settings
                summary.append(
                    {
                        "trial": winner.name,
                        **winner.labels,
                        **settings,
                        "test_acc": float(by_point["mean"].max()),
                        "seeds": self.plan.seeds,
                        "complete_points": len(by_point),
                    }
                )
        path = Path(self.args.search.output) if self.args.search and self.args.search.output else None
        path = path or self.sweep_dir / "best_hparams.json"
        write_hparams(path, best)
        summary_path = self.sweep_dir / "best_hparams.csv"
        pd.DataFrame(summary).to_csv(summary_path, index=False)
        print(pd.DataFrame(summary).to_markdown(index=False) if summary else "no trial completed every cycle")
        print(f"best settings written to {path} (use: --hparams {path})")
        return [path, summary_path]


def fingerprint(plan: SweepPlan) -> str:
    """The plan's identity, ignoring settings a resumed trial may change (device, data folder)."""
    return plan.fingerprint(ignore=RESUME_MAY_CHANGE)


def tune_trial_name(trial: Any) -> str:
    return trial.config["trial"]


def tune_trial_dirname(trial: Any) -> str:
    return f"{trial.config['trial']}_{trial.trial_id}"


def code_version() -> dict[str, str]:
    """The git commit of the code (with `-dirty` for local changes), else the package version."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"code_version": metadata.version("ap-sweeps")}
    return {"code_version": commit[:12] + ("-dirty" if dirty else ""), "mlflow.source.git.commit": commit}
