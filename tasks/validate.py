"""Validation of every batch of observations with a Great Expectations suite, before anything is written.

Raw columns are parsed in pandas into helper columns (`chk_*`: parsed time, parsed value, per-series step
checks) and the suite checks those, so one GX result covers parsing, keys, ids, regularity, gaps and length.
Gaps are counted on each series' frequency, or on an exchange's trading days (`calendar="NYSE"`: weekends and
holidays are no gaps). `gap_policy="fill"` interpolates missing steps and NaN values inside a series alike.
Outliers are values more than `OUTLIER_MADS` robust spreads from their series' rolling median; `outlier_policy`
refuses them ("fail"), keeps and reports them ("warn") or clips them to the edge of that band ("clip").
A failed suite raises `DataValidationError` (never retried); the result is kept as JSON and HTML either way.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html
import json
import logging
import math
import os
import re
import threading
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pandas.tseries.offsets import Tick
from prefect import task
from prefect.cache_policies import NO_CACHE

from models.errors import SeqcastError
from models.frequency import business_calendar, infer_freq, market_freq, market_of, supported_markets, to_offset

logger = logging.getLogger(__name__)

GapPolicy = Literal["fail", "fill"]
GAP_POLICIES: tuple[str, ...] = ("fail", "fill")
OutlierPolicy = Literal["fail", "warn", "clip"]
OUTLIER_POLICIES: tuple[str, ...] = ("fail", "warn", "clip")
# Outliers: |value - rolling median| > OUTLIER_MADS x scale, per series, over a window of OUTLIER_WINDOW points,
# centred (shifted inside the series at its ends). 2 x 24 + 1: two days of hourly data, a day of half-hours, ten
# weeks of business days; one bad reading, or a burst of up to 24, cannot move its median. scale = max(the
# window's MAD, OUTLIER_FLOOR x the whole series' MAD), so a flat stretch (a stock that does not trade, a resting
# heart rate) does not make a small move an outlier: a value must also lie 2.5 series MADs from its local median.
# A window with fewer than OUTLIER_MIN_POINTS numbers is not judged. 10 MADs is about 6.7 standard deviations of
# Gaussian noise; the bundled samples score at most 5.2 (electricity 5.2, temperature 2.7, msft 2.9).
OUTLIER_WINDOW = 2 * 24 + 1
OUTLIER_MADS = 10.0
OUTLIER_FLOOR = 0.25
OUTLIER_MIN_POINTS = 12
_WINDOW_CHUNK_ROWS = 100_000  # rows whose windows are gathered at once (100k x 49 floats, about 40 MB)
REQUIRED_COLUMNS: tuple[str, ...] = ("series_id", "ts", "value")
MAX_SERIES_ID_LENGTH = 256
EXAMPLES_PER_CHECK = 3
# raw strings read as "no value" (files are read as text, so pandas has not turned them into NaN)
NA_STRINGS = frozenset({"", "nan", "-nan", "+nan", "na", "n/a", "#n/a", "null", "none", "<na>", "nat"})
# column options that map a source column onto a required one (names used in messages)
OPTION_OF_COLUMN = {"series_id": "series_col", "ts": "time_col", "value": "value_col"}
_FLAG_OF_OPTION = {"series_col": "--series-col", "time_col": "--time-col", "value_col": "--value-col"}
# helper columns computed in pandas for the suite
TS_COL, VALUE_COL, TEXT_COL, PRESENT_COL = "chk_ts", "chk_value", "chk_value_text", "chk_value_present"
OFF_GRID_COL, GAP_COL, LENGTH_COL = "chk_step_off_grid", "chk_missing_steps_before", "chk_series_length"
# robust score (value - rolling median) / scale, and the rolling median and scale themselves (NaN: not judged)
OUTLIER_COL, MEDIAN_COL, SCALE_COL = "chk_outlier_score", "chk_rolling_median", "chk_rolling_scale"

_gx_lock = threading.Lock()


class DataValidationError(SeqcastError, ValueError):
    """A batch broke the rules for observations; it names the series, the check and a few rows. Never retried."""

    def __init__(self, message: str, report: ValidationReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class CheckResult:
    """One expectation of the suite and what it found."""

    check: str
    expectation: str
    column: str | None
    success: bool
    description: str
    element_count: int | None = None
    unexpected_count: int = 0
    series: dict[str, int] = field(default_factory=dict)  # offending rows per series (first 20 series)
    series_count: int = 0  # how many series have offending rows
    examples: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""


@dataclass
class SeriesSummary:
    """Per-series facts found while validating: size, span, frequency, gaps, NaN values and how many points were
    filled (`filled` counts new rows and NaN values alike; `filled_nan` the NaN values among them)."""

    series_id: str
    rows: int
    start: str | None
    end: str | None
    freq: str | None
    gaps: int = 0
    missing_steps: int = 0
    largest_gap_steps: int = 0
    filled: int = 0
    nan_values: int = 0
    filled_nan: int = 0
    outliers: int = 0  # values beyond the outlier band (kept under "warn", clipped under "clip")


@dataclass
class ValidationReport:
    """The outcome of validating one batch: every check, per-series facts and the raw GX suite result."""

    source: str
    success: bool
    created_at: str
    rows: int
    gap_policy: str
    max_gap_steps: int | None
    min_length: int | None
    min_length_parts: dict[str, int] | None
    checks: list[CheckResult]
    series: list[SeriesSummary]
    filled_points: int = 0  # rows added in gaps plus NaN values replaced
    filled_nan: int = 0  # NaN values replaced (part of filled_points)
    calendar: str | None = None  # the declared trading calendar ("NYSE"), if any
    outlier_policy: str = "fail"
    outliers: int = 0  # values beyond the outlier band, kept ("warn") or clipped ("clip")
    clipped_points: int = 0  # outliers replaced by the edge of their band (part of `outliers`)
    gx_result: dict[str, Any] = field(default_factory=dict)
    json_path: Path | None = None
    html_path: Path | None = None

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.success]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (paths as strings, non-finite floats as strings)."""
        data = asdict(self)
        data["json_path"] = str(self.json_path) if self.json_path else None
        data["html_path"] = str(self.html_path) if self.html_path else None
        return _jsonable(data)

    def describe(self) -> str:
        """The failures as one message: a headline, then one line per failed check."""
        failures = self.failures
        where = f" (report: {self.json_path})" if self.json_path else ""
        if not failures:
            return f"validation of {self.source} passed {len(self.checks)} checks{where}"
        head = f"validation of {self.source} failed {len(failures)} of {len(self.checks)} checks{where}:"
        return "\n".join([head, *(f"  - {c.message} [{c.expectation} on {c.column or 'table'}]" for c in failures)])

    def to_markdown(self) -> str:
        """A short markdown summary for the Prefect artifact."""
        status = "passed" if self.success else "FAILED"
        lines = [
            f"# Validation {status}: {_md(self.source)}",
            "",
            f"{self.rows} rows, {len(self.series)} series, gap policy `{self.gap_policy}`"
            + (f" (max {self.max_gap_steps} steps)" if self.gap_policy == "fill" else "")
            + (f", {self.filled_points} points filled" if self.filled_points else "")
            + (f" ({self.filled_nan} of them NaN values)" if self.filled_nan else "")
            + (f", trading calendar {self.calendar}" if self.calendar else "")
            + (f", min length {self.min_length}" if self.min_length else "")
            + f", outlier policy `{self.outlier_policy}`"
            + (f" ({self.outliers} outliers {'clipped' if self.clipped_points else 'kept'})" if self.outliers else ""),
            "",
            "| check | expectation | result | unexpected | detail |",
            "|---|---|---|---|---|",
        ]
        for c in self.checks:
            result = "ok" if c.success else "**failed**"
            lines.append(f"| {c.check} | `{c.expectation}` | {result} | {c.unexpected_count} | {_md(c.message)} |")
        if self.series:
            lines += ["", "| series | rows | start | end | freq | gaps | filled |", "|---|---|---|---|---|---|---|"]
            for s in self.series[:50]:
                lines.append(
                    f"| {_md(_show(s.series_id, 60))} | {s.rows} | {s.start} | {s.end} | {s.freq} "
                    f"| {s.gaps} | {s.filled} |"
                )
            if len(self.series) > 50:
                lines.append(f"| ... {len(self.series) - 50} more | | | | | | |")
        if self.json_path:
            lines += ["", f"Full result: `{self.json_path}`"]
        return "\n".join(lines)

    def to_html(self) -> str:
        """A self-contained HTML page of the checks and series (every value escaped)."""
        esc = html.escape
        status = "passed" if self.success else "failed"
        rows = "".join(
            f"<tr class='{'ok' if c.success else 'bad'}'><td>{esc(c.check)}</td><td>{esc(c.expectation)}</td>"
            f"<td>{esc(str(c.column))}</td><td>{'ok' if c.success else 'failed'}</td>"
            f"<td>{c.unexpected_count}</td><td>{esc(c.message or c.description)}</td></tr>"
            for c in self.checks
        )
        series = "".join(
            f"<tr><td>{esc(_show(s.series_id, 80))}</td><td>{s.rows}</td><td>{esc(str(s.start))}</td>"
            f"<td>{esc(str(s.end))}</td><td>{esc(str(s.freq))}</td><td>{s.gaps}</td><td>{s.filled}</td></tr>"
            for s in self.series
        )
        return (
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>seqcast validation {status}</title><style>"
            "body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:2px 6px}table{border-collapse:collapse}"
            ".bad{background:#fdd}.ok{background:#efe}</style></head><body>"
            f"<h1>Validation {status}: {esc(self.source)}</h1><p>{esc(self.created_at)}: {self.rows} rows, "
            f"{len(self.series)} series, gap policy {esc(self.gap_policy)}, {self.filled_points} points filled, "
            f"outlier policy {esc(self.outlier_policy)}, {self.outliers} outliers, {self.clipped_points} clipped</p>"
            "<table><tr><th>check</th><th>expectation</th><th>column</th><th>result</th><th>unexpected</th>"
            f"<th>detail</th></tr>{rows}</table><h2>Series</h2><table><tr><th>series</th><th>rows</th>"
            f"<th>start</th><th>end</th><th>freq</th><th>gaps</th><th>filled</th></tr>{series}</table></body></html>"
        )


# ---------------------------------------------------------------------------------------------------------------
# the plain function


def validate_observations(
    frame: pd.DataFrame,
    *,
    tz: str | None = None,
    gap_policy: GapPolicy = "fail",
    max_gap_steps: int | None = None,
    min_length: int | Mapping[str, int] | None = None,
    source: str | None = None,
    save: bool = True,
    report_dir: Path | None = None,
    calendar: str | None = None,
    outlier_policy: OutlierPolicy = "fail",
) -> tuple[pd.DataFrame, ValidationReport]:
    """Check a long frame `series_id, ts, value` (raw or typed) and return it clean: UTC times, floats, sorted.

    `tz` is the zone of naive timestamps (default UTC). `gap_policy="fill"` fills runs of up to `max_gap_steps`
    missing steps and NaN values by linear interpolation (a NaN first or last value of a series is refused: there
    is nothing to interpolate from). `calendar` ("NYSE", "XLON", ...) declares daily series on that exchange's
    trading days: weekends and its holidays are no gaps, a missing trading day is. `min_length` is a count or
    named parts that add up, e.g. `{"lookback": 336, "horizon": 48, "test": 96}`. `outlier_policy` decides what
    happens to values more than OUTLIER_MADS robust spreads from their series' rolling median: "fail" refuses the
    batch, "warn" keeps them (one log line per series, listed in the report), "clip" replaces each by the nearer
    edge of its band (rolling median +- OUTLIER_MADS x scale). Raises `DataValidationError` (report saved first).
    """
    calendar_freq = _check_arguments(gap_policy, max_gap_steps, tz, calendar, outlier_policy)
    min_total, min_parts = _min_length(min_length)
    source_name = source or str(frame.attrs.get("seqcast_source") or "dataframe")
    allowed_gap = 0 if gap_policy == "fail" else int(max_gap_steps or 0)

    batch, stats, notes = _prepare_batch(
        frame, tz, fill=gap_policy == "fill", allowed_gap=allowed_gap, calendar_freq=calendar_freq
    )
    expectations = _build_expectations(batch, allowed_gap, min_total, outlier_policy)
    gx_result = _run_suite(batch, expectations)
    checks = _read_results(
        gx_result, expectations, batch, frame, stats, notes, gap_policy, allowed_gap, min_total, min_parts
    )
    outlier_rows = _outlier_rows(batch, stats)
    if outlier_policy != "fail" and OUTLIER_COL in batch.columns:
        checks.append(_kept_outliers_check(batch, outlier_rows, outlier_policy))
    success = bool(gx_result.get("success")) and all(c.success for c in checks)

    clean: pd.DataFrame | None = None
    filled = filled_nan = clipped = 0
    if success:
        if outlier_policy == "warn":
            _log_outliers(batch, outlier_rows, source_name)
        elif outlier_policy == "clip":
            clipped = _clip_outliers(batch, outlier_rows, source_name)
        clean, filled, filled_nan = _clean_frame(batch, stats)
        if filled:
            logger.info(
                "filled %d missing points (%d of them NaN values) by linear interpolation in %s",
                filled,
                filled_nan,
                source_name,
            )
    report = ValidationReport(
        source=source_name,
        success=success,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        rows=len(batch),
        gap_policy=gap_policy,
        max_gap_steps=max_gap_steps,
        min_length=min_total,
        min_length_parts=min_parts,
        checks=checks,
        series=[s.summary for s in stats.values()],
        filled_points=filled,
        filled_nan=filled_nan,
        calendar=market_of(calendar_freq) if calendar_freq else None,
        outlier_policy=outlier_policy,
        outliers=len(outlier_rows),
        clipped_points=clipped,
        gx_result=_slim_gx_result(gx_result),
    )
    if save:
        save_report(report, report_dir)
    if clean is None:
        raise DataValidationError(report.describe(), report)
    return clean, report


def save_report(report: ValidationReport, directory: Path | None = None) -> Path:
    """Write the report as JSON (and a small HTML page beside it) and return the JSON path.

    The default folder is `get_settings().validation_dir`; file names carry the time, source and outcome.
    """
    if directory is None:
        from tasks.settings import get_settings

        directory = get_settings().validation_dir
    directory.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    slug = re.sub(r"[^A-Za-z0-9]+", "-", report.source).strip("-")[:60] or "batch"
    base = directory / f"{stamp}-{slug}-{'passed' if report.success else 'failed'}"
    report.json_path, report.html_path = base.with_suffix(".json"), base.with_suffix(".html")
    _write_atomic(report.json_path, json.dumps(report.to_dict(), indent=2, allow_nan=False, ensure_ascii=False))
    _write_atomic(report.html_path, report.to_html())
    return report.json_path


def latest_report_path(directory: Path | None = None) -> Path | None:
    """The most recently saved validation JSON, or None; prefer `report.json_path` when you hold the report."""
    if directory is None:
        from tasks.settings import get_settings

        directory = get_settings().validation_dir
    found = sorted(directory.glob("*.json"))
    return found[-1] if found else None


def read_report(path: Path) -> dict[str, Any]:
    """A saved report back as a dict (for the training flow and tests)."""
    data: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    return data


# ---------------------------------------------------------------------------------------------------------------
# the Prefect task


@task(name="validate-observations", retries=0, cache_policy=NO_CACHE)
def validate_observations_task(
    frame: pd.DataFrame,
    tz: str | None = None,
    gap_policy: GapPolicy = "fail",
    max_gap_steps: int | None = None,
    min_length: int | dict[str, int] | None = None,
    source: str | None = None,
    calendar: str | None = None,
    outlier_policy: OutlierPolicy = "fail",
) -> tuple[pd.DataFrame, ValidationReport]:
    """Validate a batch and publish the result as a markdown artifact; a failure is raised, never retried."""
    from prefect.logging import get_run_logger

    run_logger = get_run_logger()
    try:
        clean, report = validate_observations(
            frame,
            tz=tz,
            gap_policy=gap_policy,
            max_gap_steps=max_gap_steps,
            min_length=min_length,
            source=source,
            calendar=calendar,
            outlier_policy=outlier_policy,
        )
    except DataValidationError as exc:
        if exc.report is not None:
            publish_report_artifact(exc.report)
        raise
    publish_report_artifact(report)
    run_logger.info(
        "validated %d rows of %d series (%d points filled, %d outliers %s); report %s",
        report.rows,
        len(report.series),
        report.filled_points,
        report.outliers,
        "clipped" if report.clipped_points else "kept",
        report.json_path,
    )
    return clean, report


def publish_report_artifact(report: ValidationReport) -> None:
    """The report as a Prefect markdown artifact (key `validation-report`); call inside a flow or task run."""
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(
        markdown=report.to_markdown(),
        key="validation-report",
        description=f"Validation of {report.source}: {'passed' if report.success else 'failed'}",
    )


# ---------------------------------------------------------------------------------------------------------------
# preparing the batch: parsed helper columns and per-series step checks


@dataclass
class _SeriesStats:
    summary: SeriesSummary
    positions: np.ndarray  # batch row labels of this series' kept rows, sorted by time
    grid: pd.DatetimeIndex | None = None  # the full regular grid when gaps are to be filled
    fill: bool = False  # gaps or NaN values are to be filled (on `grid`, else on the rows there are)
    edge_nan: int = 0  # NaN values before the first or after the last number, which cannot be interpolated
    largest_run: int = 0  # longest run of missing steps and NaN values, the max_gap_steps that fills them


def _check_arguments(
    gap_policy: str, max_gap_steps: int | None, tz: str | None, calendar: str | None, outlier_policy: str = "fail"
) -> str | None:
    """Refuse bad arguments with the fix; returns the frequency of the declared calendar ("B-NYSE") or None."""
    if gap_policy not in GAP_POLICIES:
        raise ValueError(f"gap_policy={gap_policy!r} is not one of {GAP_POLICIES}; use 'fail' or 'fill'")
    if outlier_policy not in OUTLIER_POLICIES:
        raise ValueError(
            f"outlier_policy={outlier_policy!r} is not one of {OUTLIER_POLICIES}; use 'fail', 'warn' or 'clip'"
        )
    if max_gap_steps is not None and (not isinstance(max_gap_steps, int) or max_gap_steps < 0):
        raise ValueError(f"max_gap_steps={max_gap_steps!r} must be a whole number >= 0")
    if gap_policy == "fill" and not max_gap_steps:
        raise ValueError(
            "gap_policy='fill' needs max_gap_steps >= 1, the longest gap to fill (--max-gap-steps N); "
            f"got {max_gap_steps!r}"
        )
    if tz is not None:
        try:
            pd.Timestamp("2000-01-01").tz_localize(tz)
        except Exception as exc:
            raise ValueError(f"tz={tz!r} is not a time zone name; use one like 'Europe/London' or 'UTC'") from exc
    if calendar is None:
        return None
    try:
        return market_freq(calendar)
    except ValueError:
        raise ValueError(
            f"calendar={calendar!r} is not an exchange with a trading calendar; use one of "
            f"{', '.join(supported_markets())} (the holidays package's financial calendars)"
        ) from None


def _min_length(min_length: int | Mapping[str, int] | None) -> tuple[int | None, dict[str, int] | None]:
    if min_length is None:
        return None, None
    if isinstance(min_length, Mapping):
        parts = {str(k): int(v) for k, v in min_length.items()}
        if any(v < 0 for v in parts.values()):
            raise ValueError(f"min_length parts {parts} must all be >= 0")
        return sum(parts.values()), parts
    if int(min_length) < 1:
        raise ValueError(f"min_length={min_length!r} must be >= 1")
    return int(min_length), None


def _prepare_batch(
    frame: pd.DataFrame, tz: str | None, *, fill: bool, allowed_gap: int, calendar_freq: str | None = None
) -> tuple[pd.DataFrame, dict[str, _SeriesStats], dict[str, str]]:
    """The frame with a 0..n-1 index plus `chk_*` helper columns; per-series stats of the rows that parsed."""
    notes: dict[str, str] = {"calendar": calendar_freq} if calendar_freq else {}
    batch = frame.reset_index(drop=True).copy()
    batch.attrs = {}
    if not all(c in batch.columns for c in REQUIRED_COLUMNS) or batch.empty:
        return batch, {}, notes

    sid = batch["series_id"]
    if pd.api.types.is_object_dtype(sid):
        sid = sid.map(lambda v: v if isinstance(v, str) or _is_missing(v) else str(v))
    batch["series_id"] = sid.astype("str")

    ts, ts_note = _parse_times(batch["ts"], tz, batch["series_id"])
    if ts_note:
        notes["ts_parsed"] = ts_note
    batch[TS_COL] = ts

    value, text = _parse_values(batch["value"])
    batch[VALUE_COL] = value
    batch[TEXT_COL] = text
    # NaN/missing check without counting text twice (text is reported by its own check)
    batch[PRESENT_COL] = value.where(text.isna(), 0.0)

    stats = _step_checks(batch, fill=fill, allowed_gap=allowed_gap, freq=calendar_freq)
    _outlier_scores(batch, stats)
    return batch, stats, notes


def _is_missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _parse_values(raw: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Floats (NaN where missing or not a number) and the raw text of values that are not numbers."""
    if pd.api.types.is_bool_dtype(raw) or pd.api.types.is_numeric_dtype(raw):
        return raw.astype("float64"), pd.Series(pd.NA, index=raw.index, dtype="object")
    if pd.api.types.is_string_dtype(raw) and not pd.api.types.is_object_dtype(raw):
        as_text = raw
    else:
        as_text = raw.map(lambda v: v if isinstance(v, str) else (None if _is_missing(v) else str(v)))
    numbers = pd.to_numeric(as_text.where(as_text.notna(), None), errors="coerce").astype("float64")
    stripped = as_text.fillna("").astype("str").str.strip()
    is_na_text = stripped.str.lower().isin(NA_STRINGS)
    is_text = numbers.isna() & ~is_na_text
    text = as_text.where(is_text, None).astype("object")
    return numbers, text


def _parse_times(raw: pd.Series, tz: str | None, series: pd.Series) -> tuple[pd.Series, str]:
    """UTC timestamps (NaT where missing or unparsable); naive times are in `tz` (default UTC)."""
    note = ""
    utc = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[us, UTC]")
    if isinstance(raw.dtype, pd.DatetimeTZDtype):
        return raw.dt.tz_convert("UTC").astype("datetime64[us, UTC]"), note
    if pd.api.types.is_datetime64_dtype(raw):
        naive = raw.astype("datetime64[us]")
        localized, note = _localize(naive, tz, series)
        return localized, note
    if pd.api.types.is_numeric_dtype(raw) or pd.api.types.is_bool_dtype(raw):
        note = "timestamps are numbers; give dates or times such as 2024-01-31T00:30:00Z"
        return utc, note

    if pd.api.types.is_string_dtype(raw) and not pd.api.types.is_object_dtype(raw):
        text = raw
    else:
        text = raw.map(lambda v: None if _is_missing(v) else (v.isoformat() if hasattr(v, "isoformat") else str(v)))
    text = text.where(~text.fillna("").astype("str").str.strip().str.lower().isin(NA_STRINGS), None)
    present = text.notna()
    if tz is None:
        utc.loc[present] = _to_datetime(text[present], utc=True)
    else:
        aware = text.fillna("").astype("str").str.strip().str.contains(r"(?:Z|[+-]\d{2}:?\d{2})$", regex=True)
        if (present & aware).any():
            utc.loc[present & aware] = _to_datetime(text[present & aware], utc=True)
        naive_rows = present & ~aware
        if naive_rows.any():
            naive = _to_datetime(text[naive_rows], utc=False)
            if isinstance(naive.dtype, pd.DatetimeTZDtype):
                utc.loc[naive_rows] = naive.dt.tz_convert("UTC")
            else:
                localized, note = _localize(naive, tz, series[naive_rows])
                utc.loc[naive_rows] = localized
    return utc, note


def _to_datetime(text: pd.Series, *, utc: bool) -> pd.Series:
    """Parse with pandas' inferred format, then ISO 8601, then element by element; NaT where all fail."""
    out = _to_datetime_once(text, utc=utc, fmt=None)
    for fmt in ("ISO8601", "mixed"):
        bad = out.isna() & text.notna()
        if not bad.any():
            break
        again = _to_datetime_once(text[bad], utc=utc, fmt=fmt)
        if again.dtype == out.dtype:
            out.loc[bad] = again
    return out


def _to_datetime_once(text: pd.Series, *, utc: bool, fmt: str | None) -> pd.Series:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = pd.to_datetime(text, errors="coerce", utc=utc, format=fmt)
        except (ValueError, TypeError):  # offsets that differ, read without utc: read them as UTC instead
            out = pd.to_datetime(text, errors="coerce", utc=True, format=fmt)
    if isinstance(out.dtype, pd.DatetimeTZDtype):
        return out.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
    return out.astype("datetime64[us]")


def _localize(naive: pd.Series, tz: str | None, series: pd.Series) -> tuple[pd.Series, str]:
    """Naive times read in `tz` and converted to UTC; DST-ambiguous hours inferred from order per series."""
    if tz is None:
        return naive.dt.tz_localize("UTC").astype("datetime64[us, UTC]"), ""
    out = naive.dt.tz_localize(tz, ambiguous="NaT", nonexistent="NaT")
    lost = out.isna() & naive.notna()
    note = ""
    if lost.any():
        for sid in pd.unique(series[lost]):
            rows = series.index[series == sid]
            part = naive.loc[rows].sort_values(kind="stable")
            with contextlib.suppress(ValueError, TypeError):  # order gives no answer: those rows stay NaT
                out.loc[part.index] = part.dt.tz_localize(tz, ambiguous="infer", nonexistent="NaT")
        if (out.isna() & naive.notna()).any():
            note = (
                f"some naive times do not exist or are ambiguous in tz={tz!r} (a DST change); "
                "give those times with a UTC offset"
            )
    return out.dt.tz_convert("UTC").astype("datetime64[us, UTC]"), note


def _step_checks(
    batch: pd.DataFrame, *, fill: bool, allowed_gap: int, freq: str | None = None
) -> dict[str, _SeriesStats]:
    """Per-row step helpers (off-grid steps, missing steps before a row, series length) and per-series stats.

    Under `fill`, a NaN value counts as a missing step: the gap helper of a row is the run of missing steps and
    NaN values since the previous number, and NaN values inside a series pass the missing-value check (they are
    interpolated), while NaN values at a series' start or end still fail it. `freq` forces every series' frequency
    (a declared trading calendar); else each series' own is inferred.
    """
    batch[OFF_GRID_COL] = np.nan
    batch[GAP_COL] = np.nan
    batch[LENGTH_COL] = np.nan
    sid = batch["series_id"]
    good_id = sid.notna() & (sid.fillna("").str.len().between(1, MAX_SERIES_ID_LENGTH))
    good_id &= ~sid.fillna("").str.contains("\x00", regex=False)
    good = batch.loc[good_id & batch[TS_COL].notna(), ["series_id", TS_COL]]
    good = good.sort_values(["series_id", TS_COL], kind="stable")
    good = good[~good.duplicated(["series_id", TS_COL], keep="first")]

    # NaN values, not counting text (refused as text) or infinities (refused as infinite)
    nan_all = (batch[VALUE_COL].isna() & batch[TEXT_COL].isna()).to_numpy()
    present = batch[PRESENT_COL].to_numpy(dtype=np.float64, copy=True)
    if fill:  # NaN values are judged by where they are, below; rows refused for their key are reported there
        present[nan_all] = 0.0

    stats: dict[str, _SeriesStats] = {}
    off_grid = np.full(len(batch), np.nan)
    missing = np.full(len(batch), np.nan)
    length = np.full(len(batch), np.nan)
    codes, uniques = pd.factorize(good["series_id"], sort=False)
    bounds = np.flatnonzero(np.diff(codes)) + 1
    starts = np.concatenate([[0], bounds]).astype(int)
    ends = np.concatenate([bounds, [len(codes)]]).astype(int)
    labels = good.index.to_numpy()
    ts_all = pd.DatetimeIndex(good[TS_COL])
    for k, (lo, hi) in enumerate(zip(starts, ends, strict=True)):
        if hi <= lo:
            continue
        series_id = str(uniques[k])
        rows = labels[lo:hi]
        ts = ts_all[lo:hi]
        summary = SeriesSummary(
            series_id=series_id, rows=int(hi - lo), start=ts[0].isoformat(), end=ts[-1].isoformat(), freq=freq
        )
        item = _SeriesStats(summary=summary, positions=rows)
        stats[series_id] = item
        n_grid = hi - lo
        nan = nan_all[rows]
        steps_before = np.zeros(hi - lo)
        off = np.zeros(0)
        grid = None
        if hi - lo >= 2:
            summary.freq, off, miss, grid = _regularity(ts, freq)
            steps_before[1:] = miss
            off_grid[rows[1:]] = off
            off_grid[rows[0]] = 0
            summary.gaps = int((miss > 0).sum())
            summary.missing_steps = int(miss.sum())
            summary.largest_gap_steps = int(miss.max(initial=0))
        runs, edge = _missing_runs(steps_before, nan)
        summary.nan_values = int(nan.sum())
        item.edge_nan = int(edge.sum())
        item.largest_run = int(runs.max(initial=0))
        missing[rows] = runs if fill else steps_before
        if fill:
            present[rows[edge]] = np.nan
            to_fill = summary.missing_steps or summary.nan_values > item.edge_nan
            if to_fill and not off.any() and item.largest_run <= allowed_gap and not item.edge_nan:
                item.fill = True
                item.grid = grid if summary.missing_steps else None
                n_grid = len(item.grid) if item.grid is not None else n_grid
        length[rows] = n_grid
    batch[OFF_GRID_COL] = off_grid
    batch[GAP_COL] = missing
    batch[LENGTH_COL] = length
    batch[PRESENT_COL] = present
    return stats


def _missing_runs(steps_before: np.ndarray, nan: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of one series in time order: the run of missing steps and NaN values since the previous
    number (0 on NaN rows), and whether the row is a NaN before the first or after the last number."""
    total = steps_before + nan  # [n] what goes missing up to and including each row
    index = np.arange(len(nan))
    last_number = np.maximum.accumulate(np.where(nan, -1, index))  # [n] latest number at or before each row
    previous = np.concatenate([[-1], last_number[:-1]])  # [n] latest number before each row
    cumulative = np.cumsum(total)
    runs = np.where(previous >= 0, cumulative - cumulative[np.maximum(previous, 0)], steps_before)
    runs = np.where(nan, 0, runs)
    numbers = np.flatnonzero(~nan)
    edge = nan & ((index < numbers[0]) | (index > numbers[-1])) if numbers.size else nan.copy()
    return runs, edge


def _regularity(
    ts: pd.DatetimeIndex, freq: str | None = None
) -> tuple[str, np.ndarray, np.ndarray, pd.DatetimeIndex | None]:
    """Frequency, off-grid flag and missing steps of each step of a sorted series, and its full grid.

    `freq` (a declared trading calendar) wins over the inferred frequency. Business days, plain ("B") or an
    exchange's ("B-NYSE"), are counted on a numpy business-day calendar: a row on a weekend or holiday is off
    the grid, and only trading days without a row are missing steps.
    """
    freq = freq or infer_freq(ts)
    busdays = business_calendar(freq)
    if busdays is not None:
        days = ts.tz_convert("UTC").tz_localize(None).normalize()
        time_of_day = (ts.tz_convert("UTC").tz_localize(None) - days).to_numpy()
        day_arr = days.to_numpy().astype("datetime64[D]")
        counts = np.busday_count(day_arr[:-1], day_arr[1:], busdaycal=busdays)  # trading days in [prev, this)
        prev_open = np.is_busday(day_arr[:-1], busdaycal=busdays)
        first_step = np.arange(len(counts)) == 0
        # a row on a closed day is off-grid itself; the step after it is not blamed again
        off = ~np.is_busday(day_arr[1:], busdaycal=busdays) | (time_of_day[1:] != time_of_day[0])
        off |= (counts < 1) & (prev_open | first_step)
        miss = np.where(off, 0, np.maximum(counts - prev_open, 0))
        grid = pd.date_range(ts[0], ts[-1], freq=to_offset(freq)) if not off.any() else None
        return freq, off.astype(float), miss.astype(float), grid
    offset = to_offset(freq)
    if not isinstance(offset, Tick):  # a calendar frequency: `infer_freq` names one only when every step follows it
        zeros = np.zeros(len(ts) - 1)
        return freq, zeros, zeros, None
    step = pd.Timedelta(offset)
    step_units = int(step / pd.Timedelta(1, unit=ts.unit))
    diffs = np.diff(ts.asi8)
    off = diffs % step_units != 0
    if off.any():
        calendar = _calendar_freq(ts)
        if calendar is not None:  # monthly, quarterly, weekly-anchored ... regular on the calendar
            zeros = np.zeros(len(diffs))
            return calendar, zeros, zeros, None
    miss = np.where(off, 0, diffs // step_units - 1)
    grid = pd.date_range(ts[0], ts[-1], freq=step) if not off.any() else None
    return freq, off.astype(float), miss.astype(float), grid


def _calendar_freq(ts: pd.DatetimeIndex) -> str | None:
    if len(ts) < 3:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = pd.infer_freq(ts)
    if found is None:
        return None
    return found if isinstance(found, str) else str(getattr(found, "freqstr", found))


# ---------------------------------------------------------------------------------------------------------------
# outliers: a robust band around each series' rolling median


def _outlier_scores(batch: pd.DataFrame, stats: dict[str, _SeriesStats]) -> None:
    """Add (value - rolling median) / scale per row, and the median and scale, each series alone in time order.

    scale = max(the window's MAD, OUTLIER_FLOOR x the series' MAD); a series more than half of whose values are
    equal (MAD 0) uses the median of its non-zero deviations instead, so its rare moves are not outliers by default.
    """
    score, median, scale = (np.full(len(batch), np.nan) for _ in range(3))
    if stats:
        order = np.concatenate([item.positions for item in stats.values()])  # [rows] labels, series by series
        sizes = [len(item.positions) for item in stats.values()]
        keys = np.repeat(np.arange(len(stats)), sizes)  # [rows] series number of each row
        raw = batch[VALUE_COL].to_numpy(dtype=np.float64)[order]
        values = np.where(np.isfinite(raw), raw, np.nan)  # [rows] NaN and inf are judged by their own checks
        center, local = _rolling_median_and_mad(values, keys)  # [rows], [rows]
        as_series = pd.Series(values)
        deviation = (as_series - as_series.groupby(keys).transform("median")).abs()
        spread = deviation.groupby(keys).transform("median")
        spread = spread.where(spread > 0, deviation.where(deviation > 0).groupby(keys).transform("median"))
        band = np.maximum(local, OUTLIER_FLOOR * spread.fillna(0.0).to_numpy())  # [rows] NaN: not judged
        offset = values - center
        z = np.divide(offset, band, out=np.zeros(len(values)), where=band > 0)  # band 0: a constant series
        z[np.isnan(band) | np.isnan(offset)] = np.nan
        score[order], median[order], scale[order] = z, center, band
        counts = np.bincount(keys, weights=np.abs(np.nan_to_num(z)) > OUTLIER_MADS, minlength=len(stats))
        for item, count in zip(stats.values(), counts, strict=True):
            item.summary.outliers = int(count)
    batch[OUTLIER_COL], batch[MEDIAN_COL], batch[SCALE_COL] = score, median, scale


def _rolling_median_and_mad(values: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and MAD of each row's window of OUTLIER_WINDOW rows of its own series (a Hampel filter).

    Windows are centred, and shifted inside the series at its ends, so each holds OUTLIER_WINDOW rows (or the
    whole series): a half window at the start of a daily cycle would see only one phase of it. Rows come series by
    series in time order (`keys` the series number of each); windows are gathered as a [rows, window] matrix in
    chunks, so memory stays bounded and no Python loop runs per row.
    """
    n = len(values)
    starts = np.searchsorted(keys, keys, side="left")  # [n] first row of each row's series
    ends = np.searchsorted(keys, keys, side="right")  # [n] one past its last row
    first = np.clip(np.arange(n) - OUTLIER_WINDOW // 2, starts, np.maximum(starts, ends - OUTLIER_WINDOW))  # [n]
    offsets = np.arange(OUTLIER_WINDOW)  # [W]
    center, mad = np.full(n, np.nan), np.full(n, np.nan)
    for start in range(0, n, _WINDOW_CHUNK_ROWS):
        rows = np.arange(start, min(start + _WINDOW_CHUNK_ROWS, n))  # [C]
        index = first[rows, None] + offsets  # [C, W]
        inside = index < ends[rows, None]
        window = np.where(inside, values[np.minimum(index, n - 1)], np.nan)  # [C, W]
        enough = np.count_nonzero(~np.isnan(window), axis=1) >= OUTLIER_MIN_POINTS  # [C]
        center[rows[enough]], mad[rows[enough]] = _median_and_mad(window[enough])
    return center, mad


def _median_and_mad(window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and MAD of each row of `window [C, W]`, ignoring NaN. Rows without NaN (nearly all) take numpy's
    partition-based median; only the others take `nanmedian`, which sorts masked arrays and is many times slower.
    Both give the same order statistics."""
    middle, spread = np.empty(len(window)), np.empty(len(window))  # [C], [C]
    full = ~np.isnan(window).any(axis=1)  # [C]
    if full.any():
        rows = window[full]  # [F, W]
        middle[full] = np.median(rows, axis=1)
        spread[full] = np.median(np.abs(rows - middle[full, None]), axis=1)
    if not full.all():
        rows = window[~full]  # [C - F, W]
        middle[~full] = np.nanmedian(rows, axis=1)
        spread[~full] = np.nanmedian(np.abs(rows - middle[~full, None]), axis=1)
    return middle, spread


def _outlier_rows(batch: pd.DataFrame, stats: dict[str, _SeriesStats]) -> np.ndarray:
    """Batch labels of the values beyond their band, series by series in time order."""
    if OUTLIER_COL not in batch.columns or not stats:
        return np.zeros(0, dtype=int)
    order = np.concatenate([item.positions for item in stats.values()])
    scores = batch[OUTLIER_COL].to_numpy()[order]
    with np.errstate(invalid="ignore"):
        return order[np.abs(scores) > OUTLIER_MADS]


def _outlier_example(batch: pd.DataFrame, index: int) -> dict[str, Any]:
    """A row example with its rolling median and band, for messages and the report."""
    example = _row_example(batch, index)
    center, scale = (float(batch[column].to_numpy()[index]) for column in (MEDIAN_COL, SCALE_COL))
    example.update(median=center, low=center - OUTLIER_MADS * scale, high=center + OUTLIER_MADS * scale)
    return example


def _format_outlier(example: dict[str, Any]) -> str:
    band = f"band {example['low']:g} to {example['high']:g}"
    return f"{_format_example(example)} (rolling median {example['median']:g}, {band})"


def _kept_outliers_check(batch: pd.DataFrame, rows: np.ndarray, policy: str) -> CheckResult:
    """Under "warn" and "clip" outliers pass, but the report lists them as a check that found them."""
    check = CheckResult(
        check="outliers",
        expectation=f"outlier_policy_{policy}",
        column=OUTLIER_COL,
        success=True,
        description=f"values beyond {OUTLIER_MADS:g} MADs of their series' rolling median are {policy}ed",
        element_count=len(batch),
        unexpected_count=len(rows),
    )
    if len(rows):
        per_series = batch.loc[rows, "series_id"].value_counts(sort=False)
        check.series = {str(k): int(v) for k, v in list(per_series.items())[:20]}
        check.series_count = len(per_series)
        check.examples = [_outlier_example(batch, int(i)) for i in rows[:EXAMPLES_PER_CHECK]]
        done = "kept" if policy == "warn" else "clipped to the edge of their band"
        check.message = (
            f"{len(rows)} of {len(batch)} values lie more than {OUTLIER_MADS:g} MADs from their series' rolling "
            f"median{_where(check.series, check.series_count)}, {done} (outlier_policy={policy!r}): "
            + "; ".join(_format_outlier(e) for e in check.examples)
        )
    return check


def _log_outliers(batch: pd.DataFrame, rows: np.ndarray, source: str) -> None:
    """One warning per series with outliers kept under "warn", naming its first few."""
    for series_id, part in batch.loc[rows].groupby("series_id", sort=False):
        shown = "; ".join(_format_outlier(_outlier_example(batch, int(i))) for i in part.index[:EXAMPLES_PER_CHECK])
        logger.warning(
            "series %s of %s: %d outliers kept (outlier_policy='warn'): %s",
            _show(series_id),
            source,
            len(part),
            shown,
        )


def _clip_outliers(batch: pd.DataFrame, rows: np.ndarray, source: str) -> int:
    """Replace each outlier by the nearer edge of its band (rolling median +- OUTLIER_MADS x scale); the count."""
    if not len(rows):
        return 0
    center, scale = batch.loc[rows, MEDIAN_COL], batch.loc[rows, SCALE_COL]
    values = batch.loc[rows, VALUE_COL]
    batch.loc[rows, VALUE_COL] = values.clip(center - OUTLIER_MADS * scale, center + OUTLIER_MADS * scale)
    for series_id, count in batch.loc[rows, "series_id"].value_counts(sort=False).items():
        logger.info("series %s of %s: clipped %d outliers to the edge of their band", _show(series_id), source, count)
    return len(rows)


# ---------------------------------------------------------------------------------------------------------------
# the suite


@dataclass(frozen=True)
class _Expectation:
    check: str
    column: str | None
    description: str
    make: Any  # () -> gx Expectation


def _build_expectations(
    batch: pd.DataFrame, allowed_gap: int, min_total: int | None, outlier_policy: str = "fail"
) -> list[_Expectation]:
    """The suite for this batch; column checks only run when the columns exist, so GX never errors."""
    import great_expectations.expectations as gxe

    out = [
        _Expectation(
            f"column_{c}", c, f"column {c!r} is present", lambda c=c: gxe.ExpectColumnToExist(column=c, meta={})
        )
        for c in REQUIRED_COLUMNS
    ]
    out.append(
        _Expectation("not_empty", None, "the batch has rows", lambda: gxe.ExpectTableRowCountToBeBetween(min_value=1))
    )
    if not all(c in batch.columns for c in REQUIRED_COLUMNS) or batch.empty:
        return out
    big = float(np.finfo(np.float64).max)
    out += [
        _Expectation(
            "series_id_present",
            "series_id",
            "every row has a series id",
            lambda: gxe.ExpectColumnValuesToNotBeNull(column="series_id"),
        ),
        _Expectation(
            "series_id_length",
            "series_id",
            f"series ids have 1 to {MAX_SERIES_ID_LENGTH} characters",
            lambda: gxe.ExpectColumnValueLengthsToBeBetween(
                column="series_id", min_value=1, max_value=MAX_SERIES_ID_LENGTH
            ),
        ),
        _Expectation(
            "series_id_no_nul",
            "series_id",
            "series ids hold no NUL byte (PostgreSQL text cannot store it)",
            lambda: gxe.ExpectColumnValuesToNotMatchRegex(column="series_id", regex="\x00"),
        ),
        _Expectation(
            "ts_parsed",
            TS_COL,
            "every timestamp is present and parses",
            lambda: gxe.ExpectColumnValuesToNotBeNull(column=TS_COL),
        ),
        _Expectation(
            "value_numeric",
            TEXT_COL,
            "every value is a number",
            lambda: gxe.ExpectColumnValuesToBeNull(column=TEXT_COL),
        ),
        _Expectation(
            "value_not_null",
            PRESENT_COL,
            "no value is missing or NaN",
            lambda: gxe.ExpectColumnValuesToNotBeNull(column=PRESENT_COL),
        ),
        _Expectation(
            "value_finite",
            VALUE_COL,
            "every value is finite",
            lambda: gxe.ExpectColumnValuesToBeBetween(column=VALUE_COL, min_value=-big, max_value=big),
        ),
        _Expectation(
            "keys_unique",
            "series_id, ts",
            "(series_id, ts) is unique",
            lambda: gxe.ExpectCompoundColumnsToBeUnique(
                column_list=["series_id", TS_COL], ignore_row_if="any_value_is_missing"
            ),
        ),
        _Expectation(
            "frequency_regular",
            OFF_GRID_COL,
            "every step of a series is a whole number of its frequency",
            lambda: gxe.ExpectColumnValuesToBeBetween(column=OFF_GRID_COL, min_value=0, max_value=0),
        ),
        _Expectation(
            "gaps",
            GAP_COL,
            f"no gap is longer than {allowed_gap} missing steps",
            lambda: gxe.ExpectColumnValuesToBeBetween(column=GAP_COL, min_value=0, max_value=allowed_gap),
        ),
    ]
    if outlier_policy == "fail":  # under "warn" and "clip" outliers pass; the report lists them all the same
        out.append(
            _Expectation(
                "outliers",
                OUTLIER_COL,
                f"every value lies within {OUTLIER_MADS:g} MADs of its series' rolling median",
                lambda: gxe.ExpectColumnValuesToBeBetween(
                    column=OUTLIER_COL, min_value=-OUTLIER_MADS, max_value=OUTLIER_MADS
                ),
            )
        )
    if min_total is not None:
        out.append(
            _Expectation(
                "min_length",
                LENGTH_COL,
                f"every series has at least {min_total} observations",
                lambda: gxe.ExpectColumnValuesToBeBetween(column=LENGTH_COL, min_value=min_total),
            )
        )
    return out


def _run_suite(batch: pd.DataFrame, expectations: list[_Expectation]) -> dict[str, Any]:
    """Run the expectations on the whole frame as one batch in an ephemeral GX context; the result as a dict."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    with _gx_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        context = gx.get_context(project_config=config, mode="ephemeral")
        datasource = context.data_sources.add_pandas("seqcast")
        asset = datasource.add_dataframe_asset("observations")
        batch_definition = asset.add_batch_definition_whole_dataframe("batch")
        suite_expectations = []
        for item in expectations:
            expectation = item.make()
            expectation.meta = {"seqcast_check": item.check}
            suite_expectations.append(expectation)
        # one suite, built whole and validated against the batch directly (adding expectations one by one to a
        # stored suite re-serialises it each time)
        suite = gx.ExpectationSuite(name="seqcast-observations", expectations=suite_expectations)
        gx_batch = batch_definition.get_batch(batch_parameters={"dataframe": batch})
        result = gx_batch.validate(suite, result_format={"result_format": "COMPLETE", "partial_unexpected_count": 20})
        data: dict[str, Any] = result.to_json_dict()
    return data


def _slim_gx_result(result: dict[str, Any]) -> dict[str, Any]:
    """The GX result without full unexpected lists (partial lists are kept), so the JSON stays small."""
    slim = json.loads(json.dumps(_jsonable(result), allow_nan=False))
    for item in slim.get("results", []):
        for key in ("unexpected_list", "unexpected_index_list", "unexpected_index_query"):
            item.get("result", {}).pop(key, None)
    return _jsonable(slim)


# ---------------------------------------------------------------------------------------------------------------
# reading the results into messages


def _read_results(
    result: dict[str, Any],
    expectations: list[_Expectation],
    batch: pd.DataFrame,
    frame: pd.DataFrame,
    stats: dict[str, _SeriesStats],
    notes: dict[str, str],
    gap_policy: str,
    allowed_gap: int,
    min_total: int | None,
    min_parts: dict[str, int] | None,
) -> list[CheckResult]:
    by_check = {
        (r.get("expectation_config", {}).get("meta") or {}).get("seqcast_check"): r for r in result.get("results", [])
    }
    checks = []
    for item in expectations:
        r = by_check.get(item.check, {})
        res = r.get("result") or {}
        exception = (r.get("exception_info") or {}).get("exception_message")
        success = bool(r.get("success")) and not exception
        indexes = [int(i) for i in res.get("unexpected_index_list") or []]
        check = CheckResult(
            check=item.check,
            expectation=str((r.get("expectation_config") or {}).get("type", "")),
            column=item.column,
            success=success,
            description=item.description,
            element_count=res.get("element_count"),
            unexpected_count=int(res.get("unexpected_count") or (0 if success else len(indexes))),
        )
        if not success:
            if indexes and "series_id" in batch.columns:
                per_series = batch.loc[indexes, "series_id"].fillna("<missing>").value_counts(sort=False)
                check.series = {str(k): int(v) for k, v in list(per_series.items())[:20]}
                check.series_count = len(per_series)
            example = _outlier_example if item.check == "outliers" else _row_example
            check.examples = [example(batch, i) for i in indexes[:EXAMPLES_PER_CHECK]]
            if item.check == "min_length":
                check.message = _length_message(indexes, batch, stats, min_total, min_parts)
            else:
                check.message = _message(item, check, indexes, batch, frame, stats, notes, gap_policy, allowed_gap)
            if exception:
                check.message += f" (GX could not run it: {exception})"
        checks.append(check)
    return checks


def _message(
    item: _Expectation,
    check: CheckResult,
    indexes: list[int],
    batch: pd.DataFrame,
    frame: pd.DataFrame,
    stats: dict[str, _SeriesStats],
    notes: dict[str, str],
    gap_policy: str,
    allowed_gap: int,
) -> str:
    n, total = check.unexpected_count, check.element_count or len(batch)
    where = _where(check.series, check.series_count)
    rows = "; ".join(_format_example(e) for e in check.examples)
    if item.check.startswith("column_"):
        return _missing_column_message(item.column or "", frame)
    if item.check == "not_empty":
        return "the batch is empty (0 rows); check the source file or query, it must hold at least one row"
    if item.check == "series_id_present":
        return f"{n} of {total} rows have no series id: {rows}; fill the series column or give series_id"
    if item.check == "series_id_length":
        return (
            f"{n} of {total} rows have a series id that is empty or longer than {MAX_SERIES_ID_LENGTH} "
            f"characters{where}: {rows}; use ids of 1 to {MAX_SERIES_ID_LENGTH} characters"
        )
    if item.check == "series_id_no_nul":
        return (
            f"{n} of {total} rows have a NUL byte (\\x00) in the series id{where}, which PostgreSQL text cannot "
            f"store: {rows}; remove it from the ids"
        )
    if item.check == "ts_parsed":
        hint = notes.get("ts_parsed") or "use ISO 8601 times such as 2024-01-31T00:30:00Z"
        return f"{n} of {total} timestamps are missing or cannot be parsed{where}: {rows}; {hint}"
    if item.check == "value_numeric":
        return f"{n} of {total} values are not numbers{where}: {rows}; values must be numeric"
    if item.check == "value_not_null":
        return _nan_message(check, stats, gap_policy, f"{n} of {total} values are missing or NaN{where}: {rows}")
    if item.check == "value_finite":
        return f"{n} of {total} values are infinite{where}: {rows}; values must be finite numbers"
    if item.check == "outliers":
        shown = "; ".join(_format_outlier(e) for e in check.examples)
        return (
            f"{n} of {total} values lie more than {OUTLIER_MADS:g} MADs from their series' rolling median "
            f"({OUTLIER_WINDOW} points, centred){where}: {shown}; fix or drop them at the source, or pass "
            "--outlier-policy clip / warn (outlier_policy='clip' clips them to the band's edge, 'warn' keeps them)"
        )
    if item.check == "keys_unique":
        return (
            f"{n} rows repeat a (series_id, ts) key{where}: {rows}; keep one row per series and time "
            "(the same instant written twice, perhaps in two time zones, counts as a repeat)"
        )
    if item.check == "frequency_regular":
        parts = []
        for sid in list(check.series)[:5]:
            s = stats.get(sid)
            parts.append(f"series {_show(sid)} ({s.summary.freq if s else '?'}) has {check.series[sid]} off-grid steps")
        if notes.get("calendar"):
            market = market_of(notes["calendar"])
            return (
                f"{'; '.join(parts)}: e.g. {rows}; with calendar={market!r} every row must fall on a {market} "
                "trading day (no weekend, no holiday) at one time of day: drop the other rows, or ingest without "
                "--calendar"
            )
        return f"{'; '.join(parts)}: e.g. {rows}; resample each series to one regular frequency before ingesting"
    if item.check == "gaps":
        parts = []
        largest = 0
        for sid in list(check.series)[:5]:
            s = stats.get(sid)
            if s is None:
                continue
            s_summary = s.summary
            largest = max(largest, s.largest_run)
            nan_part = ""
            if s_summary.nan_values and s.largest_run > s_summary.largest_gap_steps:
                nan_part = (
                    f", and {s_summary.nan_values} NaN values; the longest run of missing steps and NaN values "
                    f"is {s.largest_run}"
                )
            parts.append(
                f"series {_show(sid)} ({s_summary.freq}) has {s_summary.gaps} gaps, {s_summary.missing_steps} "
                f"missing steps, the largest {s_summary.largest_gap_steps}{nan_part}"
            )
        fix = (
            f"gap_policy='fail' allows no gap; use gap_policy='fill' with max_gap_steps={largest} "
            f"(--gap-policy fill --max-gap-steps {largest}) or fix the source"
            if gap_policy == "fail"
            else f"max_gap_steps={allowed_gap} is too small for these; raise it or fix the source"
        )
        return f"{'; '.join(parts)} (first gaps end at {rows}); {fix}"
    return f"{n} of {total} rows fail '{item.description}'{where}: {rows}"


def _nan_message(check: CheckResult, stats: dict[str, _SeriesStats], gap_policy: str, head: str) -> str:
    """What to do about NaN values: interpolate the ones inside a series (naming the option that does), drop or
    fix the ones at a series' start or end, which have no value on one side to interpolate from."""
    offending = [stats[sid] for sid in check.series if sid in stats]
    edge = [s for s in offending if s.edge_nan]
    edge_ids = ", ".join(_show(s.summary.series_id) for s in edge[:5]) + (" ..." if len(edge) > 5 else "")
    if gap_policy == "fill":
        return (
            f"{head}; they are at the start or end of series {edge_ids}, where there is no value on one side to "
            "interpolate from: drop those rows or fill them at the source"
        )
    inner = [s for s in offending if s.summary.nan_values > s.edge_nan]
    if not inner:
        return (
            f"{head}; the first or last value of a series cannot be interpolated: drop those rows or fill them at "
            "the source"
        )
    largest = max(s.largest_run for s in inner)
    fix = (
        f"{head}; drop those rows, fill them at the source, or use gap_policy='fill' with max_gap_steps={largest} "
        f"(--gap-policy fill --max-gap-steps {largest}) to interpolate them"
    )
    if edge:
        fix += f" (NaN values at the start or end of series {edge_ids} cannot be interpolated: drop those rows)"
    return fix


def _length_message(
    indexes: list[int],
    batch: pd.DataFrame,
    stats: dict[str, _SeriesStats],
    min_total: int | None,
    min_parts: dict[str, int] | None,
) -> str:
    """ "series 'uk_load' has 120 observations; lookback (336) + horizon (48) + test (96) needs 480"."""
    short = [str(s) for s in pd.unique(batch.loc[indexes, "series_id"])] if indexes else []
    parts = []
    for sid in short[:10]:
        item = stats.get(sid)
        count = int(batch.loc[item.positions[0], LENGTH_COL]) if item is not None else 0
        parts.append(f"series {_show(sid)} has {count} observations")
    if min_parts:
        needs = " + ".join(f"{k} ({v})" for k, v in min_parts.items()) + f" needs {min_total}"
    else:
        needs = f"min_length needs {min_total}"
    more = f" (and {len(short) - 10} more series)" if len(short) > 10 else ""
    return f"{'; '.join(parts)}{more}; {needs}"


def _missing_column_message(column: str, frame: pd.DataFrame) -> str:
    option = OPTION_OF_COLUMN[column]
    flag = _FLAG_OF_OPTION[option]
    chosen = (frame.attrs.get("seqcast_columns") or {}).get(column)
    columns = list(frame.attrs.get("seqcast_source_columns") or [c for c in frame.columns if c not in REQUIRED_COLUMNS])
    shown = ", ".join(_show(str(c), 40) for c in columns[:20]) or "none"
    if chosen:
        return f"{option}={chosen!r} is not a column of the source (its columns: {shown}); fix {flag}"
    return f"required column {column!r} is missing and none could be guessed (columns: {shown}); name it with {flag}"


def _where(series: dict[str, int], total: int) -> str:
    if not series:
        return ""
    shown = ", ".join(f"{_show(k)} ({v})" for k, v in list(series.items())[:5])
    more = f" and {total - 5} more series" if total > 5 else ""
    return f" in series {shown}{more}"


def _row_example(batch: pd.DataFrame, index: int) -> dict[str, Any]:
    row = batch.loc[index]
    example: dict[str, Any] = {"row": index + 1}
    for column in REQUIRED_COLUMNS:
        if column in batch.columns:
            example[column] = _raw(row[column])
    return example


def _raw(value: Any) -> Any:
    if _is_missing(value):
        return None
    if isinstance(value, pd.Timestamp | dt.datetime):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _format_example(example: dict[str, Any]) -> str:
    bits = [f"row {example['row']}"]
    for key in REQUIRED_COLUMNS:
        if key in example:
            value = example[key]
            bits.append(f"{key}={_show(value) if isinstance(value, str) else repr(value)}")
    return " ".join(bits)


def _show(text: Any, limit: int = 40) -> str:
    """repr of a string, cut to `limit` characters with its full length said (a 10k-character id stays short)."""
    text = str(text)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").replace("\x00", "\\x00")


# ---------------------------------------------------------------------------------------------------------------
# the clean frame


def _clean_frame(batch: pd.DataFrame, stats: dict[str, _SeriesStats]) -> tuple[pd.DataFrame, int, int]:
    """series_id, ts (UTC), value (float), sorted, with gaps and NaN values filled where the policy allowed it;
    also how many points were filled in all, and how many of those were NaN values."""
    clean = pd.DataFrame(
        {
            "series_id": batch["series_id"].astype("str"),
            "ts": batch[TS_COL].astype("datetime64[us, UTC]"),
            "value": batch[VALUE_COL].astype("float64"),
        }
    )
    refilled: list[pd.DataFrame] = []
    replaced: list[np.ndarray] = []
    filled = filled_nan = 0
    for series_id, item in stats.items():
        if not item.fill:
            continue
        part = clean.loc[item.positions].set_index("ts")["value"]
        full = part if item.grid is None else part.reindex(item.grid)
        full = full.interpolate(method="linear", limit_area="inside")  # equal steps on the series' own grid
        new = int(len(full) - len(part))
        nan = int(part.isna().sum())
        item.summary.filled, item.summary.filled_nan = new + nan, nan
        filled += new + nan
        filled_nan += nan
        replaced.append(item.positions)
        refilled.append(
            pd.DataFrame({"series_id": series_id, "ts": full.index.astype("datetime64[us, UTC]"), "value": full.values})
        )
        logger.info(
            "series %s: filled %d missing points and %d NaN values by linear interpolation",
            _show(series_id),
            new,
            nan,
        )
    if refilled:
        kept = clean[~clean.index.isin(np.concatenate(replaced))]
        clean = pd.concat([kept, *refilled], ignore_index=True)
    clean = clean.sort_values(["series_id", "ts"], kind="stable").reset_index(drop=True)
    clean["series_id"] = clean["series_id"].astype("str")
    return clean, filled, filled_nan


# ---------------------------------------------------------------------------------------------------------------
# JSON helpers


def _jsonable(value: Any) -> Any:
    """Plain JSON types: numpy and pandas scalars unwrapped, non-finite floats as strings, paths as strings."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, pd.Timestamp | dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if _is_missing(value):
        return None
    return str(value)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
