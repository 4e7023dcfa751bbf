"""A trial's own artifacts, drawn where the trial runs and saved in each of its checkpoints.

Drawing them in the driver cost ~0.1 s of its event loop per trial (matplotlib), serially for the whole sweep; on
the workers it runs in parallel with the trials, and the driver only uploads the files it finds in a trial's last
checkpoint (`trial_logger`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sweeps.engine import plots

PLOTS_DIR = "plots"


def write_trial_artifacts(folder: Path, name: str, history: list[dict[str, float]]) -> None:
    """Per-cycle CSV and the mask summary (density per layer) as of the last cycle; once a pruning cycle is in,
    plots of accuracy vs weights remaining and of DNR per cycle."""
    folder.mkdir(parents=True, exist_ok=True)
    cycles = pd.DataFrame(history)
    cycles["cycle"] = cycles["cycle"].astype(int)
    cycles.to_csv(folder / "cycles.csv", index=False)
    final = cycles.iloc[-1]
    density = {k.removeprefix("density/"): final[k] for k in cycles.columns if k.startswith("density/")}
    pd.DataFrame({"layer": list(density), "density": list(density.values())}).assign(
        cycle=int(final["cycle"]), weights_remaining=final["weights_remaining"]
    ).to_csv(folder / "mask_summary.csv", index=False)
    if len(cycles) < 2:
        return  # the dense cycle alone: nothing to plot yet
    (folder / PLOTS_DIR).mkdir(exist_ok=True)
    plots.save(plots.trial_accuracy_figure(cycles, name), str(folder / PLOTS_DIR / "test_acc_vs_weights_remaining.png"))
    plots.save(plots.trial_dnr_figure(cycles, name), str(folder / PLOTS_DIR / "dnr_per_cycle.png"))
