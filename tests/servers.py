"""Real servers for integration tests: a Prefect server, an MLflow server and a Prefect worker, as subprocesses.

They run the same command lines as docker/compose.yaml (deployments/commands.py holds them; tests/test_docker.py
checks compose against it), each on a free port on 127.0.0.1, each with its own fresh database on the running
PostgreSQL, and each is waited for on the health endpoint that compose's health checks poll. Every process writes
its output to a log file; a startup failure shows the end of that log, and tests/integration/conftest.py attaches
the logs to any failing integration test. Everything is torn down (process groups killed, databases dropped) at
the end of the session.

Without PostgreSQL the fixtures skip with the reason, except under CI=true, where they fail.

Fixtures (session scope): `prefect_server`, `mlflow_server`, `prefect_worker`; `start_servers` starts the two
servers side by side before waiting for either (they take 5-20 s each on 2 cores).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_ADMIN_URL = os.environ.get(
    "SEQCAST_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
WORK_POOL = "seqcast"

# Generous: on a 2-core runner a Prefect server migrating a fresh database can take ~20 s, a worker ~10 s.
SERVER_STARTUP_TIMEOUT = float(os.environ.get("SEQCAST_TEST_SERVER_TIMEOUT", "180"))
WORKER_STARTUP_TIMEOUT = float(os.environ.get("SEQCAST_TEST_WORKER_TIMEOUT", "120"))
STOP_TIMEOUT = 15.0

# Variables of the developer's own shell that would point the subprocesses elsewhere.
_OWN_PREFIXES = ("PREFECT_", "MLFLOW_", "SEQCAST_")


def load_commands() -> ModuleType:
    """deployments/commands.py (not an installed package: it is loaded from the checkout)."""
    name = "seqcast_deployments_commands"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "deployments" / "commands.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


commands = load_commands()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def executable(argv: list[str]) -> list[str]:
    """`argv` with its program taken from this interpreter's environment (the venv), as on the image's PATH."""
    candidate = Path(sys.executable).parent / argv[0]
    return [str(candidate), *argv[1:]] if candidate.exists() else argv


def base_env() -> dict[str, str]:
    """This process's environment without Prefect/MLflow/seqcast settings, with the venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env["SEQCAST_WARM_IDLE"] = "0"  # a cold command (tests/conftest.py says why)
    return env


def service_env(service: str, values: Mapping[str, str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of `service`: exactly the variables compose gives it (commands.SERVICE_ENV), plus `extra`."""
    wanted = set(commands.SERVICE_ENV[service])
    if set(values) != wanted:
        raise AssertionError(f"{service} needs {sorted(wanted)}; the fixture gives {sorted(values)}")
    return {**base_env(), **dict(values), **dict(extra or {})}


# --------------------------------------------------------------------------------------------------- PostgreSQL


def require_postgres() -> None:
    """Skip (or, under CI=true, fail) when the PostgreSQL server does not answer; the one check every PostgreSQL
    fixture makes."""
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(POSTGRES_ADMIN_URL)
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
    except Exception as exc:  # any connection failure means "not here"
        reason = f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc.__class__.__name__}"
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: PostgreSQL tests may not be skipped)")
        pytest.skip(reason)


def create_database(prefix: str, natural_collation: bool = False) -> str:
    """A new empty database; returns its name.

    `natural_collation`: an ICU 'en' collation (PostgreSQL 15+), as most production databases have (they sort
    "a" < "B" and skip punctuation), so code that needs code-point order must ask for it.
    """
    from sqlalchemy import create_engine, text

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        icu = natural_collation and conn.execute(text("select current_setting('server_version_num')::int >= 150000"))
        locale = " TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en'" if icu and icu.scalar() else ""
        conn.execute(text(f'CREATE DATABASE "{name}"{locale}'))
    admin.dispose()
    return name


def drop_database(name: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def database_url(name: str, driver: str) -> str:
    """The admin URL pointed at database `name` with driver `driver` (e.g. 'postgresql+asyncpg')."""
    from sqlalchemy.engine import make_url

    url = make_url(POSTGRES_ADMIN_URL).set(drivername=driver, database=name)
    return url.render_as_string(hide_password=False)


# --------------------------------------------------------------------------------------------------- processes


@dataclass
class Service:
    """One subprocess with its command, environment, log file and health URL."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    health_url: str
    cwd: Path = ROOT
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    started_at: float = 0.0
    ready_after: float | None = None

    def start(self) -> Service:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(  # argv from deployments/commands.py
            executable(self.argv),
            env=self.env,
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() reaches its children (flow runs)
        )
        log.close()
        _RUNNING.append(self)
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.health_url, timeout=5) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_healthy(self, timeout: float) -> Service:
        """Poll the health URL until it answers 200; fail with the log's tail if the process dies or times out."""
        assert self.process is not None, f"{self.name} was not started"
        deadline = self.started_at + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(
                    f"{self.name} exited with code {self.process.returncode} before it was healthy\n"
                    f"command: {' '.join(self.argv)}\n{self.log_tail()}",
                    pytrace=False,
                )
            if self.healthy():
                self.ready_after = time.monotonic() - self.started_at
                return self
            time.sleep(0.5)
        pytest.fail(
            f"{self.name} was not healthy at {self.health_url} after {timeout:.0f} s\n"
            f"command: {' '.join(self.argv)}\n{self.log_tail()}",
            pytrace=False,
        )

    def stop(self) -> None:
        """SIGTERM to the whole process group, then SIGKILL after STOP_TIMEOUT seconds."""
        if self in _RUNNING:
            _RUNNING.remove(self)
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT)
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return f"(no log at {self.log_path})"
        return f"--- last {min(lines, len(text))} lines of {self.log_path} ---\n" + "\n".join(text[-lines:])


# Services alive now, for the failure report hook in tests/integration/conftest.py.
_RUNNING: list[Service] = []


def running_services() -> list[Service]:
    return list(_RUNNING)


@dataclass(frozen=True)
class PrefectServer:
    api_url: str
    database: str
    service: Service


@dataclass(frozen=True)
class MlflowServer:
    tracking_uri: str
    database: str
    artifacts: Path
    service: Service


@dataclass(frozen=True)
class PrefectWorker:
    pool: str
    env: dict[str, str]
    service: Service


# --------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def server_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def prefect_server_process(server_logs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """`prefect server start` on a free port, its database a fresh PostgreSQL database; started, not yet healthy."""
    require_postgres()
    database = create_database("seqcast_prefect")
    port = free_port()
    service = Service(
        name="prefect-server",
        argv=commands.prefect_server(host="127.0.0.1", port=port),
        env=service_env(
            "prefect-server",
            {"PREFECT_API_DATABASE_CONNECTION_URL": database_url(database, "postgresql+asyncpg")},
            extra={
                "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-server-home")),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_SERVER_UI_ENABLED": "false",
                # Schedules are checked on the deployments; no run may start by itself mid-test (02:00, 03:00).
                "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
            },
        ),
        log_path=server_logs / "prefect-server.log",
        health_url=f"http://127.0.0.1:{port}{commands.PREFECT_HEALTH_PATH}",
    ).start()
    yield PrefectServer(api_url=f"http://127.0.0.1:{port}/api", database=database, service=service)
    service.stop()
    drop_database(database)


@pytest.fixture(scope="session")
def mlflow_server_process(server_logs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """`mlflow server` on a free port: PostgreSQL backend (fresh database), proxied artifacts in a temp folder."""
    require_postgres()
    database = create_database("seqcast_mlflow")
    artifacts = tmp_path_factory.mktemp("mlflow-artifacts")
    port = free_port()
    service = Service(
        name="mlflow",
        argv=commands.mlflow_server(
            host="127.0.0.1",
            port=port,
            artifacts_destination=str(artifacts),
            allowed_hosts="127.0.0.1:*,localhost:*",
            workers=1,
        ),
        env=service_env(
            "mlflow",
            {"MLFLOW_BACKEND_STORE_URI": database_url(database, "postgresql+psycopg")},
            # as in docker/.env.example: no background job runner (GenAI scoring), which also slows shutdown
            extra={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        ),
        log_path=server_logs / "mlflow.log",
        health_url=f"http://127.0.0.1:{port}{commands.MLFLOW_HEALTH_PATH}",
    ).start()
    yield MlflowServer(tracking_uri=f"http://127.0.0.1:{port}", database=database, artifacts=artifacts, service=service)
    service.stop()
    drop_database(database)


@pytest.fixture(scope="session")
def start_servers(prefect_server_process: PrefectServer, mlflow_server_process: MlflowServer) -> None:
    """Both servers launched (asking for this first lets them start side by side)."""


@pytest.fixture(scope="session")
def prefect_server(start_servers: None, prefect_server_process: PrefectServer) -> PrefectServer:
    """A healthy Prefect server: `.api_url` is what PREFECT_API_URL should be."""
    prefect_server_process.service.wait_healthy(SERVER_STARTUP_TIMEOUT)
    return prefect_server_process


@pytest.fixture(scope="session")
def mlflow_server(start_servers: None, mlflow_server_process: MlflowServer) -> MlflowServer:
    """A healthy MLflow tracking server: `.tracking_uri` is what MLFLOW_TRACKING_URI should be."""
    mlflow_server_process.service.wait_healthy(SERVER_STARTUP_TIMEOUT)
    return mlflow_server_process


@pytest.fixture(scope="session")
def prefect_worker_process(
    prefect_server: PrefectServer,
    mlflow_server: MlflowServer,
    postgres_database: str,
    server_logs: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PrefectWorker]:
    """`prefect worker start --pool seqcast` (process pool), started, not yet healthy.

    Its environment is what compose gives the worker, and so what every flow run it starts sees: the session's
    PostgreSQL database for observations and forecasts, the MLflow server, the Prefect API.
    """
    port = free_port()
    env = service_env(
        "worker",
        {
            "PREFECT_API_URL": prefect_server.api_url,
            "SEQCAST_DATABASE_URL": postgres_database,
            "MLFLOW_TRACKING_URI": mlflow_server.tracking_uri,
            "SEQCAST_HOME": str(tmp_path_factory.mktemp("worker-seqcast-home")),
            "SEQCAST_PROJECT_DIR": str(ROOT),
        },
        extra={
            "PREFECT_HOME": str(tmp_path_factory.mktemp("worker-prefect-home")),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
            "PREFECT_WORKER_WEBSERVER_PORT": str(port),
        },
    )
    service = Service(
        name="prefect-worker",
        argv=commands.prefect_worker(pool=WORK_POOL, name=f"test-worker-{uuid.uuid4().hex[:6]}"),
        env=env,
        log_path=server_logs / "prefect-worker.log",
        health_url=f"http://127.0.0.1:{port}{commands.WORKER_HEALTH_PATH}",
    ).start()
    yield PrefectWorker(pool=WORK_POOL, env=env, service=service)
    service.stop()


@pytest.fixture(scope="session")
def prefect_worker(prefect_worker_process: PrefectWorker) -> PrefectWorker:
    """A healthy worker polling the `seqcast` pool (created by the worker if it does not exist yet)."""
    prefect_worker_process.service.wait_healthy(WORKER_STARTUP_TIMEOUT)
    return prefect_worker_process
