"""Typed sweep options: the single source of every sweep's command-line flags and the parent run's params."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ap_core.config import TrialConfig
from ap_core.dataclass_flags import add_dataclass_arguments, dataclass_overrides
from ap_core.errors import ConfigError
from sweeps.engine.spec import SweepSpec

SEARCH_MODES = ("grid", "random", "optuna", "hyperopt", "staged")
SCHEDULERS = ("asha", "none")


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


def _switch(help: str) -> Any:
    """An action flag: present or absent, no value (`--resume`, not `--resume true`)."""
    return field(default=False, metadata={"help": help, "switch": True})


# `--gpus-per-trial auto`: trials per GPU measured at start (sweeps.engine.packing); a float no user can pass.
AUTO_GPUS = -1.0
GPU_SHARES = "auto, 0 (CPU only), a fraction <= 1 (trials share a GPU) or a whole number"


def parse_gpus_per_trial(text: str) -> float:
    """`auto` or a number, as typed after --gpus-per-trial (a negative number is not a way to say auto)."""
    if text == "auto":
        return AUTO_GPUS
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a GPU share; valid: {GPU_SHARES}") from None
    if not value >= 0:  # written so that nan fails too
        raise argparse.ArgumentTypeError(f"{text!r} is not a GPU share; valid: {GPU_SHARES}")
    return value


def show_gpus_per_trial(value: float) -> str:
    return "auto" if value == AUTO_GPUS else f"{value:g}"


class SweepError(Exception):
    """A sweep-level problem the user can fix (unreachable server, unresumable state...): one line, exit 2."""


@dataclass(frozen=True)
class SweepOptions:
    """How and where a sweep runs; the table it produces is fixed by the sweep module and its preset."""

    preset: str = _opt("", "protocol preset (see --list); empty: the sweep's default preset")
    name: str = _opt(
        "", "sweep name = MLflow experiment and results subfolder; empty: <sweep>-<preset>-<protocol hash>"
    )
    networks: tuple[str, ...] = _opt((), "networks to sweep; none: the preset's")
    datasets: tuple[str, ...] = _opt((), "datasets to sweep; none: the preset's")
    methods: tuple[str, ...] = _opt(
        (), "methods to sweep: this table's labels, or any registered method of their kind (plugins too); none: all"
    )
    seeds: int = _opt(0, "number of seeds 1..N (0 = the preset's)")
    hparams: str = _opt("", "JSON file of tuned settings per network and method (from sweeps/hparam_grid.py)")
    results_dir: str = _opt("results", "folder for tables, plots, sweep state and the default MLflow store")
    address: str = _opt(
        "", "Ray cluster to join (host:port, or 'auto' for one `ray start`ed here); empty: a private local Ray"
    )
    num_cpus: int = _opt(0, "CPUs for a Ray started here (0 = all)")
    storage: str = _opt("", "Ray Tune storage: local folder, shared filesystem or s3://; empty: <results-dir>/ray")
    tracking_uri: str = _opt("", "MLflow tracking URI; empty: $MLFLOW_TRACKING_URI, else SQLite in the results folder")
    mlflow: bool = _opt(True, "log trials to MLflow (false: Tune only, e.g. to measure overhead)")
    reuse: bool = field(
        default=True,
        metadata={
            "help": "share finished cycles through the cycle store (<storage>/cycle-store): a dense cycle trained "
            "once for every trial that shares it, a stored trial not trained again (--no-reuse: train everything)",
            "negatable": True,
        },
    )
    cpus_per_trial: float = _opt(1.0, "CPUs reserved per trial")
    gpus_per_trial: float = field(
        default=AUTO_GPUS,
        metadata={
            "help": "GPUs per trial; fractions share a GPU between trials (e.g. 0.25), 0 runs on CPU; auto: as many "
            "trials per GPU as the networks' measured memory allows, CPU where there is no GPU",
            "parse": parse_gpus_per_trial,
            "show": show_gpus_per_trial,
        },
    )
    workers_per_trial: int = _opt(
        1,
        "data-parallel workers per trial (Ray Train; across nodes too), each with --cpus-per-trial CPUs and "
        "--gpus-per-trial GPUs (0 or whole GPUs; auto: 1 where there are GPUs); the global batch is the same",
    )
    max_concurrent: int = _opt(0, "most trials running at once (0 = as many as resources allow)")
    max_failures: int = _opt(1, "retries of a failing trial before it is recorded FAILED")
    resume: bool = _switch("continue this sweep's last invocation (finished trials are not rerun); refused if none")
    overwrite: bool = _switch("start the sweep over in its folder, even when it holds another protocol's results")
    dry_run: bool = _switch("print every trial, the count and the epochs of work; start nothing")
    estimate: bool = _switch("with --dry-run: time a short epoch per network here and print the compute hours")
    epoch_seconds: float = _opt(
        0.0, "seconds per training epoch for the expected device-hours (0: measured by --estimate, else recorded)"
    )
    confirm_hours: float = _opt(24.0, "a sweep expected to take more device-hours than this asks before it starts")
    yes: bool = _switch("start a sweep above --confirm-hours without asking (without a terminal it is refused)")
    list: bool = _switch("list networks, datasets, methods and presets, then exit")
    progress: bool = _opt(True, "show an overall progress bar with ETA and trials done/running/failed")
    verbose: bool = _switch("also show Tune's live trial tables and Ray's log lines")
    levels: tuple[float, ...] = _opt(
        (),
        "weights-remaining levels (%) the printed and LaTeX tables show, each taken to the nearest level of the "
        "sweep; none: 7 spread evenly, 10.7 among them (files hold all)",
    )
    pool_below: float = _opt(
        10.7, "pooled rows: the paired difference averaged over the levels at or below this % of weights remaining"
    )

    @property
    def shares_cycles(self) -> bool:
        """Whether trials share cycles through the cycle store: asked for, and not data-parallel (not yet)."""
        return self.reuse and self.workers_per_trial == 1

    def __post_init__(self) -> None:
        if self.cpus_per_trial <= 0:
            raise ConfigError(f"cpus_per_trial {self.cpus_per_trial} must be > 0")
        gpus = self.gpus_per_trial
        whole = gpus > 1 and math.isfinite(gpus) and gpus == int(gpus)
        if gpus != AUTO_GPUS and not (0 <= gpus <= 1 or whole):
            raise ConfigError(f"gpus_per_trial {gpus} must be {GPU_SHARES}")
        if self.workers_per_trial < 1:
            raise ConfigError(f"workers_per_trial {self.workers_per_trial} must be >= 1")
        if self.workers_per_trial > 1 and gpus != AUTO_GPUS and gpus != int(gpus):
            raise ConfigError(
                f"gpus_per_trial {gpus:g} with workers_per_trial {self.workers_per_trial}: a data-parallel worker "
                "needs 0 or whole GPUs of its own"
            )
        if not (self.epoch_seconds >= 0 and self.confirm_hours >= 0):  # written so that nan fails too
            raise ConfigError(
                f"epoch_seconds {self.epoch_seconds} and confirm_hours {self.confirm_hours} must be numbers >= 0"
            )
        if not 0 < self.pool_below <= 100:  # written so that nan fails too
            raise ConfigError(f"pool_below {self.pool_below} must be a % of weights remaining in (0, 100]")
        for name in ("seeds", "max_concurrent", "max_failures", "num_cpus"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} {getattr(self, name)} must be >= 0")
        check_sweep_name(self.name)


# A sweep name is one path component (the results subfolder, its table files) and an MLflow experiment name.
SWEEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_sweep_name(name: str) -> None:
    """Refuse a `--name` that is not one plain path component: `../x` or `a/b` would write outside the results."""
    if name and not SWEEP_NAME.fullmatch(name):
        raise ConfigError(
            f"--name {name!r} must be one folder name: letters, digits, '.', '_' or '-', starting with a letter or "
            "digit, at most 128 characters (no '/', no '..')"
        )


@dataclass(frozen=True)
class SearchOptions:
    """Options of hyperparameter-search sweeps (sweeps/hparam_grid.py)."""

    search: str = _opt(
        "grid",
        f"how Tune picks points: {'/'.join(SEARCH_MODES)} (optuna/hyperopt learn from earlier points; staged: every "
        "point's dense cycle once for all methods, then the full schedule for the best --top-k)",
    )
    num_samples: int = _opt(0, "points per network and method for every search but grid (0 = 100, or the whole space)")
    search_seed: int = _opt(0, "seed of the random draws and of the search algorithm")
    scheduler: str = _opt("asha", f"trial scheduler: {'/'.join(SCHEDULERS)} (asha stops weak points early)")
    grace_period: int = _opt(
        2, "ASHA: the first rung, in cycles of the longest schedule: the epochs every point trains before it can stop"
    )
    reduction_factor: int = _opt(4, "ASHA: keep the best 1/N at each rung")
    top_k: int = _opt(5, "staged search: points per network and method that run the full pruning schedule")
    output: str = _opt("", "where to write the best settings; empty: <results-dir>/<name>/best_hparams.json")

    def __post_init__(self) -> None:
        if self.search not in SEARCH_MODES:
            raise ConfigError(f"unknown search {self.search!r}; valid: {', '.join(SEARCH_MODES)}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"unknown scheduler {self.scheduler!r}; valid: {', '.join(SCHEDULERS)}")
        if self.num_samples < 0 or self.grace_period < 1 or self.reduction_factor < 2 or self.top_k < 1:
            raise ConfigError(
                f"num_samples {self.num_samples} must be >= 0, grace_period {self.grace_period} >= 1, "
                f"reduction_factor {self.reduction_factor} >= 2, top_k {self.top_k} >= 1"
            )


# TrialConfig fields a sweep's axes decide; every other field can be overridden for all trials at once.
AXIS_FIELDS = ("model", "dataset", "method", "ap", "seed")


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's default prints usage first: keep it to one line
        raise ConfigError(message)


def build_parser(spec: SweepSpec) -> argparse.ArgumentParser:
    """The sweep's flags; `--help` shows the default preset's values where the preset sets them."""
    parser = _OneLineParser(description=spec.title, allow_abbrev=False)
    presets = f"{spec.default_preset}; presets: {', '.join(spec.presets)} (--list describes them)"
    add_dataclass_arguments(parser.add_argument_group("sweep"), SweepOptions, shown_defaults={"preset": presets})
    if spec.search is not None:
        add_dataclass_arguments(parser.add_argument_group("search"), SearchOptions)
    add_dataclass_arguments(
        parser.add_argument_group("trial settings (override the preset for every trial)"),
        TrialConfig,
        skip=AXIS_FIELDS,
        shown_defaults=preset_defaults(spec),
    )
    return parser


def preset_defaults(spec: SweepSpec) -> dict[str, str]:
    """What the default preset sets, as `--help` should show it (read from the preset, nothing validated)."""
    name = spec.default_preset
    preset = spec.presets[name]
    shown = {key: f"{value} in preset {name}" for key, value in preset.trial.items()}
    for recipe in preset.per_network.values():
        shown.update({key: f"set per network by preset {name}" for key in recipe})
    return shown


@dataclass(frozen=True)
class ParsedArgs:
    options: SweepOptions
    search: SearchOptions | None  # only for search sweeps (hparam_grid.py)
    overrides: dict[str, Any]


def parse_args(argv: list[str] | None, spec: SweepSpec) -> ParsedArgs:
    """Parse a sweep command line; raises ConfigError with argparse's or the dataclasses' one-line message."""
    with_search = spec.search is not None
    namespace = build_parser(spec).parse_args(argv)
    overrides = dataclass_overrides(namespace, TrialConfig)
    return ParsedArgs(
        SweepOptions(**dataclass_overrides(namespace, SweepOptions)),
        SearchOptions(**dataclass_overrides(namespace, SearchOptions)) if with_search else None,
        overrides,
    )


def flat_options(parsed: ParsedArgs) -> dict[str, str]:
    """Sweep options and overrides as MLflow params of the parent run."""
    values = dataclasses.asdict(parsed.options)
    if parsed.search is not None:
        values.update(dataclasses.asdict(parsed.search))
    values.update({f"override.{k}": v for k, v in parsed.overrides.items()})
    return {k: ",".join(map(str, v)) if isinstance(v, tuple) else str(v) for k, v in values.items()}
