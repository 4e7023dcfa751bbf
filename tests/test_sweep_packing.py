"""`--gpus-per-trial auto`: the packing decision (plain arithmetic), its probe run on CPU, and the GPU-less default.

No GPU is needed: the decision is given peaks and GPU sizes, and the probe's code path runs on the CPU.
"""

from __future__ import annotations

import pytest
import torch

from ap_core import load_dataset
from ap_core.checks import checked_config
from sweeps import hparam_grid, table1
from sweeps.engine.driver import plan_sweep
from sweeps.engine.options import AUTO_GPUS, parse_args
from sweeps.engine.packing import (
    CUDA_CONTEXT_MIB,
    MAX_TRIALS_PER_GPU,
    Probe,
    choose,
    probe_configs,
    probe_memory,
    resolve_locally,
    trials_per_gpu,
)
from sweeps.engine.spec import expand

GIB = 1024.0
# A network whose trial needs 2 GiB with the CUDA context, and plenty of CPUs and trials: memory decides.
NEED_2_GIB = {"resnet20 on cifar10, batch 128": 2 * GIB - CUDA_CONTEXT_MIB}


def test_memory_bounds_the_trials_per_gpu_by_the_largest_network() -> None:
    packing = trials_per_gpu(
        {"mlp on digits, batch 64": 100.0, **NEED_2_GIB}, 10 * GIB, 1, 64, 1, trial_count=100
    )  # 90% of 10 GiB holds 4.5 trials of 2 GiB
    assert (packing.trials_per_gpu, packing.bound, packing.gpus_per_trial) == (4, "memory", 0.25)
    assert packing.largest == "resnet20 on cifar10, batch 128" and packing.fits


def test_cpus_beside_each_gpu_bound_the_trials_per_gpu() -> None:
    packing = trials_per_gpu(NEED_2_GIB, 80 * GIB, 1, cpus_per_gpu=6, cpus_per_trial=2, trial_count=100)
    assert (packing.trials_per_gpu, packing.bound) == (3, "CPUs per GPU")
    fractional = trials_per_gpu(NEED_2_GIB, 80 * GIB, 1, cpus_per_gpu=0.6, cpus_per_trial=0.2, trial_count=100)
    assert fractional.trials_per_gpu == 3  # 0.6 / 0.2 is 2.9999999999999996 in floats


def test_the_cap_bounds_a_small_network_on_a_large_gpu() -> None:
    packing = trials_per_gpu({"mlp on digits, batch 64": 50.0}, 80 * GIB, 1, 64, 1, trial_count=1000)
    assert (packing.trials_per_gpu, packing.bound) == (MAX_TRIALS_PER_GPU, f"the cap of {MAX_TRIALS_PER_GPU}")


def test_few_trials_spread_over_every_gpu_instead_of_sharing_one() -> None:
    packing = trials_per_gpu(NEED_2_GIB, 80 * GIB, gpu_count=4, cpus_per_gpu=64, cpus_per_trial=1, trial_count=6)
    assert (packing.trials_per_gpu, packing.bound) == (2, "the trial count")


def test_a_network_bigger_than_the_gpu_gets_one_per_gpu_and_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    probes = {"vgg19 on cifar10, batch 1024": Probe(20 * GIB, "Tesla T4", 15 * GIB)}
    gpus_per_trial = choose(probes, gpu_count=1, cpus_per_gpu=8, cpus_per_trial=1, trial_count=10)
    assert gpus_per_trial == 1.0
    out, err = capsys.readouterr()
    assert err.startswith("warning: vgg19 on cifar10, batch 1024 needs 20.5 GiB per trial") and "Tesla T4" in err
    assert out == (
        "GPU packing: 1 trial per GPU, bounded by memory (vgg19 on cifar10, batch 1024 peaks at 20.0 GiB + 0.5 GiB "
        "CUDA context, of 15.0 GiB measured on Tesla T4); --gpus-per-trial overrides\n"
    )


def test_the_smallest_gpu_probed_decides(capsys: pytest.CaptureFixture[str]) -> None:
    probes = {
        "resnet20 on cifar10, batch 128": Probe(1.5 * GIB, "NVIDIA H100", 80 * GIB),
        "vgg19 on cifar10, batch 128": Probe(1.5 * GIB, "NVIDIA A10", 24 * GIB),
    }
    assert choose(probes, gpu_count=2, cpus_per_gpu=16, cpus_per_trial=1, trial_count=100) == 1 / 8
    assert "of 24.0 GiB measured on NVIDIA A10" in capsys.readouterr().out  # 21.6 GiB usable / 2 GiB: 10, cap 8


def test_the_probe_trains_a_short_epoch_and_on_cpu_reports_host_memory() -> None:
    digits = load_dataset("digits")
    config = checked_config(dict(model="mlp", dataset="digits", cpu_threads=1))
    probe = probe_memory(config, digits, "cpu")
    assert probe.device_name == "CPU" and 0 < probe.peak_mib < probe.device_mib


def test_each_network_is_probed_once_at_its_largest_searched_batch_size() -> None:
    table = probe_configs(expand(table1.SPEC, "smoke"))  # 12 trials of one network
    assert list(table) == ["mlp on digits, batch 64"]
    grid = expand(hparam_grid.SPEC, "smoke", methods=("GP",))
    largest = max(grid.search.axes["batch_size"])
    assert list(probe_configs(grid)) == [f"mlp on digits, batch {largest}"]


def test_auto_is_the_default_and_parsed_from_the_command_line() -> None:
    assert parse_args([], table1.SPEC).options.gpus_per_trial == AUTO_GPUS
    assert parse_args(["--gpus-per-trial", "auto"], table1.SPEC).options.gpus_per_trial == AUTO_GPUS
    assert parse_args(["--gpus-per-trial", "0.25"], table1.SPEC).options.gpus_per_trial == 0.25


@pytest.mark.skipif(torch.cuda.device_count() > 0, reason="what auto does where there is no GPU")
def test_without_a_gpu_auto_is_cpu_trials_exactly_as_before() -> None:
    args = parse_args([], table1.SPEC)
    plan = plan_sweep(table1.SPEC, args)
    assert resolve_locally(plan, args.options, datasets={}) == 0.0  # nothing measured: no dataset is needed
    assert {t.config.runtime.device for t in plan.trials} == {"cpu"}
    explicit = plan_sweep(table1.SPEC, parse_args(["--gpus-per-trial", "0"], table1.SPEC))
    assert [t.config for t in explicit.trials] == [t.config for t in plan.trials]
