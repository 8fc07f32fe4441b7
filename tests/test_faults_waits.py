"""Bounded waits and one message: a database or MLflow server that is down, hung (accepts TCP, never answers) or
holding a lock fails the command within its timeout, once, with one `error:` line naming the store without its
password; the errors are seqcast's own (SeqcastError), not a driver's class name.

The hung servers are real listeners on 127.0.0.1 that accept connections and never send a byte; timeouts are set
short (2 s) through the SEQCAST_ settings, so each test takes seconds, and hangs (until its timeout mark) without
the bounds.
"""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import create_engine, func, select, text

from flows.cli import _error_message, main
from tasks import store
from tasks.settings import get_settings

pytestmark = pytest.mark.faults

WAIT = 2  # seconds: every bounded wait in these tests (libpq counts connect_timeout in whole seconds, at least 2)
SLACK = 3.0  # seconds on top of a bound for a loaded 2-core machine
MLFLOW_VARS = ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES")


class HungServer:
    """A TCP listener on 127.0.0.1 that accepts every connection and never answers: a hung database or MLflow
    server. `accepted` counts connections, so a test sees how many attempts a command made."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.1)
        self.port = int(self._sock.getsockname()[1])
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="hung-server", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(conn)  # held open, never read from or written to
            self.accepted += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._held:
            conn.close()
        self._sock.close()


@pytest.fixture
def hung() -> Iterator[HungServer]:
    server = HungServer()
    yield server
    server.close()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reset_engines() -> None:
    """Settings re-read and engines rebuilt (an engine keeps the timeouts it was made with)."""
    get_settings.cache_clear()
    store.dispose_engines()


@pytest.fixture
def short_waits(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every bounded wait set to WAIT seconds through the settings, MLflow's own HTTP variables unset (restored
    afterwards), and MLflow left one retry."""
    for name in MLFLOW_VARS:  # set then delete: teardown restores what the environment had, also after we set it
        monkeypatch.setenv(name, "0")
        monkeypatch.delenv(name)
    monkeypatch.setenv("SEQCAST_DB_CONNECT_TIMEOUT", str(WAIT))
    monkeypatch.setenv("SEQCAST_DB_LOCK_TIMEOUT", str(WAIT))
    monkeypatch.setenv("SEQCAST_DB_STATEMENT_TIMEOUT", "30")
    monkeypatch.setenv("SEQCAST_MLFLOW_TIMEOUT", str(WAIT))
    monkeypatch.setenv("SEQCAST_MLFLOW_RETRIES", "1")
    reset_engines()
    yield
    monkeypatch.undo()
    reset_engines()


def one_error_line(err: str) -> str:
    """The single `error:` line a failed command printed (and nothing else: no traceback, no retry noise)."""
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err and "unexpected" not in err and "urllib3" not in err, err
    return err.rstrip("\n")


def forecast_frame(series: list[str], point: float) -> pd.DataFrame:
    """Three steps of forecasts for each series, every key fixed, so a rerun targets the same rows."""
    origin = pd.Timestamp("2024-01-01", tz="UTC")
    rows = [
        {
            "series_id": sid,
            "origin_ts": origin,
            "target_ts": origin + pd.Timedelta(hours=step),
            "step": step,
            "point": point,
            "lower": point - 1,
            "upper": point + 1,
            "level": 0.9,
            "method": "lstm",
            "model_name": "faults",
            "model_version": "1",
            "mlflow_run_id": "run",
            "flow_run_id": None,
            "created_at": origin,
        }
        for sid in series
        for step in (1, 2, 3)
    ]
    return pd.DataFrame(rows)


def forecast_points(engine: Any) -> dict[tuple[str, int], float]:
    table = store.read_forecasts(engine, model_name="faults")
    return {(str(r.series_id), int(r.step)): float(r.point) for r in table.itertuples()}


# --------------------------------------------------------------------------------------------------- database


@pytest.mark.timeout(30)
def test_hung_database_fails_the_engine_after_the_connect_timeout(hung: HungServer, short_waits: None) -> None:
    url = f"postgresql+psycopg://seqcast:hunter2@127.0.0.1:{hung.port}/seqcast"
    start = time.monotonic()
    with pytest.raises(store.StoreTimeoutError) as caught:
        store.get_engine(url)
    elapsed = time.monotonic() - start
    assert WAIT - 0.5 <= elapsed <= WAIT + SLACK
    assert caught.value.waited == WAIT and caught.value.setting == "SEQCAST_DB_CONNECT_TIMEOUT"
    assert str(caught.value).startswith(
        f"database postgresql+psycopg://seqcast:***@127.0.0.1:{hung.port}/seqcast did not answer: connecting timed "
        f"out after {WAIT} s (SEQCAST_DB_CONNECT_TIMEOUT)"
    )
    assert "hunter2" not in str(caught.value)


@pytest.mark.timeout(90)
def test_hung_database_fails_ingest_with_one_message(
    hung: HungServer, short_waits: None, seqcast_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"postgresql+psycopg://seqcast:hunter2@127.0.0.1:{hung.port}/seqcast"
    start = time.monotonic()
    assert main(["ingest", "--source", "sample:electricity", "--database-url", url]) == 1
    elapsed = time.monotonic() - start
    line = one_error_line(capsys.readouterr().err)
    assert line == (
        f"error: database postgresql+psycopg://seqcast:***@127.0.0.1:{hung.port}/seqcast did not answer: connecting "
        f"timed out after {WAIT} s (SEQCAST_DB_CONNECT_TIMEOUT); is the server up and answering, and the host and "
        "port right?"
    )
    assert hung.accepted == 1
    assert elapsed < 60  # the target for a hung store; most of it is reading and validating the sample


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("prefect_harness")
def test_hung_database_fails_forecast_once_not_once_per_retry(
    hung: HungServer,
    short_waits: None,
    seqcast_home: Path,
    mlflow_store: str,
    model: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """read_observations_task retries a database that is down (1 + 5 + 15 s apart), but not one that hangs: its
    connect timeout is the whole wait."""
    monkeypatch.setenv("SEQCAST_DATABASE_URL", f"postgresql+psycopg://seqcast:hunter2@127.0.0.1:{hung.port}/x")
    monkeypatch.setenv("SEQCAST_MLFLOW_TRACKING_URI", mlflow_store)
    monkeypatch.setenv("SEQCAST_REGISTERED_MODEL", model.name)
    get_settings.cache_clear()
    start = time.monotonic()
    assert main(["forecast"]) == 1
    elapsed = time.monotonic() - start
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(
        f"error: database postgresql+psycopg://seqcast:***@127.0.0.1:{hung.port}/x did not answer: connecting timed "
        f"out after {WAIT} s"
    )
    assert hung.accepted == 1  # one attempt: a timeout is not retried
    assert elapsed < 30


def test_connection_errors_are_retried_and_timeouts_are_not() -> None:
    def state(error: Exception) -> Any:
        def result() -> None:
            raise error

        return SimpleNamespace(result=result)

    down = store.StoreUnavailableError("cannot reach database x: connection refused")
    hung = store.StoreTimeoutError("database x did not answer", WAIT, "SEQCAST_DB_CONNECT_TIMEOUT")
    assert store.is_connection_error(None, None, state(down)) is True
    assert store.is_connection_error(None, None, state(hung)) is False
    assert store.is_connection_error(None, None, state(ValueError("bad data"))) is False


@pytest.mark.timeout(30)
def test_a_row_lock_held_elsewhere_fails_upsert_forecasts_and_writes_nothing(
    postgres_database: str, short_waits: None
) -> None:
    engine = store.get_engine(postgres_database)
    with engine.begin() as conn:
        conn.execute(store.forecasts.delete().where(store.forecasts.c.model_name == "faults"))
    store.upsert_forecasts(engine, forecast_frame(["a", "b"], point=1.0))
    before = forecast_points(engine)

    holder = create_engine(postgres_database)  # another session, no lock timeout of ours
    try:
        with holder.connect() as other:
            other.execute(text("SELECT 1 FROM forecasts WHERE model_name = 'faults' AND series_id = 'a' FOR UPDATE"))
            start = time.monotonic()
            with pytest.raises(store.StoreTimeoutError) as caught:
                store.upsert_forecasts(engine, forecast_frame(["a", "b", "c"], point=2.0))
            elapsed = time.monotonic() - start
            other.rollback()
    finally:
        holder.dispose()

    assert WAIT - 0.5 <= elapsed <= WAIT + SLACK
    message = str(caught.value)
    store_name = store.redact_url(postgres_database)
    assert message.startswith(
        f"database {store_name}: gave up waiting for a lock after {WAIT} s (SEQCAST_DB_LOCK_TIMEOUT): another "
        "session holds a lock on the rows or table this needs"
    )
    assert message.endswith("nothing was written")
    assert caught.value.setting == "SEQCAST_DB_LOCK_TIMEOUT"
    assert forecast_points(engine) == before  # neither the new series nor the new values of the locked rows
    with engine.begin() as conn:
        conn.execute(store.forecasts.delete().where(store.forecasts.c.model_name == "faults"))


@pytest.mark.timeout(30)
def test_a_statement_past_the_statement_timeout_is_cancelled(
    postgres_database: str, short_waits: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEQCAST_DB_STATEMENT_TIMEOUT", "1")
    reset_engines()
    engine = store.get_engine(postgres_database)
    start = time.monotonic()
    with pytest.raises(store.StoreTimeoutError) as caught:
        store.run_in_transaction(engine, lambda conn: conn.execute(text("SELECT pg_sleep(10)")))
    assert time.monotonic() - start < 1 + SLACK
    assert str(caught.value).startswith(
        f"database {store.redact_url(postgres_database)}: a statement ran longer than 1 s "
        "(SEQCAST_DB_STATEMENT_TIMEOUT) and was cancelled"
    )


@pytest.mark.timeout(30)
def test_sqlite_waits_for_a_lock_as_long_as_the_lock_timeout(tmp_path: Path, short_waits: None) -> None:
    path = tmp_path / "seqcast.db"
    engine = store.get_engine(f"sqlite:///{path}")
    store.upsert_forecasts(engine, forecast_frame(["a"], point=1.0))
    before = forecast_points(engine)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process's write transaction
        start = time.monotonic()
        with pytest.raises(store.StoreTimeoutError) as caught:
            store.upsert_forecasts(engine, forecast_frame(["a", "b"], point=2.0))
        elapsed = time.monotonic() - start
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert WAIT - 0.5 <= elapsed <= WAIT + SLACK
    assert str(caught.value).startswith(
        f"database sqlite:///{path}: gave up waiting for a lock after {WAIT} s (SEQCAST_DB_LOCK_TIMEOUT)"
    )
    assert forecast_points(engine) == before


def test_postgres_connections_carry_the_timeouts_and_a_url_keeps_its_own() -> None:
    args = store.connect_args("postgresql+psycopg://u:p@db/seqcast")
    settings = get_settings()
    assert args["connect_timeout"] == max(2, round(settings.db_connect_timeout))
    assert args["options"] == (
        f"-c statement_timeout={round(settings.db_statement_timeout * 1000)} "
        f"-c lock_timeout={round(settings.db_lock_timeout * 1000)}"
    )
    own = store.connect_args("postgresql://u:p@db/seqcast?connect_timeout=3&options=-c%20lock_timeout%3D1s")
    assert "connect_timeout" not in own  # the URL's own is used
    assert own["options"].endswith(" -c lock_timeout=1s")  # given last, so the server applies it last
    assert store.connect_args("sqlite:///x.db") == {}


def test_a_live_postgres_session_has_the_timeouts(postgres_database: str, short_waits: None) -> None:
    engine = store.get_engine(postgres_database)
    with engine.connect() as conn:
        assert conn.execute(text("SHOW lock_timeout")).scalar() == f"{WAIT}s"
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "30s"
        assert conn.execute(select(func.count()).select_from(store.forecasts)).scalar() is not None


# --------------------------------------------------------------------------------------------------- MLflow


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("prefect_harness")
def test_hung_mlflow_fails_forecast_in_bounded_time_with_one_message(
    hung: HungServer,
    short_waits: None,
    seqcast_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SEQCAST_MLFLOW_TRACKING_URI", f"http://seqcast:hunter2@127.0.0.1:{hung.port}")
    get_settings.cache_clear()
    start = time.monotonic()
    assert main(["forecast"]) == 1
    elapsed = time.monotonic() - start
    line = one_error_line(capsys.readouterr().err)
    assert line == (
        f"error: MLflow tracking server http://seqcast:***@127.0.0.1:{hung.port} did not answer: a request timed "
        f"out after {WAIT} s (SEQCAST_MLFLOW_TIMEOUT), tried 2 times; is the server up and answering?"
    )
    assert hung.accepted == 2  # MLflow's one retry; the pin-model task does not retry it again
    assert elapsed < 2 * WAIT + 15


@pytest.mark.usefixtures("prefect_harness")
def test_unreachable_mlflow_is_one_error_line_naming_the_server(
    short_waits: None, seqcast_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = closed_port()
    monkeypatch.setenv("SEQCAST_MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    get_settings.cache_clear()
    assert main(["forecast"]) == 1
    assert one_error_line(capsys.readouterr().err) == (
        f"error: cannot reach MLflow tracking server http://127.0.0.1:{port}: connection refused (tried 2 times); "
        "is it running, and the URI right?"
    )


@pytest.mark.timeout(30)
def test_a_registry_call_on_a_hung_server_raises_tracking_unavailable(hung: HungServer, short_waits: None) -> None:
    from tasks import forecast as fc
    from tasks import registry

    start = time.monotonic()
    with pytest.raises(registry.TrackingUnavailableError) as caught:
        fc.pin_model(f"http://127.0.0.1:{hung.port}", "faults", version="1")  # by version: not "no such version"
    assert time.monotonic() - start <= 2 * WAIT + SLACK
    assert caught.value.timed_out and isinstance(caught.value, registry.RegistryError)


def test_close_failed_runs_with_mlflow_unreachable_logs_one_warning(
    short_waits: None, seqcast_home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from flows.train import close_failed_runs

    monkeypatch.setenv("SEQCAST_MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed_port()}")
    get_settings.cache_clear()
    flow_run = SimpleNamespace(parameters={}, id=uuid.uuid4())
    with caplog.at_level("WARNING", logger="flows.train"):
        close_failed_runs(None, flow_run, None)  # type: ignore[arg-type]
    warnings = [r for r in caplog.records if r.name == "flows.train"]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
    assert "could not mark this run's MLflow runs FAILED" in warnings[0].getMessage()
    assert "cannot reach MLflow tracking server" in warnings[0].getMessage()


def test_mlflow_http_limits_follow_the_settings_unless_mlflow_s_own_are_set(
    short_waits: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from tasks.settings import apply_mlflow_timeouts

    limits = apply_mlflow_timeouts()
    assert (limits.timeout, limits.retries, limits.setting) == (WAIT, 1, "SEQCAST_MLFLOW_TIMEOUT")
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == str(WAIT)
    monkeypatch.setenv("SEQCAST_MLFLOW_TIMEOUT", "5")  # ours follow the settings
    get_settings.cache_clear()
    assert apply_mlflow_timeouts().timeout == 5 and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "77")  # the user's own win
    limits = apply_mlflow_timeouts()
    assert (limits.timeout, limits.setting) == (77, "MLFLOW_HTTP_REQUEST_TIMEOUT")
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "77"


# --------------------------------------------------------------------------------------------------- error types


def _error_classes() -> list[tuple[type[Exception], type[Exception]]]:
    from flows.deploy import DeployError
    from models.packaging import ArtifactIntegrityError
    from tasks.forecast import BackfillRangeError, ForecastInputError
    from tasks.ingest import SourceError
    from tasks.registry import RegistryError, TrackingUnavailableError
    from tasks.train import TrainingDivergedError
    from tasks.validate import DataValidationError

    return [
        (DataValidationError, ValueError),
        (SourceError, ValueError),
        (store.SchemaVersionError, RuntimeError),
        (RegistryError, RuntimeError),
        (TrackingUnavailableError, RuntimeError),
        (TrainingDivergedError, RuntimeError),
        (ForecastInputError, ValueError),
        (BackfillRangeError, ValueError),
        (DeployError, RuntimeError),
        (ArtifactIntegrityError, ValueError),
        (store.StoreUnavailableError, ConnectionError),
        (store.StoreTimeoutError, RuntimeError),
    ]


def test_every_error_of_ours_is_a_seqcast_error_printed_as_written() -> None:
    from models.errors import SeqcastError

    for error, builtin in _error_classes():
        assert issubclass(error, SeqcastError) and issubclass(error, builtin), error
    assert _error_message(store.StoreTimeoutError("database x did not answer", 2, "S")) == "database x did not answer"

    class NewError(SeqcastError):  # a new error needs no entry in the CLI, only the base
        pass

    assert _error_message(NewError("what failed and the fix")) == "what failed and the fix"
    assert not issubclass(store.StoreTimeoutError, OSError)  # not retried as an I/O error (tasks.ingest)
