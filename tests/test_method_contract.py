"""One contract for every method: a method defined here, with its own option, runs in a trial with and without AP."""

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import torch

from ap_core import ConfigError, TrialConfig, load_dataset, run_trial
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


@pytest.fixture
def noisy() -> Iterator[NoisyMagnitude]:
    method = NoisyMagnitude()
    METHODS.register("noisy_magnitude")(method)
    try:
        yield method
    finally:
        METHODS.unregister("noisy_magnitude")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.mark.parametrize("ap", [False, True])
def test_a_method_defined_in_a_test_runs_with_its_own_option_with_and_without_ap(ap, noisy, digits):
    config = TrialConfig(method="noisy_magnitude", method_options={"noise": 0.5}, ap=ap, **QUICK)
    results = run_trial(config, dataset=digits)
    assert [round(r.weights_remaining, 1) for r in results] == [100.0, 80.0, 64.0]  # the cycle's exact target
    assert noisy.seen and all(hp == NoisyHparams(noise=0.5) for hp in noisy.seen)
    plain = run_trial(config.replace(method="global_magnitude", method_options={}), dataset=digits)
    assert results[-1].layer_density != plain[-1].layer_density  # the noise changed what was pruned


def test_the_new_method_option_is_checked_like_a_built_in_one(noisy):
    with pytest.raises(ConfigError, match=r"noise -1\.0 must be a number >= 0"):
        TrialConfig(method="noisy_magnitude", method_options={"noise": -1.0})
    with pytest.raises(ConfigError, match=r"unknown option 'nose' for method noisy_magnitude; valid: noise"):
        TrialConfig(method="noisy_magnitude", method_options={"nose": 1})
