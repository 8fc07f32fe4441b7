"""Shared fixtures: real stores only (SQLite, the running PostgreSQL, MLflow in a temp folder, Prefect harness)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import create_database, database_url, drop_database, require_postgres

# `seqcast` run as a subprocess here is a cold command, unless a test asks for a warm server (tests/test_warm.py):
# a warm server would outlive the test that started it.
os.environ["SEQCAST_WARM_IDLE"] = "0"

pytest_plugins = ["forecast_setup"]  # the tiny registered model and observations of the forecast and backfill tests


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tests share a small machine: one torch thread avoids OpenMP spin-waits when the cores are busy (a module
    that trains many small networks asks for it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end.

    Skips on a laptop without PostgreSQL; fails under CI=true, where the server must be there.
    """
    require_postgres()
    name = create_database("seqcast_test", natural_collation=True)
    yield database_url(name, "postgresql+psycopg")
    from tasks.store import dispose_engines

    dispose_engines()
    drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL with empty seqcast tables: a new SQLite file, or the session's PostgreSQL database."""
    from tasks import store

    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'seqcast.db'}"
        store.dispose_engines()
        return
    url: str = request.getfixturevalue("postgres_database")
    engine = store.get_engine(url)
    with engine.begin() as conn:
        conn.execute(store.forecasts.delete())
        conn.execute(store.observations.delete())
    yield url


@pytest.fixture
def seqcast_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """SEQCAST_HOME in a temp folder, with settings re-read from the environment."""
    from tasks.settings import get_settings

    home = tmp_path / "home"
    monkeypatch.setenv("SEQCAST_HOME", str(home))
    monkeypatch.delenv("SEQCAST_DATABASE_URL", raising=False)
    monkeypatch.delenv("SEQCAST_MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One real MLflow tracking store (SQLite backend, local artifacts) for the test session.

    Tests isolate themselves by using their own experiment and registered-model names.
    """
    folder = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{folder / 'mlflow.db'}"


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Prefect's test harness: a temporary local API and database for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


PREFECT_COMMAND_ENV = ("PREFECT_API_URL", "PREFECT_UI_URL")


@pytest.fixture(autouse=True)
def command_prefect_api_is_undone() -> Iterator[None]:
    """A `seqcast` command run in this process (flows.cli.main) points PREFECT_API_URL at the temporary server it
    starts, for the rest of the process, as it should for a command. Afterwards the test process goes back to its
    own settings, and Prefect's events worker, which is made once per process for the API it first saw, is drained
    so that the next event goes to the API of the next test (the harness's)."""
    import os

    before = {name: os.environ.get(name) for name in PREFECT_COMMAND_ENV}
    yield
    if all(os.environ.get(name) == value for name, value in before.items()):
        return
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    from prefect.context import refresh_global_settings_context
    from prefect.events.worker import EventsWorker

    refresh_global_settings_context()
    EventsWorker.drain_all()
