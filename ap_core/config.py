"""One trial's configuration: the network, data and seed, and one typed group per concern (`ap_core.settings`).

`TrialConfig` is the single source for a trial's CLI flags, Ray Tune's param space and MLflow params: each group field
is one flat setting (`to_dict`, `from_dict`, `replace` speak the flat names), so a new field shows up everywhere at
once. It is plain data: checking the names it gives against the registries is `ap_core.checks.check_names`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ap_core.errors import ConfigError
from ap_core.settings import (
    APSettings,
    OptimizerSettings,
    PruningSettings,
    RetrainingSettings,
    RuntimeSettings,
    ScheduleSettings,
    SettingsGroup,
    TrainingSettings,
    flag_name,
)
from ap_core.typed_values import coerce_setting


@dataclass(frozen=True)
class TrialConfig:
    """One pruning experiment: a network trained dense (cycle 0), then pruned for `pruning.cycles` cycles.

    Every group but `runtime` decides the numbers the trial produces; `runtime` (device, threads, paths) decides
    only where and how fast it runs, and `experiment_id` hashes the rest.
    """

    model: str = field(default="mlp", metadata={"help": "network name (see --list)"})
    dataset: str = field(default="digits", metadata={"help": "dataset name (see --list)"})
    seed: int = field(
        default=0, metadata={"help": "random seed (initialisation, data order, augmentation, random pruning)"}
    )
    pruning: PruningSettings = field(default_factory=PruningSettings)
    ap: APSettings = field(default_factory=APSettings)
    retraining: RetrainingSettings = field(default_factory=RetrainingSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.default_factory is dataclasses.MISSING:  # a flat setting of its own (model, dataset, seed)
                object.__setattr__(self, f.name, coerce_setting(TrialConfig, f.name, getattr(self, f.name)))
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed {self.seed} must be in [0, 2**32)")
        warmup, epochs = self.schedule.warmup_epochs, self.training.epochs
        if not 0 <= warmup <= epochs:  # written so that nan fails too
            raise ConfigError(f"warmup_epochs {warmup} must be in [0, epochs={epochs}]")

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its flat settings (Tune saves the sweep's callbacks, which hold configs): the public names
        outlive any regrouping."""
        return TrialConfig.from_dict, (self.to_dict(),)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A config pickled before the groups (a sweep interrupted under state format 2) holds its flat fields."""
        self.__dict__.update(TrialConfig.from_dict(state).__dict__)

    def to_dict(self) -> dict[str, Any]:
        """Every setting under its flat name (the CLI flag, Tune key and MLflow param)."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            values.update(value.flat() if isinstance(value, SettingsGroup) else {f.name: value})
        return values

    def replace(self, **changes: Any) -> TrialConfig:
        """A copy with some flat settings changed (`config.replace(epochs=2)`)."""
        return TrialConfig.from_dict({**self.to_dict(), **changes})

    def experiment_settings(self) -> dict[str, Any]:
        """The settings that decide the results (every one but the runtime ones; an added one only when set).

        Starting weights decide the results by what the file holds, not by its name: its sha256 joins the settings
        (as `pretrained_weights_sha256`, itself a setting, so the settings still build the same config on a Tune
        worker, which then checks that its copy of the file has that sha256: `ap_core.checks`). The path stays:
        it is how the trial finds the file.
        """
        values = self.to_dict()
        if self.training.pretrained_weights and not self.training.pretrained_sha256:
            values["pretrained_weights_sha256"] = file_sha256(self.training.pretrained_weights)
        return {
            k: v
            for k, v in values.items()
            if k not in RUNTIME_FIELDS and not (k in ADDED_DEFAULTS and v == ADDED_DEFAULTS[k])
        }

    def runtime_settings(self) -> dict[str, Any]:
        return self.runtime.flat()

    def experiment_id(self) -> str:
        """A short hash of the experiment settings: equal for runs that compute the same thing anywhere."""
        payload = json.dumps(self.experiment_settings(), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrialConfig:
        """Build from flat settings (Tune's config, CLI flags, a checkpoint), rejecting unknown names by name."""
        unknown = sorted(set(values) - set(SETTINGS))
        if unknown:
            raise ConfigError(f"unknown trial setting {unknown[0]!r}; valid: {', '.join(sorted(SETTINGS))}")
        groups: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        for flag, value in values.items():
            group, name = SETTINGS[flag]
            (groups.setdefault(group, {}) if group else top)[name] = value
        built = {group: GROUP_TYPES[group](**fields) for group, fields in groups.items()}
        return cls(**top, **built)


def file_sha256(path: str) -> str:
    """The sha256 of file `path`, read once per version of the file (weights files run to gigabytes); a ConfigError
    naming a missing one."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"pretrained_weights file '{path}' does not exist")
    stat = file.stat()
    return _sha256_of_version(str(file.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256_of_version(path: str, size: int, mtime_ns: int) -> str:
    return file_digest(Path(path))


def file_digest(path: Path) -> str:
    """The sha256 of a file's bytes, read in blocks (checkpoints and weights files run to gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def coerce_flat(flag: str, value: Any) -> Any:
    """`value` as the type of flat setting `flag`, or a ConfigError naming it."""
    group, name = SETTINGS[flag]
    return coerce_setting(GROUP_TYPES[group] if group else TrialConfig, name, value, flag)


# group attribute -> its settings class; the other fields (model, dataset, seed) are flat settings themselves
GROUP_TYPES: dict[str, Any] = {
    f.name: f.default_factory for f in dataclasses.fields(TrialConfig) if f.default_factory is not dataclasses.MISSING
}
# flat setting name -> (group attribute, or "" for a top-level field; field name in it)
SETTINGS: dict[str, tuple[str, str]] = {
    f.name: ("", f.name) for f in dataclasses.fields(TrialConfig) if f.name not in GROUP_TYPES
} | {flag_name(f): (group, f.name) for group, cls in GROUP_TYPES.items() for f in dataclasses.fields(cls)}
RUNTIME_FIELDS = frozenset(flag_name(f) for f in dataclasses.fields(RuntimeSettings))
# settings added after experiments were recorded -> their default, at which they stay out of the experiment hash
ADDED_DEFAULTS: dict[str, Any] = {
    flag_name(f): f.default for cls in GROUP_TYPES.values() for f in dataclasses.fields(cls) if f.metadata.get("added")
}
