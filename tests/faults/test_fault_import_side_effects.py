"""Importing seqcast opens no socket and writes nothing outside Prefect's own home folder.

Every module under models/, tasks/ and flows/ is imported in a fresh interpreter with an empty HOME, no Prefect,
MLflow or seqcast settings, and a guard that refuses (and records) every DNS lookup and socket connection. The
interpreter runs on a pseudo-terminal: Prefect and MLflow start their usage telemetry on import in an interactive
terminal (and only there), which is what a user at a shell gets.

Left as it is: Prefect creates its home folder (PREFECT_HOME, by default ~/.prefect) whenever it is imported
(`prefect.context.root_settings_context`), and seqcast's flows and tasks import Prefect at module level; the test
allows that one folder (and what Prefect keeps in it), and nothing else.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from faultkit import OWN_PREFIXES, ROOT

pytestmark = [pytest.mark.faults]

GUARD = r"""
import atexit, importlib, json, os, pkgutil, socket, sys, time

attempts = []
modules = []
# Registered first, so it runs last: after the exit hooks that flush telemetry queues.
atexit.register(lambda: print("RESULT " + json.dumps({"modules": modules, "attempts": attempts}), flush=True))

def refuse(*args, **kwargs):
    attempts.append(repr(args[:2]))
    raise OSError("socket guard: importing seqcast must not use the network")

socket.getaddrinfo = refuse
socket.create_connection = refuse
socket.socket.connect = refuse
socket.socket.connect_ex = refuse

for package in ("models", "tasks", "flows"):
    for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
        if ".migrations" not in info.name:  # Alembic scripts, run by Alembic, not importable modules
            modules.append(info.name)
for name in modules:
    importlib.import_module(name)
time.sleep(2)  # telemetry goes from background threads, after import and at exit
"""


def _files(home: Path) -> list[str]:
    return sorted(str(path.relative_to(home)) for path in home.rglob("*"))


def test_importing_every_module_opens_no_socket_and_creates_no_folder(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}
    for name in ("CI", "DO_NOT_TRACK", "PYTEST_CURRENT_TEST", "PYTEST_VERSION"):  # each turns telemetry off
        env.pop(name, None)
    env.update({"HOME": str(home), "PYTHONPATH": str(ROOT), "SEQCAST_WARM_IDLE": "0"})
    controller, terminal = pty.openpty()
    chunks: list[bytes] = []
    reader = threading.Thread(target=_read_all, args=(controller, chunks), daemon=True)
    reader.start()
    try:
        done = subprocess.run(
            [sys.executable, "-c", GUARD],
            env=env,
            cwd=workdir,
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            timeout=300,
            check=False,
        )
    finally:
        os.close(terminal)
        reader.join(timeout=10)
        os.close(controller)
    output = b"".join(chunks).decode(errors="replace")
    assert done.returncode == 0, output[-3000:]
    result = json.loads(output.rsplit("RESULT ", 1)[1].splitlines()[0])
    assert len(result["modules"]) > 20
    assert result["attempts"] == [], f"importing seqcast reached for the network: {result['attempts']}"
    assert "anonymous usage data" not in output, output  # Prefect's first-run telemetry notice
    assert os.listdir(workdir) == [], "importing seqcast wrote into the working folder"
    assert os.listdir(home) in ([], [".prefect"]), f"importing seqcast wrote {_files(home)} under HOME"


def _read_all(fd: int, chunks: list[bytes]) -> None:
    """Read a pseudo-terminal until its other end is closed (the child must never block on a full buffer)."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other end is closed and drained
            return
        if not chunk:
            return
        chunks.append(chunk)
