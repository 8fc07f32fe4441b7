"""Sources to the observations table: files, globs, SQL queries and the bundled samples, validated, then upserted.

A source becomes a long frame `series_id, ts, value`; it is validated (tasks.validate) BEFORE the database is
touched, and written with `tasks.store.upsert_observations` in one transaction, so a failing batch writes nothing.

Sources:
- `sample:electricity`, `sample:temperature`, `sample:msft`: the bundled samples (tasks/samples/*.csv.gz).
- a CSV (`.csv`, `.tsv`, compressed `.gz`/`.bz2`/`.zip`/`.xz`) or Parquet (`.parquet`, `.pq`) file, a folder of
  them, or a glob such as `data/*.csv`; a file without a series column is one series named after the file stem.
- with `query`: the source is a SQLAlchemy URL (default: the seqcast database) and the query's rows are the batch.
"""

from __future__ import annotations

import glob
import importlib.resources
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import Engine

from models.errors import SeqcastError
from tasks.settings import get_settings, redact_url
from tasks.store import WriteSummary, get_engine, upsert_observations
from tasks.validate import (
    REQUIRED_COLUMNS,
    DataValidationError,
    GapPolicy,
    OutlierPolicy,
    ValidationReport,
    validate_observations,
)

SAMPLE_PREFIX = "sample:"
SAMPLES: tuple[str, ...] = ("electricity", "temperature", "msft")
DEFAULT_QUERY_SERIES_ID = "query"
# guesses, compared case-insensitively, in order of preference
TIME_GUESSES: tuple[str, ...] = (
    "ts",
    "timestamp",
    "time",
    "datetime",
    "date",
    "date_time",
    "time_stamp",
    "ds",
    "period",
    "datetime_utc",
    "timestamp_utc",
    "day",
)
VALUE_GUESSES: tuple[str, ...] = (
    "value",
    "y",
    "target",
    "load",
    "demand",
    "price",
    "close",
    "adj_close",
    "sales",
    "amount",
    "count",
    "temperature",
    "temp",
    "heart_rate",
    "reading",
    "measurement",
    "observation",
)
# no bare "id" or "name": a row-number column guessed as the series would make every row its own series
SERIES_GUESSES: tuple[str, ...] = ("series_id", "series", "unique_id", "item_id", "series_name", "symbol", "ticker")
CSV_SUFFIXES = (".csv", ".tsv", ".txt")
COMPRESSIONS = (".gz", ".bz2", ".zip", ".xz", ".zst")
PARQUET_SUFFIXES = (".parquet", ".pq")


class SourceError(SeqcastError, ValueError):
    """The source cannot be read as given (unknown sample, no matching file, URL without a query); not retried."""


@dataclass
class IngestResult:
    """What one ingest did: the validated batch's report and, per series, rows new / updated / unchanged."""

    source: str
    database: str  # redacted URL
    summary: WriteSummary
    report: ValidationReport

    @property
    def new(self) -> int:
        return self.summary.new

    @property
    def updated(self) -> int:
        return self.summary.updated

    @property
    def unchanged(self) -> int:
        return self.summary.unchanged


# ---------------------------------------------------------------------------------------------------------------
# plain functions


def describe_source(source: str | None, query: str | None = None) -> str:
    """A short, password-free name of a source for messages, reports and artifacts."""
    if query is not None:
        url = source or get_settings().db_url
        return f"query on {redact_url(url)}"
    return str(source)


def read_source(
    source: str | None,
    *,
    query: str | None = None,
    time_col: str | None = None,
    value_col: str | None = None,
    series_col: str | None = None,
    series_id: str | None = None,
) -> pd.DataFrame:
    """The source as a raw long frame `series_id, ts, value`, unparsed (validate_observations parses it).

    Columns are taken from the options or guessed; a column that cannot be found is left out, and validation
    then names it. Raises SourceError when the source itself cannot be found or read.
    """
    if series_col is not None and series_id is not None:
        raise SourceError(
            f"series_col={series_col!r} and series_id={series_id!r} both given; give series_col for a file with "
            "a series column, or series_id to name the one series of a file without one"
        )
    options = {"time_col": time_col, "value_col": value_col, "series_col": series_col, "series_id": series_id}
    if query is not None:
        url = source or get_settings().db_url
        if "://" not in url:
            raise SourceError(
                f"with query, source must be a SQLAlchemy URL such as postgresql+psycopg://..., not {url!r}"
            )
        raw = _read_query(url, query)
        frame = _to_long(raw, default_id=DEFAULT_QUERY_SERIES_ID, **options)
        return _with_attrs(frame, describe_source(source, query), [raw.columns], options)
    if not source:
        raise SourceError("no source given; pass a file, a glob, sample:NAME, or a SQLAlchemy URL with a query")
    if source.startswith(SAMPLE_PREFIX):
        name = source[len(SAMPLE_PREFIX) :]
        raw = _read_sample(name)
        frame = _to_long(raw, default_id=name, **options)
        return _with_attrs(frame, source, [raw.columns], options)
    if "://" in source:
        raise SourceError(
            f"source {redact_url(source)!r} looks like a database URL; give the rows to read with a query"
        )
    frames, columns = [], []
    for path in _expand(source):
        raw = _read_file(path)
        columns.append(raw.columns)
        frames.append(_to_long(raw, default_id=_stem(path), **options))
    frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    return _with_attrs(frame, source, columns, options)


def load_source(
    source: str | None,
    *,
    query: str | None = None,
    time_col: str | None = None,
    value_col: str | None = None,
    series_col: str | None = None,
    series_id: str | None = None,
    tz: str | None = None,
    gap_policy: GapPolicy = "fail",
    max_gap_steps: int | None = None,
    calendar: str | None = None,
    outlier_policy: OutlierPolicy = "fail",
) -> pd.DataFrame:
    """The source as a validated long frame: series_id (str), ts (UTC-aware), value (float), sorted.

    `calendar` ("NYSE", ...) declares daily series on that exchange's trading days (see validate_observations).
    The report is not saved; use `ingest` (or validate_observations) to keep it. Raises DataValidationError.
    """
    raw = read_source(
        source, query=query, time_col=time_col, value_col=value_col, series_col=series_col, series_id=series_id
    )
    clean, _ = validate_observations(
        raw,
        tz=tz,
        gap_policy=gap_policy,
        max_gap_steps=max_gap_steps,
        source=describe_source(source, query),
        save=False,
        calendar=calendar,
        outlier_policy=outlier_policy,
    )
    return clean


def ingest(
    source: str | None,
    target: Engine | str | None = None,
    *,
    query: str | None = None,
    time_col: str | None = None,
    value_col: str | None = None,
    series_col: str | None = None,
    series_id: str | None = None,
    tz: str | None = None,
    gap_policy: GapPolicy = "fail",
    max_gap_steps: int | None = None,
    min_length: int | Mapping[str, int] | None = None,
    save_report: bool = True,
    calendar: str | None = None,
    outlier_policy: OutlierPolicy = "fail",
) -> IngestResult:
    """Read, validate, then upsert one batch into `target` (an engine or URL; default the settings' database).

    `calendar` ("NYSE", "XLON", ...) declares daily series on that exchange's trading days: its weekends and
    holidays are no gaps, a missing trading day is. `outlier_policy` refuses ("fail"), keeps ("warn") or clips
    ("clip") values far outside their series' rolling band (see validate_observations). The database is not
    touched until the batch has passed validation; the write is one transaction.
    """
    raw = read_source(
        source, query=query, time_col=time_col, value_col=value_col, series_col=series_col, series_id=series_id
    )
    name = describe_source(source, query)
    clean, report = validate_observations(
        raw,
        tz=tz,
        gap_policy=gap_policy,
        max_gap_steps=max_gap_steps,
        min_length=min_length,
        source=name,
        save=save_report,
        calendar=calendar,
        outlier_policy=outlier_policy,
    )
    engine = target if isinstance(target, Engine) else get_engine(target or get_settings().db_url)
    summary = upsert_observations(engine, clean)
    return IngestResult(source=name, database=redact_url(str(engine.url)), summary=summary, report=report)


def is_transient_io_error(_task: Any, _run: Any, state: Any) -> bool:
    """Retry condition: retry a dropped connection or a flaky disk, never bad data or a wrong argument."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    try:
        state.result()
    except (DataValidationError, SourceError):
        return False
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
        return False
    except (OperationalError, InterfaceError, TimeoutError, ConnectionError, OSError):
        return True
    except Exception:
        return False
    return False


# ---------------------------------------------------------------------------------------------------------------
# Prefect tasks


@task(
    name="read-source",
    retries=2,
    retry_delay_seconds=[1, 5],
    retry_condition_fn=is_transient_io_error,
    cache_policy=NO_CACHE,
)
def read_source_task(
    source: str | None,
    query: str | None = None,
    time_col: str | None = None,
    value_col: str | None = None,
    series_col: str | None = None,
    series_id: str | None = None,
) -> pd.DataFrame:
    """Read a source (retried on I/O and connection errors only) into a raw long frame."""
    return read_source(
        source, query=query, time_col=time_col, value_col=value_col, series_col=series_col, series_id=series_id
    )


@task(
    name="write-observations",
    retries=3,
    retry_delay_seconds=[1, 5, 15],
    retry_condition_fn=is_transient_io_error,
    cache_policy=NO_CACHE,
)
def write_observations_task(frame: pd.DataFrame, database_url: str | None = None) -> WriteSummary:
    """Upsert a validated batch in one transaction (retried whole if the database drops); default: settings' URL."""
    from prefect.logging import get_run_logger

    url = database_url or get_settings().db_url
    summary = upsert_observations(get_engine(url), frame)
    get_run_logger().info(
        "wrote to %s: %d new, %d updated, %d unchanged",
        redact_url(url),
        summary.new,
        summary.updated,
        summary.unchanged,
    )
    return summary


# ---------------------------------------------------------------------------------------------------------------
# readers


def _read_sample(name: str) -> pd.DataFrame:
    if name not in SAMPLES:
        known = ", ".join(f"{SAMPLE_PREFIX}{s}" for s in SAMPLES)
        raise SourceError(f"unknown sample {SAMPLE_PREFIX + name!r}; the bundled samples are {known}")
    resource = importlib.resources.files("tasks.samples").joinpath(f"{name}.csv.gz")
    with resource.open("rb") as handle:
        return _read_csv(handle, f"{SAMPLE_PREFIX}{name}", compression="gzip", sep=",")


def _expand(source: str) -> list[Path]:
    """The files a path, folder or glob names, sorted; SourceError when there are none."""
    if any(ch in source for ch in "*?["):
        paths = [Path(p) for p in sorted(glob.glob(source, recursive=True)) if Path(p).is_file()]
        if not paths:
            raise SourceError(f"no file matches the glob {source!r}; check the pattern and the working folder")
        return paths
    path = Path(source).expanduser()
    if path.is_dir():
        paths = sorted(p for p in path.iterdir() if p.is_file() and _kind(p) is not None)
        if not paths:
            raise SourceError(f"folder {source!r} holds no CSV or Parquet file")
        return paths
    if not path.exists():
        raise SourceError(f"source file {source!r} does not exist; give a file, a folder, a glob or sample:NAME")
    return [path]


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    for compression in COMPRESSIONS:
        name = name.removesuffix(compression)
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    return None


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (*COMPRESSIONS, *PARQUET_SUFFIXES, *CSV_SUFFIXES):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name or path.name


def _read_file(path: Path) -> pd.DataFrame:
    kind = _kind(path)
    if kind is None:
        raise SourceError(
            f"source file {str(path)!r} is neither CSV ({', '.join(CSV_SUFFIXES)}, optionally compressed) nor "
            f"Parquet ({', '.join(PARQUET_SUFFIXES)}); convert it or rename it"
        )
    if kind == "parquet":
        try:
            return pd.read_parquet(path)
        except ValueError as exc:  # pyarrow's ArrowInvalid: not a Parquet file, or a broken one
            raise DataValidationError(f"cannot read Parquet file {str(path)!r}: {exc}") from None
    sep = "\t" if path.name.lower().removesuffix(".gz").endswith(".tsv") else ","
    return _read_csv(path, str(path), compression="infer", sep=sep)


def _read_csv(source: Path | IO[bytes], name: str, *, compression: str, sep: str) -> pd.DataFrame:
    """Every column as text, nothing turned into NaN, so validation sees exactly what the file holds."""
    try:
        return pd.read_csv(source, dtype=str, na_filter=False, compression=compression, sep=sep, encoding="utf-8-sig")  # type: ignore[call-overload]
    except pd.errors.EmptyDataError:
        return pd.DataFrame({c: pd.Series(dtype="str") for c in REQUIRED_COLUMNS})
    except pd.errors.ParserError as exc:
        raise DataValidationError(f"cannot parse CSV {name!r}: {str(exc).strip()}; fix the file's quoting") from None
    except UnicodeDecodeError as exc:
        raise DataValidationError(f"CSV {name!r} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _read_query(url: str, query: str) -> pd.DataFrame:
    """Rows of `query`; a failing connection propagates (retried), a failing query is a SourceError (not retried)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    # a plain engine: get_engine would create the seqcast tables in somebody else's database
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            try:
                result = conn.execute(text(query))
                columns = list(map(str, result.keys()))
                return pd.DataFrame(result.fetchall(), columns=columns)
            except DBAPIError as exc:
                if exc.connection_invalidated:
                    raise
                detail = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
                raise SourceError(f"query failed on {redact_url(url)}: {detail}; fix the query") from None
            except SQLAlchemyError as exc:
                raise SourceError(f"query failed on {redact_url(url)}: {exc}; fix the query") from None
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------------------------------
# column mapping


def _to_long(
    raw: pd.DataFrame,
    *,
    default_id: str,
    time_col: str | None,
    value_col: str | None,
    series_col: str | None,
    series_id: str | None,
) -> pd.DataFrame:
    """Pick the time, value and series columns (given or guessed) and name them ts, value, series_id."""
    columns = [str(c) for c in raw.columns]
    raw = raw.set_axis(columns, axis=1)
    ts = _pick(columns, time_col, TIME_GUESSES, exclude=())
    series = None if series_id is not None else _pick(columns, series_col, SERIES_GUESSES, exclude=(ts,))
    value = _pick(columns, value_col, VALUE_GUESSES, exclude=(ts, series))
    if value is None and value_col is None and series is None and len(columns) == 2 and ts is not None:
        value = next(c for c in columns if c != ts)  # "date,MSFT": the one other column is the value
    out = pd.DataFrame(index=raw.index)
    if series is not None:
        out["series_id"] = raw[series]
    elif series_col is None:  # no series column: one series, named by the caller or after the file
        out["series_id"] = pd.Series(series_id if series_id is not None else default_id, index=raw.index, dtype="str")
    if ts is not None:
        out["ts"] = raw[ts]
    if value is not None:
        out["value"] = raw[value]
    return out


def _pick(columns: list[str], given: str | None, guesses: Iterable[str], exclude: Iterable[str | None]) -> str | None:
    """The column named `given` (exact, else case-insensitive), or the first guess present; None if none is."""
    excluded = {c for c in exclude if c is not None}
    lookup: dict[str, str] = {}
    for c in columns:
        lookup.setdefault(c.strip().lower(), c)
    if given is not None:
        if given in columns:
            return given
        return lookup.get(given.strip().lower())
    for guess in guesses:
        found = lookup.get(guess)
        if found is not None and found not in excluded:
            return found
    return None


def _with_attrs(
    frame: pd.DataFrame, name: str, columns: list[pd.Index], options: Mapping[str, str | None]
) -> pd.DataFrame:
    """Remember the source's name and columns and the options given, so validation can explain a missing column."""
    seen: list[str] = []
    for cols in columns:
        seen += [str(c) for c in cols if str(c) not in seen]
    frame.attrs["seqcast_source"] = name
    frame.attrs["seqcast_source_columns"] = seen
    frame.attrs["seqcast_columns"] = {
        "ts": options.get("time_col"),
        "value": options.get("value_col"),
        "series_id": options.get("series_col"),
    }
    return frame
