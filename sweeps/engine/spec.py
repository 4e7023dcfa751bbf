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
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ap_core import TrialConfig
from ap_core.errors import ConfigError
from ap_core.settings import PruningSettings
from trainables.tune_config import TRIAL_NAME, trial_config


def _copy(mapping: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A private copy, so specs never share (and mutate) a caller's dict; plain dicts pickle for Ray."""
    return dict(mapping or {})


@dataclass(frozen=True)
class AxisValue:
    """One value of a table axis: a label for tables, a tag for run names, and the TrialConfig it implies."""

    label: str
    tag: str
    overrides: Mapping[str, Any] = field(default_factory=_copy)

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", _copy(self.overrides))


# The variants most tables share.
GP = AxisValue("GP", "gp", {"method": "global_magnitude"})
LP = AxisValue("LP", "lp", {"method": "layerwise_magnitude"})
NO_AP = AxisValue("no AP", "noap", {"ap": False})
WITH_AP = AxisValue("AP", "ap", {"ap": True})


@dataclass(frozen=True)
class SearchSpace:
    """A hyperparameter search over TrialConfig fields (the paper's grid): one Tune experiment per group.

    Each axis lists the values a field may take; `tune_space` turns them into Tune's own search primitives, so
    Tune's generators and search algorithms (Optuna, HyperOpt) draw the points.
    """

    axes: Mapping[str, tuple[Any, ...]]

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes", _copy({k: tuple(v) for k, v in self.axes.items()}))

    @property
    def size(self) -> int:
        size = 1
        for values in self.axes.values():
            size *= len(values)
        return size

    def tune_space(self, mode: str) -> dict[str, Any]:
        """Every grid point (`grid`: `tune.grid_search` per axis), else a categorical per axis to sample from."""
        from ray import tune

        if mode == "grid":
            return {k: tune.grid_search(list(v)) for k, v in self.axes.items()}
        return {k: tune.choice(list(v)) for k, v in self.axes.items()}

    def points_count(self, mode: str, num_samples: int) -> int:
        """Points a search of this mode tries: the whole grid, or `num_samples` drawn ones (which may repeat)."""
        return self.size if mode in ("grid", "staged") else num_samples


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
    settings: tuple[AxisValue, ...] = ()  # replaces the sweep's settings axis (e.g. fewer lambdas for a smoke run)

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
    `note` is printed under the table. `table(rows, plan) -> SweepTable` and `figure(rows, title) -> Figure`
    replace the default weights-remaining table and comparison plot (sweeps/engine/result_table.py,
    sweeps/engine/plots.py) for sweeps whose results read otherwise.
    """

    name: str
    title: str
    methods: tuple[AxisValue, ...]
    presets: Mapping[str, Preset]
    variants: tuple[AxisValue, ...] = (NO_AP, WITH_AP)
    default_preset: str = "smoke"
    search: SearchSpace | None = None
    settings: tuple[AxisValue, ...] = ()
    table: Callable[..., Any] | None = None
    note: str = ""  # printed under the table (what a reader might otherwise suspect as a bug)
    figure: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "presets", _copy(self.presets))

    def preset(self, name: str) -> Preset:
        try:
            return self.presets[name]
        except KeyError:
            raise ConfigError(f"unknown preset {name!r}; valid: {', '.join(self.presets)}") from None

    def select_methods(self, labels: tuple[str, ...]) -> tuple[AxisValue, ...]:
        """The methods named on the command line (by label or tag, any case); all of them when none."""
        if not labels:
            return self.methods
        by_name = {m.label.lower(): m for m in self.methods} | {m.tag.lower(): m for m in self.methods}
        chosen: dict[str, AxisValue] = {}
        for label in labels:
            method = by_name.get(label.lower()) or registered_method(label, self.methods)
            if method is None:
                valid = ", ".join(m.label for m in self.methods)
                if _method_axis_only(self.methods):
                    kind = _kind(*(m.overrides["method"] for m in self.methods))
                    valid += f" or any registered {kind} method (ap-trial --list)"
                raise ConfigError(f"unknown method {label!r} for sweep {self.name}; valid: {valid}")
            chosen[method.label] = method
        return tuple(chosen.values())


def registered_method(name: str, methods: tuple[AxisValue, ...]) -> AxisValue | None:
    """A registered method (a plugin's too) on a sweep whose methods differ only by name, if it is of their kind
    (weights or channels); None otherwise."""
    if not _method_axis_only(methods):
        return None
    from ap_core.pruning import METHODS  # the registry imports torch: only once a sweep names a method of its own

    if name not in METHODS:
        return None
    if _kind(name) != _kind(*(m.overrides["method"] for m in methods)):
        return None
    return AxisValue(name, re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "method", {"method": name})


def _method_axis_only(methods: tuple[AxisValue, ...]) -> bool:
    return all(set(m.overrides) == {"method"} for m in methods)


def _kind(*methods: str) -> str:
    """What the registered methods named remove: "weight", "channel" or "weight and channel"."""
    from ap_core.pruning import METHODS

    kinds = {"channel" if METHODS.get(name).removes_channels else "weight" for name in methods}
    return " and ".join(sorted(kinds, reverse=True))


@dataclass(frozen=True)
class PlannedTrial:
    """One trial of a sweep: its readable unique name, the table labels it belongs to, and its config."""

    name: str
    group: str  # Tune experiment it runs in ("" for table sweeps: one experiment)
    labels: Mapping[str, Any]  # dataset, network, method, variant, seed (and setting)
    config: TrialConfig

    @property
    def epochs(self) -> int:
        """Training epochs this trial runs in total (dense cycle included)."""
        return (self.config.pruning.cycles + 1) * self.config.training.epochs

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
class SearchGroup:
    """One network x dataset x method of a search: a Tune experiment whose trials Tune's search draws.

    `base` is the trial recipe at seed 1 (the axes and the seed are filled in per trial); `labels` lack the seed.
    """

    key: str
    stem: str  # the start of every trial name, e.g. "mlp-gp"
    labels: Mapping[str, Any]
    base: TrialConfig


@dataclass(frozen=True)
class SweepPlan:
    """Everything a sweep will run, decided before Ray starts.

    A table sweep lists its `trials`; a search lists its `search_groups`, whose trials Tune draws at run time
    (every grid point, or `num_samples` points per group), each point once per seed.
    """

    spec: SweepSpec
    preset_name: str
    trials: tuple[PlannedTrial, ...]
    seeds: int
    search: SearchSpace | None = None
    search_groups: tuple[SearchGroup, ...] = ()
    search_mode: str = "grid"
    num_samples: int = 0
    top_k: int = 0  # staged search: points per group that run the full schedule
    dense_stage: bool = False  # its trials stop after their dense cycle 0 (stage one of a staged search)

    @property
    def groups(self) -> list[str]:
        """The Tune experiments: one per planned group (a staged search's stages plan theirs), else per search group."""
        if self.trials or self.search is None:
            return list(dict.fromkeys(t.group for t in self.trials))
        if self.search_mode == "staged":
            from sweeps.engine.staged import dense_groups  # cycle keys import the method registry (torch)

            return [g.key for g in (*dense_groups(self), *self.search_groups)]
        return [g.key for g in self.search_groups]

    @property
    def points_per_group(self) -> int:
        return self.search.points_count(self.search_mode, self.num_samples) if self.search is not None else 0

    @property
    def trial_count(self) -> int:
        if self.trials or self.search is None:
            return len(self.trials)
        if self.search_mode == "staged":
            from sweeps.engine.staged import dense_groups

            best = min(self.top_k, self.points_per_group)
            return (len(dense_groups(self)) * self.points_per_group + len(self.search_groups) * best) * self.seeds
        return len(self.search_groups) * self.points_per_group * self.seeds

    def by_name(self) -> dict[str, PlannedTrial]:
        return {t.name: t for t in self.trials}

    def trials_of(self, group: str) -> tuple[PlannedTrial, ...]:
        return tuple(t for t in self.trials if t.group == group)

    def search_group(self, key: str) -> SearchGroup:
        return next(g for g in self.search_groups if g.key == key)

    def fingerprint(self) -> str:
        """Changes whenever what the sweep computes does: a trial's name or experiment settings, or the search."""
        if self.search is None:
            payload: Any = [[t.name, t.config.experiment_settings()] for t in self.trials]
        else:
            payload = {
                "groups": [[g.key, g.base.experiment_settings()] for g in self.search_groups],
                "axes": self.search.axes,
                "mode": self.search_mode,
                "points": self.points_per_group,
                "seeds": self.seeds,
            } | ({"top_k": self.top_k} if self.search_mode == "staged" else {})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def total_epochs(self) -> int:
        """Training epochs of the whole plan (for a sampled search: the expected value over its axes)."""
        if self.search is None:
            return sum(t.epochs for t in self.trials)
        epochs = self.search.axes.get("epochs")
        per_trial = [
            (g.base.pruning.cycles + 1) * (sum(epochs) / len(epochs) if epochs else g.base.training.epochs)
            for g in self.search_groups
        ]
        return round(sum(per_trial) * self.points_per_group * self.seeds)

    def catalog(self) -> TrialCatalog:
        axes = tuple(self.search.axes) if self.search else ()
        return TrialCatalog(self.trials, self.search_groups, axes, numbered=self.search_mode not in ("grid", "staged"))


class TrialCatalog:
    """Names and labels a trial from its Tune config: the planned trial it is, or a searched point of a group.

    Tune hands back only configs; the MLflow logger, the progress bar and the report ask this catalog who a
    trial is. It is small and picklable, so it travels with Tune's callbacks.
    """

    def __init__(
        self,
        trials: tuple[PlannedTrial, ...],
        groups: tuple[SearchGroup, ...],
        axes: tuple[str, ...],
        numbered: bool,
    ) -> None:
        self._planned = {_identity(t.config): t for t in trials}
        self._by_name = {t.name: t for t in trials}
        self._groups = {(g.base.dataset, g.base.model, g.base.pruning.method): g for g in groups}
        self._axes = axes
        self._numbered = numbered  # sampled points may repeat: Tune's trial number keeps their names apart

    def trial_of(self, tune_config: Mapping[str, Any], trial_id: str = "") -> PlannedTrial:
        """The trial a Tune config stands for: a planned trial by the name it carries, or a searched point."""
        planned = self._by_name.get(str(tune_config.get(TRIAL_NAME, "")))
        return planned if planned is not None else self.describe(trial_config(tune_config), trial_id)

    def describe(self, config: TrialConfig, trial_id: str = "") -> PlannedTrial:
        """The trial `config` belongs to; a sampled search point's name ends with Tune's trial number."""
        planned = self._planned.get(_identity(config))
        if planned is not None:
            return planned
        group = self._groups.get((config.dataset, config.model, config.pruning.method))
        if group is None:
            raise KeyError(
                f"trial {config.model}/{config.pruning.method} (seed {config.seed}) is not part of this sweep"
            )
        name = searched_trial_name(group.stem, self._axes, config, trial_id, self._numbered)
        return PlannedTrial(name, group.key, _copy({**group.labels, "seed": config.seed}), config)


def searched_trial_name(stem: str, axes: tuple[str, ...], config: TrialConfig, trial_id: str, numbered: bool) -> str:
    """A searched point's trial name, `mlp-gp-bs64-lr0.011-ep80-seed2`: its group's stem, the point and the seed.

    `numbered` (sampled points may repeat): Tune's trial number, or a searcher's trial id, keeps names apart.
    """
    flat = config.to_dict()
    point = {k: flat[k] for k in axes}
    name = "-".join([stem, *_point_tags(point), f"seed{config.seed}"])
    return f"{name}-{trial_id.rpartition('_')[2]}" if trial_id and numbered else name


def _identity(config: TrialConfig) -> str:
    return json.dumps(config.experiment_settings(), sort_keys=True)


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
    top_k: int = 0,
) -> SweepPlan:
    """Expand the spec's axes into validated trials (or search groups); raises ConfigError naming the first bad
    value.

    Settings are layered, later winning: preset recipe, method, variant, setting, per-network recipe, `--hparams`
    file entry for (network, pruning method), command-line overrides, then the axes themselves; `method_options`
    are merged option by option across the layers.
    """
    from ap_core.checks import checked_config  # imports the registries (torch): only once a sweep is planned

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
    settings = preset.settings or spec.settings or (AxisValue("", ""),)
    # Count before building anything: a typo like --seeds 100000000 must not hang the planner.
    size = len(datasets) * len(networks) * len(chosen_methods) * len(spec.variants) * len(settings) * seed_count
    sampled = search_mode not in ("grid", "staged")
    if search is not None and sampled:
        num_samples = num_samples or min(DEFAULT_SAMPLES, search.size)
    if search is not None and sampled and num_samples > search.size:
        raise ConfigError(
            f"num_samples {num_samples} exceeds the {search.size} points of this search space; "
            f"lower --num-samples or use --search grid"
        )
    size *= search.points_count(search_mode, num_samples) if search is not None else 1
    if size > MAX_TRIALS:
        raise ConfigError(
            f"this sweep would plan {size} trials (seeds {seed_count}); at most {MAX_TRIALS}: "
            "lower --seeds or narrow --networks/--datasets/--methods"
        )
    trials, groups = [], []
    for dataset, network, method, variant, setting in itertools.product(
        datasets, networks, chosen_methods, spec.variants, settings
    ):
        recipe = _layered(preset.trial, method.overrides, variant.overrides, setting.overrides)
        recipe = _layered(recipe, preset.per_network.get(network, {}))
        pruning_method = recipe.get("method", PruningSettings.method)
        recipe = _layered(recipe, (hparams or {}).get(network, {}).get(pruning_method, {}), overrides or {})
        recipe.update(model=network, dataset=dataset)
        labels = {"dataset": dataset, "network": network, "method": method.label, "variant": variant.label}
        if setting.label:
            labels["setting"] = setting.label
        stem = "-".join(
            p for p in [network, dataset if len(datasets) > 1 else "", method.tag, setting.tag, variant.tag] if p
        )
        if search is not None:
            groups.append(_search_group(f"{dataset}-{network}-{method.tag}", stem, labels, recipe, search))
            continue
        for seed in range(1, seed_count + 1):
            config = checked_config({**recipe, "seed": seed})
            trials.append(PlannedTrial(f"{stem}-seed{seed}", "", _copy({**labels, "seed": seed}), config))
    if len({(g.base.dataset, g.base.model, g.base.pruning.method) for g in groups}) < len(groups):
        raise ConfigError(f"sweep {spec.name}: two searched methods share one pruning method; give each its own")
    return SweepPlan(
        spec, preset_name, tuple(trials), seed_count, search, tuple(groups), search_mode, num_samples, top_k
    )


def _search_group(
    key: str, stem: str, labels: Mapping[str, Any], recipe: Mapping[str, Any], search: SearchSpace
) -> SearchGroup:
    """The group's recipe, checked with every value of every axis (so no drawn point can be invalid)."""
    from ap_core.checks import checked_config

    first = {k: v[0] for k, v in search.axes.items()}
    for axis, values in search.axes.items():
        for value in values:
            checked_config({**recipe, **first, axis: value, "seed": 1})
    return SearchGroup(key, stem, _copy(labels), checked_config({**recipe, **first, "seed": 1}))


# Points per network and method a sampled search draws unless told (--num-samples).
DEFAULT_SAMPLES = 100
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


def _point_tags(point: Mapping[str, Any]) -> list[str]:
    """A searched point as name parts: `bs64`, `lr0.011`, `ep80`."""
    return [
        f"{_SHORT_KEYS.get(k, k)}{v:g}" if isinstance(v, float) else f"{_SHORT_KEYS.get(k, k)}{v}"
        for k, v in point.items()
    ]


_SHORT_KEYS = {"batch_size": "bs", "epochs": "ep"}
