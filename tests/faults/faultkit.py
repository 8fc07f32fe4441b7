"""Helpers of the fault tests: real `seqcast` processes with a clean environment, and a look at a process's
children in /proc (Linux, as CI is)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OWN_PREFIXES = ("PREFECT_", "MLFLOW_", "SEQCAST_")  # the developer's own settings, which would point elsewhere


def python_seqcast_argv(patch: str) -> list[str]:
    """`seqcast` run as `python -c`, with `patch` (Python statements) executed first: e.g. a smaller backfill chunk."""
    code = f"import sys\n{patch}\nfrom flows.cli import main\nsys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code]


def clean_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without Prefect/MLflow/seqcast settings; HOME and SEQCAST_HOME under `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env["SEQCAST_WARM_IDLE"] = "0"  # a cold command (tests/conftest.py says why)
    env["HOME"] = str(home)
    env["SEQCAST_HOME"] = str(home / "seqcast")
    env.update(extra or {})
    return env


@dataclass
class Command:
    """A process started with Popen, its output in a log file."""

    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        """Its exit code; fails the test (with the end of its output) if it runs longer than `timeout`."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"command did not finish within {timeout:.0f} s:\n{self.output()[-3000:]}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


def child_pids(pid: int) -> list[int]:
    """The direct children of `pid` (Linux /proc); [] when it is gone."""
    children: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                children += [int(c) for c in handle.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []
    return children


def command_line(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [part.decode(errors="replace") for part in handle.read().split(b"\0") if part]
    except (FileNotFoundError, ProcessLookupError):
        return []


def is_running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (an orphan's exit status may wait for PID 1 to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def kill_if_running(pid: int) -> None:
    if is_running(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `condition` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()
