"""Prefect's temporary local API for one `seqcast` command, gone with the command even when it is killed.

Without PREFECT_API_URL, Prefect 3 starts a temporary API server as a child process the first time a flow needs
it (`prefect.server.api.server.SubprocessASGIServer`) and stops it from an `atexit` hook. A command killed with
SIGKILL (or SIGTERM, which Python does not turn into an exit) never runs that hook, and the server keeps running
and listening.

So the commands that run flows (`train`, `demo`, `forecast`, `backfill`, `monitor`) start that same server
themselves, with `start_temporary_prefect_api()` right before their flow: the same app
(`prefect.server.api.server:create_app` under uvicorn, with the settings and variables Prefect gives its own
temporary server), started so that it dies with the command: on Linux it asks the kernel for a parent-death signal
(`PR_SET_PDEATHSIG`, SIGKILL) before it starts serving. PREFECT_API_URL points at it for the rest of the command,
and it is stopped at exit as Prefect stops its own. Flow runs go to Prefect's own database under PREFECT_HOME, as
with Prefect's temporary server, so `prefect server start` shows them afterwards.

The warm server that runs commands (flows/warm.py) starts one such server for all the commands it runs; it dies
with the warm server, and each command's child process finds it with `start_temporary_prefect_api()` as if it had
started it itself.

With PREFECT_API_URL set (environment or Prefect profile), or Prefect's ephemeral mode turned off, nothing is
started: Prefect's settings decide, as they would without seqcast.

Importing this module imports nothing but the standard library (the CLI imports it for `--help` too).
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PORT_IN_USE_EXIT = 3  # uvicorn's exit code when it cannot bind (Prefect retries another port on it too)
# A first start on a fresh PREFECT_HOME creates Prefect's database: 20-30 s on 2 busy cores, past Prefect's default
# PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (20), which is used when larger.
MIN_STARTUP_TIMEOUT = 90.0
STOP_TIMEOUT = 5.0  # seconds from SIGTERM to SIGKILL when the command ends, as Prefect's own server gets
SERVER_ENV = {  # what Prefect's SubprocessASGIServer sets for its server (no UI; an ephemeral, final server)
    "PREFECT_UI_ENABLED": "0",
    "PREFECT__SERVER_EPHEMERAL": "1",
    "PREFECT__SERVER_FINAL": "1",
}


class TemporaryServer:
    """One Prefect API server process on 127.0.0.1 that dies with the process that started it."""

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @classmethod
    def start(cls, env: dict[str, str], timeout: float, attempts: int = 3) -> TemporaryServer:
        """Start the server and wait until /api/health answers; RuntimeError if it does not within `timeout`."""
        for _ in range(attempts):
            port = _free_port()
            process = subprocess.Popen(  # noqa: S603 - this interpreter, this module, fixed arguments
                [sys.executable, "-m", __name__, str(os.getpid()), str(port)],
                env=env,
                stdin=subprocess.DEVNULL,
            )
            server = cls(process, port)
            if server._wait_healthy(timeout):
                return server
            if process.poll() != PORT_IN_USE_EXIT:  # someone took the port in between: try another
                server.stop()
                raise RuntimeError(
                    f"Prefect's temporary server did not start on {server.api_url} within {timeout:g} s "
                    f"(exit code {process.poll()}); set PREFECT_API_URL to use a running Prefect server"
                )
        raise RuntimeError(f"Prefect's temporary server found no free port in {attempts} attempts")

    def _wait_healthy(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:  # noqa: S310 - http://127.0.0.1
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT seconds."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


_started: TemporaryServer | None = None  # the server this process started (inherited by a warm command's child)


def start_temporary_prefect_api() -> str | None:
    """Start the temporary Prefect server that Prefect would start for this process's first flow, as a server that
    dies with this process, and point PREFECT_API_URL at it; its API URL (also when it was started before in this
    process, or by the warm server a command runs under, flows/warm.py), or None when Prefect's settings name
    another API or forbid the temporary server.

    Call it from the main thread (Linux sends the parent-death signal when the thread that started the child ends),
    right before a command runs its first flow: after the command has checked its options, so that a bad option
    starts nothing. Like Prefect's own, the server serves the rest of the process and is stopped at exit,
    after Prefect's log and event workers have sent what they still hold (their exit hooks are registered later, so
    they run first).
    """
    if _started is not None and os.environ.get("PREFECT_API_URL") == _started.api_url:
        return _started.api_url
    server = start_server_for_settings()
    if server is None:
        return None
    atexit.register(server.stop)
    use_temporary_server(server)
    return server.api_url


def started_server() -> TemporaryServer | None:
    """The temporary server this process started (or, in a warm command's child, the warm server started)."""
    return _started


def start_server_for_settings() -> TemporaryServer | None:
    """The temporary server Prefect's settings call for (started, healthy), or None when they name an API or
    forbid a temporary server. The caller stops it."""
    global _started
    from prefect.logging import get_logger
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return None
    settings.home.mkdir(parents=True, exist_ok=True)  # the server keeps its database there
    env = {**os.environ, **SERVER_ENV, **settings.to_environment_variables(exclude_unset=True)}
    timeout = max(float(settings.server.ephemeral.startup_timeout_seconds), MIN_STARTUP_TIMEOUT)
    _started = TemporaryServer.start(env, timeout=timeout)
    get_logger().debug("Started a temporary Prefect server on %s", _started.api_url)
    return _started


def use_temporary_server(server: TemporaryServer) -> None:
    """Point this process's Prefect settings (PREFECT_API_URL, and PREFECT_UI_URL unless set) at `server`."""
    from prefect.context import refresh_global_settings_context
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    os.environ["PREFECT_API_URL"] = server.api_url
    if "ui_url" not in settings.model_fields_set:  # links to flow runs (MLflow tags, summaries, Prefect's logs)
        # point where `prefect server start` shows them later from the same database, not at this server: it has
        # no UI and stops with the command
        host = settings.server.api.host
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104 - compared, not bound
        os.environ["PREFECT_UI_URL"] = f"http://{host}:{settings.server.api.port}"
    refresh_global_settings_context()  # every thread and child process of the command uses this server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when its parent ends; exit now if the parent has already gone."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the signal was armed
        sys.exit(1)


def _serve(parent: int, port: int) -> None:
    """The server process: arm the parent-death signal, then become uvicorn serving Prefect's API (the signal
    survives exec), with the arguments Prefect's SubprocessASGIServer uses."""
    _die_with_parent(parent)
    import importlib.util

    spec = importlib.util.find_spec("prefect")  # where Prefect is installed, without importing it
    assert spec is not None and spec.submodule_search_locations, "prefect is not installed"
    app_dir = os.path.dirname(next(iter(spec.submodule_search_locations)))
    os.execv(  # noqa: S606 - this interpreter, fixed arguments
        sys.executable,
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            app_dir,
            "--factory",
            "prefect.server.api.server:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "error",
            "--lifespan",
            "on",
        ],
    )


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))
