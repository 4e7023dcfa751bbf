"""What the cycle store saves (issue #19): the paper tables' epochs planned vs trained when they run one after another
against one store, and the smoke presets' wall time with reuse on and off, side by side.

Epochs come from the plans alone (`sweeps.engine.cycle_store.savings`, what `--dry-run` prints), each table counted
against the store the tables before it filled; the wall times run the real drivers in fresh processes, the reuse
runs sharing one store in the same order, the no-reuse runs with `--no-reuse`.

    python benchmarks/reuse_savings.py                                 # epochs, paper and smoke presets
    python benchmarks/reuse_savings.py --wall table1 table_structured  # plus those smoke presets' wall time
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sweeps.engine.cycle_store import savings  # noqa: E402
from sweeps.engine.spec import expand  # noqa: E402

TABLES = (
    "table1",
    "table_gp_lp",
    "table_ap_ablation",
    "table_structured",
    "table_demp",
    "table_lottery",
    "table_lrr",
    "table_densenet_mobilenet",
    "table_imagenet",
    "table_demp_imagenet",
)


def epochs_table(preset: str) -> list[str]:
    """Markdown rows: per table, epochs planned, held by the tables before it, shared within it, to train."""
    lines = [
        f"| {preset} presets | planned | held (earlier tables) | shared (within) | trained | saved |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    holding: set[str] = set()
    total = {"planned": 0, "held": 0, "shared": 0}
    for table in TABLES:
        spec = importlib.import_module(f"sweeps.{table}").SPEC
        for name in [p for p in spec.presets if p == preset or p.startswith(f"{preset}-")]:  # paper-resnet18 too
            plan = expand(spec, name, overrides={"device": "cpu"})
            found, holding = savings((t.config for t in plan.trials), holding)
            for key in total:
                total[key] += getattr(found, key)
            saved = found.held + found.shared
            lines.append(
                f"| {table} {name} ({plan.trial_count} trials) | {found.planned:,} | {found.held:,} | "
                f"{found.shared:,} | {found.to_train:,} | {100 * saved / found.planned:.0f}% |"
            )
    trained = total["planned"] - total["held"] - total["shared"]
    lines.append(
        f"| **all, in this order** | {total['planned']:,} | {total['held']:,} | {total['shared']:,} | {trained:,} | "
        f"**{100 * (1 - trained / total['planned']):.0f}%** |"
    )
    return lines


def wall_times(tables: list[str]) -> list[str]:
    """Markdown rows: each smoke preset's wall time without reuse and with it (one store across the tables)."""
    lines = ["| smoke preset | --no-reuse (s) | reuse (s) | ratio |", "|---|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as alone, tempfile.TemporaryDirectory() as shared:
        for table in tables:
            seconds = []
            for results, extra in ((alone, ["--no-reuse"]), (shared, [])):
                command = [sys.executable, str(REPO / "sweeps" / f"{table}.py"), "--preset", "smoke"]
                started = time.perf_counter()
                subprocess.run(
                    [*command, "--results-dir", results, "--progress", "false", *extra],
                    cwd=REPO,
                    check=True,
                    capture_output=True,
                )
                seconds.append(time.perf_counter() - started)
            lines.append(f"| {table} | {seconds[0]:.0f} | {seconds[1]:.0f} | {seconds[1] / seconds[0]:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wall", nargs="*", default=[], choices=TABLES, help="smoke presets to time both ways")
    args = parser.parse_args()
    for preset in ("paper", "smoke"):
        print("\n".join(epochs_table(preset)), end="\n\n")
    if args.wall:
        print("\n".join(wall_times(args.wall)))


if __name__ == "__main__":
    main()
