"""A forecast run is one transaction: `seqcast forecast` killed with SIGKILL in the middle of its write leaves the
forecasts table exactly as it was (PostgreSQL).

To kill it mid-transaction for certain, the test holds a row lock (SELECT ... FOR UPDATE) on the last row the
run will rewrite: the run's upsert has already written the rows before it, inside its transaction, and waits.
The test sees that wait in pg_stat_activity, kills the process, releases the lock, and compares the table.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from faultkit import Command, clean_env, wait_until
from forecast_setup import KEY, Registered, at, synthetic_frame
from sqlalchemy import create_engine, select, text, tuple_
from sqlalchemy.engine import make_url

from flows.warm import command_argv
from tasks import store

pytestmark = [pytest.mark.faults, pytest.mark.postgres, pytest.mark.integration]

TIMEOUT = 300.0


def _table(url: str) -> pd.DataFrame:
    return store.read_forecasts(store.get_engine(url)).sort_values(KEY, ignore_index=True)


def _blocked_writers(url: str) -> int:
    """Sessions of `url`'s database waiting for a lock in an INSERT INTO forecasts."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "select count(*) from pg_stat_activity where datname = :db and wait_event_type = 'Lock' "
                        "and query ilike 'insert into forecasts%'"
                    ),
                    {"db": make_url(url).database},
                ).scalar_one()
            )
    finally:
        engine.dispose()


def test_sigkill_in_the_middle_of_the_write_leaves_the_table_as_before(
    fresh_postgres: str,
    model: Registered,
    mlflow_store: str,
    prefect_api: str,
    tmp_path: Path,
    start_command: Callable[..., Command],
) -> None:
    url = fresh_postgres
    store.upsert_observations(store.get_engine(url), synthetic_frame())
    env = clean_env(
        tmp_path / "home",
        {
            "SEQCAST_DATABASE_URL": url,
            "SEQCAST_MLFLOW_TRACKING_URI": mlflow_store,
            "SEQCAST_REGISTERED_MODEL": model.name,
            "PREFECT_API_URL": prefect_api,
        },
    )
    argv = [*command_argv(), "forecast", "--as-of", at(200).isoformat()]
    first = start_command(argv, env, name="first")
    assert first.wait(TIMEOUT) == 0, first.output()[-3000:]
    before = _table(url)
    assert len(before) > 0

    last = before.iloc[-1]
    locker = create_engine(url)
    with locker.connect() as conn:
        transaction = conn.begin()
        key = tuple_(*[store.forecasts.c[k] for k in KEY])
        values = tuple(last[k].to_pydatetime() if isinstance(last[k], pd.Timestamp) else last[k] for k in KEY)
        conn.execute(select(store.forecasts.c.series_id).where(key == values).with_for_update())

        second = start_command(argv, env, name="second")
        blocked = wait_until(
            lambda: _blocked_writers(url) > 0 or second.process.poll() is not None, timeout=TIMEOUT, interval=0.1
        )
        assert blocked and second.process.poll() is None, f"the run never waited on the lock:\n{second.output()}"
        second.process.send_signal(signal.SIGKILL)
        assert second.process.wait(timeout=30) == -signal.SIGKILL
        transaction.rollback()  # the killed run's statement goes on, then finds its client gone: rolled back
    locker.dispose()

    assert wait_until(lambda: _blocked_writers(url) == 0, timeout=30)
    store.dispose_engines()
    pd.testing.assert_frame_equal(_table(url), before)
