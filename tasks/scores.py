"""Scoring: every forecast row joined with its actual once the actual has arrived, upserted into `forecast_scores`.

One job: `score_forecasts` reads the forecasts of one registered model whose target has an observation (one SQL join
of `forecasts` with `observations`, left-joined with the scores already stored), computes the errors of all of them
at once, and writes the rows that are new or whose figures changed, in one transaction:

- a rerun over the same data writes nothing and reports 0 changed (unchanged rows are not rewritten, so their
  `updated_at` stays);
- an observation that arrives late adds its row the next time;
- a corrected observation (or a rewritten forecast) updates its row's actual, errors and `inside`, and `updated_at`;
  `scored_at` keeps the time the row was first scored.

`scaled_error` is the absolute error over the series' MASE scale, taken from the model version's reference (what the
model promised at evaluation, `models.reference.ModelReference`); a version saved without one gets NULL there.
`inside` is NULL for a row without bounds (no interval: no coverage).

Writers of the same model's scores take turns (SQLite's write lock, a PostgreSQL advisory lock on the model name), so
the counts are exact when two monitors run at once and the table ends the same.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import and_, select, text

from tasks import store

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.engine import Connection

KEY = ["series_id", "origin_ts", "target_ts", "model_name", "model_version"]
SCORE_COLUMNS = [
    *KEY,
    "step",
    "point",
    "actual",
    "abs_error",
    "scaled_error",
    "inside",
    "lower",
    "upper",
    "level",
    "method",
    "scored_at",
    "updated_at",
]
# What a stored score is compared on: when any of these differs, the row is rewritten.
_COMPARED = ["step", "point", "actual", "scaled_error", "lower", "upper", "level", "method"]
_LOCK_NAMESPACE = 0x5C0E  # PostgreSQL advisory lock (namespace, model name hash): one scorer per model at a time

# MASE scales of each model version's series: {version: {series_id: scale}}; a version without a reference is absent.
Scales = Mapping[str, Mapping[str, float]]


@dataclass(frozen=True)
class ScoreWriteSummary:
    """What one scoring transaction did: rows scored for the first time, rows whose figures changed, rows as before."""

    new: int
    updated: int
    unchanged: int

    @property
    def changed(self) -> int:
        return self.new + self.updated


def score_rows(frame: pd.DataFrame, scales: Scales) -> pd.DataFrame:
    """The figures of each forecast row with its actual, vectorised.

    `frame` has the forecast's columns (KEY, step, point, lower, upper, level, method) and `actual`; adds
    `abs_error`, `scaled_error` (NaN where the version has no reference, the series no scale, or the scale is not
    positive) and `inside` (an object column of True/False, None without both bounds).
    """
    out = frame.copy()
    actual = out["actual"].to_numpy(dtype=np.float64)
    abs_error = np.abs(out["point"].to_numpy(dtype=np.float64) - actual)
    keys = pd.MultiIndex.from_arrays([out["model_version"].astype(str), out["series_id"].astype(str)])
    table = pd.Series(
        {(str(v), str(s)): float(scale) for v, by_series in scales.items() for s, scale in by_series.items()},
        dtype=np.float64,
    )
    scale = table.reindex(keys).to_numpy(dtype=np.float64) if len(table) else np.full(len(out), np.nan)
    usable = np.isfinite(scale) & (scale > 0)
    out["abs_error"] = abs_error
    out["scaled_error"] = np.where(usable, abs_error / np.where(usable, scale, 1.0), np.nan)
    lower = pd.to_numeric(out["lower"], errors="coerce").to_numpy(dtype=np.float64)
    upper = pd.to_numeric(out["upper"], errors="coerce").to_numpy(dtype=np.float64)
    bounded = np.isfinite(lower) & np.isfinite(upper)
    inside = (actual >= lower) & (actual <= upper)
    out["inside"] = pd.Series(inside, index=out.index).astype(object).where(bounded, None)
    return out


def score_forecasts(
    engine: Engine,
    model_name: str,
    scales: Scales,
    as_of: pd.Timestamp | dt.datetime,
    since: pd.Timestamp | dt.datetime | None = None,
    versions: Sequence[str] | None = None,
    series_ids: Sequence[str] | None = None,
) -> ScoreWriteSummary:
    """Score the forecasts of `model_name` (its `versions`, default all) with origin >= `since` whose target has an
    observation at or before `as_of`; write new and changed scores in one transaction and say what was done."""
    as_of_dt = pd.Timestamp(as_of).to_pydatetime()
    since_dt = None if since is None else pd.Timestamp(since).to_pydatetime()

    def work(conn: Connection) -> ScoreWriteSummary:
        _lock_scores(conn, model_name)
        joined = _read_joined(conn, model_name, as_of_dt, since_dt, versions, series_ids)
        if joined.empty:
            return ScoreWriteSummary(0, 0, 0)
        scored = score_rows(joined, scales)
        is_new = scored["old_scored_at"].isna().to_numpy()
        differs = np.zeros(len(scored), dtype=bool)
        for name in _COMPARED:
            differs |= ~_same(scored[name], scored[f"old_{name}"])
        is_changed = ~is_new & differs
        to_write = scored.loc[is_new | is_changed]
        now = dt.datetime.now(dt.UTC)
        _upsert_scores(conn, to_write, now)
        return ScoreWriteSummary(int(is_new.sum()), int(is_changed.sum()), int((~is_new & ~differs).sum()))

    return store.run_in_transaction(engine, work)


def _lock_scores(conn: Connection, model_name: str) -> None:
    """First statement of the transaction: wait for any other scorer of this model (see the module docstring)."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # pysqlite would begin only at the first write, after our read
    elif conn.dialect.name == "postgresql":
        key = zlib.crc32(model_name.encode("utf-8")) - 2**31  # a signed int4, stable across processes
        conn.execute(
            text("SELECT pg_advisory_xact_lock(CAST(:ns AS integer), CAST(:key AS integer))"),
            {"ns": _LOCK_NAMESPACE, "key": key},
        )


def _read_joined(
    conn: Connection,
    model_name: str,
    as_of: dt.datetime,
    since: dt.datetime | None,
    versions: Sequence[str] | None,
    series_ids: Sequence[str] | None,
) -> pd.DataFrame:
    """Forecast rows with their actual (`actual`) and the stored score's figures (`old_*`, NULL when unscored)."""
    f, o, s = store.forecasts, store.observations, store.forecast_scores
    forecast_columns = [f.c[name] for name in (*KEY, "step", "point", "lower", "upper", "level", "method")]
    old_columns = [s.c[name].label(f"old_{name}") for name in (*_COMPARED, "scored_at")]
    query = (
        select(*forecast_columns, o.c.value.label("actual"), *old_columns)
        .join(o, and_(o.c.series_id == f.c.series_id, o.c.ts == f.c.target_ts))
        .outerjoin(s, and_(*[s.c[name] == f.c[name] for name in KEY]))
        .where(f.c.model_name == model_name, o.c.ts <= as_of)
    )
    if since is not None:
        query = query.where(f.c.origin_ts >= since)
    if versions is not None:
        query = query.where(f.c.model_version.in_([str(v) for v in versions]))
    if series_ids is not None:
        query = query.where(f.c.series_id.in_([str(v) for v in series_ids]))
    rows = conn.execute(query).all()
    names = [*KEY, "step", "point", "lower", "upper", "level", "method", "actual", *[c.name for c in old_columns]]
    frame = pd.DataFrame(rows, columns=names)
    for name in ("origin_ts", "target_ts", "old_scored_at"):
        frame[name] = pd.to_datetime(frame[name], utc=True)
    for name in ("point", "lower", "upper", "level", "actual", "old_point", "old_actual", "old_scaled_error"):
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype(np.float64)
    for name in ("old_lower", "old_upper", "old_level"):
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype(np.float64)
    return frame


def _same(new: pd.Series, old: pd.Series) -> np.ndarray:
    """Element-wise equality where two missing values are equal (NULL bounds stay NULL)."""
    both_missing = new.isna().to_numpy() & old.isna().to_numpy()
    equal = (new.to_numpy(dtype=object) == old.to_numpy(dtype=object)) & ~old.isna().to_numpy()
    return np.asarray(both_missing | equal, dtype=bool)


def _upsert_scores(conn: Connection, frame: pd.DataFrame, now: dt.datetime) -> None:
    """New rows get `scored_at` = `updated_at` = now; changed rows keep their `scored_at`."""
    n = len(frame)
    if n == 0:
        return
    first_scored = frame["old_scored_at"]
    scored_at = first_scored.where(first_scored.notna(), pd.Timestamp(now))
    columns: dict[str, list[Any]] = {
        "series_id": frame["series_id"].astype(str).tolist(),
        "origin_ts": store._to_datetimes(frame["origin_ts"]),
        "target_ts": store._to_datetimes(frame["target_ts"]),
        "model_name": frame["model_name"].astype(str).tolist(),
        "model_version": frame["model_version"].astype(str).tolist(),
        "step": frame["step"].astype(int).tolist(),
        "point": frame["point"].astype(float).tolist(),
        "actual": frame["actual"].astype(float).tolist(),
        "abs_error": frame["abs_error"].astype(float).tolist(),
        "scaled_error": _nullable(frame["scaled_error"]),
        "inside": [None if v is None else bool(v) for v in frame["inside"].tolist()],
        "lower": _nullable(frame["lower"]),
        "upper": _nullable(frame["upper"]),
        "level": _nullable(frame["level"]),
        "method": frame["method"].astype(str).tolist(),
        "scored_at": store._to_datetimes(pd.Series(scored_at)),
        "updated_at": [now] * n,
    }
    names = list(columns)
    rows = [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]
    store._upsert(conn, store.forecast_scores, rows)


def _nullable(values: pd.Series) -> list[float | None]:
    array = values.to_numpy(dtype=np.float64)
    return [None if np.isnan(v) else float(v) for v in array.tolist()]


# --- reading ----------------------------------------------------------------------------------------------------


def read_scores(
    engine: Engine,
    model_name: str,
    versions: Sequence[str] | None = None,
    start: pd.Timestamp | dt.datetime | None = None,
    end: pd.Timestamp | dt.datetime | None = None,
    series_ids: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Stored scores of `model_name` with origin in [`start`, `end`] (either open), sorted by version, series,
    origin and target; timestamps UTC-aware, `inside` an object column of True/False/None."""
    s = store.forecast_scores
    query = select(*[s.c[name] for name in SCORE_COLUMNS]).where(s.c.model_name == model_name)
    if versions is not None:
        query = query.where(s.c.model_version.in_([str(v) for v in versions]))
    if start is not None:
        query = query.where(s.c.origin_ts >= pd.Timestamp(start).to_pydatetime())
    if end is not None:
        query = query.where(s.c.origin_ts <= pd.Timestamp(end).to_pydatetime())
    if series_ids is not None:
        query = query.where(s.c.series_id.in_([str(v) for v in series_ids]))
    query = query.order_by(s.c.model_version, s.c.series_id, s.c.origin_ts, s.c.target_ts)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    frame = pd.DataFrame(rows, columns=SCORE_COLUMNS)
    for name in ("origin_ts", "target_ts", "scored_at", "updated_at"):
        frame[name] = pd.to_datetime(frame[name], utc=True)
    for name in ("point", "actual", "abs_error", "scaled_error", "lower", "upper", "level"):
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype(np.float64)
    frame["inside"] = pd.Series([None if v is None else bool(v) for v in frame["inside"].tolist()], dtype=object)
    frame["step"] = frame["step"].astype(np.int64)
    return frame


def forecast_versions(
    engine: Engine,
    model_name: str,
    start: pd.Timestamp | dt.datetime,
    end: pd.Timestamp | dt.datetime,
    version: str | None = None,
) -> list[str]:
    """The versions of `model_name` with forecasts whose origin is in [`start`, `end`] (numbers in numeric order)."""
    f = store.forecasts
    query = (
        select(f.c.model_version)
        .where(
            f.c.model_name == model_name,
            f.c.origin_ts >= pd.Timestamp(start).to_pydatetime(),
            f.c.origin_ts <= pd.Timestamp(end).to_pydatetime(),
        )
        .distinct()
    )
    if version is not None:
        query = query.where(f.c.model_version == str(version))
    with engine.connect() as conn:
        found = [str(v) for (v,) in conn.execute(query).all()]
    return sorted(found, key=lambda v: (0, int(v), v) if v.isdigit() else (1, 0, v))


@dataclass(frozen=True)
class RealisedAccuracy:
    """How forecast rows did where their actuals have arrived: how many, their MAE, and the share of actuals inside
    the interval among the rows that have one (None without such rows)."""

    rows: int
    mae: float | None
    bounded: int
    coverage: float | None
    level: float | None

    def describe(self) -> str:
        """One line for a summary: "12 rows have actuals: MAE 31.2, 11 of 12 inside the 90% intervals (0.917)"."""
        if self.rows == 0:
            return "no actuals yet for these forecasts"
        text = f"{self.rows} rows have actuals: MAE {self.mae:.4g}"
        if self.coverage is not None:
            level = f"{self.level:.0%} " if self.level is not None else ""
            inside = round(self.coverage * self.bounded)
            text += f", {inside} of {self.bounded} inside the {level}intervals ({self.coverage:.3f})"
        return text


def realised_accuracy(
    engine: Engine,
    model_name: str,
    model_version: str,
    origins: tuple[pd.Timestamp, pd.Timestamp] | None = None,
    flow_run_id: str | None = None,
) -> RealisedAccuracy:
    """MAE and interval coverage of one version's forecast rows (those a flow run wrote, or with origins in a
    range) whose actual has arrived: one aggregate query, nothing written (the monitor keeps the scores)."""
    from sqlalchemy import case, func

    f, o = store.forecasts, store.observations
    bounded = and_(f.c.lower.is_not(None), f.c.upper.is_not(None))
    query = (
        select(
            func.count(),
            func.avg(func.abs(o.c.value - f.c.point)),
            func.sum(case((bounded, 1), else_=0)),
            func.sum(case((and_(bounded, o.c.value >= f.c.lower, o.c.value <= f.c.upper), 1), else_=0)),
            func.max(f.c.level),
        )
        .select_from(f.join(o, and_(o.c.series_id == f.c.series_id, o.c.ts == f.c.target_ts)))
        .where(f.c.model_name == model_name, f.c.model_version == str(model_version))
    )
    if flow_run_id is not None:
        query = query.where(f.c.flow_run_id == flow_run_id)
    if origins is not None:
        query = query.where(
            f.c.origin_ts >= pd.Timestamp(origins[0]).to_pydatetime(),
            f.c.origin_ts <= pd.Timestamp(origins[1]).to_pydatetime(),
        )
    with engine.connect() as conn:
        rows, mae, n_bounded, inside, level = conn.execute(query).one()
    n_bounded = int(n_bounded or 0)
    return RealisedAccuracy(
        rows=int(rows or 0),
        mae=None if mae is None else float(mae),
        bounded=n_bounded,
        coverage=float(inside) / n_bounded if n_bounded else None,
        level=None if level is None else float(level),
    )


@task(
    name="score-forecasts",
    retries=3,
    retry_delay_seconds=[1, 5, 15],
    retry_condition_fn=store.is_connection_error,
    cache_policy=NO_CACHE,
)
def score_forecasts_task(
    url: str,
    model_name: str,
    scales: dict[str, dict[str, float]],
    as_of: pd.Timestamp,
    since: pd.Timestamp | None = None,
    versions: list[str] | None = None,
    series_ids: list[str] | None = None,
) -> ScoreWriteSummary:
    """Score what has arrived since the last run, in one transaction (retried whole if the database drops)."""
    from tasks.run_context import run_logger

    summary = score_forecasts(store.get_engine(url), model_name, scales, as_of, since, versions, series_ids)
    run_logger(__name__).info(
        "forecast_scores: %d new, %d updated, %d unchanged", summary.new, summary.updated, summary.unchanged
    )
    return summary


@task(
    name="read-scores",
    retries=3,
    retry_delay_seconds=[1, 5, 15],
    retry_condition_fn=store.is_connection_error,
    cache_policy=NO_CACHE,
)
def read_scores_task(
    url: str,
    model_name: str,
    versions: list[str] | None,
    start: pd.Timestamp,
    end: pd.Timestamp,
    series_ids: list[str] | None = None,
) -> pd.DataFrame:
    return read_scores(store.get_engine(url), model_name, versions, start, end, series_ids)


@task(
    name="find-forecast-versions",
    retries=3,
    retry_delay_seconds=[1, 5, 15],
    retry_condition_fn=store.is_connection_error,
    cache_policy=NO_CACHE,
)
def forecast_versions_task(
    url: str, model_name: str, start: pd.Timestamp, end: pd.Timestamp, version: str | None = None
) -> list[str]:
    return forecast_versions(store.get_engine(url), model_name, start, end, version)
