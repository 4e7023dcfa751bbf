"""The papers' remaining tables (issue #18): DenseNet-40 / MobileNetV2, ImageNet (ResNet-50, ViT-B/16) and DemP's
ImageNet / ResNet-18 runs. Their paper presets plan what docs/protocol.md says; their smoke presets run offline on a
generated folder of JPEGs (one end to end through Ray and MLflow, the others one planned trial each)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import REPO, MlflowServer, run_cli
from mlflow.tracking import MlflowClient

from ap_core import load_dataset, run_trial
from sweeps import smoke_images, table_demp_imagenet, table_densenet_mobilenet, table_imagenet
from sweeps.engine.spec import SweepSpec, expand

SPECS = {
    "table_densenet_mobilenet": table_densenet_mobilenet.SPEC,
    "table_imagenet": table_imagenet.SPEC,
    "table_demp_imagenet": table_demp_imagenet.SPEC,
}
# The sweep scripts import `sweeps` from this checkout, not from whichever copy is installed.
FROM_HERE = {"PYTHONPATH": str(REPO)}


def planned_work(spec: SweepSpec, preset_name: str) -> tuple[int, int]:
    """Trials and training epochs the preset declares: every axis multiplied out, each network with its recipe."""
    preset = spec.preset(preset_name)
    settings = len(preset.settings or spec.settings or (None,))
    methods = len(preset.methods or spec.methods)
    per_network = len(preset.datasets) * methods * len(spec.variants) * settings * preset.seeds
    epochs = 0
    for network in preset.networks:
        recipe = {**preset.trial, **preset.per_network.get(network, {})}
        epochs += per_network * (recipe["cycles"] + 1) * recipe["epochs"]
    return per_network * len(preset.networks), epochs


@pytest.mark.parametrize(
    ("module", "preset", "recipes"),
    [
        (
            "table_densenet_mobilenet",
            "paper",
            {"densenet40": "epochs=300 batch_size=64 lr=0.1", "mobilenetv2": "epochs=60 batch_size=128 lr=0.01"},
        ),
        (
            "table_imagenet",
            "paper",
            {"tv:resnet50": "epochs=90 batch_size=256 lr=0.1", "tv:vit_b_16": "epochs=300 batch_size=4096 lr=0.003"},
        ),
        ("table_demp_imagenet", "paper", {"tv:resnet50": "epochs=18 batch_size=256 lr=0.002"}),
        ("table_demp_imagenet", "paper-resnet18", {"tv:resnet18": "epochs=250 batch_size=128 lr=0.005"}),
    ],
)
def test_paper_preset_dry_run_prints_trials_and_epochs(
    module: str, preset: str, recipes: dict[str, str], tmp_path: Path
) -> None:
    done = run_cli(
        module, "--preset", preset, "--dry-run", "--results-dir", str(tmp_path / "r"), timeout_s=120, **FROM_HERE
    )
    assert done.returncode == 0, done.stderr[-2000:]
    trials, epochs = planned_work(SPECS[module], preset)
    assert f"{trials} trials in 1 Tune experiment(s); {epochs} training epochs" in done.stdout
    lines = [line for line in done.stdout.splitlines() if ": model=" in line]
    assert len(lines) == trials
    for network, recipe in recipes.items():  # each network trains with the recipe docs/protocol.md cites
        mine = [line for line in lines if f"model={network} " in line]
        assert mine and all(recipe in line for line in mine), network
    assert not (tmp_path / "r").exists()


def test_smoke_images_are_a_deterministic_class_folder_tree(tmp_path: Path) -> None:
    first = smoke_images.write_tree(tmp_path / "a", classes=3, train=5, val=2)
    second = smoke_images.write_tree(tmp_path / "b", classes=3, train=5, val=2)
    files = sorted(p.relative_to(first) for p in first.rglob("*.jpg"))
    assert len(files) == 3 * (5 + 2)
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    data = load_dataset("folder", first)
    assert data.num_classes == 3 and len(data.train) == 15 and len(data.test) == 6
    assert sorted(data.train.labels.tolist()) == [0] * 5 + [1] * 5 + [2] * 5


@pytest.mark.parametrize(
    ("argv", "writes"),
    [
        ([], True),  # the smoke preset reads the default tree
        (["--preset", "paper"], False),
        (["--dry-run"], False),
        (["--data-dir", "elsewhere"], False),
        (["--no-such-flag"], False),  # left to the driver's one-line error
    ],
)
def test_smoke_data_is_written_only_for_a_run_that_reads_it(
    argv: list[str], writes: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[Path] = []
    monkeypatch.setattr(smoke_images, "ensure", written.append)
    smoke_images.ensure_for_run(table_imagenet.SPEC, argv)
    assert written == ([smoke_images.DEFAULT_DIR] if writes else [])


@pytest.mark.integration
def test_smoke_presets_run_on_generated_jpegs(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    """table_imagenet's smoke preset through Ray and MLflow; one planned smoke trial of each other table directly
    (their sweeps add only Ray startup and the same logging; kept out to fit the suite's time on 2 cores)."""
    images = smoke_images.write_tree(tmp_path / "images")
    name = "table_imagenet-e2e"
    done = run_cli(
        "table_imagenet", "--results-dir", str(tmp_path / "r"), "--tracking-uri", mlflow_server.uri,
        "--num-cpus", "2", "--name", name, "--progress", "false", "--data-dir", str(images), timeout_s=300,
        **FROM_HERE,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    plan = expand(table_imagenet.SPEC, "smoke", overrides={"device": "cpu", "data_dir": str(images)})
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parent = next(r for r in runs if r.data.tags.get("sweep.role") == "parent")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == sorted(t.name for t in plan.trials)
    for run in children:
        assert run.info.status == "FINISHED"
        for key in ("test_acc", "weights_remaining", "dnr"):
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [0, 1], key
        dnr = client.get_metric_history(run.info.run_id, "dnr")
        # GELU outputs <= 0 count as dead in the ViT: its DNR is a real fraction, not the 0 of an unhooked net.
        assert all(0 < m.value < 1 for m in dnr), run.info.run_name

    for spec, trial_name in (
        (table_densenet_mobilenet.SPEC, "mobilenetv2-gp-ap-seed1"),
        (table_demp_imagenet.SPEC, "tv:resnet18-demp-lam0.05-ap-seed1"),
    ):
        smoke = expand(spec, "smoke", overrides={"device": "cpu", "data_dir": str(images)})
        trial = smoke.by_name()[trial_name]
        results = run_trial(trial.config)
        assert [r.cycle for r in results] == list(range(trial.config.pruning.cycles + 1))
        assert all(math.isfinite(r.test_acc) and 0 <= r.dnr <= 1 for r in results)
        if trial.config.pruning.method == "demp":
            assert results[-1].channels_remaining < 100.0  # dead channels really went
        else:
            pruning = trial.config.pruning
            assert results[-1].weights_remaining == pytest.approx(
                100 * (1 - pruning.prune_rate) ** pruning.cycles, abs=0.1
            )
