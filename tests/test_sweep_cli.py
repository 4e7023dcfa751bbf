"""Sweep command lines that must not start anything: dry runs, --list, and every kind of bad input.

Bad input exits 2 with one line `error: ...` naming the bad value, before Ray starts and before anything is
written to the results folder.
"""

from __future__ import annotations

import base64
import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, free_port, run_cli

from sweeps import hparam_grid, table1
from sweeps.cli import SWEEPS
from sweeps.engine.driver import main
from sweeps.engine.options import SweepError
from sweeps.engine.tracking_checks import check_tracking_uri

# The paper's protocol (paper-protocol.md): ResNet-20 and VGG-19 on CIFAR-10, AP on/off, 5 seeds, 16 cycles of
# 160 epochs (+ the dense cycle); the hyperparameter grid 5 batch sizes x 50 learning rates x 22 epoch counts.
PAPER_NETWORKS, PAPER_SEEDS, PAPER_CYCLES, PAPER_EPOCHS = 2, 5, 16, 160
GRID_BATCH_SIZES, GRID_LRS, GRID_EPOCHS = 5, 50, range(80, 501, 20)


def trial_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if ": model=" in line]


def test_dry_run_of_the_paper_preset_counts_trials_without_ray(tmp_path: Path) -> None:
    # An unreachable --address proves Ray is never contacted.
    done = run_cli(
        "table1", "--preset", "paper", "--dry-run", "--address", "127.0.0.1:1",
        "--results-dir", str(tmp_path / "results"), timeout_s=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    trials = PAPER_NETWORKS * 2 * PAPER_SEEDS
    lines = trial_lines(done.stdout)
    assert len(lines) == trials and len(set(lines)) == trials
    assert all("dataset=cifar10" in line and "method=global_magnitude" in line for line in lines)
    epochs = trials * (PAPER_CYCLES + 1) * PAPER_EPOCHS
    assert f"{trials} trials in 1 Tune experiment(s); {epochs} training epochs" in done.stdout
    assert "Ray instance" not in done.stdout + done.stderr
    assert not (tmp_path / "results").exists()


def test_dry_run_says_data_parallel_trials_share_no_cycles(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(table1.SPEC, ["--dry-run", "--workers-per-trial", "2", "--results-dir", str(tmp_path / "r")])
    assert exit_info.value.code == 0
    assert "reuse: off (data-parallel trials neither share nor store cycles yet)" in capsys.readouterr().out


def test_dry_run_of_the_hparam_grid_counts_5500_points_per_network_and_method(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(hparam_grid.SPEC, ["--preset", "paper", "--dry-run", "--results-dir", str(tmp_path / "r")])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    groups = PAPER_NETWORKS * 2  # GP and LP
    points = GRID_BATCH_SIZES * GRID_LRS * len(GRID_EPOCHS)
    assert points == 5500
    lines = trial_lines(out)  # one line per searched group: Tune draws the points, the plan counts them
    assert len(lines) == groups and all(
        "grid search over" in line and "5500 points x 1 seeds" in line for line in lines
    )
    epochs = groups * GRID_BATCH_SIZES * GRID_LRS * sum(GRID_EPOCHS) * (PAPER_CYCLES + 1)
    assert f"{groups * points} trials in {groups} Tune experiment(s); {epochs} training epochs" in out
    assert "lr 50 values 0.001..0.099" in out and "epochs 22 values 80..500" in out
    assert not (tmp_path / "r").exists()


def test_list_names_networks_datasets_methods_and_presets(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(table1.SPEC, ["--list"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in (
        "resnet20",
        "vgg19",
        "mlp",
        "cifar10",
        "digits",
        "global_magnitude",
        "layerwise_magnitude",
        "smoke",
        "paper",
    ):
        assert name in out


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


BAD_INPUTS = {
    "unknown network": (["--networks", "resnet99"], "resnet99"),
    "unknown dataset": (["--datasets", "imagenet9"], "imagenet9"),
    "unknown method": (["--methods", "XP"], "XP"),
    "unknown preset": (["--preset", "huge"], "huge"),
    "bad trial setting": (["--epochs", "0"], "epochs 0"),
    "bad flag value": (["--seeds", "three"], "'three'"),
    "bad gpu share": (["--gpus-per-trial", "1.5"], "1.5"),
    "gpu share not a number": (["--gpus-per-trial", "lots"], "'lots' is not a GPU share; valid: auto, 0"),
    "repeated network": (["--networks", "mlp", "mlp"], "'mlp' twice"),
    "repeated dataset": (["--datasets", "digits", "digits"], "'digits' twice"),
    "repeated method": (["--methods", "GP", "GP"], "'GP' twice"),
    # Refused from the count alone, in well under a second, instead of building 400 million trials.
    "absurd seed count": (["--seeds", "100000000"], "seeds 100000000"),
    "nan weight decay": (["--weight-decay", "nan"], "weight_decay nan"),
    "unknown device": (["--device", "cudafoo"], "'cudafoo'"),
    "no workers": (["--workers-per-trial", "0"], "workers_per_trial 0"),
    "workers sharing a GPU": (["--workers-per-trial", "2", "--gpus-per-trial", "0.5"], "gpus_per_trial 0.5"),
}


@pytest.mark.parametrize("argv, named", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_input_is_one_line_naming_the_value(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    results = tmp_path / "results"
    with pytest.raises(SystemExit) as exit_info:
        main(table1.SPEC, [*argv, "--results-dir", str(results)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and named in err
    assert not results.exists()


HPARAMS_FILES = {
    "not JSON": ('{"mlp": {', "not valid JSON"),
    "not an object": ("[1, 2]", "must hold a JSON object"),
    "unknown network": ('{"resnet99": {"global_magnitude": {"lr": 0.1}}}', "resnet99"),
    "unknown method": ('{"mlp": {"magic": {"lr": 0.1}}}', "magic"),
    "unknown setting": ('{"mlp": {"global_magnitude": {"speed": 3}}}', "speed"),
    "wrong type": ('{"mlp": {"global_magnitude": {"lr": "fast"}}}', "'fast'"),
    "axis setting": ('{"mlp": {"global_magnitude": {"seed": 3}}}', "seed"),
}


@pytest.mark.parametrize("text, named", list(HPARAMS_FILES.values()), ids=list(HPARAMS_FILES))
def test_malformed_hparams_file_is_one_line(
    text: str, named: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path / "best.json", text)
    with pytest.raises(SystemExit) as exit_info:
        main(table1.SPEC, ["--hparams", path, "--results-dir", str(tmp_path / "results")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --hparams") and "\n" not in err and named in err and "best.json" in err
    assert not (tmp_path / "results").exists()


def test_unreachable_tracking_server_fails_before_anything_starts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SystemExit) as exit_info:
        main(table1.SPEC, ["--tracking-uri", uri, "--results-dir", str(tmp_path / "results")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot reach MLflow") and uri in err and "\n" not in err
    assert not (tmp_path / "results").exists()


def test_missing_cifar_offline_fails_before_ray_starts(tmp_path: Path) -> None:
    done = run_cli(
        "table1", "--preset", "paper", "--data-dir", str(tmp_path / "no-data"), "--yes",  # past its cost
        "--results-dir", str(tmp_path / "results"), timeout_s=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: cifar10 not found") and "\n" not in done.stderr.strip()
    assert "Traceback" not in done.stderr and "Ray instance" not in done.stdout + done.stderr
    assert not (tmp_path / "results").exists()


def test_resume_refuses_a_sweep_whose_trials_changed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    state = tmp_path / "table1-smoke" / "sweep.json"
    state.parent.mkdir()
    state.write_text(json.dumps({"fingerprint": "from-another-plan", "experiments": {}}))
    with pytest.raises(SystemExit) as exit_info:
        main(table1.SPEC, ["--resume", "--name", "table1-smoke", "--results-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "trials changed" in capsys.readouterr().err


@pytest.mark.parametrize("content", ["[]", '{"fingerprint": "x"}'])
def test_resume_refuses_a_damaged_state_file(content: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    state = tmp_path / "table1-smoke" / "sweep.json"
    state.parent.mkdir()
    state.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        main(table1.SPEC, ["--resume", "--name", "table1-smoke", "--results-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "not a sweep state file" in err and "sweep.json" in err and "\n" not in err


@pytest.mark.parametrize("where", ["a directory", "a binary file"])
def test_unreadable_hparams_file_is_one_line(where: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "best"
    if where == "a directory":
        path.mkdir()
    else:
        path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(SystemExit) as exit_info:
        main(table1.SPEC, ["--hparams", str(path), "--results-dir", str(tmp_path / "results")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --hparams") and "cannot be read" in err and "\n" not in err


def test_a_search_over_two_datasets_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["--preset", "paper", "--datasets", "cifar10", "cifar100", "--dry-run", "--results-dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        main(hparam_grid.SPEC, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "one dataset at a time" in err and "cifar100" in err and "\n" not in err


def test_levels_outside_0_to_100_are_refused_before_anything_starts(tmp_path: Path) -> None:
    done = run_cli("table1", "--levels", "150", "--results-dir", str(tmp_path / "r"), timeout_s=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "--levels 150 is not a % of weights remaining; valid: 100.0, 80.0" in done.stderr
    assert not (tmp_path / "r").exists()


def test_a_level_between_columns_takes_the_nearest_and_says_which(tmp_path: Path) -> None:
    done = run_cli("table1", "--levels", "10", "5.5", "--dry-run", "--results-dir", str(tmp_path / "r"), timeout_s=120)
    assert done.returncode == 0, done.stderr
    assert "--levels 10: showing 10.7, the nearest level of this sweep" in done.stdout
    assert "--levels 5.5" not in done.stdout  # an exact level is taken as it is


def test_help_shows_the_presets_values_and_loads_neither_torch_nor_ray() -> None:
    probe = (
        "import runpy, sys\n"
        "sys.argv = ['table1.py', '--help']\n"
        "try:\n    runpy.run_path('sweeps/table1.py', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print('loaded:', sorted(m for m in ('torch', 'ray', 'mlflow', 'pandas') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    help_text = " ".join(done.stdout.split())  # argparse wraps lines
    assert "loaded: []" in help_text  # --help stays instant: nothing heavy is imported
    assert "(default: 16 in preset smoke)" in help_text and "(default: 8 in preset smoke)" in help_text
    assert "presets: smoke, paper" in help_text and "no GPU (default: auto)" in help_text
    assert all(f"[--{flag}]" in help_text for flag in ("resume", "dry-run", "list"))  # plain switches, no value


def test_action_flags_take_no_value(tmp_path: Path) -> None:
    done = run_cli("table1", "--dry-run", "true", "--results-dir", str(tmp_path / "r"), timeout_s=120)
    assert done.returncode == 2 and "unrecognized arguments: true" in done.stderr


def test_every_sweep_is_an_installed_command_and_a_module() -> None:
    modules = {p.stem for p in (REPO / "sweeps").glob("table*.py")} | {"hparam_grid"}
    assert modules == set(SWEEPS)
    command = Path(sys.executable).parent / "ap-sweeps"
    done = subprocess.run([command, "table_ap_ablation", "--dry-run", "--seeds", "1"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = trial_lines(done.stdout)  # the four AP variants differ visibly in their dry-run lines
    assert len(lines) == 5 and len({line.split("ap_score=")[-1].split(" retraining")[0] for line in lines[1:]}) == 4
    as_module = subprocess.run(
        [sys.executable, "-m", "sweeps.table1", "--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert as_module.returncode == 0 and "12 trials in 1 Tune experiment(s)" in as_module.stdout
    unknown = subprocess.run([command, "table9"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown sweep 'table9'; valid: table1" in unknown.stderr


def test_dry_run_estimate_times_a_short_epoch_and_prints_the_compute(tmp_path: Path) -> None:
    done = run_cli("table1", "--dry-run", "--estimate", "--methods", "GP", "--results-dir", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr
    assert "mlp on digits, batch 64:" in done.stdout and "estimated compute:" in done.stdout
    assert "CPU-minutes on this machine's CPU" in done.stdout and not (tmp_path / "r").exists()
    alone = run_cli("table1", "--estimate", "--results-dir", str(tmp_path / "r"), timeout_s=120)
    assert alone.returncode == 2 and "--estimate goes with --dry-run" in alone.stderr


class _NotMlflow(http.server.BaseHTTPRequestHandler):
    """A web server that answers /health (as many do) and nothing MLflow would."""

    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"OK" if self.path == "/health" else b"<html>not found</html>")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def not_mlflow_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotMlflow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


# An S3 endpoint on a closed port of this machine: refused at once, and nothing outside 127.0.0.0/8 is asked.
CLOSED_S3 = "s3://ap-sweeps-no-such-bucket/x?endpoint_override=127.0.0.1:1&scheme=http&region=us-east-1"
# Credentials of its own, so the S3 client asks no cloud metadata service.
S3_ENV = {"AWS_ACCESS_KEY_ID": "ap", "AWS_SECRET_ACCESS_KEY": "ap", "AWS_EC2_METADATA_DISABLED": "true"}

# Each refused in one line before Ray starts or anything is written; the value in the message. `{tmp}` is a
# temporary folder holding a plain file `afile`.
REFUSED_SETUPS = {
    # #10.2: trials no node can host waited forever
    "more CPUs per trial than the local Ray": (["--cpus-per-trial", "4", "--num-cpus", "2"], "4 CPU"),
    "a GPU per trial without a GPU": (["--gpus-per-trial", "1"], "1 GPU"),
    "more workers per trial than the local Ray has room for": (
        ["--workers-per-trial", "3", "--num-cpus", "2"],
        "3 workers of 1 CPU",
    ),
    # #10.3: ray.init waited for minutes after sweep.json and the MLflow store were written
    "unreachable Ray address": (["--address", "127.0.0.1:1"], "'127.0.0.1:1'"),
    "malformed Ray address": (["--address", "headnode"], "'headnode'"),
    # a port that answers but is not Ray's: ray.init waited for more than five minutes
    "a Ray address where an HTTP server listens": (["--address", "{http}"], "not as a Ray head"),
    # #10.10: tracking URIs that escaped the check
    "unclosed IPv6 tracking host": (["--tracking-uri", "http://[::1"], "http://[::1"),
    "non-numeric tracking port": (["--tracking-uri", "http://localhost:abc"], "http://localhost:abc"),
    "unknown tracking scheme": (["--tracking-uri", "bogus://x"], "bogus://x"),
    "unwritable SQLite tracking store": (["--tracking-uri", "sqlite:////proc/nope/x.db"], "sqlite:////proc/nope/x.db"),
    # #10.11: storage and results folder
    "storage under a file": (["--storage", "{tmp}/afile/sub"], "afile/sub"),
    "storage of an unknown scheme": (["--storage", "foo://"], "foo://"),
    "unreachable s3 storage": (["--storage", CLOSED_S3], CLOSED_S3),
    "unwritable results folder": (["--results-dir", "/proc/nope"], "/proc/nope"),
    "results folder under a file": (["--results-dir", "{tmp}/afile/r"], "afile"),
    # #10.9: a mistyped name must not start a whole new sweep
    "resume of a sweep that is not there": (["--resume", "--name", "tabel1"], "tabel1"),
}


@pytest.mark.parametrize("argv, named", list(REFUSED_SETUPS.values()), ids=list(REFUSED_SETUPS))
def test_impossible_setups_are_refused_before_anything_starts(
    argv: list[str],
    named: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    not_mlflow_server: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ray

    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "afile").write_text("a file, not a folder")
    results = tmp_path / "results"
    http_address = not_mlflow_server.removeprefix("http://")
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{http}", http_address) for a in argv]
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        main(table1.SPEC, ["--results-dir", str(results), *argv, "--epochs", "1", "--cycles", "1", "--seeds", "1"])
    assert exit_info.value.code == 2
    assert time.monotonic() - started < 60
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and named in err
    assert not ray.is_initialized()
    assert not results.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_server_that_is_not_mlflow_is_refused(
    not_mlflow_server: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(table1.SPEC, ["--tracking-uri", not_mlflow_server, "--results-dir", str(tmp_path / "results")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "is not an MLflow tracking server" in err and not_mlflow_server in err and "\n" not in err
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("damage", ["not UTF-8", "a directory"])
def test_resume_refuses_an_unreadable_state_file(
    damage: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    state = tmp_path / "s" / "sweep.json"
    state.parent.mkdir()
    if damage == "a directory":
        state.mkdir()
    else:
        state.write_bytes(b"\xff\xfe{}")
    with pytest.raises(SystemExit) as exit_info:
        main(table1.SPEC, ["--resume", "--name", "s", "--results-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "sweep.json" in err and "\n" not in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_resume_refuses_a_parent_run_deleted_from_mlflow(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from sweeps.engine.spec import expand
    from sweeps.engine.sweep_state import SweepState

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("s")
    run = client.create_run(experiment)
    client.delete_run(run.info.run_id)
    plan = expand(table1.SPEC, "smoke", seeds=1, overrides={"epochs": 1, "cycles": 1, "device": "cpu"})
    (tmp_path / "s").mkdir()
    SweepState("s", plan.fingerprint(), uri, experiment, run.info.run_id, {"": str(tmp_path / "ray" / "s-1")}).write(
        tmp_path / "s"
    )
    capsys.readouterr()  # MLflow's own lines from creating the store
    with pytest.raises(SystemExit) as exit_info:
        main(table1.SPEC, ["--resume", "--name", "s", "--results-dir", str(tmp_path), "--seeds", "1",
                           "--epochs", "1", "--cycles", "1"])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert run.info.run_id in err and "no longer exists" in err and "\n" not in err
    assert len(client.search_runs([experiment], run_view_type=3)) == 1  # nothing new logged


def test_a_name_holding_another_protocol_is_refused_without_overwrite(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    state = tmp_path / "mine" / "sweep.json"
    state.parent.mkdir()
    state.write_text(json.dumps({"sweep": "mine", "fingerprint": "0123456789abcdef", "experiments": {}}))
    before = state.read_text()
    with pytest.raises(SystemExit) as exit_info:
        main(table1.SPEC, ["--name", "mine", "--results-dir", str(tmp_path), "--epochs", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "other settings" in err and "--overwrite" in err and "mine" in err and "\n" not in err
    assert state.read_text() == before and sorted(p.name for p in state.parent.iterdir()) == ["sweep.json"]


def test_an_unwritable_search_output_is_refused_before_the_search(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(hparam_grid.SPEC, ["--output", "/proc/nope/best.json", "--results-dir", str(tmp_path / "results")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --output") and "/proc/nope" in err and "\n" not in err
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("flag", ["--json", "--checkpoint-dir"])
def test_ap_trial_refuses_an_unwritable_output_before_training(
    flag: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from ap_core import cli

    (tmp_path / "afile").write_text("a file, not a folder")
    target = str(tmp_path / "afile" / "out")
    code = cli.main(["--model", "mlp", "--dataset", "digits", "--epochs", "1", "--cycles", "1", flag, target])
    assert code == 2
    err = capsys.readouterr()
    assert err.err.strip().startswith(f"error: {flag}") and target in err.err
    assert "cycle" not in err.out  # refused before any training (a trial prints a line per cycle)


class _MlflowWithLogin(http.server.BaseHTTPRequestHandler):
    """An MLflow-shaped API behind basic auth (admin / secret), as the Docker cluster's MLflow runs."""

    def do_GET(self) -> None:
        expected = "Basic " + base64.b64encode(b"admin:secret").decode()
        allowed = self.path == "/health" or self.headers.get("Authorization") == expected
        self.send_response(200 if allowed else 401)
        self.end_headers()
        self.wfile.write(b'{"experiments": []}' if allowed and self.path != "/health" else b"OK")

    def log_message(self, *args: object) -> None:
        pass


def test_a_tracking_server_behind_basic_auth_takes_mlflows_own_login(monkeypatch: pytest.MonkeyPatch) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MlflowWithLogin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        monkeypatch.setenv("HOME", "/nonexistent")  # no ~/.mlflow/credentials
        with pytest.raises(SweepError, match="refused the login \\(401\\): set MLFLOW_TRACKING_USERNAME"):
            check_tracking_uri(uri)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "secret")
        check_tracking_uri(uri)  # the login MLflow's client would send is accepted
    finally:
        server.shutdown()


def test_torch_compile_without_a_compiler_is_refused_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Every trial would fail at start on this machine: say so once, before Ray starts or anything is written."""
    import ray

    monkeypatch.setattr("ap_core.environment.shutil.which", lambda _: None)
    results = tmp_path / "results"
    argv = ["--results-dir", str(results), "--torch-compile", "default", "--epochs", "1", "--cycles", "1"]
    with pytest.raises(SystemExit) as exit_info:
        main(table1.SPEC, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: torch_compile 'default' on a CPU needs a C++ compiler (g++, clang++ or $CXX); install one or use "
        "torch_compile off"
    )
    assert not ray.is_initialized() and not results.exists()
