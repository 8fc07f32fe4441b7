"""The README's pictures, taken from a real run: MLflow's comparison of the LSTM and GRU runs, a forecast plot,
Prefect's deployments (a schedule's time zone shown) and the backfill deployment's Custom run form.

    .venv/bin/python docs/screenshots/take_screenshots.py          # about 2 minutes on 2 cores
    .venv/bin/python docs/screenshots/take_screenshots.py --keep   # keep the temporary stores and logs

Needs the project installed (`make install`) and Chromium (Debian: `apt-get install -y chromium`; or set CHROMIUM to
the browser's path). Everything happens in a temporary folder, deleted at the end unless --keep:

1. `prefect server start` on a free port, its database under a temporary PREFECT_HOME;
2. `seqcast demo` with a tiny spec (a few epochs of small networks) against that server (PREFECT_API_URL) and a
   temporary SEQCAST_HOME, so its flow runs, task runs and artifacts are in that server's database;
3. `python -m flows.deploy --timezone Europe/London` against it, so the deployments and the backfill's form exist;
4. `mlflow ui --workers 1` on a free port, on the demo's MLflow store;
5. headless Chromium, driven over its DevTools protocol (the `websockets` package Prefect installs): each page is
   opened, given time to fetch its data, tidied (MLflow's assistant panel closed, sections folded) and captured;
   the forecast plot is the best candidate's MLflow artifact, copied as it is.

Writes docs/screenshots/{mlflow-compare-runs,forecast-plot,prefect-deployments,prefect-backfill-form}.png; a page
that cannot be captured is reported and the others are still written. The numbers shown are those of a tiny model,
not of `seqcast demo`'s defaults.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BIN = Path(sys.executable).parent  # the venv's scripts: seqcast, prefect, mlflow
# A tiny spec: a few epochs of small networks, each cell trained once; enough for every page to have content.
DEMO_OPTIONS = ["--epochs", "4", "--hidden-size", "16", "--scaling", "series", "--lookback", "96"]
TIMEZONE = "Europe/London"  # the schedules' zone, shown in the deployments picture
PAGE_TIMEOUT = 60.0  # seconds a page may take to show what it is waited for
SETTLE = 2.0  # seconds after that, for the rest of the page to render
STARTUP_TIMEOUT = 120.0


def log(message: str) -> None:
    print(f"[screenshots] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without seqcast, MLflow or Prefect settings, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEQCAST_", "MLFLOW_", "PREFECT_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    env.update(settings)
    return env


def wait_for(url: str, process: subprocess.Popen[bytes], timeout: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited ({process.returncode}) before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=5):  # noqa: S310 - our own server on 127.0.0.1
                return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


@contextmanager
def server(argv: Sequence[str], env: dict[str, str], health_url: str, log_path: Path) -> Iterator[None]:
    """Run `argv` in its own process group until the block ends; stop the group (the server and its workers)."""
    with log_path.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603 - this venv's servers, fixed arguments
            list(argv), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_for(health_url, process)
            yield
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


def run(argv: Sequence[str], env: dict[str, str], log_path: Path) -> None:
    log(" ".join(argv))
    with log_path.open("wb") as out:
        done = subprocess.run(  # noqa: S603 - this venv's commands, fixed arguments
            list(argv), env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, check=False
        )
    if done.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{argv[0]} {argv[1]} failed ({done.returncode}):\n{tail}")


def chromium() -> str:
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and shutil.which(candidate):
            return str(shutil.which(candidate))
    raise RuntimeError("Chromium not found: apt-get install -y chromium (or set CHROMIUM to the browser's path)")


def api_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - our own servers on 127.0.0.1
        return json.load(response)


class Browser:
    """Headless Chromium driven over the DevTools protocol: open a page, wait until it shows a text, run a script,
    capture the viewport. (`chromium --screenshot` can do none of the middle two: the pages are single-page apps that
    fetch their data after loading, and MLflow opens an assistant panel over half the page on a first visit.)"""

    def __init__(self, profile: Path) -> None:
        from websockets.sync.client import connect

        profile.mkdir(parents=True, exist_ok=True)
        port_file = profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)
        argv = [
            chromium(),
            "--headless",
            "--no-sandbox",  # root in a container has no user namespace for the sandbox
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
        deadline = time.monotonic() + 30
        while not port_file.is_file() or not port_file.read_text().strip():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("Chromium did not open its DevTools port")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = api_json(f"http://127.0.0.1:{port}/json/list")
        assert isinstance(targets, list)
        page = next(t for t in targets if t["type"] == "page")
        self.socket = connect(page["webSocketDebuggerUrl"], max_size=64 * 2**20)
        self.ids = itertools.count(1)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self.ids)
        self.socket.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:  # events arrive in between; the answer carries our id
            message = json.loads(self.socket.recv(timeout=PAGE_TIMEOUT))
            if message.get("id") == number:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    def js(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def open(self, url: str, shows: str, size: tuple[int, int]) -> None:
        """Open `url` in a `size` viewport and wait until the page's text includes `shows`."""
        self.send(
            "Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1, mobile=False
        )
        self.send("Page.navigate", url=url)
        deadline = time.monotonic() + PAGE_TIMEOUT
        while not self.js(f"document.body !== null && document.body.innerText.includes({json.dumps(shows)})"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} never showed {shows!r}")
            time.sleep(0.5)
        time.sleep(SETTLE)

    def hover(self, text: str) -> None:
        """Move the mouse over the element whose text is `text` (to show its tooltip)."""
        found = f"[...document.querySelectorAll('span')].find(e => e.textContent.trim() === {json.dumps(text)})"
        centre = "[r.x + r.width / 2, r.y + r.height / 2]"
        where = self.js(f"(() => {{ const r = {found}.getBoundingClientRect(); return {centre}; }})()")
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=where[0], y=where[1])
        time.sleep(1.5)

    def capture(self, target: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        target.write_bytes(base64.b64decode(data))
        log(f"wrote {target}")
        return target

    def close(self) -> None:
        self.socket.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def best_forecast_plot(tracking_uri: str, experiment: str, folder: Path) -> Path:
    """The first series' forecast-vs-actual plot of the best candidate run (lowest test MASE) of the demo."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise RuntimeError(f"the demo left no MLflow experiment {experiment!r}")
    runs = client.search_runs(
        [found.experiment_id], "tags.`seqcast.cell` != ''", order_by=["metrics.test_mase ASC"], max_results=10
    )
    for candidate in runs:
        for artifact in client.list_artifacts(candidate.info.run_id, "plots"):
            if Path(artifact.path).name.startswith("forecast_") and artifact.path.endswith(".png"):
                return Path(client.download_artifacts(candidate.info.run_id, artifact.path, str(folder)))
    raise RuntimeError("no forecast plot among the candidate runs' artifacts (plots/forecast_*.png)")


# MLflow keeps the state of its assistant panel in the browser: closed, and already shown once, so it stays shut.
MLFLOW_QUIET = (
    "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
    "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
)
# On the comparison page: fold the parallel-coordinates plot, show only the parameters and metrics that differ
# (the baselines' scores are the same for both candidates).
MLFLOW_COMPARE_TIDY = """(() => {
  const fold = [...document.querySelectorAll('div')].find(e => e.textContent.trim() === 'Visualizations');
  if (fold) fold.click();
  for (const part of ['Parameters', 'Metrics']) {
    const diff = document.querySelector(`button[aria-label="${part} - Show diff only"]`);
    if (diff) diff.click();
  }
})()"""


def attempt(failures: list[str], name: str, action: Callable[[], Path]) -> Path | None:
    """Run `action`; a page that cannot be captured is reported, and the other pictures are still taken."""
    try:
        return action()
    except Exception as exc:
        failures.append(f"{name}: {exc.__class__.__name__}: {exc}")
        log(f"could not take {name}: {exc}")
        return None


def take(out: Path, work: Path, failures: list[str]) -> list[Path]:
    seqcast_home, prefect_home, logs = work / "seqcast-home", work / "prefect-home", work / "logs"
    for folder in (seqcast_home, prefect_home, logs, out):
        folder.mkdir(parents=True, exist_ok=True)
    prefect_url = f"http://127.0.0.1:{free_port()}"
    tracking_uri = f"sqlite:///{seqcast_home / 'mlflow.db'}"
    env = clean_env(
        SEQCAST_HOME=str(seqcast_home),
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_API_URL=f"{prefect_url}/api",
        OMP_WAIT_POLICY="PASSIVE",
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="1",
    )
    # the server's UI calls the API at PREFECT_UI_API_URL (the default assumes port 4200)
    server_env = {
        **{k: v for k, v in env.items() if k != "PREFECT_API_URL"},
        "PREFECT_UI_API_URL": f"{prefect_url}/api",
    }
    written: list[Path | None] = []
    browser = Browser(work / "chromium")
    try:
        log(f"Prefect server on {prefect_url} (PREFECT_HOME {prefect_home})")
        argv = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", prefect_url.rsplit(":", 1)[1]]
        with server(argv, server_env, f"{prefect_url}/api/health", logs / "prefect-server.log"):
            run([str(BIN / "seqcast"), "demo", *DEMO_OPTIONS], env, logs / "demo.log")
            deploy = [sys.executable, "-m", "flows.deploy", "--timezone", TIMEZONE, "--project-dir", str(ROOT)]
            run(deploy, env, logs / "deploy.log")
            backfill = api_json(f"{prefect_url}/api/deployments/name/seqcast-backfill/on-demand")
            assert isinstance(backfill, dict)

            def deployments() -> Path:
                browser.open(f"{prefect_url}/v2/deployments", "nightly-retrain", (1400, 470))
                browser.hover("At 02:00 AM")  # the badge shows the time; its tooltip, the time zone
                return browser.capture(out / "prefect-deployments.png")

            def backfill_form() -> Path:
                url = f"{prefect_url}/v2/deployments/deployment/{backfill['id']}/run"
                browser.open(url, "registered_model", (1400, 1520))
                return browser.capture(out / "prefect-backfill-form.png")

            written.append(attempt(failures, "prefect-deployments.png", deployments))
            written.append(attempt(failures, "prefect-backfill-form.png", backfill_form))

        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
        experiment = client.get_experiment_by_name("seqcast")
        if experiment is None:
            raise RuntimeError("the demo left no MLflow experiment 'seqcast'")
        candidates = client.search_runs(
            [experiment.experiment_id], "tags.`seqcast.cell` != ''", order_by=["metrics.test_mase ASC"]
        )
        mlflow_url = f"http://127.0.0.1:{free_port()}"
        log(f"MLflow UI on {mlflow_url} ({tracking_uri})")
        argv = [str(BIN / "mlflow"), "ui", "--backend-store-uri", tracking_uri, "--host", "127.0.0.1"]
        argv += ["--port", mlflow_url.rsplit(":", 1)[1], "--workers", "1"]
        mlflow_env = {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with server(argv, mlflow_env, f"{mlflow_url}/health", logs / "mlflow.log"):

            def compare_runs() -> Path:
                browser.open(f"{mlflow_url}/health", "OK", (1400, 900))  # the UI's origin, to set its storage
                browser.js(MLFLOW_QUIET)
                runs = json.dumps([run.info.run_id for run in candidates])
                url = f"{mlflow_url}/#/compare-runs?runs={runs}&experiments={json.dumps([experiment.experiment_id])}"
                browser.open(url, "Comparing", (1400, 1250))
                browser.js(MLFLOW_COMPARE_TIDY)
                time.sleep(SETTLE)
                return browser.capture(out / "mlflow-compare-runs.png")

            written.append(attempt(failures, "mlflow-compare-runs.png", compare_runs))
    finally:
        browser.close()

    def forecast_plot() -> Path:
        target = out / "forecast-plot.png"
        shutil.copyfile(best_forecast_plot(tracking_uri, "seqcast", work / "artifacts"), target)
        log(f"wrote {target}")
        return target

    written.append(attempt(failures, "forecast-plot.png", forecast_plot))
    return [path for path in written if path is not None]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary stores and logs, and print where")
    parser.add_argument("--out", type=Path, default=HERE, help="folder of the PNG files (default: this folder)")
    args = parser.parse_args(argv)
    chromium()  # fail before the demo runs, not after
    work = Path(tempfile.mkdtemp(prefix="seqcast-screenshots-"))
    failures: list[str] = []
    try:
        written = take(args.out.resolve(), work, failures)
    except Exception as exc:
        failures.append(f"{exc.__class__.__name__}: {exc}")
        written = []
    finally:
        if failures:
            args.keep = True
            log(f"failed: {'; '.join(failures)} (logs in {work / 'logs'})")
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    log(f"{len(written)} pictures written")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
