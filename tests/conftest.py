"""Shared fixtures: real stores only (SQLite, the running PostgreSQL, MLflow in a temp folder, Prefect harness)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

POSTGRES_ADMIN_URL = os.environ.get(
    "SEQCAST_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _postgres_available() -> str | None:
    """None when the server answers, else why not."""
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(POSTGRES_ADMIN_URL)
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:  # any connection failure means "not here"
        return f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc.__class__.__name__}"


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end.

    Skips on a laptop without PostgreSQL; fails under CI=true, where the server must be there.
    """
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    reason = _postgres_available()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: PostgreSQL tests may not be skipped)")
        pytest.skip(reason)
    name = f"seqcast_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        # A natural-language collation, as most production databases have (en_US and the like sort "a" < "B"
        # and skip punctuation), so code that needs code-point order must ask for it. ICU needs PostgreSQL 15.
        icu = conn.execute(text("select current_setting('server_version_num')::int >= 150000")).scalar()
        locale = " TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en'" if icu else ""
        conn.execute(text(f'CREATE DATABASE "{name}"{locale}'))
    url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    from tasks.store import dispose_engines

    dispose_engines()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


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
