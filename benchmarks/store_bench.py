"""Forecast writes: `upsert_forecasts` against a plain bulk insert of the same rows, on SQLite and PostgreSQL.

The bulk insert is the store's limit: SQLAlchemy Core `insert(forecasts)` executemany, no conflict clause, one
transaction, rows converted from the same frame with the cheapest conversion we know (column-wise `.tolist()` and
`Timestamp.to_pydatetime()` on whole columns). Both go through the same table, so the same bind processors
(`UTCDateTime`) run on both. Timings are best of `repeats`, each into an emptied table.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def forecast_frame(n_series: int, n_origins: int, horizon: int, seed: int = 0) -> pd.DataFrame:
    """A forecasts frame shaped like the forecast flow's output (FORECAST_COLUMNS)."""
    rng = np.random.default_rng(seed)
    origins = pd.date_range("2024-01-01", periods=n_origins, freq="D")  # naive here, UTC below
    series = np.array([f"series_{k:05d}" for k in range(n_series)], dtype=object)
    s = np.repeat(series, n_origins * horizon)
    origin = np.tile(np.repeat(origins.to_numpy(), horizon), n_series)
    step = np.tile(np.arange(1, horizon + 1), n_series * n_origins)
    target = origin + (step * np.timedelta64(1, "h"))
    point = rng.normal(100, 10, len(s))
    return pd.DataFrame(
        {
            "series_id": s,
            "origin_ts": pd.to_datetime(origin, utc=True),
            "target_ts": pd.to_datetime(target, utc=True),
            "step": step,
            "point": point,
            "lower": point - 5,
            "upper": point + 5,
            "model_name": "seqcast-lstm",
            "model_version": "3",
            "mlflow_run_id": uuid.uuid4().hex,
            "flow_run_id": str(uuid.uuid4()),
            "created_at": pd.Timestamp("2024-06-01", tz="UTC"),
        }
    )


def fast_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The same rows as `tasks.store.forecast_rows`, built column-wise with no per-value Python conversion
    except the one dict per row that executemany needs."""
    n = len(frame)

    def datetimes(col: str) -> list[dt.datetime]:
        return list(pd.DatetimeIndex(frame[col]).tz_convert("UTC").to_pydatetime())

    def nullable(col: str) -> list[Any]:
        values = frame[col].to_numpy(dtype=np.float64)
        out: list[Any] = values.tolist()
        if np.isnan(values).any():
            out = [None if v != v else v for v in out]
        return out

    columns: dict[str, list[Any]] = {
        "series_id": frame["series_id"].astype(str).tolist(),
        "origin_ts": datetimes("origin_ts"),
        "target_ts": datetimes("target_ts"),
        "step": frame["step"].to_numpy(dtype=np.int64).tolist(),
        "point": frame["point"].to_numpy(dtype=np.float64).tolist(),
        "lower": nullable("lower"),
        "upper": nullable("upper"),
        "model_name": frame["model_name"].astype(str).tolist(),
        "model_version": frame["model_version"].astype(str).tolist(),
        "mlflow_run_id": frame["mlflow_run_id"].astype(str).tolist(),
        "flow_run_id": frame["flow_run_id"].astype(str).tolist(),
        "created_at": datetimes("created_at") if "created_at" in frame else [dt.datetime.now(dt.UTC)] * n,
    }
    names = list(columns)
    return [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def _best(fn: Callable[[], Any], before: Callable[[], None], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        before()
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_backend(url: str, frame: pd.DataFrame, repeats: int) -> dict[str, Any]:
    from tasks import store

    engine = store.get_engine(url)
    n = len(frame)

    def empty() -> None:
        with engine.begin() as conn:
            conn.execute(store.forecasts.delete())

    def nothing() -> None:
        return None

    def bulk_insert(rows: list[dict[str, Any]]) -> None:
        with engine.begin() as conn:
            for start in range(0, len(rows), 5000):  # the same 5,000-row batches `_upsert` uses
                conn.execute(store.forecasts.insert(), rows[start : start + 5000])

    upsert_s = _best(lambda: store.upsert_forecasts(engine, frame), empty, repeats)
    replace_s = _best(lambda: store.upsert_forecasts(engine, frame), nothing, repeats)  # table already full
    bulk_s = _best(lambda: bulk_insert(fast_rows(frame)), empty, repeats)
    rows = fast_rows(frame)
    bulk_exec_s = _best(lambda: bulk_insert(rows), empty, repeats)
    convert_s = _best(lambda: store.forecast_rows(frame), nothing, repeats)
    fast_convert_s = _best(lambda: fast_rows(frame), nothing, repeats)
    rows_seqcast = store.forecast_rows(frame)
    upsert_exec_s = _best(lambda: _upsert_only(engine, rows_seqcast), empty, repeats)
    empty()
    engine.dispose()
    return {
        "rows": n,
        "upsert_rows_per_s": round(n / upsert_s),
        "upsert_replace_rows_per_s": round(n / replace_s),
        "bulk_insert_rows_per_s": round(n / bulk_s),
        "bulk_insert_execute_only_rows_per_s": round(n / bulk_exec_s),
        "ratio_upsert_vs_bulk": round(bulk_s / upsert_s, 3),
        "ratio_replace_vs_bulk": round(bulk_s / replace_s, 3),
        "breakdown_s": {
            "upsert_forecasts_total": round(upsert_s, 3),
            "forecast_rows_conversion": round(convert_s, 3),
            "upsert_execute_only": round(upsert_exec_s, 3),
            "bulk_total": round(bulk_s, 3),
            "fast_rows_conversion": round(fast_convert_s, 3),
            "bulk_execute_only": round(bulk_exec_s, 3),
        },
    }


def _upsert_only(engine: Any, rows: list[dict[str, Any]]) -> None:
    from tasks import store

    with engine.begin() as conn:
        store._upsert(conn, store.forecasts, rows)


def postgres_database(admin_url: str) -> tuple[str | None, str, Callable[[], None]]:
    """A fresh database on the server at `admin_url`: (url or None, note, drop)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"seqcast_bench_{uuid.uuid4().hex[:10]}"
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # no server: skip with the reason
        return None, f"PostgreSQL not reachable at {admin_url}: {exc.__class__.__name__}", lambda: None

    def drop() -> None:
        from tasks.store import dispose_engines

        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), "", drop


def run_store_bench(tmp_dir: str, n_series: int, n_origins: int, horizon: int, repeats: int, pg_url: str) -> dict:
    frame = forecast_frame(n_series, n_origins, horizon)
    out: dict[str, Any] = {
        "rows": len(frame),
        "shape": f"{n_series} series x {n_origins} origins x {horizon} steps",
        "repeats": repeats,
        "target": ">= 0.8 x bulk insert rows/s",
    }
    out["sqlite"] = bench_backend(f"sqlite:///{tmp_dir}/bench.db", frame, repeats)
    url, note, drop = postgres_database(pg_url)
    if url is None:
        out["postgresql"] = {"skipped": note}
    else:
        try:
            out["postgresql"] = bench_backend(url, frame, repeats)
        finally:
            drop()
    return out
