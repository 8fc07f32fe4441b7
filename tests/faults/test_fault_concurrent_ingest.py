"""Concurrent `seqcast ingest` of the same rows into a fresh PostgreSQL database: the schema is created once, each
row counts as new in exactly one process and unchanged in the others, and updated_at is written by the one
transaction that inserted (or changed) a row, never rewritten by a writer that changed nothing.

Real processes, started together, on a database with no seqcast tables yet: the first start of each process
races to create them.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from faultkit import Command, clean_env
from sqlalchemy import create_engine, select, text

from flows.warm import command_argv
from tasks import store

pytestmark = [pytest.mark.faults, pytest.mark.integration]

WRITERS = 5
SERIES, LENGTH = 4, 1000  # 4,000 rows
COUNTS = re.compile(r": (\d+) new, (\d+) updated, (\d+) unchanged")
TIMEOUT = 300.0  # five processes importing pandas and Great Expectations at once on two busy cores


def _rows() -> pd.DataFrame:
    start = pd.Timestamp("2024-01-01", tz="UTC")
    return pd.DataFrame(
        {
            "series_id": np.repeat([f"meter-{i}" for i in range(SERIES)], LENGTH),
            "ts": np.tile(pd.date_range(start, periods=LENGTH, freq="h"), SERIES),
            "value": np.round(np.random.default_rng(0).normal(100, 10, SERIES * LENGTH), 3),
        }
    )


def _ingest_together(
    start_command: Callable[..., Command], path: Path, url: str, home: Path, writers: int
) -> list[tuple[int, int, int]]:
    """`writers` ingests of `path` started at once; (new, updated, unchanged) of each, in start order."""
    env = clean_env(home)
    argv = [*command_argv(), "ingest", "--source", str(path), "--series-col", "series_id", "--database-url", url]
    commands = [start_command(argv, env, name=f"ingest-{i}") for i in range(writers)]
    counts = []
    for command in commands:
        code = command.wait(TIMEOUT)
        output = command.output()
        assert code == 0, output[-3000:]
        found = COUNTS.search(output)
        assert found is not None, output[-3000:]
        counts.append((int(found[1]), int(found[2]), int(found[3])))
    return counts


def _updated_at(url: str) -> pd.DataFrame:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(store.observations.c.series_id, store.observations.c.ts, store.observations.c.updated_at)
            ).all()
    finally:
        engine.dispose()
    frame = pd.DataFrame(rows, columns=["series_id", "ts", "updated_at"])
    return frame.sort_values(["series_id", "ts"], ignore_index=True)


@pytest.mark.postgres
def test_concurrent_ingests_into_a_fresh_database_count_every_row_new_exactly_once(
    fresh_postgres: str, tmp_path: Path, start_command: Callable[..., Command]
) -> None:
    rows = _rows()
    path = tmp_path / "meters.csv"
    rows.to_csv(path, index=False)
    total = len(rows)

    first = _ingest_together(start_command, path, fresh_postgres, tmp_path / "home", WRITERS)
    assert sum(new for new, _, _ in first) == total, f"new counts {first} should add up to {total}"
    assert all(updated == 0 and new + unchanged == total for new, updated, unchanged in first), first

    engine = create_engine(fresh_postgres)
    try:
        with engine.connect() as conn:
            revisions = conn.execute(text(f"select version_num from {store.VERSION_TABLE}")).scalars().all()
            assert revisions == [store.head_revision()], "the schema was created more than once, or not at head"
            assert conn.execute(select(store.observations.c.series_id).distinct()).scalars().all()
    finally:
        engine.dispose()
    stamps = _updated_at(fresh_postgres)
    assert len(stamps) == total
    # Each transaction stamps the rows it inserts with its own time and touches no other row: the rows per
    # distinct updated_at are exactly the processes' new counts.
    assert sorted(Counter(stamps["updated_at"]).values()) == sorted(new for new, _, _ in first if new)

    # Writing the same rows again, and then three changed values, in this process (the same upsert).
    engine = store.get_engine(fresh_postgres)
    again = store.upsert_observations(engine, rows)
    assert (again.new, again.updated, again.unchanged) == (0, 0, total)
    pd.testing.assert_frame_equal(_updated_at(fresh_postgres), stamps)

    changed = rows.copy()
    changed.loc[[5, 1500, 3999], "value"] += 1.0
    result = store.upsert_observations(engine, changed)
    assert (result.new, result.updated, result.unchanged) == (0, 3, total - 3)
    moved = _updated_at(fresh_postgres)["updated_at"] != stamps["updated_at"]
    assert np.flatnonzero(moved.to_numpy()).tolist() == [5, 1500, 3999]


def test_concurrent_writers_of_a_fresh_sqlite_file_count_every_row_new_exactly_once(tmp_path: Path) -> None:
    """SQLite: writers wait for each other's write lock, and each reads what is stored after taking it."""
    url = f"sqlite:///{tmp_path / 'seqcast.db'}"
    engine = store.get_engine(url)
    rows = _rows()
    barrier = threading.Barrier(WRITERS)
    results: list[tuple[int, int, int]] = []
    errors: list[BaseException] = []

    def write() -> None:
        try:
            barrier.wait()
            summary = store.upsert_observations(engine, rows)
            results.append((summary.new, summary.updated, summary.unchanged))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    store.dispose_engines()
    assert errors == []
    assert sorted(results) == [(0, 0, len(rows))] * (WRITERS - 1) + [(len(rows), 0, 0)]
    assert sorted(Counter(_updated_at(url)["updated_at"]).values()) == [len(rows)]
