"""What every trial would refuse at its start, refused once by the sweep before anything is written.

A trial checks its settings against its data and its machine when it starts (`ap_core.trial.TrialRunner`): a batch
larger than the training set, cycles that would prune every weight, a rewind step past the cycle, more CPU threads
than the machine has, CUDA where there is none. Left to the trials, a sweep would start, every trial would FAIL with
a traceback, and the MLflow store would hold a parent run of failures. Here the trial's own start-up checks run on
each distinct planned trial on the driver (on the CPU, without training), and the device and thread count are
checked against where the trials will run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from ap_core.errors import ConfigError
from sweeps.engine.spec import SweepPlan


def check_planned_trials(
    plan: SweepPlan, datasets: Mapping[str, Any], runtime: Mapping[str, Any], here: bool, gpus_asked: bool
) -> None:
    """Refuse, in one line naming the value and a trial, settings a planned trial would refuse at its start.

    `here`: the trials run on this machine (a private local Ray), so its CPUs and GPUs are theirs. `gpus_asked`:
    a GPU share was given, and the resource check says better than the trial what is missing.
    """
    from ap_core import TrialConfig
    from ap_core.trial import TrialRunner
    from trainables.pruning_trial import dataset_key

    if here:
        check_device_here(runtime, check_cuda=not gpus_asked)
    seen: set[str] = set()
    for name, config in _configs_to_check(plan):
        # Where it runs is checked above; here what it computes, on the CPU, as the trial's own constructor does.
        checked = TrialConfig.from_dict({**config.to_dict(), "device": "cpu", "cpu_threads": 0, "torch_compile": "off"})
        key = json.dumps({k: v for k, v in checked.to_dict().items() if k != "seed"}, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        with _torch_state_kept():
            try:
                TrialRunner(checked, datasets.get(dataset_key(config)))
            except ConfigError as err:
                raise ConfigError(f"{err} (trial {name}: every such trial would refuse to start)") from None


def check_device_here(runtime: Mapping[str, Any], check_cuda: bool = True) -> None:
    """The trials run on this machine: its CPU count and its CUDA are theirs."""
    import torch

    threads = int(runtime.get("cpu_threads") or 0)
    if threads > (os.cpu_count() or 1):
        raise ConfigError(f"cpu_threads {threads} is more than this machine's {os.cpu_count()} CPUs")
    device = str(runtime.get("device", "cpu"))
    if check_cuda and device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: this machine has no CUDA GPU; use --device cpu or auto")


def check_trials_get_their_device(runtime: Mapping[str, Any], gpus_per_trial: float) -> None:
    """A trial asked to run on CUDA but given no GPU by Ray sees none, and fails at its start: refuse it now."""
    device = str(runtime.get("device", "cpu"))
    if device.startswith("cuda") and gpus_per_trial <= 0:
        raise ConfigError(
            f"device {device!r} but the trials get no GPU (--gpus-per-trial {gpus_per_trial:g}, or no GPU where they "
            "run); give them a GPU share or use --device cpu or auto"
        )


def _configs_to_check(plan: SweepPlan) -> Iterator[tuple[str, Any]]:
    """Each planned trial; for a search, each group's recipe with every axis at its smallest and largest value
    (the checks are bounds: a larger batch or fewer epochs only make a refusal likelier)."""
    for trial in plan.trials:
        yield trial.name, trial.config
    if plan.search is None:
        return
    for group in plan.search_groups:
        yield group.stem, group.base
        for axis, values in plan.search.axes.items():
            for value in {min(values), max(values)} if _ordered(values) else values:
                yield f"{group.stem} with {axis} {value}", _with(group.base, axis, value)


def _ordered(values: tuple[Any, ...]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _with(config: Any, field: str, value: Any) -> Any:
    from ap_core import TrialConfig

    return TrialConfig.from_dict({**config.to_dict(), field: value})


@contextmanager
def _torch_state_kept() -> Iterator[None]:
    """A trial's constructor seeds torch and may set its thread count: leave the driver's as they were."""
    import torch

    threads, rng = torch.get_num_threads(), torch.random.get_rng_state()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.random.set_rng_state(rng)
