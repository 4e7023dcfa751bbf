"""One contract for every method: a method defined here, with its own option, runs with and without AP in a trial
and through `ap-trial`, this file being the plugin (`AP_SWEEPS_PLUGINS=<this file>:register`); test_readme_snippets
sweeps it through table1's smoke preset."""

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from ap_core import ConfigError, load_dataset, run_trial
from ap_core.checks import checked_config
from ap_core.pruning import METHODS
from ap_core.pruning.base import PruneRequest, PruningMethod, Removal, alive_on, select_lowest

QUICK = {"model": "mlp", "dataset": "digits", "epochs": 1, "cycles": 2, "cpu_threads": 1, "max_train_samples": 256}


@dataclass(frozen=True)
class NoisyHparams:
    noise: float = field(default=0.01, metadata={"help": "std of the noise added to |w| before ranking"})

    def validate(self) -> None:
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ConfigError(f"noise {self.noise} must be a number >= 0")


class NoisyMagnitude(PruningMethod):
    """|w| plus Gaussian noise (the example of docs/adding-a-method.md)."""

    Hparams = NoisyHparams

    def __init__(self) -> None:
        self.seen: list[NoisyHparams] = []

    def propose(self, request: PruneRequest) -> Removal:
        self.seen.append(request.hparams)
        noise = request.hparams.noise
        scores = {
            name: w.abs() + noise * torch.randn(w.shape, generator=request.generator).to(w.device)
            for name, w in request.weights.items()
        }
        return Removal(weights=select_lowest(scores, alive_on(request.mask, request.weights), request.count))


def register() -> NoisyMagnitude:
    """What `AP_SWEEPS_PLUGINS` calls: nothing else in the repository knows this method."""
    method = NoisyMagnitude()
    METHODS.register("noisy_magnitude")(method)
    return method


PLUGIN = f"{__file__}:register"


@pytest.fixture
def noisy() -> Iterator[NoisyMagnitude]:
    method = register()
    try:
        yield method
    finally:
        METHODS.unregister("noisy_magnitude")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.mark.parametrize("ap", [False, True])
def test_a_method_defined_in_a_test_runs_with_its_own_option_with_and_without_ap(ap, noisy, digits):
    config = checked_config(dict(method="noisy_magnitude", method_options={"noise": 0.5}, ap=ap, **QUICK))
    results = run_trial(config, dataset=digits)
    assert [round(r.weights_remaining, 1) for r in results] == [100.0, 80.0, 64.0]  # the cycle's exact target
    assert noisy.seen and all(hp == NoisyHparams(noise=0.5) for hp in noisy.seen)
    plain = run_trial(config.replace(method="global_magnitude", method_options={}), dataset=digits)
    assert results[-1].layer_density != plain[-1].layer_density  # the noise changed what was pruned


def test_the_new_method_option_is_checked_like_a_built_in_one(noisy):
    with pytest.raises(ConfigError, match=r"noise -1\.0 must be a number >= 0"):
        checked_config(dict(method="noisy_magnitude", method_options={"noise": -1.0}))
    with pytest.raises(ConfigError, match=r"unknown option 'nose' for method noisy_magnitude; valid: noise"):
        checked_config(dict(method="noisy_magnitude", method_options={"nose": 1}))


def ap_trial(*args: str, plugins: str = PLUGIN, cwd: Path | None = None) -> subprocess.CompletedProcess:
    from conftest import sweep_env  # here, not on top: this file is also imported as a plugin, outside pytest

    command = [sys.executable, "-m", "ap_core", *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, cwd=cwd, env=sweep_env(AP_SWEEPS_PLUGINS=plugins)
    )


def test_a_plugin_method_runs_through_ap_trial_with_and_without_ap(tmp_path: Path) -> None:
    listed = ap_trial("--list")
    assert listed.returncode == 0, listed.stderr
    assert "noisy_magnitude [weights]: noise=0.01 (std of the noise added to |w| before ranking)" in listed.stdout
    densities = {}
    for ap in ("false", "true"):
        out = tmp_path / f"ap_{ap}.json"
        args = ("--model", "mlp", "--dataset", "digits", "--epochs", "1", "--cycles", "2", "--cpu-threads", "1")
        done = ap_trial(
            *args, "--method", "noisy_magnitude", "--method-options", "noise=0.5", "--ap", ap, "--json", str(out)
        )
        assert done.returncode == 0, done.stderr
        results = json.loads(out.read_text())
        assert [round(r["weights_remaining"], 1) for r in results] == [100.0, 80.0, 64.0]
        densities[ap] = results[-1]["layer_density"]
    assert densities["false"] != densities["true"]  # AP took its share of what the plugin proposed


@pytest.mark.parametrize(
    ("plugin", "named"),
    [
        ("/nowhere/methods.py", "FileNotFoundError: no file '/nowhere/methods.py'"),
        ("no_such_module", "ModuleNotFoundError"),
    ],
)
def test_a_plugin_that_cannot_load_is_one_line_naming_it(plugin: str, named: str) -> None:
    done = ap_trial("--list", plugins=plugin)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"error: cannot load plugin {plugin!r}") and named in done.stderr
    assert done.stderr.count("\n") == 1  # no traceback


def test_workers_get_the_plugins_by_absolute_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tune runs each trial in a folder of its own: `noisy.py` relative to where the sweep started failed there."""
    from sweeps.engine.tune_runner import worker_runtime_env

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AP_SWEEPS_PLUGINS", "lab/noisy.py:register, lab_methods ,~/more.py")
    expected = f"{tmp_path}/lab/noisy.py:register,lab_methods,{Path.home()}/more.py"
    assert worker_runtime_env()["env_vars"] == {"AP_SWEEPS_PLUGINS": expected}
    monkeypatch.delenv("AP_SWEEPS_PLUGINS")
    assert "env_vars" not in worker_runtime_env()  # no plugins: the job's environment is left alone
