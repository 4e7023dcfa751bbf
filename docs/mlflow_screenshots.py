"""Screenshots of what a researcher sees after a sweep, taken in a real headless Chromium, and the check that the
report's answer is visible where MLflow shows it.

Runs a short Table 1 sweep (3 seeds, down to 8.6% weights remaining, so it has pooled rows) into a temporary
folder, serves its SQLite store with `mlflow server` on 127.0.0.1, opens the parent run's `report.html` in
MLflow's artifact view at 1280 px, checks that a Δ row and a pooled row are on screen, and writes
`docs/mlflow_report.png` (the report inside MLflow) and `docs/report_page.png` (the page on its own, whole).
Needs `chromium` on the PATH (Debian: apt-get install chromium). tests/test_report_browser.py runs the same check.

    .venv/bin/python docs/mlflow_screenshots.py
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
SWEEP = ["--epochs", "1", "--cycles", "11", "--seeds", "3", "--num-cpus", "2", "--name", "table1-demo"]
WIDTH, HEIGHT = 1280, 900
# What the check reads inside the report's frame: is a Δ row and a pooled row on screen without scrolling, and
# do the row labels stay in view when the table scrolls sideways?
FRAME_PROBE = """(() => {
  const onScreen = (el) => { const r = el.getBoundingClientRect();
    return r.width > 0 && r.height > 0 && r.top >= 0 && r.bottom <= innerHeight
      && r.left >= 0 && r.left < innerWidth; };
  const label = (table) => [...document.querySelectorAll(`table.${table} tr.delta td.label`)][0];
  const pooled = label('answer'), delta = label('levels');
  const scroller = document.querySelector('table.levels').parentElement;
  scroller.scrollLeft = scroller.scrollWidth;
  const stuck = delta ? delta.getBoundingClientRect().left - scroller.getBoundingClientRect().left : null;
  return {pooled: pooled ? pooled.textContent : null, pooled_visible: !!pooled && onScreen(pooled),
          delta: delta ? delta.textContent : null, delta_visible: !!delta && onScreen(delta),
          scrolled: scroller.scrollLeft, label_left_after_scroll: stuck,
          levels: [...document.querySelectorAll('table.levels th')].map((th) => th.textContent)};
})()"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Chromium:
    """A headless Chromium driven over the DevTools protocol (aiohttp's websocket; no extra packages)."""

    def __init__(self, browser: str, profile: Path) -> None:
        self.process = subprocess.Popen(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.endpoint = self._devtools_endpoint()
        self._next_id = 0

    def _devtools_endpoint(self) -> str:
        assert self.process.stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            found = re.search(r"DevTools listening on (ws://\S+)", line)
            if found:
                return found.group(1)
            if not line and self.process.poll() is not None:
                break
        raise RuntimeError("chromium did not start its DevTools endpoint")

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=20)

    async def _call(self, ws: Any, method: str, session: str | None = None, **params: Any) -> dict:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        await ws.send_str(json.dumps(message))
        while True:
            reply = json.loads((await ws.receive(timeout=60)).data)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    async def _open(self, ws: Any, url: str, width: int, height: int) -> str:
        target = await self._call(ws, "Target.createTarget", url="about:blank")
        session = (await self._call(ws, "Target.attachToTarget", targetId=target["targetId"], flatten=True))[
            "sessionId"
        ]
        await self._call(ws, "Page.enable", session)
        await self._call(
            ws,
            "Emulation.setDeviceMetricsOverride",
            session,
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        await self._call(ws, "Page.navigate", session, url=url)
        return session

    async def _evaluate(self, ws: Any, session: str, expression: str) -> Any:
        reply = await self._call(ws, "Runtime.evaluate", session, expression=expression, returnByValue=True)
        return reply["result"].get("value")

    async def _report_in_ui(self, url: str, screenshot: Path | None, timeout_s: float) -> dict:
        async with aiohttp.ClientSession() as http, http.ws_connect(self.endpoint, max_msg_size=0) as ws:
            session = await self._open(ws, url, WIDTH, HEIGHT)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                await asyncio.sleep(1)
                # MLflow shows an HTML artifact in a sandboxed iframe of a blob URL: its own process and target.
                targets = (await self._call(ws, "Target.getTargets"))["targetInfos"]
                for target in [t for t in targets if t["type"] == "iframe" and t["url"].startswith("blob:")]:
                    frame = await self._call(ws, "Target.attachToTarget", targetId=target["targetId"], flatten=True)
                    inner = frame["sessionId"]
                    if not await self._evaluate(ws, inner, "document.querySelector('table.levels') ? 1 : 0"):
                        continue
                    await asyncio.sleep(1)  # the plots' layout settles
                    if screenshot is not None:
                        shot = await self._call(ws, "Page.captureScreenshot", session, format="png")
                        screenshot.write_bytes(base64.b64decode(shot["data"]))
                    result = await self._evaluate(ws, inner, FRAME_PROBE)
                    box = await self._evaluate(
                        ws, session,
                        "(() => { const r = document.querySelector('iframe').getBoundingClientRect();"
                        " return {left: r.left, top: r.top, width: r.width, height: r.height}; })()",
                    )  # fmt: skip
                    return {**result, "frame": box}
            return {}

    async def _whole_page(self, url: str, screenshot: Path) -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(self.endpoint, max_msg_size=0) as ws:
            session = await self._open(ws, url, WIDTH, HEIGHT)
            await asyncio.sleep(2)
            shot = await self._call(ws, "Page.captureScreenshot", session, format="png", captureBeyondViewport=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))

    def report_in_ui(self, url: str, screenshot: Path | None = None, timeout_s: float = 60) -> dict:
        """Open `url` (a run's artifact view of report.html) and probe the report's frame; {} if it never showed."""
        return asyncio.run(self._report_in_ui(url, screenshot, timeout_s))

    def whole_page(self, url: str, screenshot: Path) -> None:
        asyncio.run(self._whole_page(url, screenshot))


def report_view_url(uri: str, experiment_id: str, run_id: str) -> str:
    """The parent run's artifact view with report.html selected, in the "Model training" view (not GenAI)."""
    return f"{uri}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/report.html?workflowType=machine_learning"


def main() -> None:
    browser = find_browser()
    if browser is None:
        sys.exit("error: no chromium on the PATH (apt-get install chromium)")
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as folder:
        results = Path(folder)
        subprocess.run(
            [sys.executable, "sweeps/table1.py", "--results-dir", str(results), "--progress", "false", *SWEEP],
            cwd=REPO,
            check=True,
        )
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{results / 'mlflow.db'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        chromium = None
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
            chromium = Chromium(browser, results / "chromium")
            seen = chromium.report_in_ui(
                report_view_url(uri, experiment.experiment_id, parent.info.run_id), DOCS / "mlflow_report.png"
            )
            print(json.dumps(seen, indent=1))
            if not (seen.get("pooled_visible") and seen.get("delta_visible")):
                sys.exit("error: the report's Δ and pooled rows are not both on screen in MLflow's artifact view")
            page = Path(client.download_artifacts(parent.info.run_id, "report.html", str(results)))
            chromium.whole_page(page.as_uri(), DOCS / "report_page.png")
            print(f"wrote {DOCS / 'mlflow_report.png'} and {DOCS / 'report_page.png'}")
        finally:
            if chromium is not None:
                chromium.close()
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
