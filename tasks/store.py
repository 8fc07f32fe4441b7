"""The observations and forecasts tables: one schema on SQLite and PostgreSQL, every write one transaction.

Writes are idempotent upserts (schedulers may start the same run twice) and never row by row. The tables are
defined once here (`metadata`) and created or migrated by the Alembic revisions in `tasks/migrations/` when an
engine starts (`ensure_schema`).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
from prefect import task
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Double,
    Engine,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    TypeDecorator,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
    tuple_,
    type_coerce,
)
from sqlalchemy.engine import URL, Connection, Dialect, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import ColumnElement

from models.errors import SeqcastError
from tasks.run_context import run_logger
from tasks.settings import get_settings, redact_url, seconds

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).with_name("migrations")  # Alembic's script location, shipped in the package
# Alembic's version table. Not the default `alembic_version`: MLflow and Prefect keep theirs under that name, and a
# production PostgreSQL database may hold their tables beside ours.
VERSION_TABLE = "seqcast_alembic_version"
LEGACY_REVISION = "0001"  # what a database made before migrations (seqcast_schema version 1) is stamped with
LEGACY_SCHEMA_VERSION = 1
MIGRATION_LOCK_KEY = 0x5E9CA5_7AB1E5  # PostgreSQL advisory lock: one process migrates, the others wait and re-check
MIGRATION_LOCK_TIMEOUT = "60s"  # PostgreSQL: how long a migration waits for a lock before failing (bounded, not stuck)
DEFAULT_METHOD = "network"  # forecasts.method of rows that do not say (the column's server default)
WRITE_BATCH_ROWS = 5000  # rows per executemany of an upsert; their Python rows are built one batch at a time
READ_CHUNK_ROWS = 200_000  # rows fetched and converted to columns at a time by `read_observations`

T = TypeVar("T")


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timestamps stored in UTC on every backend and always read back timezone-aware.

    SQLite has no timezone type, so values go in as naive UTC there; PostgreSQL gets timestamptz.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


metadata = MetaData()

# The version number seqcast used before Alembic. Kept (revision 0002 set it to 2) so that a seqcast from before
# migrations, which only reads this table, refuses a database it would write incomplete rows to.
schema_info = Table(
    "seqcast_schema",
    metadata,
    Column("version", Integer, nullable=False),
)

observations = Table(
    "observations",
    metadata,
    Column("series_id", Text, primary_key=True),
    Column("ts", UTCDateTime, primary_key=True),
    Column("value", Double, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

forecasts = Table(
    "forecasts",
    metadata,
    Column("series_id", Text, primary_key=True),
    Column("origin_ts", UTCDateTime, primary_key=True),
    Column("target_ts", UTCDateTime, primary_key=True),
    Column("model_name", Text, primary_key=True),
    Column("model_version", Text, primary_key=True),
    Column("step", Integer, nullable=False),
    Column("point", Double, nullable=False),
    Column("lower", Double, nullable=True),
    Column("upper", Double, nullable=True),
    Column("level", Double, nullable=True),  # the interval's nominal coverage (0.9); NULL where there are no bounds
    # What produced the row: the network's cell name ("lstm", "gru") or a baseline fallback ("naive", ...).
    Column("method", Text, nullable=False, server_default=DEFAULT_METHOD),
    Column("mlflow_run_id", Text, nullable=False),
    Column("flow_run_id", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_forecasts_series_target", "series_id", "target_ts"),
)

# Realised errors of past forecasts, keyed like `forecasts`: one row per forecast row whose actual has arrived
# (tasks/scores.py writes them, tasks/monitor.py reads them). `scaled_error` is |point - actual| over the series' MASE
# scale from the model version's reference (NULL for a version saved without one); `inside` whether the actual fell
# within [lower, upper] (NULL without bounds). `scored_at` is when the row was first scored, `updated_at` when its
# figures last changed (a corrected actual, a rewritten forecast).
forecast_scores = Table(
    "forecast_scores",
    metadata,
    Column("series_id", Text, primary_key=True),
    Column("origin_ts", UTCDateTime, primary_key=True),
    Column("target_ts", UTCDateTime, primary_key=True),
    Column("model_name", Text, primary_key=True),
    Column("model_version", Text, primary_key=True),
    Column("step", Integer, nullable=False),
    Column("point", Double, nullable=False),
    Column("actual", Double, nullable=False),
    Column("abs_error", Double, nullable=False),
    Column("scaled_error", Double, nullable=True),
    Column("inside", Boolean, nullable=True),
    Column("lower", Double, nullable=True),
    Column("upper", Double, nullable=True),
    Column("level", Double, nullable=True),
    Column("method", Text, nullable=False),
    Column("scored_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # the monitor's read (a model's scores by origin) and, holding the whole key, the scorer's join on it: even a plan
    # made before PostgreSQL has statistics on a freshly filled table then finds each row in one probe
    Index("ix_forecast_scores_model_origin", "model_name", "model_version", "origin_ts", "series_id", "target_ts"),
)

OBSERVATION_COLUMNS = ["series_id", "ts", "value"]
FORECAST_COLUMNS = [
    "series_id",
    "origin_ts",
    "target_ts",
    "step",
    "point",
    "lower",
    "upper",
    "level",
    "method",
    "model_name",
    "model_version",
    "mlflow_run_id",
    "flow_run_id",
    "created_at",
]

_engines: dict[str, Engine] = {}
_engines_lock = threading.RLock()  # one engine per URL, and one schema check at a time, per process


class SchemaVersionError(SeqcastError, RuntimeError):
    """The database was written by a newer seqcast than this one."""


class StoreUnavailableError(SeqcastError, ConnectionError):
    """The database cannot be reached, refused us, or dropped the connection: it may come back, so flows retry it.

    Wraps the driver's error (its cause); the message names the database (URL without password) and what failed.
    """


class StoreTimeoutError(SeqcastError, RuntimeError):
    """A bounded wait on the database ran out: connecting (a hung server), a statement, or a lock held elsewhere.

    Not retried: the wait already took its bound, and a retry would multiply it. `waited` is the bound in seconds
    and `setting` the SEQCAST_ variable that sets it.
    """

    def __init__(self, message: str, waited: float, setting: str) -> None:
        super().__init__(message)
        self.waited = waited
        self.setting = setting


def get_engine(url: str) -> Engine:
    """An engine for `url` with the seqcast tables created or migrated to this seqcast's revision; one per URL per
    process."""
    engine = _engines.get(url)
    if engine is not None:  # no lock on the common path: a thread waiting on a migration elsewhere blocks no one
        return engine
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args(url))
            if engine.dialect.name == "sqlite":
                event.listen(engine, "connect", _sqlite_pragmas)
            migration_lock = _MIGRATION_LOCK_SECONDS if engine.dialect.name == "postgresql" else None
            with store_errors(url, lock_wait=migration_lock):
                ensure_schema(engine)
            _engines[url] = engine
        return engine


def connect_args(url: str | URL) -> dict[str, Any]:
    """The driver's bounded waits for `url`, from the settings: on PostgreSQL (psycopg, psycopg2) libpq's
    `connect_timeout` and the session's `statement_timeout` and `lock_timeout`; SQLite waits for locks in
    `_sqlite_pragmas`. What the URL sets itself wins (a `connect_timeout`, an `options=-c ...`)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or parsed.get_driver_name() not in {"psycopg", "psycopg2"}:
        return {}
    settings = get_settings()
    args: dict[str, Any] = {}
    if "connect_timeout" not in parsed.query:
        args["connect_timeout"] = _connect_timeout_seconds(settings.db_connect_timeout)
    ours = (
        f"-c statement_timeout={_milliseconds(settings.db_statement_timeout)} "
        f"-c lock_timeout={_milliseconds(settings.db_lock_timeout)}"
    )
    theirs = parsed.query.get("options")
    # the server applies -c options in order, so the URL's own come last and win
    args["options"] = f"{ours} {theirs}" if isinstance(theirs, str) and theirs.strip() else ours
    return args


def _connect_timeout_seconds(value: float) -> int:
    """libpq counts connect_timeout in whole seconds and treats anything under 2 as 2."""
    return max(2, math.ceil(value))


def _milliseconds(value: float) -> int:
    return max(1, round(value * 1000))


# the schema migration's own lock wait (MIGRATION_LOCK_TIMEOUT, PostgreSQL syntax "60s"), for messages
_MIGRATION_LOCK_SECONDS = float(MIGRATION_LOCK_TIMEOUT.removesuffix("s"))


@contextmanager
def store_errors(url: str | URL, lock_wait: float | None = None) -> Iterator[None]:
    """Turn the driver's errors of an unreachable, hung or locked database into StoreUnavailableError or
    StoreTimeoutError, each one message naming the database without its password. Other errors pass unchanged.

    `lock_wait`: the lock timeout in force where it is not SEQCAST_DB_LOCK_TIMEOUT (the schema migration's).
    """
    try:
        yield
    except DBAPIError as exc:
        converted = store_error(exc, url, lock_wait)
        if converted is None:
            raise
        raise converted from exc


# PostgreSQL SQLSTATEs of a bounded wait that ran out, and of a server that is going away or turning us down
_LOCK_NOT_AVAILABLE = "55P03"
_QUERY_CANCELED = "57014"
_UNAVAILABLE_STATES = {"57P01", "57P02", "57P03", "53300"}  # admin/crash shutdown, cannot connect now, too many


def store_error(exc: DBAPIError, url: str | URL, lock_wait: float | None = None) -> SeqcastError | None:
    """The seqcast error for a driver error of an unreachable, hung or locked database; None for any other."""
    store = url.render_as_string(hide_password=True) if isinstance(url, URL) else redact_url(url)
    orig = exc.orig
    state = str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")
    detail = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    settings = get_settings()
    if state == _LOCK_NOT_AVAILABLE or "database is locked" in detail:  # PostgreSQL lock_timeout, SQLite busy
        waited = settings.db_lock_timeout if lock_wait is None else lock_wait
        setting = "SEQCAST_DB_LOCK_TIMEOUT" if lock_wait is None else "MIGRATION_LOCK_TIMEOUT"
        return StoreTimeoutError(
            f"database {store}: gave up waiting for a lock after {seconds(waited)} ({setting}): another session "
            f"holds a lock on the rows or table this needs ({detail}); the transaction was rolled back, nothing was "
            "written",
            waited,
            setting,
        )
    if state == _QUERY_CANCELED and "statement timeout" in detail:
        waited = settings.db_statement_timeout
        return StoreTimeoutError(
            f"database {store}: a statement ran longer than {seconds(waited)} (SEQCAST_DB_STATEMENT_TIMEOUT) and "
            "was cancelled; the transaction was rolled back, nothing was written",
            waited,
            "SEQCAST_DB_STATEMENT_TIMEOUT",
        )
    if type(orig).__name__ == "ConnectionTimeout" or (not state and "timeout expired" in detail):
        waited = float(_connect_timeout_seconds(settings.db_connect_timeout))
        given = make_url(url).query.get("connect_timeout")
        if isinstance(given, str) and given.isdigit():
            waited = float(given)
        return StoreTimeoutError(
            f"database {store} did not answer: connecting timed out after {seconds(waited)} "
            "(SEQCAST_DB_CONNECT_TIMEOUT); is the server up and answering, and the host and port right?",
            waited,
            "SEQCAST_DB_CONNECT_TIMEOUT",
        )
    from sqlalchemy.exc import InterfaceError, OperationalError

    if not isinstance(exc, OperationalError | InterfaceError):
        return None
    if (
        exc.connection_invalidated
        or isinstance(exc, InterfaceError)
        or state.startswith("08")
        or state in _UNAVAILABLE_STATES
        or (not state and make_url(url).get_backend_name() == "postgresql")  # refused, DNS, dropped: no SQLSTATE
        or "unable to open database file" in detail  # SQLite
    ):
        return StoreUnavailableError(f"cannot reach database {store}: {detail}")
    return None


def dispose_engines() -> None:
    """Close every pooled connection (tests, and processes that fork)."""
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """SQLite waits up to SEQCAST_DB_LOCK_TIMEOUT for another writer's lock, then fails ("database is locked")."""
    import sqlite3

    lock_wait = get_settings().db_lock_timeout
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={_milliseconds(lock_wait)}")
    # Switching to WAL needs the database to itself and fails at once, without the busy wait, while another
    # process writes (say, migrates a fresh database): wait for it here, within the same bound.
    deadline = time.monotonic() + lock_wait
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    cursor.close()


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's config for the seqcast migrations, no alembic.ini needed; `connection` is the one env.py migrates.

    For Alembic's command API by hand, e.g. `command.downgrade(alembic_config(conn), "0001")` inside `engine.begin()`.
    """
    with _quiet_alembic():
        from alembic.config import Config

    config = Config(attributes={"connection": connection})
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


@functools.cache
def migration_script() -> ScriptDirectory:
    """The revisions this seqcast ships (read from the package once per process)."""
    with _quiet_alembic():
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision this seqcast knows: a database it made or migrated is at this one."""
    head = migration_script().get_current_head()
    assert head is not None, f"no Alembic revisions in {MIGRATIONS}"
    return head


def ensure_schema(engine: Engine) -> None:
    """Bring the tables to this seqcast's revision: create them on a fresh database, migrate an older one (a database
    from before migrations is stamped 0001 first), refuse one from a newer seqcast.

    Quiet when there is nothing to do, one log line when a migration runs. The migration is one transaction that
    holds a lock (PostgreSQL advisory lock, SQLite write lock), so concurrent first starts migrate once.
    """
    with _quiet_alembic():
        head = head_revision()
        with engine.connect() as conn:
            if _database_revision(conn)[0] == head:
                return
        with engine.begin() as conn:
            _lock_for_migration(conn)
            current, stamped = _database_revision(conn)  # again: another process may have migrated meanwhile
            if current == head:
                return
            from alembic import command

            if current is None:
                start = "an empty database"
            else:
                start = f"revision {current}" + ("" if stamped else " (made before migrations)")
            run_logger(__name__).info(
                "seqcast tables in %s: migrating from %s to revision %s",
                engine.url.render_as_string(hide_password=True),
                start,
                head,
            )
            config = alembic_config(conn)
            if not stamped:
                command.stamp(config, LEGACY_REVISION)
            command.upgrade(config, "head")


def _database_revision(conn: Connection) -> tuple[str | None, bool]:
    """The revision the database is at (None: no seqcast tables yet) and whether Alembic recorded it (False for a
    database made before migrations, which is at LEGACY_REVISION but not stamped)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script.revision import ResolutionError
    from alembic.util import CommandError

    heads = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_heads()
    if len(heads) > 1:
        raise SchemaVersionError(f"database has several seqcast schema revisions {sorted(heads)}; expected one")
    if heads:
        try:
            migration_script().get_revision(heads[0])
        except (ResolutionError, CommandError):  # Alembic wraps the ResolutionError of an unknown revision
            raise SchemaVersionError(
                f"database schema revision {heads[0]!r} is newer than this seqcast (which knows up to "
                f"{head_revision()!r}); upgrade seqcast"
            ) from None
        return heads[0], True
    if not inspect(conn).has_table(schema_info.name):
        return None, True
    version = conn.execute(select(schema_info.c.version)).scalar()
    if version is not None and version > LEGACY_SCHEMA_VERSION:
        raise SchemaVersionError(
            f"database schema version {version} is newer than this seqcast ({LEGACY_SCHEMA_VERSION}, and it has no "
            f"{VERSION_TABLE} table); upgrade seqcast"
        )
    return LEGACY_REVISION, False


def _lock_for_migration(conn: Connection) -> None:
    """Take the lock that makes one process migrate while the others wait (first statement of the transaction)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"SET LOCAL lock_timeout = '{MIGRATION_LOCK_TIMEOUT}'"))
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    elif conn.dialect.name == "sqlite":
        # pysqlite begins no transaction before DDL; BEGIN IMMEDIATE makes the whole migration one transaction that
        # holds the write lock (other writers wait up to busy_timeout).
        conn.exec_driver_sql("BEGIN IMMEDIATE")


@contextmanager
def _quiet_alembic() -> Iterator[None]:
    """Alembic logs INFO lines on import ("setup plugin ...") and on every command ("Context impl ..."); users see
    ours only. Holds `_engines_lock`, so threads do not undo each other's level."""
    with _engines_lock:
        log = logging.getLogger("alembic")
        level = log.level
        if log.getEffectiveLevel() < logging.WARNING:
            log.setLevel(logging.WARNING)
        try:
            yield
        finally:
            log.setLevel(level)


def run_in_transaction(engine: Engine, work: Callable[[Connection], T], attempts: int = 3) -> T:
    """Run `work` in one transaction, retrying the whole transaction if the connection drops (not if a bounded
    wait ran out: that would multiply it). An unreachable, hung or locked database raises StoreUnavailableError
    or StoreTimeoutError, with nothing written."""
    with store_errors(engine.url):
        for attempt in range(1, attempts + 1):
            try:
                with engine.begin() as conn:
                    return work(conn)
            except DBAPIError as exc:
                if not exc.connection_invalidated or attempt == attempts:
                    raise
                if isinstance(store_error(exc, engine.url), StoreTimeoutError):
                    raise
    raise AssertionError("unreachable")


def _insert(conn: Connection, table: Table) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)
    raise NotImplementedError(f"seqcast supports SQLite and PostgreSQL, not {conn.dialect.name}")


def _upsert(conn: Connection, table: Table, rows: list[dict[str, Any]], batch_size: int = WRITE_BATCH_ROWS) -> None:
    """INSERT ... ON CONFLICT DO UPDATE in batches; rows must not repeat a key."""
    if not rows:
        return
    keys = [c.name for c in table.primary_key.columns]
    stmt = _insert(conn, table)
    stmt = stmt.on_conflict_do_update(
        index_elements=keys,
        set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys},
    )
    for start in range(0, len(rows), batch_size):
        conn.execute(stmt, rows[start : start + batch_size])


def _to_datetimes(values: pd.Series) -> list[dt.datetime]:
    """UTC-aware Python datetimes from a datetime column (naive means UTC)."""
    ts = pd.to_datetime(values)
    ts = ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts.dt.tz_convert("UTC")
    return list(ts.dt.to_pydatetime())


@dataclass
class SeriesWriteSummary:
    series_id: str
    new: int
    updated: int
    unchanged: int
    start: pd.Timestamp
    end: pd.Timestamp


@dataclass
class WriteSummary:
    """What an observations upsert did, per series."""

    series: list[SeriesWriteSummary] = field(default_factory=list)

    @property
    def new(self) -> int:
        return sum(s.new for s in self.series)

    @property
    def updated(self) -> int:
        return sum(s.updated for s in self.series)

    @property
    def unchanged(self) -> int:
        return sum(s.unchanged for s in self.series)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([vars(s) for s in self.series])


def upsert_observations(engine: Engine, frame: pd.DataFrame) -> WriteSummary:
    """Write validated observations in one transaction: new rows inserted, changed values replaced.

    `frame` has columns series_id, ts, value and no repeated (series_id, ts). Unchanged rows are not
    rewritten, so re-ingesting the same file changes nothing (not even updated_at).

    The counts are those of this transaction, right under concurrency: when several processes write the same rows
    at once, each row counts as new in exactly one of them and as unchanged (or updated) in the others. PostgreSQL:
    the upsert itself says what it did (`_upsert_changed_observations`); SQLite: the existing rows are read after
    taking the write lock, which serialises writers.
    """
    frame = frame[OBSERVATION_COLUMNS].copy()
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    # One key order for every writer: concurrent transactions then wait on each other's rows instead of deadlocking.
    frame = frame.sort_values(["series_id", "ts"], kind="stable", ignore_index=True)

    def work(conn: Connection) -> WriteSummary:
        now = dt.datetime.now(dt.UTC)
        if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
            return _summarise(frame, _copy_upsert_observations(conn, frame, now))
        if conn.dialect.name == "postgresql":
            written = _upsert_changed_observations(conn, frame, now)
            merged = frame.merge(written, on=["series_id", "ts"], how="left")
            is_new = merged["inserted"].eq(True).to_numpy()
            is_changed = merged["inserted"].eq(False).to_numpy()
        else:  # SQLite
            # pysqlite begins a transaction only before the first write, so the read below would see the database
            # before a concurrent writer's commit; BEGIN IMMEDIATE takes the write lock first.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            existing = _read_existing(conn, frame)
            merged = frame.merge(existing, on=["series_id", "ts"], how="left", suffixes=("", "_old"))
            is_new = merged["value_old"].isna().to_numpy()
            is_changed = ~is_new & (merged["value"].to_numpy() != merged["value_old"].to_numpy())
            _sqlite_upsert_observations(conn, merged.loc[is_new | is_changed, OBSERVATION_COLUMNS], now)
        counts = frame[["series_id"]].assign(new=is_new, updated=is_changed).groupby("series_id", sort=True).sum()
        return _summarise(frame, counts)

    return run_in_transaction(engine, work)


# SQLite: the text SQLAlchemy's DateTime stores (naive UTC), made for a whole column at once by
# `_sqlite_timestamps`, so rows skip the per-value bind processing that was 84% of a large write.
_SQLITE_UPSERT = (
    "INSERT INTO observations (series_id, ts, value, updated_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (series_id, ts) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
)


def _sqlite_timestamps(values: pd.Series | pd.DatetimeIndex) -> list[str]:
    """UTC timestamps as SQLite's stored text, 'YYYY-MM-DD HH:MM:SS.ffffff' (what `UTCDateTime` writes there)."""
    utc = pd.DatetimeIndex(values).tz_convert("UTC").tz_localize(None)
    return [text.replace("T", " ") for text in np.datetime_as_string(utc.as_unit("us").to_numpy(), unit="us")]


def _sqlite_upsert_observations(conn: Connection, frame: pd.DataFrame, updated_at: dt.datetime) -> None:
    """SQLite: insert or replace `frame`'s rows (series_id, UTC ts, value) in batches of driver-level tuples."""
    stamp = _sqlite_timestamps(pd.DatetimeIndex([updated_at]))[0]
    for start in range(0, len(frame), WRITE_BATCH_ROWS):
        batch = frame.iloc[start : start + WRITE_BATCH_ROWS]
        ids, ts, values = batch["series_id"].tolist(), _sqlite_timestamps(batch["ts"]), batch["value"].tolist()
        conn.exec_driver_sql(_SQLITE_UPSERT, [(s, t, v, stamp) for s, t, v in zip(ids, ts, values, strict=True)])


def _observation_rows(frame: pd.DataFrame, updated_at: dt.datetime) -> list[dict[str, Any]]:
    return [
        {"series_id": s, "ts": t, "value": float(v), "updated_at": updated_at}
        for s, t, v in zip(
            frame["series_id"].tolist(), _to_datetimes(frame["ts"]), frame["value"].tolist(), strict=True
        )
    ]


def _upsert_changed_observations(
    conn: Connection, frame: pd.DataFrame, updated_at: dt.datetime, batch_size: int = WRITE_BATCH_ROWS
) -> pd.DataFrame:
    """PostgreSQL: insert new rows and replace changed values in batches; the keys written, `inserted` True for a new
    row, False for a changed one (unchanged rows are neither rewritten nor returned).

    `ON CONFLICT DO UPDATE ... WHERE value IS DISTINCT FROM excluded.value` skips unchanged rows, and `RETURNING
    xmax = 0` tells an inserted row (no previous version) from an updated one. A row that a concurrent transaction
    inserts first is waited for and then compared with its committed value, so it is never counted twice.
    """
    from sqlalchemy import Boolean, literal_column

    stmt = _insert(conn, observations)
    stmt = stmt.on_conflict_do_update(
        index_elements=[observations.c.series_id, observations.c.ts],
        set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at},
        where=observations.c.value.is_distinct_from(stmt.excluded.value),
    ).returning(
        observations.c.series_id,
        observations.c.ts,
        literal_column("(xmax = 0)", Boolean).label("inserted"),  # xmax: no deleting/locking transaction yet
    )
    ids: list[Any] = []
    times: list[np.ndarray] = []
    inserted: list[np.ndarray] = []
    for start in range(0, len(frame), batch_size):
        rows = _observation_rows(frame.iloc[start : start + batch_size], updated_at)
        returned = conn.execute(stmt, rows).all()
        if returned:  # columns per batch: the keys written are never held as Python rows all at once
            batch_ids, batch_ts, batch_inserted = zip(*returned, strict=True)
            ids += batch_ids
            times.append(pd.to_datetime(list(batch_ts), utc=True).as_unit("us").asi8)
            inserted.append(np.asarray(batch_inserted, dtype=bool))
    out = pd.DataFrame(
        {
            "series_id": pd.Series(ids, dtype=object),
            "ts": pd.DatetimeIndex(np.concatenate(times or [np.zeros(0, np.int64)]).view("M8[us]")).tz_localize("UTC"),
            "inserted": np.concatenate(inserted or [np.zeros(0, bool)]),
        }
    )
    out["ts"] = out["ts"].astype(frame["ts"].dtype)
    return out


def _summarise(frame: pd.DataFrame, counts: pd.DataFrame) -> WriteSummary:
    """Per series: rows new, updated (`counts`' columns, by series id; a series not there wrote nothing) and
    unchanged, and the time span the batch covered."""
    per_series = frame.groupby("series_id", sort=True).agg(rows=("ts", "size"), start=("ts", "min"), end=("ts", "max"))
    per_series = per_series.join(counts[["new", "updated"]], how="left").fillna({"new": 0, "updated": 0})
    unchanged = per_series["rows"] - per_series["new"] - per_series["updated"]
    return WriteSummary(
        [
            SeriesWriteSummary(str(series_id), int(new), int(updated), int(same), start, end)
            for series_id, new, updated, same, start, end in zip(
                per_series.index,
                per_series["new"],
                per_series["updated"],
                unchanged,
                per_series["start"],
                per_series["end"],
                strict=True,
            )
        ]
    )


# PostgreSQL with psycopg: the rows go in with COPY (text, no Python row objects), then one INSERT ... SELECT upserts
# them in key order and counts what it did per series. Same rules as `_upsert_changed_observations`.
_COPY_UPSERT = """
WITH written AS (
    INSERT INTO observations (series_id, ts, value, updated_at)
    SELECT series_id, ts, value, :now FROM seqcast_incoming_observations ORDER BY series_id COLLATE "C", ts
    ON CONFLICT (series_id, ts) DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at
    WHERE observations.value IS DISTINCT FROM EXCLUDED.value
    RETURNING series_id, (xmax = 0) AS inserted
)
SELECT series_id, count(*) FILTER (WHERE inserted) AS new, count(*) FILTER (WHERE NOT inserted) AS updated
FROM written GROUP BY series_id
"""
COPY_CHUNK_ROWS = 200_000  # rows formatted as CSV text at a time


def _copy_upsert_observations(conn: Connection, frame: pd.DataFrame, updated_at: dt.datetime) -> pd.DataFrame:
    """PostgreSQL (psycopg): COPY `frame` into a temporary table, then insert new rows and replace changed values
    from it in one statement; rows new and updated per series id (series that wrote nothing are absent).

    About 10x faster than executemany batches: no per-row Python objects, one round trip per chunk. Unchanged rows
    are neither rewritten nor counted; `xmax = 0` tells an inserted row from an updated one, and a row a concurrent
    transaction inserts first is waited for and compared with its committed value, as in the batched upsert.
    """
    conn.exec_driver_sql(
        "CREATE TEMPORARY TABLE seqcast_incoming_observations (series_id text NOT NULL, ts timestamptz NOT NULL, "
        "value double precision NOT NULL) ON COMMIT DROP"
    )
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    with cursor.copy("COPY seqcast_incoming_observations (series_id, ts, value) FROM STDIN WITH (FORMAT csv)") as copy:
        for start in range(0, len(frame), COPY_CHUNK_ROWS):
            chunk = frame.iloc[start : start + COPY_CHUNK_ROWS]
            copy.write(chunk.to_csv(header=False, index=False, na_rep="NaN", date_format="%Y-%m-%d %H:%M:%S.%f+00:00"))
    counts = conn.execute(text(_COPY_UPSERT), {"now": updated_at}).all()
    conn.exec_driver_sql("DROP TABLE seqcast_incoming_observations")  # a second write in this transaction makes it anew
    return pd.DataFrame(counts, columns=["series_id", "new", "updated"]).set_index("series_id")


def _read_existing(conn: Connection, frame: pd.DataFrame, series_per_query: int = 500) -> pd.DataFrame:
    """Stored values for the series and time span that `frame` covers: one query per `series_per_query` series.

    Each query spans its series' earliest to latest timestamp; rows outside a series' own span merge with nothing.
    """
    spans = frame.groupby("series_id", sort=True)["ts"].agg(["min", "max"])
    ids = spans.index.tolist()
    parts = []
    for i in range(0, len(ids), series_per_query):
        chunk = spans.iloc[i : i + series_per_query]
        query = select(observations.c.series_id, observations.c.ts, observations.c.value).where(
            observations.c.series_id.in_(ids[i : i + series_per_query]),
            observations.c.ts >= chunk["min"].min().to_pydatetime(),
            observations.c.ts <= chunk["max"].max().to_pydatetime(),
        )
        rows = conn.execute(query).all()
        if rows:
            series_ids, ts, values = zip(*rows, strict=True)
            parts.append(
                pd.DataFrame(
                    {"series_id": list(series_ids), "ts": pd.to_datetime(list(ts), utc=True), "value": list(values)}
                )
            )
    if not parts:
        return pd.DataFrame(
            {
                "series_id": pd.Series(dtype=object),
                "ts": pd.Series(dtype="datetime64[us, UTC]"),
                "value": pd.Series(dtype=float),
            }
        )
    out = pd.concat(parts, ignore_index=True)
    out["ts"] = out["ts"].astype(frame["ts"].dtype)
    return out


def read_observations(
    engine: Engine,
    series_ids: Sequence[str] | None = None,
    start: pd.Timestamp | dt.datetime | None = None,
    end: pd.Timestamp | dt.datetime | None = None,
    last: int | None = None,
) -> pd.DataFrame:
    """Observations sorted by (series_id, ts), ts UTC-aware; `end` is inclusive (the as-of rule: ts <= end).
    `last`: only each series' last `last` observations in that range (what a forecast reads), selected in the
    database so the rows before them are never converted.

    Ids are ordered by code point on every backend (SQLite's default; "C" collation on PostgreSQL), the order the
    window builder takes a frame in without re-sorting it.
    """
    rows: Any = observations
    conditions: list[ColumnElement[bool]] = []
    if series_ids is not None:
        conditions.append(observations.c.series_id.in_(list(series_ids)))
    if start is not None:
        conditions.append(observations.c.ts >= pd.Timestamp(start).to_pydatetime())
    if end is not None:
        conditions.append(observations.c.ts <= pd.Timestamp(end).to_pydatetime())
    if last is not None:
        if last < 1:
            raise ValueError(f"`last` ({last}) must be at least 1")
        rank = func.row_number().over(partition_by=observations.c.series_id, order_by=observations.c.ts.desc())
        ranked = select(*observations.c, rank.label("rank_from_end")).where(*conditions).subquery("ranked")
        rows, conditions = ranked, [ranked.c.rank_from_end <= last]
    series_order = rows.c.series_id.collate("C") if engine.dialect.name == "postgresql" else rows.c.series_id
    query = select(rows.c.series_id, _raw_timestamps(engine, rows), rows.c.value).where(*conditions)
    query = query.order_by(series_order, rows.c.ts)
    ids: list[pa.Array] = []
    times: list[np.ndarray] = []
    values: list[np.ndarray] = []
    with store_errors(engine.url), engine.connect() as conn:
        result = conn.execution_options(yield_per=READ_CHUNK_ROWS).execute(query)
        for chunk in result.partitions():  # columns per chunk: memory stays O(chunk) above the columns
            chunk_ids, chunk_ts, chunk_values = zip(*chunk, strict=True)
            ids.append(pa.array(chunk_ids, type=pa.string()))
            times.append(
                pd.to_datetime(chunk_ts, utc=True, format=_TS_FORMAT.get(engine.dialect.name)).as_unit("us").asi8
            )
            values.append(np.asarray(chunk_values, dtype=np.float64))
    if not ids:
        return pd.DataFrame(
            {
                "series_id": pd.Series(dtype=object),
                "ts": pd.Series(dtype="datetime64[us, UTC]"),
                "value": pd.Series(dtype=float),
            }
        )
    return pd.DataFrame(
        {
            "series_id": pd.array(pa.chunked_array(ids), dtype="str"),
            "ts": pd.DatetimeIndex(np.concatenate(times).view("M8[us]")).tz_localize("UTC"),
            "value": np.concatenate(values),
        }
    )


# How `read_observations` parses a chunk of timestamps read without `UTCDateTime`'s per-value processing: SQLite's
# stored text (naive UTC, "2024-01-01 00:00:00.000000") in one vectorised parse; PostgreSQL's timezone-aware datetimes
# as the driver returns them.
_TS_FORMAT = {"sqlite": "ISO8601"}


def _raw_timestamps(engine: Engine, rows: Any = observations) -> Any:
    """`rows.c.ts` (observations or a query of them) as the driver returns it (text on SQLite, aware datetimes on
    PostgreSQL), parsed per chunk by `read_observations` instead of value by value."""
    raw_type = Text() if engine.dialect.name == "sqlite" else DateTime(timezone=True)
    return type_coerce(rows.c.ts, raw_type).label("ts")


def list_series(engine: Engine) -> list[str]:
    """Every series id in the observations table, sorted."""
    with store_errors(engine.url), engine.connect() as conn:
        return [r[0] for r in conn.execute(select(observations.c.series_id).distinct().order_by("series_id"))]


def upsert_forecasts(engine: Engine, frame: pd.DataFrame) -> int:
    """Write forecasts in one transaction, replacing rows with the same key; returns rows written.

    The key is (series_id, origin_ts, target_ts, model_name, model_version): rerunning a forecast
    replaces its rows, never duplicates them, and a failure leaves no partial rows.
    """
    frame = frame.drop_duplicates(
        subset=["series_id", "origin_ts", "target_ts", "model_name", "model_version"], keep="last"
    )
    if "created_at" not in frame:  # one time for the whole write, not one per batch
        frame = frame.assign(created_at=pd.Timestamp.now(tz="UTC"))

    def work(conn: Connection) -> int:
        for start in range(0, len(frame), WRITE_BATCH_ROWS):  # Python rows for one batch at a time
            _upsert(conn, forecasts, forecast_rows(frame.iloc[start : start + WRITE_BATCH_ROWS]))
        return len(frame)

    return run_in_transaction(engine, work)


def forecast_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Plain Python rows for the forecasts table from a frame with FORECAST_COLUMNS."""
    n = len(frame)
    if n == 0:
        return []
    created = frame["created_at"] if "created_at" in frame else pd.Series([pd.Timestamp.now(tz="UTC")] * n)
    columns: dict[str, list[Any]] = {
        "series_id": frame["series_id"].astype(str).tolist(),
        "origin_ts": _to_datetimes(frame["origin_ts"]),
        "target_ts": _to_datetimes(frame["target_ts"]),
        "step": frame["step"].astype(int).tolist(),
        "point": frame["point"].astype(float).tolist(),
        "lower": _nullable_floats(frame.get("lower"), n),
        "upper": _nullable_floats(frame.get("upper"), n),
        "level": _nullable_floats(frame.get("level"), n),
        "method": _methods(frame.get("method"), n),
        "model_name": frame["model_name"].astype(str).tolist(),
        "model_version": frame["model_version"].astype(str).tolist(),
        "mlflow_run_id": frame["mlflow_run_id"].astype(str).tolist(),
        "flow_run_id": [None if pd.isna(v) else str(v) for v in frame.get("flow_run_id", [None] * n)],
        "created_at": _to_datetimes(pd.Series(created)),
    }
    names = list(columns)
    return [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def _methods(values: pd.Series | None, n: int) -> list[str]:
    """forecasts.method for each row; a frame without the column (written before it existed) gets DEFAULT_METHOD."""
    if values is None:
        return [DEFAULT_METHOD] * n
    if values.isna().any():
        raise ValueError("every forecast row needs a method (the network's cell or a baseline); some rows have none")
    return values.astype(str).tolist()


def _nullable_floats(values: pd.Series | None, n: int) -> list[float | None]:
    if values is None:
        return [None] * n
    return [None if pd.isna(v) else float(v) for v in values.tolist()]


def read_forecasts(
    engine: Engine,
    series_ids: Sequence[str] | None = None,
    origins: Sequence[pd.Timestamp] | None = None,
    model_name: str | None = None,
) -> pd.DataFrame:
    """Forecast rows sorted by series, origin and target; timestamps UTC-aware."""
    query = select(*[forecasts.c[name] for name in FORECAST_COLUMNS])
    if series_ids is not None:
        query = query.where(forecasts.c.series_id.in_(list(series_ids)))
    if origins is not None:
        query = query.where(forecasts.c.origin_ts.in_([pd.Timestamp(o).to_pydatetime() for o in origins]))
    if model_name is not None:
        query = query.where(forecasts.c.model_name == model_name)
    query = query.order_by(forecasts.c.series_id, forecasts.c.origin_ts, forecasts.c.target_ts)
    with store_errors(engine.url), engine.connect() as conn:
        rows = conn.execute(query).all()
    frame = pd.DataFrame(rows, columns=FORECAST_COLUMNS)
    for name in ("origin_ts", "target_ts", "created_at"):
        frame[name] = pd.to_datetime(frame[name], utc=True)
    return frame


def existing_forecast_origins(
    engine: Engine, model_name: str, model_version: str, series_ids: Sequence[str]
) -> set[tuple[str, pd.Timestamp]]:
    """(series_id, origin_ts) pairs already forecast by this model version; lets a backfill resume."""
    query = (
        select(forecasts.c.series_id, forecasts.c.origin_ts)
        .where(
            forecasts.c.model_name == model_name,
            forecasts.c.model_version == model_version,
            tuple_(forecasts.c.series_id).in_([(s,) for s in series_ids]),
        )
        .distinct()
    )
    with store_errors(engine.url), engine.connect() as conn:
        return {(s, pd.Timestamp(o)) for s, o in conn.execute(query).all()}


def is_connection_error(_task: Any, _run: Any, state: Any) -> bool:
    """Prefect retry condition: retry only when the database could not be reached (or dropped us), not on bad data
    or a schema problem, and not when a bounded wait ran out (a hung server, a held lock): the retries (1 + 5 + 15 s
    apart) would multiply the wait past what a scheduled run should take to fail."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    try:
        state.result()
    except StoreTimeoutError:
        return False
    except StoreUnavailableError:
        return True
    except (OperationalError, InterfaceError):
        return True
    except Exception:
        return False
    return False


@task(name="read-observations", retries=3, retry_delay_seconds=[1, 5, 15], retry_condition_fn=is_connection_error)
def read_observations_task(
    url: str,
    series_ids: list[str] | None = None,
    end: pd.Timestamp | dt.datetime | None = None,
    last: int | None = None,
) -> pd.DataFrame:
    """Observations with ts <= `end` (the as-of rule) for the training, forecast and backfill flows; with `last`,
    each series' last `last` of them only."""
    return read_observations(get_engine(url), series_ids=series_ids, end=end, last=last)


@task(name="upsert-forecasts", retries=3, retry_delay_seconds=[1, 5, 15], retry_condition_fn=is_connection_error)
def upsert_forecasts_task(url: str, frame: pd.DataFrame) -> int:
    """Write a run's forecasts in one transaction (retried whole if the database drops)."""
    return upsert_forecasts(get_engine(url), frame)
