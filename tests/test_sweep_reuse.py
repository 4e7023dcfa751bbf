"""Sweeps that share cycles through the cycle store, end to end through Ray and MLflow: numbers bit-identical with
reuse on and off, each shared dense cycle trained once, stored trials not trained again, a bad entry recomputed."""

from pathlib import Path

import pandas as pd
import pytest
from conftest import MlflowServer, run_cli
from mlflow import MlflowClient

from ap_core.cycle_keys import cycle_key
from sweeps import table1, table_structured
from sweeps.engine.cycle_store import STORE_FOLDER
from sweeps.engine.spec import expand

pytestmark = pytest.mark.integration

# What sets one trial apart from another in a sweep's rows; the rest are its numbers.
ROW_KEYS = ["trial", "cycle"]


def rows(results: Path, name: str) -> pd.DataFrame:
    table = pd.read_csv(results / name / "trial_cycles.csv")
    return table.sort_values(ROW_KEYS).reset_index(drop=True)


def children(client: MlflowClient, name: str) -> dict[str, dict[str, str]]:
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    return {r.info.run_name: {**r.data.tags, "run_id": r.info.run_id} for r in runs if "trial" in r.data.tags}


@pytest.mark.parametrize(
    ("module", "shorter", "overrides"),
    [
        ("table1", ["--seeds", "1", "--cycles", "4", "--epochs", "3"], {"cycles": 4, "epochs": 3}),
        ("table_structured", ["--seeds", "1", "--networks", "vgg_small", "--epochs", "2"], {"epochs": 2}),
    ],
)
def test_reuse_trains_shared_cycles_once_and_changes_no_number(
    module: str, shorter: list[str], overrides: dict, mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    def sweep(name: str, *extra: str):
        done = run_cli(
            module, "--results-dir", str(tmp_path), "--tracking-uri", mlflow_server.uri, "--num-cpus", "2",
            "--progress", "false", "--name", name, *shorter, *extra, timeout_s=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    store = tmp_path / "ray" / STORE_FOLDER
    planned = run_cli(module, "--results-dir", str(tmp_path), "--dry-run", *shorter)
    assert "0 already in the cycle store" in planned.stdout and f"store: {store}" in planned.stdout
    sweep(f"{module}-shared")
    sweep(f"{module}-alone", "--no-reuse")
    client = MlflowClient(mlflow_server.uri)
    shared = children(client, f"{module}-shared")
    # one trial per dense cycle trains it; the others start from the store and say where their cycle 0 came from
    origins = {tags["reused_from"] for tags in shared.values() if "reused_from" in tags}
    assert origins and origins <= {tags["run_id"] for tags in shared.values() if "reused_from" not in tags}
    assert all(tags["reused_cycles"] == "0-0" for tags in shared.values() if "reused_from" in tags)
    assert not any("reused_from" in tags for tags in children(client, f"{module}-alone").values())
    pd.testing.assert_frame_equal(rows(tmp_path, f"{module}-shared"), rows(tmp_path, f"{module}-alone"))

    # Everything is stored now: the dry run says so, and a third sweep trains nothing new and tells the same numbers.
    planned = run_cli(module, "--results-dir", str(tmp_path), "--dry-run", *shorter)
    assert "0 to train (100% saved)" in planned.stdout, planned.stdout
    # A stored trial whose file changed is recomputed, with one line, and nothing in it is loaded.
    spec = {"table1": table1.SPEC, "table_structured": table_structured.SPEC}[module]
    networks = ("vgg_small",) if module == "table_structured" else ()
    plan = expand(spec, "smoke", seeds=1, networks=networks, overrides={**overrides, "device": "cpu"})
    tampered = store / min(cycle_key(t.config, t.config.pruning.cycles) for t in plan.trials)  # a whole trial's
    with (tampered / "trial.pt").open("ab") as file:
        file.write(b"\0")
    again = sweep(f"{module}-again")
    assert again.stderr.count("failed verification") == 1, again.stderr[-2000:]
    assert f"stored cycle {tampered.name} failed verification (trial.pt changed since it was signed)" in again.stderr
    replayed = children(client, f"{module}-again")
    assert all("reused_from" in tags for tags in replayed.values())  # the recomputed one from its stored cycle 0
    assert sum(tags["reused_cycles"] != "0-0" for tags in replayed.values()) == len(plan.trials) - 1
    pd.testing.assert_frame_equal(rows(tmp_path, f"{module}-again"), rows(tmp_path, f"{module}-alone"))
