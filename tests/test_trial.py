"""One trial end to end: accuracy, exact zeros, retraining schemes, determinism, resume, bad configs."""

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import comparable, fixed_seed_recording, resumed_from_checkpoint_where, run_killed_after_cycle

from ap_core import MODELS, ConfigError, DatasetUnavailableError, TrialConfig, build_model, load_dataset, run_trial
from ap_core.checkpoint import CHECKPOINT_FILE, read_checkpoint
from ap_core.checks import checked_config
from ap_core.dnr import activation_layers
from ap_core.pruning import weight_methods
from ap_core.retraining import RETRAINING
from ap_core.settings import ScheduleSettings
from ap_core.training import lr_factor
from ap_core.trial import TrialRunner

QUICK = {"model": "mlp", "dataset": "digits", "epochs": 2, "cycles": 3, "cpu_threads": 1}


def quick(**changes) -> TrialConfig:
    return checked_config({**QUICK, **changes})


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def run_with_checkpoints(config: TrialConfig, dataset, folder) -> tuple[list, list[dict]]:
    """Run a trial; returns its results and the checkpoint written after each cycle, as read back from disk."""
    checkpoints = []
    results = run_trial(
        config,
        on_cycle=lambda _: checkpoints.append(read_checkpoint(folder / CHECKPOINT_FILE)),
        checkpoint_dir=folder,
        dataset=dataset,
    )
    return results, checkpoints


def assert_pruned_weights_are_zero(checkpoint: dict) -> None:
    """Pruned weights, and their momentum / Adam moments, are exactly 0 in a checkpoint."""
    weights = checkpoint["model"]
    positions = {name: i for i, name in enumerate(checkpoint["meta"]["parameters"])}
    for name, alive in checkpoint["mask"].items():
        assert torch.count_nonzero(weights[name][~alive]) == 0, name
        for value in checkpoint["optimizer"]["state"].get(positions[name], {}).values():
            if isinstance(value, torch.Tensor) and value.shape == alive.shape:
                assert torch.count_nonzero(value[~alive]) == 0, f"optimizer state of {name}"


def test_digits_mlp_reaches_paper_like_accuracy_quickly():
    started = time.perf_counter()
    results = run_trial(checked_config(dict(model="mlp", dataset="digits", cycles=10, cpu_threads=1)))
    elapsed = time.perf_counter() - started
    relu_names = set(activation_layers(build_model("mlp", 10, (1, 8, 8))))
    assert len(relu_names) == 2
    assert results[0].weights_remaining == 100.0
    assert results[0].test_acc >= 90.0
    assert results[-1].weights_remaining == pytest.approx(10.74, abs=0.01)
    assert results[-1].test_acc >= 80.0
    assert elapsed < 60.0
    for r in results:
        assert 0.0 <= r.dnr <= 1.0
        assert len(r.dnr_per_epoch) == r.epochs == 10
        assert set(r.dnr_layers_per_epoch[-1]) == relu_names
        assert all(0.0 <= v <= 1.0 for v in r.dnr_layers_per_epoch[-1].values())


@pytest.mark.parametrize("retraining", RETRAINING.names())
@pytest.mark.parametrize("method", weight_methods())
def test_pruned_weights_stay_exactly_zero(method, retraining, digits, tmp_path):
    config = quick(method=method, ap=True, retraining=retraining, rewind_step=5)
    results, checkpoints = run_with_checkpoints(config, digits, tmp_path)
    for checkpoint in checkpoints:
        assert_pruned_weights_are_zero(checkpoint)
    assert [r.weights_remaining for r in results] == pytest.approx([100.0, 80.0, 64.0, 51.2], abs=0.01)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_optimizers_keep_zeros(optimizer, digits, tmp_path):
    _, checkpoints = run_with_checkpoints(quick(optimizer=optimizer, lr=0.01, nesterov=True), digits, tmp_path)
    for checkpoint in checkpoints:
        assert_pruned_weights_are_zero(checkpoint)


def theta_start(checkpoint: dict) -> dict[str, torch.Tensor]:
    return checkpoint["references"]["start"]


def test_rewind_init_restarts_from_masked_initialisation(digits, tmp_path):
    _, (_, cycle1) = run_with_checkpoints(quick(cycles=1, retraining="rewind_init"), digits, tmp_path)
    init = cycle1["references"]["init"]
    for name, w in theta_start(cycle1).items():
        assert torch.equal(w, init[name] * cycle1["mask"][name])


def test_lr_rewind_continues_from_trained_weights(digits, tmp_path):
    _, (cycle0, cycle1) = run_with_checkpoints(quick(cycles=1, retraining="lr_rewind"), digits, tmp_path)
    for name, w in theta_start(cycle1).items():
        assert torch.equal(w, cycle0["model"][name] * cycle1["mask"][name])


def test_rewind_iteration_restarts_from_step_k(digits, tmp_path):
    config = quick(cycles=1, retraining="rewind_iteration", rewind_step=7)
    _, (_, cycle1) = run_with_checkpoints(config, digits, tmp_path)
    rewind, init = cycle1["references"]["rewind"], cycle1["references"]["init"]
    first = next(iter(cycle1["mask"]))
    assert not torch.equal(rewind[first], init[first])
    for name, w in theta_start(cycle1).items():
        assert torch.equal(w, rewind[name] * cycle1["mask"][name])


def test_same_seed_same_numbers_different_seed_different_numbers(digits, tmp_path):
    config = quick(method="random", ap=True)
    ra, (*_, a) = run_with_checkpoints(config, digits, tmp_path / "a")
    rb, (*_, b) = run_with_checkpoints(config, digits, tmp_path / "b")
    assert comparable(ra) == comparable(rb)
    assert all(torch.equal(m, b["mask"][n]) for n, m in a["mask"].items())
    _, (*_, c) = run_with_checkpoints(config.replace(seed=1), digits, tmp_path / "c")
    assert not all(torch.equal(m, c["mask"][n]) for n, m in a["mask"].items())


def test_killed_after_a_cycle_and_resumed_gives_the_same_numbers(tmp_path, digits):
    config = quick(ap=True, retraining="lr_rewind")
    uninterrupted = run_trial(config, dataset=digits)
    run_killed_after_cycle(config, 1, tmp_path, digits)
    reported = []
    resumed = run_trial(config, on_cycle=reported.append, checkpoint_dir=tmp_path, resume_from=tmp_path, dataset=digits)
    assert [r.cycle for r in reported] == [2, 3]
    assert comparable(resumed) == comparable(uninterrupted)


def test_resume_from_a_mid_cycle_checkpoint(tmp_path, monkeypatch, digits):
    config = quick(epochs=3, checkpoint_every_epoch=True)
    uninterrupted = run_trial(config, dataset=digits)
    # The first epoch checkpoint of cycle 2.
    resumed = resumed_from_checkpoint_where(
        config, digits, tmp_path, monkeypatch, lambda meta: meta["cycle_begun"] and meta["cycle"] == 2
    )
    assert comparable(resumed) == comparable(uninterrupted)


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path, digits):
    run_trial(quick(cycles=1), checkpoint_dir=tmp_path, dataset=digits)
    with pytest.raises(ConfigError, match=r"prune_rate=0\.2"):
        run_trial(quick(cycles=1, prune_rate=0.3), resume_from=tmp_path, dataset=digits)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"model": "resnet1000"}, "resnet1000"),
        ({"dataset": "imagenet22k"}, "imagenet22k"),
        ({"method": "snip"}, "snip"),
        ({"prune_rate": 1.0}, "prune_rate 1.0"),
        ({"prune_rate": 0.0}, "prune_rate 0.0"),
        ({"ap_rate": -0.1}, "ap_rate -0.1"),
        ({"ap": True, "ap_rate": 0.2}, "ap_rate 0.2"),
        ({"cycles": 0}, "cycles 0"),
        ({"retraining": "magic"}, "magic"),
        ({"lr": math.nan}, "lr nan"),
        ({"device": "tpu"}, "tpu"),
        ({"device": "cudafoo"}, "cudafoo"),
        ({"weight_decay": math.inf}, "weight_decay inf"),
        ({"weight_decay": math.nan}, "weight_decay nan"),
        ({"warmup_epochs": math.nan}, "warmup_epochs nan"),
        ({"max_train_samples": 1}, "max_train_samples 1"),
        ({"val_fraction": 0.5}, "val_fraction 0.5"),
        ({"val_fraction": math.nan}, "val_fraction nan"),
        ({"torch_compile": "fast"}, "torch_compile 'fast'"),
    ],
)
def test_bad_configs_raise_one_clear_error(changes, named):
    with pytest.raises(ConfigError) as err:
        checked_config(changes)
    assert named in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"cycles": 60}, "cycles 60 would prune all 50432 weights of mlp at prune_rate 0.2; at most 51"),
        ({"batch_size": 10**11}, f"batch_size {10**11} is larger than the 1437 training samples"),
        ({"cpu_threads": 100_000}, "cpu_threads 100000"),
    ],
)
def test_settings_a_trial_cannot_honour_on_its_data_or_machine_are_refused_before_training(changes, named, digits):
    with pytest.raises(ConfigError) as err:
        TrialRunner(quick(**changes), digits)
    assert named in str(err.value) and "\n" not in str(err.value)


def test_a_validation_split_is_held_out_of_training_the_same_for_every_seed(digits):
    split = [TrialRunner(quick(val_fraction=0.1, seed=seed), digits) for seed in (1, 2)]
    assert all(len(t.data.dataset.y_train) == 1437 - 144 and len(t.data.validation[1]) == 144 for t in split)
    assert torch.equal(split[0].data.validation[0], split[1].data.validation[0])  # one split for every seed
    train_rows = {tuple(row.tolist()) for row in split[0].data.dataset.x_train.flatten(1)}
    assert not any(tuple(row.tolist()) in train_rows for row in split[0].data.validation[0].flatten(1)[:20])
    assert torch.equal(TrialRunner(quick(), digits).data.dataset.x_train, digits.x_train)  # no split unless asked

    results = run_trial(quick(val_fraction=0.1, cycles=1, epochs=1), dataset=digits)
    assert all(0 <= r.val_acc <= 100 and r.metrics()["val_acc"] == r.val_acc for r in results)
    assert "val_acc" not in run_trial(quick(cycles=1, epochs=1), dataset=digits)[0].metrics()


def test_torch_compile_keeps_the_numbers_within_noise(digits):
    """The speed switch must not change the science: same pruning, accuracies and DNR as eager, within noise."""
    eager = run_trial(quick(), dataset=digits)
    compiled = run_trial(quick(torch_compile="default"), dataset=digits)
    for a, b in zip(eager, compiled, strict=True):
        assert a.weights_remaining == b.weights_remaining
        assert abs(a.test_acc - b.test_acc) <= 1.5 and abs(a.dnr - b.dnr) <= 0.02, (a.metrics(), b.metrics())


def test_torch_compile_on_a_cpu_without_a_compiler_is_refused(digits, monkeypatch):
    monkeypatch.setattr("ap_core.environment.shutil.which", lambda _: None)
    with pytest.raises(ConfigError, match="torch_compile 'default' on a CPU needs a C\\+\\+ compiler"):
        TrialRunner(quick(torch_compile="default"), digits)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_refused(digits):
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        TrialRunner(quick(device="cuda"), digits)


def test_missing_dataset_offline_is_a_one_line_error(tmp_path):
    with pytest.raises(DatasetUnavailableError) as err:
        run_trial(checked_config(dict(model="resnet20", dataset="cifar10", data_dir=str(tmp_path))))
    assert "cifar10" in str(err.value) and str(tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_lr_schedules():
    epochs, steps = 10, 10  # steps per epoch
    multistep = ScheduleSettings("multistep", milestones=(0.5, 0.75), lr_gamma=0.1)
    assert [lr_factor(multistep, epochs, s, steps) for s in (0, 49, 50, 74, 75)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01]
    )
    cosine = ScheduleSettings("cosine")
    assert lr_factor(cosine, epochs, 0, steps) == 1 and lr_factor(cosine, epochs, 50, steps) == pytest.approx(0.5)
    onecycle = ScheduleSettings("onecycle")
    assert lr_factor(onecycle, epochs, 0, steps) == pytest.approx(1 / 25)
    assert lr_factor(onecycle, epochs, 30, steps) == pytest.approx(1.0)
    assert lr_factor(onecycle, epochs, 100, steps) == pytest.approx(1 / 25e4)
    warm = ScheduleSettings("constant", warmup_epochs=2)
    assert [lr_factor(warm, epochs, s, steps) for s in (0, 9, 19, 20)] == pytest.approx([0.05, 0.5, 1, 1])


def test_cli_runs_one_trial_and_rejects_bad_input(tmp_path):
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "ap_core",
            "--epochs",
            "1",
            "--cycles",
            "1",
            "--json",
            str(tmp_path / "r.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert "cycle  1  weights  80.00%" in ok.stdout and (tmp_path / "r.json").exists()
    bad = subprocess.run(
        [sys.executable, "-m", "ap_core", "--model", "resnet1000"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "resnet1000" in bad.stderr


def test_core_never_imports_ray_or_mlflow():
    code = (
        "import sys, ap_core, ap_core.cli\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("model", MODELS.names())
def test_every_model_runs_a_pruning_trial(model, digits, tmp_path):
    config = quick(model=model, epochs=1, cycles=1, ap=True, max_train_samples=64, batch_size=32, dead_unit_window=32)
    results, checkpoints = run_with_checkpoints(config, digits, tmp_path)
    assert [round(r.weights_remaining, 1) for r in results] == [100.0, 80.0]
    assert all(0.0 <= r.dnr <= 1.0 and r.dnr_layers_per_epoch[-1] for r in results)
    assert results[-1].total_units > 0
    # Masked weights are still computed by dense kernels: FLOPs stay, parameters go with the mask.
    assert results[-1].flops_remaining == 100.0 and results[-1].channels_remaining == 100.0
    assert 80.0 <= results[-1].params_remaining < 100.0
    assert_pruned_weights_are_zero(checkpoints[-1])


def test_config_takes_numeric_values_in_the_forms_tune_and_numpy_produce():
    import numpy as np

    config = checked_config(dict(batch_size=64.0, epochs=np.int64(3), lr=np.float32(0.5), seed=2.0, milestones=[0.5]))
    assert (config.training.batch_size, config.training.epochs, config.seed) == (64, 3, 2)
    assert (
        type(config.training.batch_size) is int
        and type(config.optimizer.lr) is float
        and config.schedule.milestones == (0.5,)
    )
    for bad, named in (
        ({"batch_size": 64.5}, "batch_size 64.5"),
        ({"ap": "yes"}, "ap 'yes'"),
        ({"seed": -1}, "seed -1"),
        ({"model": 3}, "model 3"),
    ):
        with pytest.raises(ConfigError, match=named):
            checked_config(dict(**bad))


@pytest.mark.parametrize("retraining", ["rewind_iteration", "lr_rewind"])
def test_rewind_step_must_fall_inside_a_cycle(retraining, digits):
    steps = 2 * math.ceil(1437 / 64)
    with pytest.raises(ConfigError, match=f"rewind_step {steps} must be below"):
        TrialRunner(quick(retraining=retraining, rewind_step=steps), digits)
    TrialRunner(quick(retraining=retraining, rewind_step=steps - 1), digits).run(None, None)


def test_diverging_training_is_reported_as_non_finite(digits):
    from ap_core import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match="lower the learning rate"):
        run_trial(quick(lr=1e12), dataset=digits)


class _RunsCode:
    """Unpickling this would run `touch <marker>`: what a malicious checkpoint on shared storage could do."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["malicious", "truncated", "empty", "garbage"])
def test_a_bad_checkpoint_is_a_one_line_error_and_runs_nothing(kind, digits, tmp_path):
    import pickle

    marker = tmp_path / "pwned"
    path = tmp_path / CHECKPOINT_FILE
    if kind == "malicious":
        torch.save({"meta": _RunsCode(marker)}, path, pickle_module=pickle)
    elif kind == "truncated":
        run_trial(quick(cycles=1, epochs=1), checkpoint_dir=tmp_path, dataset=digits)
        path.write_bytes(path.read_bytes()[:2000])
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.write_text("not a checkpoint\n")
    with pytest.raises(ConfigError) as err:
        run_trial(quick(cycles=1, epochs=1), resume_from=tmp_path, dataset=digits)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def _sha256(tensors: dict[str, torch.Tensor]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in tensors.items():
        digest.update(name.encode())
        digest.update(tensor.cpu().numpy().tobytes())
    return digest.hexdigest()


DATA = Path(__file__).parent / "data"
FIXED_SEED, SAME_CPU = fixed_seed_recording(DATA / "fixed_seed_results.json")


@pytest.mark.parametrize("expected", FIXED_SEED, ids=lambda t: f"{t['config']['model']}-{t['config'].get('method')}")
def test_fixed_seed_trials_keep_the_numbers_of_the_code_before_the_core_reshape(expected, digits, tmp_path):
    """Refactors keep the numbers: same masks, weights and per-cycle results, bit for bit (CPU, one thread).

    Bit for bit on a CPU the numbers were recorded on. On another, rounding differs in the last bits, which a short
    ResNet training amplifies (3 points of accuracy, other weights pruned): the weights remaining match exactly and
    the rest within that; record the reference code's numbers on that CPU to compare it bit for bit.
    """
    torch.set_num_threads(1)
    results, checkpoints = run_with_checkpoints(checked_config(expected["config"]), digits, tmp_path)
    for result, cycle in zip(results, expected["cycles"], strict=True):
        got = {k: getattr(result, k) for k in cycle}
        if SAME_CPU:
            assert got == cycle
        else:
            assert (got["cycle"], got["weights_remaining"]) == (cycle["cycle"], cycle["weights_remaining"])
            assert got["test_acc"] == pytest.approx(cycle["test_acc"], abs=5)  # 360 test images, short training
            assert got["dnr"] == pytest.approx(cycle["dnr"], abs=0.02)
            assert got["test_loss"] == pytest.approx(cycle["test_loss"], rel=0.1)
    if SAME_CPU:
        assert _sha256(checkpoints[-1]["mask"]) == expected["mask_sha256"]
        assert _sha256(checkpoints[-1]["model"]) == expected["weights_sha256"]


def test_small_models_train_on_one_cpu_thread_unless_told(digits):
    torch.set_num_threads(2)
    TrialRunner(quick(cpu_threads=0), digits)
    assert torch.get_num_threads() == 1  # the MLP is far below a million parameters
    TrialRunner(quick(cpu_threads=2), digits)
    assert torch.get_num_threads() == 2


FIXED_SEED_METHODS, SAME_CPU_METHODS = fixed_seed_recording(DATA / "fixed_seed_method_results.json")


def method_trial_id(trial: dict) -> str:
    config = trial["config"]
    return f"{config['model']}-{config['method']}-{config.get('retraining', 'rewind_init')}-ap{config['ap']}"


@pytest.mark.parametrize("expected", FIXED_SEED_METHODS, ids=method_trial_id)
def test_fixed_seed_trials_keep_the_numbers_of_every_method_and_ap_path(expected, digits, tmp_path):
    """The pruning-contract refactor keeps every result field, mask and weight of the channel methods (with their
    removal events) and of AP's layer scope and ablations, bit for bit (CPU, one thread; on a CPU without a recording,
    within another CPU's rounding as in the test above)."""
    torch.set_num_threads(1)
    results, checkpoints = run_with_checkpoints(checked_config(expected["config"]), digits, tmp_path)
    got = [{k: v for k, v in json.loads(json.dumps(r.to_dict())).items() if k != "seconds"} for r in results]
    if not SAME_CPU_METHODS:
        assert [c["cycle"] for c in got] == [c["cycle"] for c in expected["cycles"]]
        for cycle, recorded in zip(got, expected["cycles"], strict=True):
            assert cycle["test_acc"] == pytest.approx(recorded["test_acc"], abs=10)  # channels cut differ too
            assert cycle["weights_remaining"] == pytest.approx(recorded["weights_remaining"], abs=1)
        return
    assert got == expected["cycles"]
    assert _sha256(checkpoints[-1]["mask"]) == expected["mask_sha256"]
    assert _sha256(checkpoints[-1]["model"]) == expected["weights_sha256"]


def test_a_per_epoch_callback_sees_the_validation_accuracy_within_each_cycle_and_changes_nothing(digits):
    config = quick(epochs=3, cycles=1, val_fraction=0.1)
    plain = TrialRunner(config, digits).run(None, None)
    seen, ended = [], []
    watched = TrialRunner(config, digits).run(lambda result: ended.append(len(seen)), None, seen.append)
    # After every epoch but a cycle's last (its CycleResult stands for that one), with the validation accuracy
    assert [(p.cycle, p.epoch) for p in seen] == [(0, 0), (0, 1), (1, 0), (1, 1)] and ended == [2, 4]
    assert all(0 < p.val_acc <= 100 for p in seen)
    assert comparable(watched) == comparable(plain)  # evaluating it draws no random numbers
    without_split = []
    TrialRunner(quick(epochs=2, cycles=1), digits).run(None, None, without_split.append)
    assert [p.val_acc for p in without_split] == [None, None]
