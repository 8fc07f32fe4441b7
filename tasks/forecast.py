"""Forecasts from a registered model: the one code path of the forecast and backfill flows.

Both flows pin one model version (`pin_model`), read observations once, plan their (series, origin) pairs on
one `SeriesPanel`, and turn them into rows with `forecast_frame_at` -> `models.packaging.forecast_origins`
(one batched call). Because the backfill and the forecast flow share this path, a backfilled origin gets,
bit for bit, the rows the forecast flow writes at that origin with the same model.

Origins
-------
- Forecast: each series' last observation with ts <= as_of.
- Backfill: for every time t of `pd.date_range(start, end, freq=every)` (`every` defaults to the model's
  frequency), the series' last observation with ts <= t. An origin time between observations snaps back to the
  observation before it; times that snap to the same observation give one origin. Each window reads only the
  `lookback` observations up to its origin, so an origin never sees later data.

Skip rules (a skipped series or origin is listed, with its reason, in the run summary and artifact)
----------------------------------------------------------------------------------------------------
- unknown: the model was not trained on the series (it has no scaler for it);
- missing: a requested series has no observation at or before as_of (backfill: at or before end);
- too short: fewer than `lookback` observations up to the origin;
- gap: the `lookback` observations up to the origin are not exactly every `freq` (a gap, another frequency)
  or hold a non-finite value;
- stale: the whole forecast would end before the reference time, i.e. origin + horizon x freq < reference.
  Forecast flow: the reference is `as_of` when given; without `as_of` ("now") it is the newest observation
  read, so forecasting historical data still works (a feed that stopped for every series is then not flagged;
  pass `as_of` to check freshness against the clock). Backfill: the reference is the origin time t itself,
  which is what a forecast run with as_of=t would have used.
The forecast flow's `stale_policy="fail"` turns any skipped series into a `ForecastInputError` before anything
is written. A run left with nothing to forecast fails under either policy (a forecast that writes nothing is
not a success).

Writes
------
The forecast flow writes all its rows in one transaction (`tasks.store.upsert_forecasts`): a rerun replaces
its rows, a failure leaves none. The backfill writes chunks of about `BACKFILL_CHUNK_ROWS` rows, whole origins
per chunk, each chunk one transaction; it first drops the origins this model version already has in the table
(`existing_forecast_origins`), so a rerun after a failure computes and writes only what is missing, and a
backfill run twice or over overlapping ranges in any order duplicates nothing. Corollary: stored origins are
not recomputed after observations are corrected; delete those rows first to recompute them.

Bit-for-bit equality
--------------------
Models are loaded on the CPU for both flows. PyTorch's CPU kernels give different last bits for batches of
fewer than a few windows, so `predict_origins` pads every inference batch to at least `MIN_BATCH` windows;
with that, a window's forecast does not depend on which other windows share its call.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shlex
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import func, select

from models.errors import SeqcastError
from models.frequency import to_offset
from tasks import progress, registry, store
from tasks.run_context import run_logger, to_utc
from tasks.scores import RealisedAccuracy, realised_accuracy
from tasks.settings import apply_mlflow_timeouts

if TYPE_CHECKING:
    from uuid import UUID

    from sqlalchemy import Engine

    from models.packaging import LoadedForecaster
    from models.windows import SeriesPanel

StalePolicy = Literal["skip", "fail"]

MIN_BATCH = 64  # smallest inference batch; smaller CPU batches change the last bits of a forecast
PREDICT_BATCH = 4096  # the batch size `forecast_origins` predicts with (`predict_windows`' default)
BACKFILL_CHUNK_ROWS = 50_000  # rows per backfill transaction (whole origins)
MAX_ORIGIN_TIMES = 5_000_000  # origin times one backfill may ask for (`(end - start) / every`)
FORECASTS_TABLE = store.forecasts.name
SHOWN = 10  # series named in an error message before "and N more"


class ForecastInputError(SeqcastError, ValueError):
    """Observations the model cannot forecast from (with stale_policy='fail'), or nothing left to forecast."""


class BackfillRangeError(SeqcastError, ValueError):
    """A backfill range that is reversed, outside the data, malformed, or holds no origin that can be forecast."""


@dataclass(frozen=True)
class ModelRef:
    """The registered model version a run pinned once and uses throughout."""

    name: str
    version: str
    run_id: str
    alias: str | None  # the alias it was resolved from; None when asked for by version


@dataclass(frozen=True)
class Skipped:
    """A series (forecast) or some of its origins (backfill) that were not forecast, and why."""

    series_id: str
    reason: str
    origins: int = 1


@dataclass(frozen=True)
class OriginPlan:
    """The (series, origin) pairs to forecast on `panel` (known series only) and what was skipped."""

    panel: SeriesPanel | None
    series_index: np.ndarray  # [N] int64, series number in `panel`
    positions: np.ndarray  # [N] int64, origin position within its series
    skipped: list[Skipped]
    reference: pd.Timestamp | None = None  # the staleness reference (forecast flow)

    @property
    def size(self) -> int:
        return len(self.series_index)

    def origin_timestamps(self) -> pd.DatetimeIndex:
        """UTC origin time of every planned pair `[N]`."""
        if self.panel is None or self.size == 0:
            return pd.DatetimeIndex([], tz="UTC")
        flat = _flat_ns(self.panel)[self.panel.offsets[self.series_index] + self.positions]
        return pd.to_datetime(flat, utc=True)

    def series_ids(self) -> np.ndarray:
        """Series id of every planned pair `[N]`."""
        if self.panel is None:
            return np.zeros(0, dtype=object)
        return np.asarray(self.panel.series_ids, dtype=object)[self.series_index]

    def select(self, keep: np.ndarray) -> OriginPlan:
        return OriginPlan(self.panel, self.series_index[keep], self.positions[keep], self.skipped, self.reference)


# --- the model ----------------------------------------------------------------------------------------------


def use_registry(tracking_uri: str) -> None:
    """Point MLflow's tracking and registry at `tracking_uri` (reading only: no experiment is created)."""
    import mlflow

    apply_mlflow_timeouts()  # bounded waits: an unreachable or hung server fails in seconds, not minutes
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in run logs
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)


def pin_model(tracking_uri: str, name: str, alias: str | None = None, version: str | None = None) -> ModelRef:
    """Resolve `version` (wins when given) or `alias` (default champion) to one version, once per run."""
    use_registry(tracking_uri)
    version = None if version is None or str(version).strip() == "" else str(version).strip()
    found = registry.resolve_version(name, alias, version)
    return ModelRef(
        name=name,
        version=str(found.version),
        run_id=str(found.run_id or ""),
        alias=None if version is not None else (alias or registry.CHAMPION),
    )


def load_model(tracking_uri: str, model: ModelRef) -> LoadedForecaster:
    """The pinned version's forecaster on the CPU (sha256-checked); both flows predict on the CPU."""
    use_registry(tracking_uri)
    return registry.load_version(model.name, model.version, device="cpu")


def alias_version(tracking_uri: str, name: str, alias: str = registry.CHAMPION) -> str | None:
    """The version behind `alias` of registered model `name`, or None when there is none."""
    use_registry(tracking_uri)
    found = registry.get_alias(name, alias)
    return None if found is None else str(found.version)


def _is_transient(_task: Any, _run: Any, state: Any) -> bool:
    """Retry registry calls unless the answer was definite (no such alias or version, a damaged artifact)."""
    try:
        state.result()
    except (registry.RegistryError, ValueError):
        return False
    except Exception:
        return True
    return False


@task(name="pin-model", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_is_transient, cache_policy=NO_CACHE)
def pin_model_task(tracking_uri: str, name: str, alias: str | None = None, version: str | None = None) -> ModelRef:
    model = pin_model(tracking_uri, name, alias, version)
    via = f"alias '{model.alias}'" if model.alias else "version"
    run_logger(__name__).info("using %s v%s (by %s, MLflow run %s)", model.name, model.version, via, model.run_id)
    return model


@task(
    name="load-model", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_is_transient, cache_policy=NO_CACHE
)
def load_model_task(tracking_uri: str, model: ModelRef) -> LoadedForecaster:
    return load_model(tracking_uri, model)


@task(
    name="find-alias", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_is_transient, cache_policy=NO_CACHE
)
def alias_version_task(tracking_uri: str, name: str, alias: str = registry.CHAMPION) -> str | None:
    return alias_version(tracking_uri, name, alias)


# --- windows on the panel -----------------------------------------------------------------------------------


def requested_series(series: Sequence[str] | None) -> list[str] | None:
    """The series asked for, de-duplicated in order; None (or an empty list) means every series."""
    if not series:
        return None
    return list(dict.fromkeys(str(s) for s in series))


def _flat_ns(panel: SeriesPanel) -> np.ndarray:
    """Every timestamp of the panel as int64 ns UTC `[total]`, aligned with `panel.values`."""
    return panel.flat_times().astype("M8[ns]", copy=False).view(np.int64)


def _fixed_step_ns(freq: str) -> int | None:
    """The step of `freq` in ns when it is a fixed duration (h, 30min, D in UTC); None for B, W, MS ..."""
    try:
        return int(pd.Timedelta(cast(Any, to_offset(freq))).value)
    except (ValueError, TypeError):
        return None


def _grid_positions(panel: SeriesPanel) -> np.ndarray:
    """Each observation's step number on its series' `freq` grid from its first observation `[total]`; -1 when
    it falls between grid points (another frequency or a shifted clock)."""
    flat = _flat_ns(panel)
    out = np.full(len(flat), -1, dtype=np.int64)
    step = _fixed_step_ns(panel.freq)
    for k in range(len(panel.series_ids)):
        lo, hi = int(panel.offsets[k]), int(panel.offsets[k + 1])
        if hi == lo:
            continue
        ts = flat[lo:hi]
        if step is not None:
            delta = ts - ts[0]
            out[lo:hi] = np.where(delta % step == 0, delta // step, -1)
        else:
            index = pd.DatetimeIndex(panel.timestamps[k]).as_unit("ns")
            grid = pd.date_range(index[0], index[-1], freq=to_offset(panel.freq)).as_unit("ns")
            out[lo:hi] = grid.get_indexer(index)
    return out


def window_checks(
    panel: SeriesPanel, series_index: np.ndarray, positions: np.ndarray, lookback: int
) -> tuple[np.ndarray, np.ndarray]:
    """For origins at `positions [N]` of series `series_index [N]`: whether `lookback` observations lead up to
    each (`long_enough [N]`), and whether those are exactly every `freq` with finite values (`regular [N]`)."""
    flat = panel.offsets[series_index] + positions  # [N] flat index of each origin
    long_enough = positions >= lookback - 1
    first = np.where(long_enough, flat - lookback + 1, flat)  # [N] first input of each window
    grid = _grid_positions(panel)  # [total]
    bad = (grid < 0) | ~np.isfinite(panel.values)  # [total]
    bad_before = np.concatenate([[0], np.cumsum(bad)])  # [total + 1] bad points before each flat index
    regular = long_enough & (grid[flat] - grid[first] == lookback - 1) & (bad_before[flat + 1] - bad_before[first] == 0)
    return long_enough, regular


def _shift(origins: pd.DatetimeIndex, freq: str, steps: int) -> pd.DatetimeIndex:
    """origin + steps x freq (calendar-aware for B, W, MS ..., trading days for B-NYSE ...)."""
    offset = to_offset(freq)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
        return pd.DatetimeIndex(origins + offset * steps)


def _known_frame(
    frame: pd.DataFrame, loaded: LoadedForecaster, requested: list[str] | None, missing_reason: str
) -> tuple[pd.DataFrame, list[Skipped]]:
    """Observations of the series the model knows, and the requested or present series it cannot forecast."""
    present = sorted(set(frame["series_id"].astype(str).tolist()))
    skipped: list[Skipped] = []
    if requested is not None:
        seen = set(present)
        skipped += [Skipped(sid, missing_reason) for sid in requested if sid not in seen]
    known = set(loaded.series_ids)
    skipped += [
        Skipped(
            sid,
            f"not in the model's training data ({len(known)} series); retrain with it to forecast it",
        )
        for sid in present
        if sid not in known
    ]
    keep = frame["series_id"].astype(str).isin(known).to_numpy()
    return frame.loc[keep, store.OBSERVATION_COLUMNS], skipped


def describe_skipped(skipped: Sequence[Skipped], shown: int = SHOWN) -> str:
    """`'a': reason; 'b': reason ... and N more` for error messages."""
    parts = [
        f"{s.series_id!r}: {s.reason}" + (f" ({s.origins} origins)" if s.origins != 1 else "") for s in skipped[:shown]
    ]
    more = f"; and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return "; ".join(parts) + more


# --- planning: which origins --------------------------------------------------------------------------------


def plan_forecast(
    frame: pd.DataFrame,
    loaded: LoadedForecaster,
    series: Sequence[str] | None,
    as_of: pd.Timestamp,
    as_of_given: bool,
    stale_policy: StalePolicy = "skip",
) -> OriginPlan:
    """One origin per series, its last observation in `frame` (already cut at ts <= as_of).

    Series that cannot be forecast are skipped and listed (see the module docstring for the rules), or, with
    `stale_policy="fail"`, raise `ForecastInputError` naming every one of them. Nothing left to forecast raises.
    """
    from models.windows import panel_from_frame

    if stale_policy not in ("skip", "fail"):
        raise ValueError(f"`stale_policy` ({stale_policy!r}) must be 'skip' or 'fail'")
    as_of = to_utc(as_of)
    requested = requested_series(series)
    if requested is None and len(frame) == 0:
        raise ForecastInputError(
            f"no observations at or before as_of {as_of.isoformat()}; ingest data first or pick a later as_of"
        )
    frame, skipped = _known_frame(frame, loaded, requested, f"no observations at or before {as_of.isoformat()}")
    lookback, horizon, freq = loaded.lookback, loaded.horizon, loaded.freq
    plan = OriginPlan(None, np.zeros(0, np.int64), np.zeros(0, np.int64), skipped)
    if len(frame):
        panel = panel_from_frame(frame, freq=freq)
        series_index = np.arange(len(panel.series_ids), dtype=np.int64)
        positions = (panel.lengths - 1).astype(np.int64)
        long_enough, regular = window_checks(panel, series_index, positions, lookback)
        origins = pd.to_datetime(_flat_ns(panel)[panel.offsets[:-1] + positions], utc=True)
        reference = as_of if as_of_given else origins.max()
        stale = np.asarray(_shift(origins, freq, horizon) < reference)
        for k, sid in enumerate(panel.series_ids):
            if not long_enough[k]:
                reason = (
                    f"too short: {int(panel.lengths[k])} observations at or before {as_of.isoformat()}, "
                    f"`lookback` needs {lookback}"
                )
            elif stale[k]:
                reason = (
                    f"stale: last observation {origins[k].isoformat()} is more than `horizon` ({horizon} x {freq}) "
                    f"before {reference.isoformat()}"
                )
            elif not regular[k]:
                reason = (
                    f"gap: the last {lookback} observations up to {origins[k].isoformat()} are not every {freq} "
                    "(or hold a non-finite value); fill the gap or retrain at this frequency"
                )
            else:
                continue
            skipped.append(Skipped(sid, reason))
        keep = long_enough & regular & ~stale
        plan = OriginPlan(panel, series_index[keep], positions[keep], skipped, reference)
    plan.skipped.sort(key=lambda s: s.series_id)
    if plan.skipped and stale_policy == "fail":
        raise ForecastInputError(
            f"stale_policy='fail' and {len(plan.skipped)} series cannot be forecast as of {as_of.isoformat()}: "
            f"{describe_skipped(plan.skipped)}. Nothing was written; fix these series or use stale_policy='skip'"
        )
    if plan.size == 0:
        raise ForecastInputError(
            f"nothing to forecast as of {as_of.isoformat()}: every series was skipped: "
            f"{describe_skipped(plan.skipped)}. Nothing was written"
        )
    return plan


def parse_every(every: str) -> pd.offsets.BaseOffset:
    """A positive pandas offset from an alias like '1D', '6h' or '30min'."""
    try:
        offset = to_offset(every)
    except (ValueError, TypeError) as exc:
        raise BackfillRangeError(
            f"`every` ({every!r}) is not a pandas offset alias such as '1D', '6h' or '30min'"
        ) from exc
    probe = pd.Timestamp("2000-01-03", tz="UTC")
    if not probe + offset > probe:
        raise BackfillRangeError(f"`every` ({every!r}) must move forward in time, like '1D', '6h' or '30min'")
    return offset


def check_backfill_range(
    start: dt.datetime | pd.Timestamp, end: dt.datetime | pd.Timestamp, every: str | None
) -> tuple[pd.Timestamp, pd.Timestamp]:
    """UTC start and end (naive means UTC); a reversed range or a malformed `every` is refused."""
    start_utc, end_utc = to_utc(start), to_utc(end)
    if start_utc > end_utc:
        raise BackfillRangeError(
            f"backfill range is reversed: start {start_utc.isoformat()} is after end {end_utc.isoformat()}; swap them"
        )
    if every is not None:
        parse_every(every)
    return start_utc, end_utc


def origin_times(start: pd.Timestamp, end: pd.Timestamp, every: str) -> pd.DatetimeIndex:
    """The backfill's origin times: every `every` from `start` to `end` inclusive (calendar offsets roll forward)."""
    offset = parse_every(every)
    step = _fixed_step_ns(every)
    if step is not None and (end - start).value // step + 1 > MAX_ORIGIN_TIMES:
        raise BackfillRangeError(
            f"{start.isoformat()} .. {end.isoformat()} every {every!r} is more than {MAX_ORIGIN_TIMES:,} origin "
            "times; use a coarser `every` or split the range"
        )
    times = pd.date_range(start, end, freq=offset).as_unit("ns")
    if len(times) == 0:
        raise BackfillRangeError(
            f"no origin time every {every!r} between {start.isoformat()} and {end.isoformat()}; widen the range"
        )
    return times


def plan_backfill(
    frame: pd.DataFrame,
    span: tuple[pd.Timestamp, pd.Timestamp] | None,
    loaded: LoadedForecaster,
    series: Sequence[str] | None,
    start: dt.datetime | pd.Timestamp,
    end: dt.datetime | pd.Timestamp,
    every: str | None = None,
) -> OriginPlan:
    """Every (series, origin) pair of the range, sorted by origin time then series.

    `frame` holds the observations with ts <= end, `span` the first and last observation time of the series
    asked for (all series when None). Origins that cannot be forecast are counted per series and reason; a range
    that is reversed, outside the data, or left with no origin raises `BackfillRangeError`.
    """
    from models.windows import panel_from_frame

    start_utc, end_utc = check_backfill_range(start, end, every)
    requested = requested_series(series)
    which = "" if requested is None else f" of series {describe_ids(requested)}"
    if span is None:
        raise BackfillRangeError(f"there are no observations{which} in the database; ingest data first")
    first, last = span
    if end_utc < first or start_utc > last:
        raise BackfillRangeError(
            f"backfill range {start_utc.isoformat()} .. {end_utc.isoformat()} lies outside the observations{which}, "
            f"which span {first.isoformat()} .. {last.isoformat()}; choose start and end inside that span"
        )
    frame, skipped = _known_frame(frame, loaded, requested, f"no observations at or before {end_utc.isoformat()}")
    lookback, horizon, freq = loaded.lookback, loaded.horizon, loaded.freq
    if len(frame) == 0:
        raise BackfillRangeError(
            f"no series can be backfilled over {start_utc.isoformat()} .. {end_utc.isoformat()}: "
            f"{describe_skipped(skipped)}"
        )
    panel = panel_from_frame(frame, freq=freq)
    times = origin_times(start_utc, end_utc, every or freq).asi8  # [G] int64 ns
    flat = _flat_ns(panel)
    series_parts, position_parts, time_parts = [], [], []
    before = np.zeros(len(panel.series_ids), dtype=np.int64)
    for k in range(len(panel.series_ids)):
        ts = flat[panel.offsets[k] : panel.offsets[k + 1]]
        snapped = np.searchsorted(ts, times, side="right") - 1  # [G] last observation <= t
        inside = snapped >= 0
        before[k] = int((~inside).sum())
        positions, first_time = np.unique(snapped[inside], return_index=True)  # earliest t per origin
        series_parts.append(np.full(len(positions), k, dtype=np.int64))
        position_parts.append(positions.astype(np.int64))
        time_parts.append(times[inside][first_time])
    series_index = np.concatenate(series_parts)
    positions = np.concatenate(position_parts)
    asked_at = pd.to_datetime(np.concatenate(time_parts), utc=True)  # [N] the earliest t giving each origin
    long_enough, regular = window_checks(panel, series_index, positions, lookback)
    origins = pd.to_datetime(flat[panel.offsets[series_index] + positions], utc=True)
    stale = np.asarray(_shift(origins, freq, horizon) < asked_at)
    short = ~long_enough
    stale &= long_enough
    gap = long_enough & ~stale & ~regular
    n_series = len(panel.series_ids)
    counts = {
        "before": before,
        "short": np.bincount(series_index[short], minlength=n_series),
        "stale": np.bincount(series_index[stale], minlength=n_series),
        "gap": np.bincount(series_index[gap], minlength=n_series),
    }
    for k, sid in enumerate(panel.series_ids):
        reasons = {
            "before": f"origin times before its first observation ({panel.timestamps[k][0].isoformat()})",
            "short": f"fewer than `lookback` ({lookback}) observations up to the origin",
            "stale": f"stale: no observation within `horizon` ({horizon} x {freq}) before the origin time",
            "gap": f"a gap (or non-finite value) in the {lookback} observations up to the origin",
        }
        skipped += [Skipped(sid, reasons[name], int(c[k])) for name, c in counts.items() if c[k] > 0]
    skipped.sort(key=lambda s: s.series_id)
    keep = long_enough & regular & ~stale
    if not keep.any():
        usable = panel.lengths >= lookback
        if usable.any():
            earliest = min(panel.timestamps[k][lookback - 1] for k in np.flatnonzero(usable)).isoformat()
        else:  # no series reaches `lookback` observations by `end`: the earliest it could, without gaps
            first_possible = _shift(pd.DatetimeIndex([first]), freq, lookback - 1)[0]
            earliest = (
                f"{first_possible.isoformat()} at the earliest ({lookback - 1} x {freq} after the first observation)"
            )
        raise BackfillRangeError(
            f"no origin in {start_utc.isoformat()} .. {end_utc.isoformat()} can be forecast: "
            f"{describe_skipped(skipped)}. The first origin with `lookback` ({lookback}) observations before it "
            f"is {earliest}. Nothing was written"
        )
    plan = OriginPlan(panel, series_index[keep], positions[keep], skipped)
    order = np.lexsort((plan.series_index, plan.origin_timestamps().asi8))
    return plan.select(order)


def describe_ids(ids: Sequence[str], shown: int = SHOWN) -> str:
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return ", ".join(repr(s) for s in ids[:shown]) + more


def pending_origins(plan: OriginPlan, done: set[tuple[str, pd.Timestamp]]) -> tuple[OriginPlan, int]:
    """The plan without the (series, origin) pairs already stored for this model version; and how many those were."""
    if not done or plan.size == 0:
        return plan, 0
    done_frame = pd.DataFrame(
        {
            "series_id": [s for s, _ in done],
            "origin_ns": pd.DatetimeIndex(pd.to_datetime([o for _, o in done], utc=True)).as_unit("ns").asi8,
        }
    )
    planned = pd.DataFrame({"series_id": plan.series_ids(), "origin_ns": plan.origin_timestamps().as_unit("ns").asi8})
    planned["series_id"] = planned["series_id"].astype(str)
    done_frame["series_id"] = done_frame["series_id"].astype(str)
    merged = planned.merge(done_frame.drop_duplicates(), on=["series_id", "origin_ns"], how="left", indicator=True)
    already = (merged["_merge"] == "both").to_numpy()
    return plan.select(~already), int(already.sum())


# --- forecasting: the one path ------------------------------------------------------------------------------


def predict_origins(
    loaded: LoadedForecaster, panel: SeriesPanel, series_index: np.ndarray, positions: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points, lower and upper bounds `[N, H]` in original units (`forecast_origins` in one call, then
    `forecast_bounds`), with every inference batch padded to at least `MIN_BATCH` windows (copies of the first), so
    a window's forecast is the same whatever else is in the call."""
    from models.packaging import forecast_bounds, forecast_origins

    n = len(series_index)
    tail = n % PREDICT_BATCH
    pad = MIN_BATCH - tail if 0 < tail < MIN_BATCH else 0
    if pad:
        series_index = np.concatenate([series_index, np.full(pad, series_index[0], dtype=np.int64)])
        positions = np.concatenate([positions, np.full(pad, positions[0], dtype=np.int64)])
    points = forecast_origins(loaded, panel, series_index, positions)[:n]
    lower, upper = forecast_bounds(loaded, panel, series_index[:n], positions[:n], points)
    return points, lower, upper


def forecast_frame_at(
    loaded: LoadedForecaster,
    model: ModelRef,
    plan: OriginPlan,
    flow_run_id: str | None,
    created_at: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Rows of the forecasts table (FORECAST_COLUMNS) for every planned origin, sorted by origin, series, step.

    Target times are origin + step x freq, step 1..H; lower/upper bound the interval at the model's `level` (null
    for a model saved before intervals). `method` says what made each row:
    the network's cell ("lstm"/"gru"), or the baseline that serves the series (`LoadedForecaster.fallback`).
    """
    from models.packaging import target_timestamps

    horizon = loaded.horizon
    if plan.panel is None or plan.size == 0:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in store.FORECAST_COLUMNS})
    origins = plan.origin_timestamps()
    order = np.lexsort((plan.series_index, origins.asi8))
    plan = plan.select(order)
    origins = origins[order]
    assert plan.panel is not None
    points, lower, upper = predict_origins(loaded, plan.panel, plan.series_index, plan.positions)  # [N, H] each
    targets = target_timestamps(origins, loaded.freq, horizon)  # [N, H] naive UTC
    n = plan.size
    created = to_utc(created_at) if created_at is not None else pd.Timestamp.now(tz="UTC")
    return pd.DataFrame(
        {
            "series_id": np.repeat(plan.series_ids(), horizon),
            "origin_ts": pd.to_datetime(np.repeat(origins.as_unit("ns").asi8, horizon), utc=True),
            "target_ts": pd.DatetimeIndex(targets.ravel()).tz_localize("UTC"),
            "step": np.tile(np.arange(1, horizon + 1, dtype=np.int64), n),
            "point": points.ravel(),
            "lower": lower.ravel(),
            "upper": upper.ravel(),
            "level": np.nan if loaded.intervals is None else loaded.intervals.level,
            "method": np.repeat(loaded.methods(plan.panel.series_ids)[plan.series_index], horizon),
            "model_name": model.name,
            "model_version": model.version,
            "mlflow_run_id": model.run_id,
            "flow_run_id": flow_run_id,
            "created_at": created,
        },
        columns=store.FORECAST_COLUMNS,
    )


def chunk_forecasts(frame: pd.DataFrame, horizon: int, chunk_rows: int | None = None) -> list[pd.DataFrame]:
    """Consecutive slices of whole origins (`horizon` rows each) of about `chunk_rows` rows."""
    per = max(1, (chunk_rows or BACKFILL_CHUNK_ROWS) // horizon) * horizon
    return [frame.iloc[i : i + per] for i in range(0, len(frame), per)]


# --- the database -------------------------------------------------------------------------------------------


def write_forecasts(url: str, frame: pd.DataFrame) -> int:
    """Upsert `frame` in one transaction; returns rows written."""
    return store.upsert_forecasts(store.get_engine(url), frame)


def observation_span(
    engine: Engine, series_ids: Sequence[str] | None = None
) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """First and last observation time of these series (all when None), or None when there are none."""
    column = store.observations.c.ts
    query = select(func.min(column), func.max(column))
    if series_ids is not None:
        query = query.where(store.observations.c.series_id.in_(list(series_ids)))
    with engine.connect() as conn:
        first, last = conn.execute(query).one()
    if first is None or last is None:
        return None
    return to_utc(first), to_utc(last)


@task(
    name="write-forecasts",
    retries=3,
    retry_delay_seconds=[1, 5, 15],
    retry_condition_fn=store.is_connection_error,
    cache_policy=NO_CACHE,
)
def write_forecasts_task(url: str, frame: pd.DataFrame) -> int:
    """One transaction per call, retried whole while the database is unreachable."""
    return write_forecasts(url, frame)


@task(
    name="read-observation-span",
    retries=3,
    retry_delay_seconds=[1, 5, 15],
    retry_condition_fn=store.is_connection_error,
    cache_policy=NO_CACHE,
)
def observation_span_task(url: str, series_ids: list[str] | None = None) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    return observation_span(store.get_engine(url), series_ids)


@task(
    name="find-existing-origins",
    retries=3,
    retry_delay_seconds=[1, 5, 15],
    retry_condition_fn=store.is_connection_error,
    cache_policy=NO_CACHE,
)
def pending_origins_task(url: str, model: ModelRef, plan: OriginPlan) -> tuple[OriginPlan, int]:
    """Drop the origins this model version already has in the table (a resumed or repeated backfill)."""
    if plan.panel is None or plan.size == 0:
        return plan, 0
    series_ids = sorted(set(plan.series_ids().tolist()))
    done = store.existing_forecast_origins(store.get_engine(url), model.name, model.version, series_ids)
    pending, existing = pending_origins(plan, done)
    if existing:
        run_logger(__name__).info(
            "%d of %d origins are already in the table for this model version", existing, plan.size
        )
    return pending, existing


@task(name="plan-forecast", cache_policy=NO_CACHE)
def plan_forecast_task(
    frame: pd.DataFrame,
    loaded: LoadedForecaster,
    series: list[str] | None,
    as_of: pd.Timestamp,
    as_of_given: bool,
    stale_policy: StalePolicy = "skip",
) -> OriginPlan:
    plan = plan_forecast(frame, loaded, series, as_of, as_of_given, stale_policy)
    for s in plan.skipped:
        run_logger(__name__).warning("skipping series %r: %s", s.series_id, s.reason)
    return plan


@task(name="plan-backfill", cache_policy=NO_CACHE)
def plan_backfill_task(
    frame: pd.DataFrame,
    span: tuple[pd.Timestamp, pd.Timestamp] | None,
    loaded: LoadedForecaster,
    series: list[str] | None,
    start: dt.datetime,
    end: dt.datetime,
    every: str | None = None,
) -> OriginPlan:
    plan = plan_backfill(frame, span, loaded, series, start, end, every)
    for s in plan.skipped:
        run_logger(__name__).warning("series %r: %d origin(s) skipped: %s", s.series_id, s.origins, s.reason)
    return plan


@task(name="forecast-origins", cache_policy=NO_CACHE)
def forecast_frame_task(
    loaded: LoadedForecaster, model: ModelRef, plan: OriginPlan, flow_run_id: str | None
) -> pd.DataFrame:
    return forecast_frame_at(loaded, model, plan, flow_run_id)


# --- summaries ----------------------------------------------------------------------------------------------


@dataclass
class ForecastSummary:
    """What a forecast run wrote; the CLI prints it and the flow publishes it as a Prefect artifact."""

    model_name: str
    model_version: str
    mlflow_run_id: str
    flow_run_id: str | None
    as_of: str  # the run's logical date: observations with ts <= as_of were read
    stale_reference: str | None  # staleness was judged against this time
    rows_written: int
    origins: dict[str, str]  # series_id -> origin_ts (its last observation), ISO
    skipped: list[Skipped] = field(default_factory=list)
    table: str = FORECASTS_TABLE
    database: str = ""  # URL, password hidden
    query: str = ""  # SQL that reads this run's rows
    command: str = ""  # shell one-liner running `query`
    realised: RealisedAccuracy | None = None  # MAE and coverage where actuals exist (a run at a past as_of)

    @property
    def series(self) -> list[str]:
        return list(self.origins)


@dataclass
class BackfillSummary:
    """What a backfill run wrote and skipped; the CLI prints it and the flow publishes it as an artifact."""

    model_name: str
    model_version: str
    mlflow_run_id: str
    flow_run_id: str | None
    start: str
    end: str
    every: str
    origins_planned: int  # (series, origin) pairs in the range that can be forecast
    origins_existing: int  # of those, already in the table for this model version (not recomputed)
    origins_written: int
    rows_written: int
    chunks: int
    first_origin: str | None
    last_origin: str | None
    series: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    table: str = FORECASTS_TABLE
    database: str = ""
    query: str = ""
    command: str = ""
    realised: RealisedAccuracy | None = None  # MAE and coverage of the range's rows whose actuals exist


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ts_literal(url: str, ts: pd.Timestamp) -> str:
    """A timestamp as the database stores it: naive UTC text on SQLite, ISO with offset on PostgreSQL."""
    from sqlalchemy.engine import make_url

    ts = to_utc(ts)
    if make_url(url).get_backend_name() == "sqlite":
        return _sql_literal(ts.tz_convert(None).strftime("%Y-%m-%d %H:%M:%S.%f"))
    return _sql_literal(ts.isoformat())


def forecasts_query(
    url: str,
    model: ModelRef,
    flow_run_id: str | None = None,
    origins: tuple[pd.Timestamp, pd.Timestamp] | None = None,
) -> str:
    """SQL reading a run's forecasts (by flow run id, or by origin range for a backfill)."""
    where = [f"model_name = {_sql_literal(model.name)}", f"model_version = {_sql_literal(model.version)}"]
    if flow_run_id is not None:
        where.append(f"flow_run_id = {_sql_literal(flow_run_id)}")
    if origins is not None:
        where.append(f"origin_ts between {_ts_literal(url, origins[0])} and {_ts_literal(url, origins[1])}")
    return (
        f"select series_id, origin_ts, target_ts, step, point, method from {FORECASTS_TABLE} "  # noqa: S608 - quoted literals
        f"where {' and '.join(where)} order by series_id, origin_ts, target_ts"
    )


def read_command(url: str, sql: str) -> str:
    """A shell one-liner running `sql` on the database at `url` (sqlite3 or psql; never a password)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return f"sqlite3 {shlex.quote(parsed.database or '')} {_shell_quote(sql)}"
    if backend == "postgresql":
        plain = parsed._replace(drivername="postgresql", password=None).render_as_string(hide_password=False)
        return f"psql {shlex.quote(plain)} -c {_shell_quote(sql)}"
    return sql


def _shell_quote(text: str) -> str:
    """Double quotes when nothing inside needs escaping (readable SQL with 'literals'), else shlex quoting."""
    if not any(ch in text for ch in '"$`\\!'):
        return f'"{text}"'
    return shlex.quote(text)


def redact(url: str) -> str:
    from tasks.settings import redact_url

    return redact_url(url)


def forecast_summary(
    url: str,
    model: ModelRef,
    plan: OriginPlan,
    rows_written: int,
    as_of: pd.Timestamp,
    flow_run_id: str | None,
) -> ForecastSummary:
    """The summary of a forecast run over `plan` that wrote `rows_written` rows."""
    origins = plan.origin_timestamps()
    by_series = dict(zip(plan.series_ids().tolist(), [o.isoformat() for o in origins], strict=True))
    query = forecasts_query(url, model, flow_run_id=flow_run_id)
    realised = (
        realised_accuracy(store.get_engine(url), model.name, model.version, flow_run_id=flow_run_id)
        if flow_run_id is not None and rows_written
        else None
    )
    return ForecastSummary(
        model_name=model.name,
        model_version=model.version,
        mlflow_run_id=model.run_id,
        flow_run_id=flow_run_id,
        as_of=to_utc(as_of).isoformat(),
        stale_reference=None if plan.reference is None else plan.reference.isoformat(),
        rows_written=rows_written,
        origins=dict(sorted(by_series.items())),
        skipped=list(plan.skipped),
        database=redact(url),
        query=query,
        command=read_command(url, query),
        realised=realised,
    )


def backfill_summary(
    url: str,
    model: ModelRef,
    plan: OriginPlan,
    existing: int,
    rows_written: int,
    chunks: int,
    start: pd.Timestamp,
    end: pd.Timestamp,
    every: str,
    flow_run_id: str | None,
) -> BackfillSummary:
    """The summary of a backfill over `plan` (every usable origin, written now or before)."""
    origins = plan.origin_timestamps()
    span = (origins.min(), origins.max()) if len(origins) else None
    query = forecasts_query(url, model, origins=span)
    realised = None if span is None else realised_accuracy(store.get_engine(url), model.name, model.version, span)
    return BackfillSummary(
        model_name=model.name,
        model_version=model.version,
        mlflow_run_id=model.run_id,
        flow_run_id=flow_run_id,
        start=to_utc(start).isoformat(),
        end=to_utc(end).isoformat(),
        every=every,
        origins_planned=plan.size,
        origins_existing=existing,
        origins_written=plan.size - existing,
        rows_written=rows_written,
        chunks=chunks,
        first_origin=None if span is None else span[0].isoformat(),
        last_origin=None if span is None else span[1].isoformat(),
        series=sorted(set(plan.series_ids().tolist())),
        skipped=list(plan.skipped),
        database=redact(url),
        query=query,
        command=read_command(url, query),
        realised=realised,
    )


def _md(text: str, limit: int = 80) -> str:
    """Text safe inside a markdown table cell: no pipes, newlines or control characters, cut to `limit`."""
    shown = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in str(text))
    shown = shown.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")
    return shown if len(shown) <= limit else f"{shown[: limit - 3]}..."


def _skipped_lines(skipped: Sequence[Skipped], with_counts: bool) -> list[str]:
    if not skipped:
        return ["", "No series skipped."]
    head = "| series | origins | reason |\n|---|---|---|" if with_counts else "| series | reason |\n|---|---|"
    rows = [
        f"| {_md(s.series_id)} | {s.origins} | {_md(s.reason, 200)} |"
        if with_counts
        else f"| {_md(s.series_id)} | {_md(s.reason, 200)} |"
        for s in skipped
    ]
    return ["", f"**Skipped ({len(skipped)})**", "", head, *rows]


def forecast_markdown(summary: ForecastSummary, limit: int = 200, record: registry.ServingRecord | None = None) -> str:
    """The run summary as the Prefect artifact shows it: model, rows, origins per series, skipped series, and the
    run's MLflow `record` (a link when the tracking server has a URL)."""
    lines = [
        f"# seqcast forecast as of {summary.as_of}",
        "",
        f"**{summary.rows_written} rows** written to `{summary.table}` by **{_md(summary.model_name)} "
        f"v{summary.model_version}** (MLflow run `{summary.mlflow_run_id}`) for {len(summary.origins)} series.",
        *_record_lines(record),
        "",
        "| series | origin (last observation) |",
        "|---|---|",
    ]
    items = list(summary.origins.items())
    lines += [f"| {_md(sid)} | {origin} |" for sid, origin in items[:limit]]
    if len(items) > limit:
        lines.append(f"| ... {len(items) - limit} more | |")
    if summary.realised is not None and summary.realised.rows:
        lines += ["", f"Where actuals exist: {summary.realised.describe()}."]
    lines += _skipped_lines(summary.skipped, with_counts=False)
    lines += ["", "Read them:", "", "```sql", summary.query, "```"]
    return "\n".join(lines)


def _record_lines(record: registry.ServingRecord | None) -> list[str]:
    return [] if record is None else ["", f"MLflow record of this run: {record.markdown()}."]


def backfill_markdown(summary: BackfillSummary, record: registry.ServingRecord | None = None) -> str:
    lines = [
        f"# seqcast backfill {summary.start} .. {summary.end} every {summary.every}",
        "",
        f"**{_md(summary.model_name)} v{summary.model_version}** (MLflow run `{summary.mlflow_run_id}`): "
        f"{summary.origins_planned} origins over {len(summary.series)} series "
        f"({summary.first_origin} .. {summary.last_origin}); {summary.origins_written} forecast now "
        f"({summary.rows_written} rows in {summary.chunks} transactions), {summary.origins_existing} already in "
        f"`{summary.table}`.",
        *_record_lines(record),
    ]
    if summary.realised is not None:
        lines += ["", f"Where actuals exist: {summary.realised.describe()}."]
    lines += _skipped_lines(summary.skipped, with_counts=True)
    lines += ["", "Read them:", "", "```sql", summary.query, "```"]
    return "\n".join(lines)


@task(name="publish-forecast-summary", cache_policy=NO_CACHE)
def publish_forecast_summary_task(summary: ForecastSummary, record: registry.ServingRecord | None = None) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(
        markdown=forecast_markdown(summary, record=record), key="forecast-summary", description="seqcast forecast"
    )
    run_logger(__name__).info(
        "wrote %d rows of %s v%s for %d series (%d skipped)",
        summary.rows_written,
        summary.model_name,
        summary.model_version,
        len(summary.origins),
        len(summary.skipped),
    )


@task(name="publish-backfill-summary", cache_policy=NO_CACHE)
def publish_backfill_summary_task(summary: BackfillSummary, record: registry.ServingRecord | None = None) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(
        markdown=backfill_markdown(summary, record), key="backfill-summary", description="seqcast backfill"
    )


def start_progress(total_rows: int, description: str) -> UUID:
    """A Prefect progress artifact at 0 % (call inside a flow run), and the first `WriteProgress` event."""
    from prefect.artifacts import create_progress_artifact

    progress.report(progress.WriteProgress(description, 0, total_rows, 0, None))
    done = 100.0 if total_rows == 0 else 0.0
    return cast("UUID", create_progress_artifact(progress=done, key="backfill-progress", description=description))


def report_progress(
    artifact_id: UUID, chunk: pd.DataFrame, number: int, chunks: int, rows_done: int, total: int
) -> None:
    """Move the progress artifact and log one line for a written chunk (DEBUG when a progress bar shows it)."""
    from prefect.artifacts import update_progress_artifact

    percent = 100.0 * rows_done / max(total, 1)
    update_progress_artifact(artifact_id=artifact_id, progress=percent)
    progress.report(progress.WriteProgress("backfill", rows_done, total, number, chunks))
    origins = pd.DatetimeIndex(chunk["origin_ts"])
    run_logger(__name__).log(
        logging.DEBUG if progress.observed() else logging.INFO,
        "chunk %d/%d written: %d rows, origins %s .. %s (%.0f%% of %d rows)",
        number,
        chunks,
        len(chunk),
        origins.min().isoformat(),
        origins.max().isoformat(),
        percent,
        total,
    )
