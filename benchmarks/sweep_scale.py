"""Sweep scale: the service's own cost per trial as the number of trials grows (issue #20's targets).

Every trial is near-empty (a 64-sample digits MLP, one epoch, dense + one pruning cycle), so a sweep's wall time is
the service's own: Ray scheduling, reports and checkpoints, Tune's experiment-state snapshots and the driver's MLflow
logging. Each size runs `sweeps/table1.py`'s real driver in a fresh process, with MLflow on (the default SQLite
store), side by side in one invocation, and prints per size:

- trials/s: trials over the sweep's wall time from the command to its exit (Ray start-up included);
- driver peak RSS: the driver process's own peak resident memory (Ray's daemons not counted);
- state bytes/trial: the size of Tune's experiment-state file(s) at the end, over the trials;
- driver CPU: the driver's user + system CPU seconds over the wall time (1.0 = one core busy all the time).

    python benchmarks/sweep_scale.py                          # 160, 640 and 1,280 trials
    python benchmarks/sweep_scale.py --trials 40 160 --write  # other sizes; --write records it in RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
from datetime import date
from pathlib import Path

import pandas as pd
from sweep_overhead import NEAR_EMPTY, RESULTS, write_section

HEADING = "## Sweep scale"
TRIALS_PER_SEED = 4  # Table 1's smoke preset: GP and LP, each with and without AP

# Runs one sweep in this (fresh) process and prints what the driver itself spent, as JSON on the last line.
DRIVER = """
import contextlib, io, json, resource, sys, time
from sweeps.engine.driver import run
from sweeps.table1 import SPEC
started = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()):
    code = run(SPEC, sys.argv[1:])
wall = time.perf_counter() - started
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"code": code, "wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_kib": usage.ru_maxrss}))
"""


def run_sweep(results_dir: Path, trials: int, cpus: int) -> dict[str, float]:
    """One sweep of `trials` near-empty trials in a fresh driver process; its own measurements."""
    argv = [
        "--results-dir", str(results_dir), "--name", "scale", "--seeds", str(trials // TRIALS_PER_SEED),
        "--num-cpus", str(cpus), "--progress", "false", *NEAR_EMPTY,
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, *argv], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1]
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise SystemExit(f"sweep of {trials} trials failed ({done.returncode}):\n{done.stderr[-3000:]}")
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    if measured["code"] != 0:
        raise SystemExit(f"sweep of {trials} trials exited with {measured['code']}:\n{done.stderr[-3000:]}")
    state = list(results_dir.glob("ray/*/experiment_state-*.json"))
    return {**measured, "state_bytes": sum(path.stat().st_size for path in state)}


def measure(sizes: list[int], cpus: int) -> pd.DataFrame:
    rows = []
    for trials in sizes:
        with tempfile.TemporaryDirectory() as folder:
            got = run_sweep(Path(folder), trials, cpus)
        rows.append(
            {
                "trials": trials,
                "wall (s)": round(got["wall"], 1),
                "trials/s": round(trials / got["wall"], 2),
                "driver peak RSS (MiB)": round(got["rss_kib"] / 1024),
                "state bytes/trial": round(got["state_bytes"] / trials),
                "driver CPU (cores)": round(got["cpu"] / got["wall"], 2),
            }
        )
        print(rows[-1], flush=True)
    return pd.DataFrame(rows)


# Issue #20's targets on 2 cores: (name, value from the table, limit, at most)
def targets(table: pd.DataFrame) -> list[tuple[str, float, float, bool]]:
    first, last = table.iloc[0], table.iloc[-1]
    return [
        (f"sweep trials/s at {last['trials']} / {first['trials']}", last["trials/s"] / first["trials/s"], 0.8, False),
        ("sweep state bytes per trial (most)", float(table["state bytes/trial"].max()), 20_000, True),
        (f"sweep driver peak RSS at {last['trials']} trials (MiB)", float(last["driver peak RSS (MiB)"]), 2048, True),
    ]


def section(table: pd.DataFrame, cpus: int) -> str:
    first, last = table.iloc[0], table.iloc[-1]
    sizes = " ".join(str(n) for n in table["trials"])
    intro = (
        f"`python benchmarks/sweep_scale.py --trials {sizes} --cpus {cpus} --write`, {date.today()}: near-empty "
        "trials (digits MLP, 64 samples, 1 epoch, dense + 1 pruning cycle) through `sweeps/table1.py`'s driver, "
        f"MLflow on (SQLite), a local Ray with {cpus} CPUs, one CPU per trial ({os.cpu_count()} cores visible, "
        f"{platform.machine()}). Each size is a fresh driver process; wall time includes Ray's start-up."
    )
    ratio = last["trials/s"] / first["trials/s"]
    outro = (
        f"trials/s at {int(last['trials'])} trials / at {int(first['trials'])} trials: {ratio:.2f} (target >= 0.8). "
        f"Experiment state per trial: {int(table['state bytes/trial'].max())} bytes at most (target <= 20 KB). "
        f"Driver peak RSS at {int(last['trials'])} trials: {int(last['driver peak RSS (MiB)'])} MiB (target <= 2048)."
    )
    return (
        f"{HEADING}\n\n{textwrap.fill(intro, 110)}\n\n{table.to_markdown(index=False)}\n\n{textwrap.fill(outro, 110)}\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[160, 640, 1280], help="sweep sizes (x4)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--write", action="store_true", help=f"write the result into {RESULTS.name}")
    args = parser.parse_args(argv)
    bad = next((n for n in args.trials if n < TRIALS_PER_SEED or n % TRIALS_PER_SEED), None)
    if bad is not None:
        parser.error(f"--trials {bad}: each size must be a positive multiple of {TRIALS_PER_SEED}")
    text = section(measure(args.trials, args.cpus), args.cpus)
    print(text)
    if args.write:
        write_section(text, HEADING)


if __name__ == "__main__":
    main()
