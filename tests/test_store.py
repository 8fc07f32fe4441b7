"""Schema migrations on real SQLite and PostgreSQL: a database from before migrations keeps every row, a fresh one
runs every revision, both end at the tables of `tasks.store.metadata`, and a newer database is refused.

Each test gets an empty database of its own (a new SQLite file, or a new PostgreSQL database dropped afterwards):
the session's PostgreSQL database is already at head.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from servers import create_database, database_url, drop_database, require_postgres
from sqlalchemy import Column, Double, Index, Integer, MetaData, Table, Text, create_engine, inspect, text

from tasks import store

ROOT = Path(__file__).resolve().parents[1]
HOSTILE = "o'; drop table x;--"
T0 = dt.datetime(2024, 3, 31, 0, 0, tzinfo=dt.UTC)
CREATED = dt.datetime(2024, 4, 1, 12, 0, tzinfo=dt.UTC)


def v1_metadata() -> tuple[MetaData, Table, Table, Table]:
    """The tables exactly as seqcast defined them before migrations (schema version 1), created with create_all."""
    metadata = MetaData()
    schema = Table("seqcast_schema", metadata, Column("version", Integer, nullable=False))
    observations = Table(
        "observations",
        metadata,
        Column("series_id", Text, primary_key=True),
        Column("ts", store.UTCDateTime, primary_key=True),
        Column("value", Double, nullable=False),
        Column("updated_at", store.UTCDateTime, nullable=False),
    )
    forecasts = Table(
        "forecasts",
        metadata,
        Column("series_id", Text, primary_key=True),
        Column("origin_ts", store.UTCDateTime, primary_key=True),
        Column("target_ts", store.UTCDateTime, primary_key=True),
        Column("model_name", Text, primary_key=True),
        Column("model_version", Text, primary_key=True),
        Column("step", Integer, nullable=False),
        Column("point", Double, nullable=False),
        Column("lower", Double, nullable=True),
        Column("upper", Double, nullable=True),
        Column("mlflow_run_id", Text, nullable=False),
        Column("flow_run_id", Text, nullable=True),
        Column("created_at", store.UTCDateTime, nullable=False),
        Index("ix_forecasts_series_target", "series_id", "target_ts"),
    )
    return metadata, schema, observations, forecasts


OLD_OBSERVATIONS = [
    {"series_id": sid, "ts": T0 + dt.timedelta(hours=h), "value": float(10 * k + h), "updated_at": CREATED}
    for k, sid in enumerate(["a", HOSTILE])
    for h in range(3)
]
OLD_FORECASTS = [
    {
        "series_id": sid,
        "origin_ts": T0 + dt.timedelta(hours=2),
        "target_ts": T0 + dt.timedelta(hours=2 + step),
        "model_name": "seqcast",
        "model_version": "1",
        "step": step,
        "point": 1.5 * step + k,
        "lower": None,
        "upper": 9.0 if step == 1 else None,
        "mlflow_run_id": "run-1",
        "flow_run_id": None if k else "flow-1",
        "created_at": CREATED,
    }
    for k, sid in enumerate(["a", HOSTILE])
    for step in (1, 2)
]


def make_old_database(url: str) -> None:
    """A database as seqcast made it before migrations: the v1 tables, version 1, and a few rows."""
    metadata, schema, observations, forecasts = v1_metadata()
    engine = create_engine(url)
    with engine.begin() as conn:
        metadata.create_all(conn)
        conn.execute(schema.insert().values(version=1))
        conn.execute(observations.insert(), OLD_OBSERVATIONS)
        conn.execute(forecasts.insert(), OLD_FORECASTS)
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of this test's own: a new SQLite file, or a new PostgreSQL database (dropped after)."""

    store.dispose_engines()
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrate.db'}"
        store.dispose_engines()
        return
    require_postgres()
    name = create_database("seqcast_migrate")
    try:
        yield database_url(name, "postgresql+psycopg")
    finally:
        store.dispose_engines()
        drop_database(name)


def revisions(url: str) -> list[str]:
    """What the seqcast version table says (empty when there is none)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(store.VERSION_TABLE):
                return []
            return list(conn.execute(text(f"SELECT version_num FROM {store.VERSION_TABLE}")).scalars())
    finally:
        engine.dispose()


def legacy_version(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT version FROM seqcast_schema")).scalar_one())
    finally:
        engine.dispose()


def forecast_columns(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        return [c["name"] for c in inspect(engine).get_columns("forecasts")]
    finally:
        engine.dispose()


def schema_differences(url: str) -> list[Any]:
    """Alembic autogenerate's differences between the database and `store.metadata` (types and defaults too)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={"version_table": store.VERSION_TABLE, "compare_type": True, "compare_server_default": True},
            )
            return list(compare_metadata(context, store.metadata))
    finally:
        engine.dispose()


def assert_old_rows_intact(engine: Any) -> None:
    observations = store.read_observations(engine)
    expected = pd.DataFrame(OLD_OBSERVATIONS).sort_values(["series_id", "ts"], ignore_index=True)
    assert observations["series_id"].tolist() == expected["series_id"].tolist()
    assert list(observations["ts"]) == [pd.Timestamp(t) for t in expected["ts"]]
    assert observations["value"].tolist() == expected["value"].tolist()

    forecasts = store.read_forecasts(engine)
    assert list(forecasts.columns) == store.FORECAST_COLUMNS
    old = pd.DataFrame(OLD_FORECASTS).sort_values(["series_id", "origin_ts", "target_ts"], ignore_index=True)
    assert forecasts["series_id"].tolist() == old["series_id"].tolist()
    assert list(forecasts["target_ts"]) == [pd.Timestamp(t) for t in old["target_ts"]]
    assert forecasts["point"].tolist() == old["point"].tolist()
    assert forecasts["upper"].isna().tolist() == old["upper"].isna().tolist()
    assert forecasts["flow_run_id"].tolist() == old["flow_run_id"].tolist()
    assert (forecasts["created_at"] == pd.Timestamp(CREATED)).all()
    assert (forecasts["method"] == "network").all()  # every row from before the column was the network's


def test_database_from_before_migrations_is_stamped_and_migrated_keeping_every_row(empty_url: str) -> None:
    make_old_database(empty_url)
    assert revisions(empty_url) == [] and "method" not in forecast_columns(empty_url)

    engine = store.get_engine(empty_url)

    assert revisions(empty_url) == [store.head_revision()]
    assert legacy_version(empty_url) == 2  # a seqcast from before migrations now refuses this database
    assert_old_rows_intact(engine)
    assert schema_differences(empty_url) == []
    with engine.connect() as conn:  # the hostile id did nothing to the tables
        assert set(inspect(conn).get_table_names()) == {
            "observations",
            "forecasts",
            "forecast_scores",
            "seqcast_schema",
            store.VERSION_TABLE,
        }

    # the migrated table takes new rows with their method, and replaces old ones on the same key
    frame = store.read_forecasts(engine, series_ids=[HOSTILE]).assign(method="gru", point=0.5)
    assert store.upsert_forecasts(engine, frame) == 2
    again = store.read_forecasts(engine)
    assert len(again) == len(OLD_FORECASTS)
    assert again.loc[again["series_id"] == HOSTILE, "method"].tolist() == ["gru", "gru"]
    assert again.loc[again["series_id"] == "a", "method"].tolist() == ["network", "network"]


def test_fresh_database_runs_every_revision_and_matches_the_tables(empty_url: str) -> None:
    script = store.migration_script()
    assert script.get_base() == store.LEGACY_REVISION and script.get_heads() == [store.head_revision()]

    engine = store.get_engine(empty_url)

    assert revisions(empty_url) == [store.head_revision()]
    assert legacy_version(empty_url) == 2
    assert schema_differences(empty_url) == []
    assert store.read_forecasts(engine).empty and list(store.read_forecasts(engine).columns) == store.FORECAST_COLUMNS


def test_concurrent_first_starts_migrate_once_quietly_and_later_starts_do_nothing(
    empty_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_old_database(empty_url)
    code = (
        "import logging, sys; logging.basicConfig(level=logging.INFO); "
        "from tasks import store; store.get_engine(sys.argv[1])"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, empty_url], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    lines = [line for out, err in outputs for line in (out + err).splitlines()]
    migrated = [line for line in lines if "migrating" in line]
    assert len(migrated) == 1, lines
    assert "from revision 0001 (made before migrations) to revision" in migrated[0]
    assert not [line for line in lines if "alembic" in line.lower()], lines  # Alembic's own INFO lines stay quiet
    assert revisions(empty_url) == [store.head_revision()]

    from alembic import command

    def no_migration(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("a database at head was migrated again")

    monkeypatch.setattr(command, "upgrade", no_migration)
    monkeypatch.setattr(command, "stamp", no_migration)
    for _ in range(2):
        store.ensure_schema(store.get_engine(empty_url))
        store.dispose_engines()
    assert revisions(empty_url) == [store.head_revision()]
    assert_old_rows_intact(store.get_engine(empty_url))


def test_a_start_waits_for_the_migration_another_process_is_running(empty_url: str) -> None:
    """The migration lock, deterministically: a start that finds the lock held waits, then finds the tables at head."""
    from alembic import command
    from sqlalchemy import event

    other = create_engine(empty_url)  # another process, migrating
    if other.dialect.name == "sqlite":
        event.listen(other, "connect", store._sqlite_pragmas)
    started: list[Any] = []
    with other.begin() as conn:
        store._lock_for_migration(conn)
        config = store.alembic_config(conn)
        waiting = threading.Thread(target=lambda: started.append(_start(empty_url)), daemon=True)
        waiting.start()
        waiting.join(1.5)
        assert waiting.is_alive()  # blocked on the lock, not creating tables beside us
        command.upgrade(config, "head")
    waiting.join(60)
    other.dispose()
    assert started == ["ok"]
    assert revisions(empty_url) == [store.head_revision()]


def _start(url: str) -> str:
    try:
        store.get_engine(url)
    except Exception as exc:
        return repr(exc)
    return "ok"


@pytest.mark.parametrize("old", [True, False], ids=["old", "fresh"])
def test_a_failed_migration_leaves_the_database_as_it_was(
    empty_url: str, old: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from alembic import command

    if old:
        make_old_database(empty_url)
    real_upgrade = command.upgrade

    def upgrade_then_fail(*args: Any, **kwargs: Any) -> None:
        real_upgrade(*args, **kwargs)
        raise RuntimeError("killed after the DDL, before the commit")

    monkeypatch.setattr(command, "upgrade", upgrade_then_fail)
    with pytest.raises(RuntimeError, match="killed after the DDL"):
        store.get_engine(empty_url)
    engine = create_engine(empty_url)
    with engine.connect() as conn:  # rolled back, DDL included (SQLite too)
        assert set(inspect(conn).get_table_names()) == (
            {"observations", "forecasts", "seqcast_schema"} if old else set()
        )
    engine.dispose()
    if old:
        assert "method" not in forecast_columns(empty_url) and legacy_version(empty_url) == 1

    monkeypatch.setattr(command, "upgrade", real_upgrade)
    engine = store.get_engine(empty_url)
    assert revisions(empty_url) == [store.head_revision()]
    if old:
        assert_old_rows_intact(engine)


def test_downgrade_to_before_migrations_and_back_keeps_the_rows(empty_url: str) -> None:
    from alembic import command

    make_old_database(empty_url)
    engine = store.get_engine(empty_url)
    with engine.begin() as conn:
        command.downgrade(store.alembic_config(conn), store.LEGACY_REVISION)
    assert revisions(empty_url) == [store.LEGACY_REVISION] and "method" not in forecast_columns(empty_url)
    assert legacy_version(empty_url) == 1

    store.dispose_engines()
    assert_old_rows_intact(store.get_engine(empty_url))
    assert revisions(empty_url) == [store.head_revision()]
    assert schema_differences(empty_url) == []  # SQLite rebuilt the table: its index came back too


def test_database_from_a_newer_seqcast_is_refused(empty_url: str) -> None:
    store.get_engine(empty_url)
    store.dispose_engines()
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {store.VERSION_TABLE} SET version_num = '0099'"))
    engine.dispose()

    with pytest.raises(store.SchemaVersionError, match=r"revision '0099' is newer than this seqcast .*upgrade seqcast"):
        store.get_engine(empty_url)
    assert revisions(empty_url) == ["0099"]  # left alone


def test_pre_migration_database_with_a_newer_version_is_refused(empty_url: str) -> None:
    make_old_database(empty_url)
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE seqcast_schema SET version = 7"))
    engine.dispose()

    with pytest.raises(store.SchemaVersionError, match="schema version 7 is newer than this seqcast"):
        store.get_engine(empty_url)
    assert revisions(empty_url) == []


# --- the method column on the write path ----------------------------------------------------------------------


def test_forecast_rows_write_the_method_and_refuse_a_missing_one() -> None:
    frame = pd.DataFrame(OLD_FORECASTS).assign(method=["lstm", "naive", "lstm", "naive"])
    assert [r["method"] for r in store.forecast_rows(frame)] == ["lstm", "naive", "lstm", "naive"]
    assert {r["method"] for r in store.forecast_rows(frame.drop(columns="method"))} == {store.DEFAULT_METHOD}
    with pytest.raises(ValueError, match="needs a method"):
        store.forecast_rows(frame.assign(method=[None, "naive", "lstm", "naive"]))


def test_a_sqlite_engine_starting_while_another_process_writes_waits_for_it(tmp_path: Path) -> None:
    """Switching a database to WAL fails at once, without SQLite's busy wait, while another connection writes
    (two first starts on an old database: one migrating, the other connecting); the engine waits instead."""
    import sqlite3

    path = tmp_path / "busy.db"
    plain = sqlite3.connect(path)
    plain.execute("create table t (a integer)")
    plain.commit()
    plain.close()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("insert into t values (1)")
    release = threading.Timer(1.5, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        started = time.monotonic()
        engine = store.get_engine(f"sqlite:///{path}")
        waited = time.monotonic() - started
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert waited >= 1.0  # it waited for the writer instead of failing with "database is locked"
    finally:
        release.join()
        holder.close()
        store.dispose_engines()


def test_reading_the_last_observations_equals_the_tail_of_a_full_read(empty_url: str) -> None:
    """What a forecast reads (`last`): each series' last n rows at or before `end`, as the full read's tail, in the
    same order and types; series shorter than n come whole."""
    engine = store.get_engine(empty_url)
    rng = np.random.default_rng(3)
    frames = [
        pd.DataFrame(
            {
                "series_id": sid,
                "ts": pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC"),
                "value": rng.normal(size=n),
            }
        )
        for sid, n in (("b", 30), ("a", 12), ("Z", 4))
    ]
    store.upsert_observations(engine, pd.concat(frames, ignore_index=True))
    end = pd.Timestamp("2024-01-01 20:00", tz="UTC")
    full = store.read_observations(engine, end=end)
    expected = full.groupby("series_id", sort=False).tail(10).reset_index(drop=True)
    got = store.read_observations(engine, end=end, last=10)
    pd.testing.assert_frame_equal(got, expected)
    assert got.groupby("series_id", sort=False).size().to_dict() == {"Z": 4, "a": 10, "b": 10}
    assert got["ts"].max() == end  # the as-of cut comes before the last rows are chosen
    only_a = store.read_observations(engine, series_ids=["a"], last=3)
    assert only_a["value"].tolist() == frames[1]["value"].tolist()[-3:]
    with pytest.raises(ValueError, match="`last` \\(0\\) must be at least 1"):
        store.read_observations(engine, last=0)


def test_sqlite_observation_writes_store_the_text_sqlalchemy_would(tmp_path: Path) -> None:
    """The SQLite write formats timestamps itself (one call per batch): the stored text must be exactly what the
    table's `UTCDateTime` column writes, or later upserts and range queries would miss the rows."""
    import datetime as dt
    import sqlite3

    engine = store.get_engine(f"sqlite:///{tmp_path / 'text.db'}")
    ts = pd.to_datetime(
        ["0999-03-04 05:06:07.000001+00:00", "2024-01-01 00:00:00+02:00", "2024-06-30 23:59:59.999999+00:00"],
        utc=True,
        format="ISO8601",
    )
    frame = pd.DataFrame({"series_id": ["a", "a", "b"], "ts": ts, "value": [1.0, 2.0, 3.0]})
    store.upsert_observations(engine, frame)
    reference = MetaData()
    mirror = Table("mirror", reference, *(Column(c.name, c.type) for c in store.observations.columns))
    reference.create_all(engine)
    now = dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
    with engine.begin() as conn:
        conn.execute(mirror.insert(), store._observation_rows(frame, now))
    with sqlite3.connect(tmp_path / "text.db") as raw:
        ours = raw.execute("SELECT series_id, ts FROM observations ORDER BY series_id, ts").fetchall()
        theirs = raw.execute("SELECT series_id, ts FROM mirror ORDER BY series_id, ts").fetchall()
    assert ours == theirs
    assert ours[0] == ("a", "0999-03-04 05:06:07.000001") and ("a", "2023-12-31 22:00:00.000000") in ours
    assert store._sqlite_timestamps(pd.DatetimeIndex([now])) == ["2026-01-02 03:04:05.000006"]
    again = store.upsert_observations(engine, frame)  # the stored keys match: nothing new
    assert (again.new, again.updated, again.unchanged) == (0, 0, 3)
