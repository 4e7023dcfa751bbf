"""Screenshots of what a researcher sees in the MLflow UI after a sweep, taken in a real headless Chromium.

Runs a small Table 1 sweep into a temporary folder, serves its SQLite store with `mlflow server` on 127.0.0.1,
and captures the experiment's chart view and the parent run's rendered table into docs/. Needs `chromium` on the
PATH (Debian: apt-get install chromium).

    python docs/mlflow_screenshots.py
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
SWEEP = ["--epochs", "2", "--cycles", "6", "--seeds", "2", "--num-cpus", "2", "--name", "table1-demo"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def screenshot(browser: str, url: str, path: Path) -> None:
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1600,1000",
         "--virtual-time-budget=20000", f"--screenshot={path}", url],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    print(f"wrote {path}")


def main() -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("error: no chromium on the PATH (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as folder:
        results = Path(folder)
        subprocess.run(
            [sys.executable, "sweeps/table1.py", "--results-dir", str(results), *SWEEP], cwd=REPO, check=True
        )
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", f"sqlite:///{results / 'mlflow.db'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            uri = f"http://127.0.0.1:{port}"
            for _ in range(120):
                try:
                    urllib.request.urlopen(f"{uri}/health", timeout=2)
                    break
                except OSError:
                    time.sleep(1)
            client = MlflowClient(uri)
            experiment = client.get_experiment_by_name("table1-demo")
            parent = client.search_runs([experiment.experiment_id], "tags.`sweep.role` = 'parent'")[0]
            base = f"{uri}/#/experiments/{experiment.experiment_id}"
            training = "workflowType=machine_learning"  # MLflow 3's "Model training" view, not the GenAI one
            screenshot(browser, f"{base}/runs?{training}&compareRunsMode=CHART", DOCS / "mlflow_charts.png")
            run_page = f"{base}/runs/{parent.info.run_id}/artifacts/table.json?{training}"
            screenshot(browser, run_page, DOCS / "mlflow_parent_table.png")
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
