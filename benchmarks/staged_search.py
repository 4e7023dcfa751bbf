"""The full grid under ASHA vs the staged search (issue #21) on the smoke preset's grid, same seeds.

Runs `sweeps/hparam_grid.py` twice in fresh processes (local Ray, SQLite MLflow in a temporary folder): the full grid
under ASHA (its rungs in epochs), then `--search staged`; prints for each the epochs its dry run expected, the epochs
it trained (cycles taken from the cycle store not counted; stage-one trials ASHA stopped within their dense cycle
counted from Tune's records), its wall time, and the best point per method with its
validation and test accuracy after pruning.

    python benchmarks/staged_search.py                      # the smoke grid, ASHA's and the staged search's defaults
    python benchmarks/staged_search.py --max-concurrent 1   # flags after the script's go to both searches
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from ray.tune import ExperimentAnalysis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trainables.pruning_trial import TRAINED_EPOCHS  # noqa: E402

SEARCHES = {"full grid, ASHA": [], "staged": ["--search", "staged"]}


def trained_epochs(rows: pd.DataFrame, staged: bool) -> int:
    """Epochs the trials trained: each trial's cycles, less the dense cycle a stage-two trial took from the store."""
    finals = rows.groupby("trial").agg(cycle=("cycle", "max"), epochs=("epochs", "first"), group=("group", "first"))
    from_store = staged & ~finals["group"].str.endswith("-dense")
    return int(((finals["cycle"] + 1 - from_store) * finals["epochs"]).sum())


def stopped_within_a_cycle(sweep_dir: Path) -> tuple[int, int]:
    """Trials stopped before they ended a cycle (stage-one trials ASHA stopped, which have no rows: rows are
    cycles) and the epochs they trained, from Tune's records."""
    count = epochs = 0
    for folder in json.loads((sweep_dir / "sweep.json").read_text())["experiments"].values():
        for history in ExperimentAnalysis(folder).trial_dataframes.values():
            if "cycle" not in history and TRAINED_EPOCHS in history:
                count, epochs = count + 1, epochs + int(history[TRAINED_EPOCHS].max())
    return count, epochs


def run(name: str, flags: list[str], folder: Path) -> None:
    argv = [sys.executable, str(REPO / "sweeps" / "hparam_grid.py"), "--results-dir", str(folder), "--name", name]
    argv += ["--num-cpus", "2", "--progress", "false", *flags]
    dry = subprocess.run([*argv, "--dry-run"], capture_output=True, text=True, check=True, cwd=REPO).stdout
    expected = next(line for line in dry.splitlines() if line.startswith("expected: ")).split(";")[0]
    start = time.perf_counter()
    subprocess.run(argv, capture_output=True, text=True, check=True, cwd=REPO)
    wall = time.perf_counter() - start
    rows = pd.read_csv(folder / name / "trial_cycles.csv")
    best = pd.read_csv(folder / name / "best_hparams.csv")
    stopped, stopped_epochs = stopped_within_a_cycle(folder / name)
    trained = trained_epochs(rows, "staged" in flags) + stopped_epochs
    trials = rows["trial"].nunique() + stopped
    print(
        f"{name}: {expected}; trained {trained} epochs in {trials} trials ({stopped} stopped within their first cycle)"
    )
    print(f"wall {wall:.0f} s")
    print(best[["method", "batch_size", "lr", "epochs", "val_acc", "test_acc"]].to_markdown(index=False))


def main() -> None:
    extra = sys.argv[1:]
    with tempfile.TemporaryDirectory(prefix="staged-search-") as tmp:
        for index, (label, flags) in enumerate(SEARCHES.items()):
            print(f"\n## {label}")
            run(f"search{index}", [*flags, *extra], Path(tmp))


if __name__ == "__main__":
    main()
