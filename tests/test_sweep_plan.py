"""Sweep planning and tables without Ray or MLflow: expansion, settings layers, hparams, the table itself."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from ap_core.errors import ConfigError
from sweeps import table1, table_ap_ablation
from sweeps.engine import plots
from sweeps.engine.hparams_file import load_hparams
from sweeps.engine.options import SweepOptions
from sweeps.engine.result_table import MISSING, SweepTable, build_table
from sweeps.engine.spec import GP, LP, NO_AP, WITH_AP, AxisValue, Preset, SearchSpace, SweepSpec, expand

TINY = Preset(
    "tiny",
    networks=("mlp", "lenet300_100"),
    datasets=("digits",),
    seeds=2,
    trial={"epochs": 2, "cycles": 2, "lr": 0.01},
    per_network={"lenet300_100": {"lr": 0.02, "batch_size": 32}},
)
SPEC = SweepSpec("tiny", "A tiny table", methods=(GP, LP), presets={"tiny": TINY}, default_preset="tiny")


def test_expansion_is_the_product_of_the_axes_with_readable_unique_names() -> None:
    plan = expand(table1.SPEC, "smoke")
    assert len(plan.trials) == 2 * 2 * 3  # GP/LP x AP off/on x 3 seeds
    names = [t.name for t in plan.trials]
    assert len(set(names)) == len(names)
    trial = plan.by_name()["mlp-gp-ap-seed1"]
    assert (trial.config.pruning.method, trial.config.ap.enabled, trial.config.seed) == ("global_magnitude", True, 1)
    assert trial.labels == {"dataset": "digits", "network": "mlp", "method": "GP", "variant": "AP", "seed": 1}
    assert plan.total_epochs == sum((t.config.pruning.cycles + 1) * t.config.training.epochs for t in plan.trials)


def test_settings_layer_preset_method_network_hparams_then_command_line() -> None:
    hparams = {"lenet300_100": {"layerwise_magnitude": {"lr": 0.03, "epochs": 3}}}
    plan = expand(SPEC, "tiny", hparams=hparams, overrides={"epochs": 4})
    configs = {t.name: t.config for t in plan.trials}
    assert configs["mlp-gp-noap-seed1"].optimizer.lr == 0.01  # preset
    assert configs["lenet300_100-gp-noap-seed1"].optimizer.lr == 0.02  # per-network recipe
    assert configs["lenet300_100-gp-noap-seed1"].training.batch_size == 32
    assert configs["lenet300_100-lp-noap-seed1"].optimizer.lr == 0.03  # --hparams entry for (network, method)
    assert all(c.training.epochs == 4 for c in configs.values())  # the command line wins


def test_methods_and_networks_can_be_narrowed_and_are_validated() -> None:
    plan = expand(SPEC, "tiny", methods=("lp",), networks=("mlp",), seeds=1)
    assert [t.name for t in plan.trials] == ["mlp-lp-noap-seed1", "mlp-lp-ap-seed1"]
    with pytest.raises(ConfigError, match=r"'XP'.*GP, LP"):
        expand(SPEC, "tiny", methods=("XP",))
    with pytest.raises(ConfigError, match="resnet99"):
        expand(SPEC, "tiny", networks=("resnet99",))
    with pytest.raises(ConfigError, match=r"'huge'.*tiny"):
        expand(SPEC, "huge")


def test_a_search_plans_groups_whose_points_tune_draws() -> None:
    space = SearchSpace({"batch_size": (64, 128, 256), "lr": (0.01, 0.02)})
    searched = SweepSpec(
        "s", "s", methods=(GP,), presets={"tiny": TINY}, variants=(NO_AP,), search=space, default_preset="tiny"
    )
    plan = expand(searched, "tiny", networks=("mlp",), seeds=2)
    assert plan.trials == () and plan.groups == ["digits-mlp-gp"]
    assert plan.trial_count == 12 and plan.points_per_group == 6
    assert expand(searched, "tiny", networks=("mlp",), seeds=2, search_mode="optuna", num_samples=4).trial_count == 8
    assert expand(searched, "tiny", networks=("mlp",), search_mode="random").points_per_group == 6  # capped default
    with pytest.raises(ConfigError, match="num_samples 7 exceeds the 6 points"):
        expand(searched, "tiny", search_mode="optuna", num_samples=7)
    with pytest.raises(ConfigError, match="batch_size 0"):
        expand(dataclasses.replace(searched, search=SearchSpace({"batch_size": (64, 0)})), "tiny")


def test_fingerprint_ignores_where_a_trial_runs_but_not_what_it_computes() -> None:
    base = expand(SPEC, "tiny").fingerprint()
    assert expand(SPEC, "tiny", overrides={"device": "cuda", "data_dir": "/x", "cpu_threads": 2}).fingerprint() == base
    assert expand(SPEC, "tiny", overrides={"lr": 0.5}).fingerprint() != base


def test_hparams_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "best.json"
    path.write_text(json.dumps({"mlp": {"global_magnitude": {"lr": 0.05, "batch_size": 128, "milestones": [0.5]}}}))
    loaded = load_hparams(path)
    plan = expand(SPEC, "tiny", networks=("mlp",), methods=("GP",), hparams=loaded)
    assert {
        (t.config.optimizer.lr, t.config.training.batch_size, t.config.schedule.milestones) for t in plan.trials
    } == {(0.05, 128, (0.5,))}


def test_sweep_options_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"gpus_per_trial 1\.5"):
        SweepOptions(gpus_per_trial=1.5)
    with pytest.raises(ConfigError, match="cpus_per_trial 0"):
        SweepOptions(cpus_per_trial=0)
    for not_a_share in (-2.0, float("nan"), float("inf")):  # -1.0 is auto; inf used to raise OverflowError
        with pytest.raises(ConfigError, match=f"gpus_per_trial {not_a_share} must be auto, 0"):
            SweepOptions(gpus_per_trial=not_a_share)
    assert SweepOptions(gpus_per_trial=0.25).gpus_per_trial == 0.25
    for not_a_level in (0.0, 101.0, float("nan")):
        with pytest.raises(ConfigError, match=f"pool_below {not_a_level} must be a % of weights remaining in"):
            SweepOptions(pool_below=not_a_level)


def cycle_rows(trial: str, labels: dict, accuracies: list[float], prune_rate: float = 0.2) -> list[dict]:
    return [
        {
            "trial": trial,
            **labels,
            "cycle": c,
            "weights_remaining": 100 * (1 - prune_rate) ** c,
            "level": round(100 * (1 - prune_rate) ** c, 1),
            "test_acc": acc,
            "dnr": 0.5,
        }
        for c, acc in enumerate(accuracies)
    ]


def test_table_cells_are_mean_and_std_over_seeds_with_delta_rows_and_gaps() -> None:
    plan = expand(SPEC, "tiny", networks=("mlp",))  # GP, LP x no AP, AP x 2 seeds, 2 cycles
    rows = []
    for trial in plan.trials:
        labels = dict(trial.labels)
        if labels["method"] == "LP" and labels["variant"] == "AP":
            continue  # both seeds failed
        seed = labels["seed"]
        if labels["method"] == "LP" and seed == 2:
            continue  # one seed failed
        base = 90.0 if labels["variant"] == "no AP" else 91.0
        rows += cycle_rows(trial.name, labels, [base + seed, base + seed - 1, base + seed - 2])
    table = build_table(pd.DataFrame(rows), plan)

    assert list(table.cells.columns) == ["100.0", "80.0", "64.0"]
    assert table.cells.loc[("mlp", "GP", "no AP"), "100.0"] == "91.50 ± 0.71"
    assert table.cells.loc[("mlp", "GP", "AP"), "64.0"] == "90.50 ± 0.71"
    assert table.cells.loc[("mlp", "GP", "Δ(AP)"), "80.0"] == "+1.00 (n=2 too small)"  # +1 on both seeds
    assert table.cells.loc[("mlp", "LP", "no AP"), "100.0"] == "91.00 (n=1)"  # fewer seeds than planned
    assert set(table.cells.loc[("mlp", "LP", "AP")]) == {MISSING}
    assert set(table.cells.loc[("mlp", "LP", "Δ(AP)")]) == {MISSING}
    assert len(table.values) == 3 * 3 + 3  # three (method, variant) rows with data x three levels, GP's Δ row
    markdown = table.to_markdown()  # printed exactly as formatted, not re-parsed as numbers
    assert " +1.00 (n=2 too small) |" in markdown and "91.00 (n=1)" in markdown
    assert "64.0 |" in markdown.splitlines()[0]
    assert "paired differences" in table.note and "95% interval" in table.note and "sign-flip" in table.note
    assert "AP picked its share across all layers (ap_scope global)" in table.note


def test_table_of_a_sweep_with_no_finished_trial_still_renders(tmp_path: Path) -> None:
    plan = expand(table_ap_ablation.SPEC, "smoke", seeds=1)
    table = build_table(pd.DataFrame(), plan)
    assert len(table.cells) == 1 + 4 + 4  # baseline, four AP variants, four Delta rows
    assert set(table.cells.to_numpy().ravel()) == {MISSING}
    paths = table.write(tmp_path, "ablation")
    names = ["ablation.csv", "ablation.md", "ablation.tex", "ablation_values.csv", "ablation_pooled.csv"]
    assert [p.name for p in paths] == names
    latex = (tmp_path / "ablation.tex").read_text()
    assert r"$\Delta$(AP (change/negative))" in latex and "--" in latex and "—" not in latex
    assert latex.startswith("% needs \\usepackage{booktabs,multirow}") and "magnitude/all' equals 'no AP'" in latex
    assert "Table" not in latex.split("caption{")[1].split("}")[0][:8]  # LaTeX numbers tables itself
    assert not re.search(r"\\cline\{[^}]*\}\s*\\bottomrule", latex)


def test_latex_escapes_names_and_formats_plus_minus(tmp_path: Path) -> None:
    spec = SweepSpec(
        "t",
        "T",
        methods=(AxisValue("GP", "gp", {"method": "global_magnitude"}),),
        variants=(NO_AP, WITH_AP),
        presets={"tiny": TINY},
        default_preset="tiny",
    )
    plan = expand(spec, "tiny", networks=("lenet300_100",))
    rows = [row for t in plan.trials for row in cycle_rows(t.name, dict(t.labels), [90.0 + t.config.seed] * 3)]
    table = build_table(pd.DataFrame(rows), plan)
    latex = table.to_latex()
    assert r"lenet300\_100" in latex and r"91.50 $\pm$ 0.71" in latex
    assert latex.count(r"\textbf{") == 2 * 3  # a tie: AP and no AP share the best mean at each of the 3 levels
    assert "100.0" not in table.to_latex(table.columns_to_show((64.0, 80.0)))
    assert table.columns_to_show((70.0,)) == ["64.0"]  # the nearest column
    with pytest.raises(ConfigError, match=r"--levels 0 is not a % of weights remaining; valid: 100.0, 80.0, 64.0"):
        table.columns_to_show((0.0,))
    assert table.columns_to_show(limit=2) == ["100.0", "64.0"]


def test_comparison_plot_gives_each_variant_one_style_in_every_panel(tmp_path: Path) -> None:
    plan = expand(SPEC, "tiny", networks=("mlp",))
    rows = []
    for trial in sorted(
        plan.trials, key=lambda t: (t.labels["method"] == "LP") * -t.config.ap.enabled
    ):  # LP's AP first
        rows += cycle_rows(trial.name, dict(trial.labels), [90.0, 89.0, 88.0])
    frame = pd.DataFrame(rows)
    figure = plots.comparison_figure(frame, "A tiny table")
    styles = {}
    for ax in figure.axes:
        for line in ax.get_lines():
            styles.setdefault(line.get_label(), set()).add((line.get_color(), line.get_marker(), line.get_linestyle()))
    assert set(styles) == {"no AP", "AP"} and all(len(s) == 1 for s in styles.values())  # one style per variant
    assert styles["no AP"] != styles["AP"]
    assert "bands: ±1 std over the seeds" in figure._suptitle.get_text()
    paths = plots.save(figure, str(tmp_path / "comparison.png"), vector=True)
    assert [Path(p).suffix for p in paths] == [".png", ".pdf"] and all(Path(p).stat().st_size > 1000 for p in paths)


def test_the_printed_columns_always_include_the_papers_headline_level() -> None:
    levels = [f"{100 * 0.8**k:.1f}" for k in range(17)]  # 100.0 ... 2.8: the smoke and paper presets' columns
    table = SweepTable("t", pd.DataFrame([["x"] * 17], columns=levels), pd.DataFrame())
    shown = table.columns_to_show(limit=7)
    assert len(shown) == 7 and "10.7" in shown and shown[0] == "100.0" and shown[-1] == "2.8"
    assert "8.6" in table.columns_to_show(limit=7, headline=8.6)


def test_a_sweep_of_weight_methods_takes_any_registered_weight_method_and_refuses_a_channel_method() -> None:
    plan = expand(table1.SPEC, "smoke", methods=("random",), seeds=1)
    assert {t.config.pruning.method for t in plan.trials} == {"random"}
    assert {t.labels["method"] for t in plan.trials} == {"random"}
    with pytest.raises(
        ConfigError, match=r"^unknown method 'rni' for sweep table1; valid: GP, LP or any registered weight method"
    ):
        expand(table1.SPEC, "smoke", methods=("rni",))
