"""The warm server (flows/warm.py): commands run in forked children of one process that imported everything once,
with their own output, exit code and signals, and the server goes away when idle."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from forecast_setup import Registered, synthetic_frame

from flows.warm import command_argv, runs_warm, server_paths, stop_warm_server
from tasks import store

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the warm server is Linux only")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purpose: it only waits for its parent to read its exit code
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[1].startswith("Z"))


def _wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class Warm:
    """One warm server's environment and log."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.log = server_paths(env)[2]

    def run(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command_argv(), *args], capture_output=True, text=True, env=self.env, timeout=timeout, check=False
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*command_argv(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env
        )

    def start(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a command with no server up (it runs cold and starts one as it exits); wait until the server serves."""
        assert not server_paths(self.env)[0].exists(), "a warm server is up already"
        done = self.run(*args)
        _wait_until(lambda: server_paths(self.env)[0].exists(), 240, "the warm server to serve")
        return done

    def server_pids(self) -> list[int]:
        return [int(p) for p in re.findall(r"serving on \S+ \(pid (\d+)", self.log.read_text())]

    def command_pids(self) -> list[int]:
        return [int(p) for p in re.findall(r"command (\d+):", self.log.read_text())] if self.log.exists() else []


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory, mlflow_store: str, model: Registered) -> Iterator[Warm]:
    """A warm server for this module, on the temporary Prefect API it starts itself, with the tiny model and its
    observations in a SQLite database of its own."""
    home = tmp_path_factory.mktemp("warm-home")
    db_url = f"sqlite:///{home / 'seqcast.db'}"
    store.upsert_observations(store.get_engine(db_url), synthetic_frame())
    env = {
        **os.environ,
        "SEQCAST_HOME": str(home),
        "SEQCAST_DATABASE_URL": db_url,
        "SEQCAST_MLFLOW_TRACKING_URI": mlflow_store,
        "SEQCAST_REGISTERED_MODEL": model.name,
        "SEQCAST_WARM_IDLE": "120",
    }
    for name in ("PREFECT_API_URL", "PREFECT_UI_URL", "SEQCAST_DEBUG"):
        env.pop(name, None)
    stop_warm_server(env)  # one left by an earlier, interrupted run
    _wait_until(lambda: not server_paths(env)[0].exists(), 30, "an earlier warm server to stop")
    warm = Warm(env)
    first = warm.start("forecast")
    assert first.returncode == 0, first.stderr
    assert not warm.command_pids()  # the first command ran cold, in its own process
    yield warm
    stop_warm_server(env)


def test_commands_run_in_forked_children_of_one_warm_server(warm: Warm) -> None:
    first = warm.run("forecast")
    second = warm.run("forecast")
    for done in (first, second):
        assert done.returncode == 0, done.stderr
        assert re.search(r"^wrote \d+ rows to forecasts", done.stdout, re.M), done.stdout
        assert "Traceback" not in done.stderr
        # the child knows its Prefect API is the warm server's temporary one: no link to a UI that is not there
        assert "View at" not in done.stdout + done.stderr
    servers, commands = warm.server_pids(), warm.command_pids()
    assert len(servers) == 1 and _alive(servers[0])
    assert len(commands) >= 2 and len(set(commands)) == len(commands)
    assert not any(_alive(pid) for pid in commands)  # each command was its own process, gone when it ended


def test_an_error_is_one_message_and_the_exit_code_comes_back(warm: Warm) -> None:
    done = warm.run("forecast", "--version", "999")
    assert done.returncode == 1
    assert done.stderr.startswith("error: "), done.stderr
    assert "999" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(("sent", "code"), [(signal.SIGINT, 130), (signal.SIGKILL, -signal.SIGKILL)])
def test_ctrl_c_reaches_the_command_and_a_killed_command_takes_its_child(
    warm: Warm, sent: signal.Signals, code: int
) -> None:
    before = set(warm.command_pids())
    command = warm.popen("train", "--epochs", "500", "--patience", "500", "--lookback", "48", "--horizon", "12")
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(command.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    _wait_until(lambda: any(" - training " in line for line in lines), 240, "the command to start training")
    (child,) = set(warm.command_pids()) - before
    command.send_signal(sent)
    command.wait(timeout=60)
    reader.join(timeout=10)
    assert command.returncode == code, "".join(lines)
    if sent == signal.SIGINT:  # the fits in worker threads stopped too: the command ends well before 500 epochs
        assert lines[-1].rstrip() == "interrupted", "".join(lines[-20:])
        assert "Traceback" not in "".join(lines)
    _wait_until(lambda: not _alive(child), 30, f"the command's child {child} to end")
    assert all(_alive(pid) for pid in warm.server_pids())  # the server itself serves on


def test_an_idle_server_exits_and_removes_its_socket(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SEQCAST_HOME": str(tmp_path / "home"),
        "SEQCAST_WARM_IDLE": "2",
        "PREFECT_API_URL": "http://127.0.0.1:9/api",  # not used by ingest: no temporary Prefect API to start
    }
    env.pop("SEQCAST_DATABASE_URL", None)
    quick = Warm(env)
    done = quick.start("ingest", "--source", "sample:electricity")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ingested sample:electricity"), done.stdout
    (server,) = quick.server_pids()
    _wait_until(lambda: not _alive(server), 60, "the idle server to exit")
    assert not server_paths(env)[0].exists()
    assert "idle for 2 s" in quick.log.read_text()


@pytest.mark.parametrize(
    ("argv", "idle", "expected"),
    [
        (["forecast"], "600", True),
        (["train", "--epochs", "3"], "", True),
        (["forecast", "--help"], "600", False),
        (["--version"], "600", False),
        (["deploy"], "600", False),
        (["forecast"], "0", False),
    ],
)
def test_which_command_lines_go_to_a_warm_server(
    argv: list[str], idle: str, expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEQCAST_WARM_IDLE", idle)
    assert runs_warm(argv) is expected
