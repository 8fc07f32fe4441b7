"""Fixtures of the fault tests: fresh PostgreSQL databases, one temporary Prefect server for the session's
`seqcast` subprocesses, and a starter of commands that kills whatever is left running.

The PostgreSQL helpers are tests/servers.py's, the tiny registered model is tests/forecast_setup.py's `model`
fixture (loaded for every test by tests/conftest.py), and the other helpers are in faultkit.py.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from faultkit import OWN_PREFIXES, Command
from servers import create_database, database_url, drop_database, require_postgres


@pytest.fixture
def start_command(tmp_path: Path) -> Iterator[Callable[..., Command]]:
    """Start a command (argv, env), its output in a log file; every one still running at the end is killed."""
    started: list[Command] = []

    def start(argv: list[str], env: Mapping[str, str], name: str = "command") -> Command:
        log = tmp_path / f"{name}-{len(started)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(argv, env=dict(env), cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
        command = Command(process, log)
        started.append(command)
        return command

    yield start
    for command in started:
        command.kill()


@pytest.fixture
def fresh_postgres() -> Iterator[str]:
    """A new empty PostgreSQL database (no seqcast tables yet), dropped at the end; its psycopg URL."""
    require_postgres()
    name = create_database("seqcast_fault")
    yield database_url(name, "postgresql+psycopg")
    from tasks.store import dispose_engines

    dispose_engines()
    drop_database(name)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One temporary Prefect server (seqcast's own, flows/prefect_server.py) for the session's `seqcast`
    subprocesses, so that each does not start one; its API URL (PREFECT_API_URL)."""
    from flows.prefect_server import SERVER_ENV, TemporaryServer

    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}
    env.update(SERVER_ENV)
    env["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    server = TemporaryServer.start(env, timeout=180)
    yield server.api_url
    server.stop()
