"""What a sweep is: axes, presets and the planned trials they expand to.

A table module declares a `SweepSpec` (its axes at the top, its presets below) and hands it to the shared driver.
Expansion into `PlannedTrial`s happens here, without Ray or MLflow, so `--dry-run`, validation and the real run
all see exactly the same list of trials.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import random
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from ap_core import TrialConfig
from ap_core.errors import ConfigError


def _copy(mapping: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A private copy, so specs never share (and mutate) a caller's dict; plain dicts pickle for Ray."""
    return dict(mapping or {})


@dataclass(frozen=True)
class Variant:
    """One value of a table axis: a label for tables, a tag for run names, and the TrialConfig it implies."""

    label: str
    tag: str
    overrides: Mapping[str, Any] = field(default_factory=_copy)

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", _copy(self.overrides))


# The variants most tables share.
GP = Variant("GP", "gp", {"method": "global_magnitude"})
LP = Variant("LP", "lp", {"method": "layerwise_magnitude"})
NO_AP = Variant("no AP", "noap", {"ap": False})
WITH_AP = Variant("AP", "ap", {"ap": True})


@dataclass(frozen=True)
class SearchSpace:
    """A hyperparameter search over TrialConfig fields (the paper's grid): one Tune experiment per group."""

    axes: Mapping[str, tuple[Any, ...]]

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes", _copy({k: tuple(v) for k, v in self.axes.items()}))

    @property
    def size(self) -> int:
        size = 1
        for values in self.axes.values():
            size *= len(values)
        return size

    def points(self, mode: str, num_samples: int, seed: int = 0) -> list[dict[str, Any]]:
        """Every grid point (`grid`), or `num_samples` distinct points drawn uniformly (`random`)."""
        keys = list(self.axes)
        grid = [dict(zip(keys, values, strict=True)) for values in itertools.product(*self.axes.values())]
        if mode == "grid":
            return grid
        return random.Random(seed).sample(grid, min(num_samples, len(grid)))


@dataclass(frozen=True)
class Preset:
    """A named protocol: networks, datasets, seeds, the TrialConfig recipe; optionally a subset of the
    sweep's methods (labels), its own settings axis and a smaller search space."""

    description: str
    networks: tuple[str, ...]
    datasets: tuple[str, ...]
    seeds: int
    trial: Mapping[str, Any] = field(default_factory=_copy)
    per_network: Mapping[str, Mapping[str, Any]] = field(default_factory=_copy)
    methods: tuple[str, ...] = ()
    search: SearchSpace | None = None
    settings: tuple[Variant, ...] = ()  # replaces the sweep's settings axis (e.g. fewer lambdas for a smoke run)

    def __post_init__(self) -> None:
        object.__setattr__(self, "trial", _copy(self.trial))
        object.__setattr__(self, "per_network", _copy({k: _copy(v) for k, v in self.per_network.items()}))

    def replace(self, **changes: Any) -> Preset:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class SweepSpec:
    """A table (or search) the paper reports, as axes x presets.

    `variants` are compared within each method; the first one is the baseline the Delta rows subtract.
    `settings` is an optional further axis (a channel ratio, DemP's lambda), a table column each.
    `search` turns the sweep into a hyperparameter search (one Tune experiment per network x method).
    `table(rows, plan) -> SweepTable` and `figure(rows, title) -> Figure` replace the default weights-remaining
    table and comparison plot (sweeps/result_table.py, sweeps/plots.py) for sweeps whose results read otherwise.
    """

    name: str
    title: str
    methods: tuple[Variant, ...]
    presets: Mapping[str, Preset]
    variants: tuple[Variant, ...] = (NO_AP, WITH_AP)
    default_preset: str = "smoke"
    search: SearchSpace | None = None
    settings: tuple[Variant, ...] = ()
    table: Callable[..., Any] | None = None
    figure: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "presets", _copy(self.presets))

    def preset(self, name: str) -> Preset:
        try:
            return self.presets[name]
        except KeyError:
            raise ConfigError(f"unknown preset {name!r}; valid: {', '.join(self.presets)}") from None

    def select_methods(self, labels: tuple[str, ...]) -> tuple[Variant, ...]:
        """The methods named on the command line (by label or tag, any case); all of them when none."""
        if not labels:
            return self.methods
        by_name = {m.label.lower(): m for m in self.methods} | {m.tag.lower(): m for m in self.methods}
        chosen: dict[str, Variant] = {}
        for label in labels:
            if label.lower() not in by_name:
                valid = ", ".join(m.label for m in self.methods)
                raise ConfigError(f"unknown method {label!r} for sweep {self.name}; valid: {valid}")
            method = by_name[label.lower()]
            chosen[method.label] = method
        return tuple(chosen.values())


@dataclass(frozen=True)
class PlannedTrial:
    """One trial of a sweep: its readable unique name, the table labels it belongs to, and its config."""

    name: str
    group: str  # Tune experiment it runs in ("" for table sweeps: one experiment)
    labels: Mapping[str, Any]  # dataset, network, method, variant, seed
    config: TrialConfig

    @property
    def epochs(self) -> int:
        """Training epochs this trial runs in total (dense cycle included)."""
        return (self.config.cycles + 1) * self.config.epochs

    def params(self) -> dict[str, str]:
        """The flattened TrialConfig as strings, for MLflow params (`method_options.alpha` for method options)."""
        flat: dict[str, str] = {}
        for key, value in self.config.to_dict().items():
            if isinstance(value, dict):
                flat.update({f"{key}.{k}": str(v) for k, v in value.items()})
            else:
                flat[key] = ",".join(str(x) for x in value) if isinstance(value, tuple) else str(value)
        return flat


@dataclass(frozen=True)
class SweepPlan:
    """Everything a sweep will run, decided before Ray starts."""

    spec: SweepSpec
    preset_name: str
    trials: tuple[PlannedTrial, ...]
    seeds: int
    search: SearchSpace | None = None

    @property
    def groups(self) -> list[str]:
        return list(dict.fromkeys(t.group for t in self.trials))

    def by_name(self) -> dict[str, PlannedTrial]:
        return {t.name: t for t in self.trials}

    def fingerprint(self, ignore: Collection[str] = ()) -> str:
        """Changes whenever any trial's name or config (but the `ignore`d fields) does."""
        payload = json.dumps(
            [[t.name, {k: v for k, v in t.config.to_dict().items() if k not in ignore}] for t in self.trials],
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @property
    def total_epochs(self) -> int:
        return sum(t.epochs for t in self.trials)


def expand(
    spec: SweepSpec,
    preset_name: str,
    *,
    networks: tuple[str, ...] = (),
    datasets: tuple[str, ...] = (),
    methods: tuple[str, ...] = (),
    seeds: int = 0,
    hparams: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    overrides: Mapping[str, Any] | None = None,
    search_mode: str = "grid",
    num_samples: int = 0,
) -> SweepPlan:
    """Expand the spec's axes into validated trials; raises ConfigError naming the first bad value.

    Settings are layered, later winning: preset recipe, method, variant, setting, per-network recipe, `--hparams`
    file entry for (network, pruning method), command-line overrides, then the axes themselves; `method_options`
    are merged option by option across the layers.
    """
    preset = spec.preset(preset_name)
    for axis, values in (("networks", networks), ("datasets", datasets), ("methods", methods)):
        repeated = next((v for v in values if values.count(v) > 1), None)
        if repeated is not None:
            raise ConfigError(f"--{axis} names {repeated!r} twice; give each value once (use --seeds for repeats)")
    networks = networks or preset.networks
    datasets = datasets or preset.datasets
    chosen_methods = spec.select_methods(methods or preset.methods)
    search = preset.search or spec.search
    seed_count = seeds or preset.seeds
    if seed_count < 1:
        raise ConfigError(f"seeds {seed_count} must be >= 1")
    settings = preset.settings or spec.settings or (Variant("", ""),)
    # Count before building anything: a typo like --seeds 100000000 must not hang the planner.
    size = len(datasets) * len(networks) * len(chosen_methods) * len(spec.variants) * len(settings) * seed_count
    points_count = min(num_samples, search.size) if search is not None and search_mode == "random" else None
    size *= (search.size if points_count is None else points_count) if search is not None else 1
    if size > MAX_TRIALS:
        raise ConfigError(
            f"this sweep would plan {size} trials (seeds {seed_count}); at most {MAX_TRIALS}: "
            "lower --seeds or narrow --networks/--datasets/--methods"
        )
    points: list[dict[str, Any]] = [{}]
    if search is not None:
        points = search.points(search_mode, num_samples)
    trials = []
    for dataset, network, method, variant, setting in itertools.product(
        datasets, networks, chosen_methods, spec.variants, settings
    ):
        recipe = _layered(preset.trial, method.overrides, variant.overrides, setting.overrides)
        recipe = _layered(recipe, preset.per_network.get(network, {}))
        pruning_method = recipe.get("method", TrialConfig.method)
        recipe = _layered(recipe, (hparams or {}).get(network, {}).get(pruning_method, {}), overrides or {})
        group = f"{dataset}-{network}-{method.tag}" if search is not None else ""
        for seed, point in itertools.product(range(1, seed_count + 1), points):
            config = TrialConfig(**{**recipe, **point, "model": network, "dataset": dataset, "seed": seed})
            name = _trial_name(network, dataset, method, variant, setting, seed, point, multi_dataset=len(datasets) > 1)
            labels = {
                "dataset": dataset,
                "network": network,
                "method": method.label,
                "variant": variant.label,
                "seed": seed,
            }
            if setting.label:
                labels["setting"] = setting.label
            trials.append(PlannedTrial(name, group, _copy(labels), config))
    return SweepPlan(spec, preset_name, tuple(trials), seed_count, search)


# A bound on one sweep's trials: the paper's full grid is 22,000; planning ten times that still takes seconds.
MAX_TRIALS = 250_000


def _layered(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Later layers win, except that `method_options` mappings are merged key by key."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key == "method_options" and isinstance(value, Mapping):
                merged[key] = {**merged.get(key, {}), **value}
            else:
                merged[key] = value
    return merged


def _trial_name(
    network: str,
    dataset: str,
    method: Variant,
    variant: Variant,
    setting: Variant,
    seed: int,
    point: Mapping[str, Any],
    multi_dataset: bool,
) -> str:
    """`resnet20-gp-ap-seed1`; a setting adds its tag (`vgg16-rni-r90-ap-seed1`), search trials their point
    (`mlp-gp-bs64-lr0.011-ep80-seed1`)."""
    parts = [network, dataset if multi_dataset else "", method.tag, setting.tag, variant.tag]
    parts += [
        f"{_SHORT_KEYS.get(k, k)}{v:g}" if isinstance(v, float) else f"{_SHORT_KEYS.get(k, k)}{v}"
        for k, v in point.items()
    ]
    return "-".join(p for p in [*parts, f"seed{seed}"] if p)


_SHORT_KEYS = {"batch_size": "bs", "epochs": "ep"}
