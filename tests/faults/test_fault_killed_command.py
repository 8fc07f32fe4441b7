"""A `seqcast` command killed with SIGKILL leaves no Prefect server running.

Without PREFECT_API_URL a flow needs a temporary Prefect API server, a child process of the command. Prefect stops
its own from an exit hook, which SIGKILL skips; seqcast starts it so that it dies with the command
(flows/prefect_server.py). The test runs a real `seqcast forecast` with a fresh HOME (so a fresh Prefect home),
waits until the command's server answers, SIGKILLs the command and gives the server a few seconds to go.
"""

from __future__ import annotations

import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from faultkit import Command, child_pids, clean_env, command_line, is_running, kill_if_running, wait_until
from forecast_setup import Registered, synthetic_frame

from flows.warm import command_argv
from tasks import store

pytestmark = [
    pytest.mark.faults,
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads children from /proc (CI runs Linux)"),
]

SERVER_APP = "prefect.server.api.server:create_app"
GONE_WITHIN = 5.0  # seconds after the SIGKILL


def _server_of(pid: int) -> tuple[int, int] | None:
    """(pid, port) of the Prefect API server that is a child of `pid` and answers its health check, if any."""
    for child in child_pids(pid):
        argv = command_line(child)
        if SERVER_APP in argv and "--port" in argv:
            port = int(argv[argv.index("--port") + 1])
            if _answers(port):
                return child, port
    return None


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def test_sigkill_of_a_forecast_takes_its_prefect_server_down_with_it(
    model: Registered, mlflow_store: str, tmp_path: Path, start_command: Callable[..., Command]
) -> None:
    url = f"sqlite:///{tmp_path / 'seqcast.db'}"
    store.upsert_observations(store.get_engine(url), synthetic_frame())
    store.dispose_engines()
    settings = {"SEQCAST_DATABASE_URL": url, "SEQCAST_MLFLOW_TRACKING_URI": mlflow_store}
    env = clean_env(tmp_path / "home", {**settings, "SEQCAST_REGISTERED_MODEL": model.name})
    command = start_command([*command_argv(), "forecast"], env, name="forecast")
    found: list[tuple[int, int]] = []

    def server_up() -> bool:
        server = _server_of(command.process.pid)
        if server is not None:
            found.append(server)
        return server is not None or command.process.poll() is not None

    assert wait_until(server_up, timeout=180, interval=0.1), "no Prefect server within 180 s"
    assert found, f"the command ended before its Prefect server answered:\n{command.output()[-3000:]}"
    server_pid, port = found[0]
    try:
        assert command.process.poll() is None, "the command finished before it could be killed"
        command.process.send_signal(signal.SIGKILL)
        assert command.process.wait(timeout=30) == -signal.SIGKILL
        gone = wait_until(lambda: not is_running(server_pid) and not _answers(port), timeout=GONE_WITHIN)
        assert gone, f"Prefect server {server_pid} still runs on port {port} {GONE_WITHIN:g} s after its command died"
    finally:
        kill_if_running(server_pid)
