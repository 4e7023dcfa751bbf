"""The benchmark command's argument handling, the naive reference's fairness, and the epoch-cost helper (CPU, seconds).

Timings themselves are not asserted here (they live in `benchmarks/run.py` and `benchmarks/RESULTS.md`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from ap_core import build_model, load_dataset
from ap_core.checks import checked_config
from ap_core.cost import measure_epochs

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def benchmarks(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The benchmark scripts import their siblings by name, as `python benchmarks/run.py` lets them."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import harness

    return harness


def test_a_bad_benchmark_flag_gets_a_one_line_error_from_the_command() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run.py"), "--threads", "0"], capture_output=True, text=True, timeout=120
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "run.py: error: argument --threads: '0' is not a positive integer\n"


@pytest.mark.parametrize(
    ("bad", "message"),
    [(["--device", "tpu"], "--device: invalid choice"), (["--repeats", "many"], "'many' is not a positive integer")],
)
def test_bad_benchmark_flags_are_one_line_errors(
    benchmarks, capsys: pytest.CaptureFixture[str], bad: list[str], message: str
) -> None:
    import run

    with pytest.raises(SystemExit) as exit_info:
        run.parse_args(bad)
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2 and stderr.count("\n") == 1 and message in stderr


def test_the_naive_reference_sees_the_projects_images_and_keeps_pruned_weights_at_zero(benchmarks) -> None:
    from naive_reference import NaiveReference, PilImages
    from torchvision import transforms

    data = benchmarks.cifar_shaped(96, 40)
    plain = PilImages(
        data.x_test, data.y_test, transforms.Compose([transforms.ToTensor(), transforms.Normalize(data.mean, data.std)])
    )
    naive_images = torch.stack([plain[i][0] for i in range(len(plain))])
    assert torch.equal(naive_images, data.standardised(data.x_test))  # same bytes, same standardisation

    torch.manual_seed(0)
    model = build_model("mlp", data.num_classes, data.input_shape)
    mask = benchmarks.pruned_mask(model, 0.3)
    reference = NaiveReference(model, data, {name: mask[name] for name in mask}, batch_size=32)
    train_acc, test_acc, dnr = reference.epoch()
    weights = dict(model.named_parameters())
    for name in mask:
        assert torch.count_nonzero(weights[name][mask[name] == 0]) == 0
        assert torch.count_nonzero(weights[name][mask[name] == 1]) > 0
    assert 0 <= train_acc <= 100 and 0 <= test_acc <= 100 and 0 < dnr < 1


def test_interleaved_alternates_the_order_of_variants(benchmarks) -> None:
    calls: list[str] = []
    measured = benchmarks.interleaved({n: (lambda n=n: calls.append(n) or 1.0) for n in "ab"}, repeats=3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert measured == {"a": [1.0, 1.0, 1.0], "b": [1.0, 1.0, 1.0]}


def test_measure_epochs_trains_the_trials_own_epochs_and_reports_its_memory() -> None:
    digits = load_dataset("digits", max_train_samples=256)
    config = checked_config(dict(model="mlp", dataset="digits", epochs=1, cycles=1, cpu_threads=1, device="cpu"))
    cost = measure_epochs(config, digits, epochs=3)
    assert len(cost.epoch_seconds) == 3 and all(s > 0 for s in cost.epoch_seconds)
    assert cost.steady_epoch_seconds in cost.epoch_seconds[1:]
    assert cost.peak_host_mib > 50 and cost.peak_device_mib is None  # torch alone needs more than 50 MiB
    with pytest.raises(ValueError, match="epochs"):
        measure_epochs(config, digits, epochs=0)
