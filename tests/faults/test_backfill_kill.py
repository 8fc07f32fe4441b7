"""The backfill contract under SIGKILL (flows/backfill.py, README "Backfills"): a backfill killed mid-run leaves its
committed chunks as whole origins, and a rerun completes it with no duplicates and the forecasts of a run that was
never stopped.

Real `seqcast backfill` processes on PostgreSQL, with a small chunk (a few origins per transaction) so that the run
writes dozens of chunks; the test watches the table and kills the process once the first chunk is in.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from faultkit import Command, clean_env, python_seqcast_argv, wait_until
from forecast_setup import HORIZON, KEY, TRAINED, Registered, at, synthetic_frame
from sqlalchemy import create_engine, func, select

from tasks import store

pytestmark = [pytest.mark.faults, pytest.mark.postgres, pytest.mark.integration]

ORIGINS_PER_CHUNK = 3
FIRST, LAST = 100, 160  # hours after the start of the synthetic series: 61 origins per series
TIMEOUT = 300.0
VALUES = ["step", "point", "lower", "upper", "level", "method", "mlflow_run_id"]


def _count(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(store.forecasts)).scalar_one())
    finally:
        engine.dispose()


def _table(url: str) -> pd.DataFrame:
    rows = store.read_forecasts(store.get_engine(url))
    return rows.sort_values(KEY, ignore_index=True)


def test_a_killed_backfill_leaves_whole_origins_and_a_rerun_completes_it(
    fresh_postgres: str,
    model: Registered,
    mlflow_store: str,
    prefect_api: str,
    tmp_path: Path,
    start_command: Callable[..., Command],
) -> None:
    url = fresh_postgres
    store.upsert_observations(store.get_engine(url), synthetic_frame())
    pairs = (LAST - FIRST + 1) * len(TRAINED)  # (series, origin) pairs of the whole backfill
    env = clean_env(
        tmp_path / "home",
        {
            "SEQCAST_DATABASE_URL": url,
            "SEQCAST_MLFLOW_TRACKING_URI": mlflow_store,
            "SEQCAST_REGISTERED_MODEL": model.name,
            "PREFECT_API_URL": prefect_api,
        },
    )
    chunk_rows = ORIGINS_PER_CHUNK * HORIZON
    argv = [
        *python_seqcast_argv(f"import tasks.forecast\ntasks.forecast.BACKFILL_CHUNK_ROWS = {chunk_rows}"),
        "backfill",
        "--start",
        at(FIRST).isoformat(),
        "--end",
        at(LAST).isoformat(),
        "--every",
        "h",  # every hourly origin: the default is one a day
    ]

    killed = start_command(argv, env, name="killed")
    started = wait_until(lambda: _count(url) > 0 or killed.process.poll() is not None, timeout=TIMEOUT, interval=0.02)
    assert started and killed.process.poll() is None, f"no chunk was written:\n{killed.output()[-3000:]}"
    killed.process.send_signal(signal.SIGKILL)
    assert killed.process.wait(timeout=30) == -signal.SIGKILL

    partial = _table(url)
    assert 0 < len(partial) < pairs * HORIZON, "the kill came after the last chunk: nothing to complete"
    assert len(partial) % chunk_rows == 0, "a chunk was cut: the kill left part of a transaction"
    steps = partial.groupby(["series_id", "origin_ts"])["step"].agg(list)
    assert (steps.map(sorted) == steps.map(lambda _: list(range(1, HORIZON + 1)))).all(), "an origin is not whole"
    assert (partial["target_ts"] - partial["origin_ts"] == pd.to_timedelta(partial["step"], unit="h")).all()

    rerun = start_command(argv, env, name="rerun")
    assert rerun.wait(TIMEOUT) == 0, rerun.output()[-3000:]
    assert f"{len(partial) // HORIZON} already in forecasts" in rerun.output()
    completed = _table(url)
    assert len(completed) == pairs * HORIZON and not completed.duplicated(KEY).any()
    kept = completed.merge(partial[[*KEY, "flow_run_id"]], on=KEY, suffixes=("", "_killed"))
    assert (kept["flow_run_id"] == kept["flow_run_id_killed"]).all(), "the rerun rewrote rows the killed run wrote"

    with store.get_engine(url).begin() as conn:
        conn.execute(store.forecasts.delete())
    clean = start_command(argv, env, name="clean")
    assert clean.wait(TIMEOUT) == 0, clean.output()[-3000:]
    reference = _table(url)
    pd.testing.assert_frame_equal(completed[KEY + VALUES], reference[KEY + VALUES])
