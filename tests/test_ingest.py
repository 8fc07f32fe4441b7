"""Ingest on real SQLite and PostgreSQL: every bad input is refused with a clear message and writes nothing."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import Column, DateTime, Double, MetaData, Table, Text, select

from tasks import store
from tasks.ingest import SourceError, ingest, load_source, read_source
from tasks.validate import DataValidationError, read_report

BASELINE = "series_id,ts,value\nbase,2024-01-01T00:00:00Z,1\nbase,2024-01-01T01:00:00Z,2\nbase,2024-01-01T02:00:00Z,3\n"
GOOD_ROWS = "good,2024-01-01T00:00:00Z,1\ngood,2024-01-01T01:00:00Z,2\n"
HOSTILE_SQL = "x'); DROP TABLE observations; --"
HOSTILE_UNICODE = "Zürich \"東京\" ☃ \\ `tick` 🚀 'quoted' ;"

BAD_INPUTS: dict[str, tuple[bytes, str]] = {
    "missing_value_column": (
        b"series_id,ts\ngood,2024-01-01T00:00:00Z\n",
        "required column 'value' is missing and none could be guessed (columns: 'series_id', 'ts')",
    ),
    "unparsable_timestamp": (
        f"series_id,ts,value\n{GOOD_ROWS}bad,2024-01-01T00:00:00Z,1\nbad,tuesday morning,2\n".encode(),
        "1 of 4 timestamps are missing or cannot be parsed in series 'bad' (1): row 4 series_id='bad' "
        "ts='tuesday morning'",
    ),
    "duplicate_key": (
        f"series_id,ts,value\n{GOOD_ROWS}bad,2024-01-01T00:00:00Z,1\nbad,2024-01-01T00:00:00Z,2\n".encode(),
        "2 rows repeat a (series_id, ts) key in series 'bad' (2): row 3",
    ),
    "non_numeric_value": (
        f"series_id,ts,value\n{GOOD_ROWS}bad,2024-01-01T00:00:00Z,12 MW\n".encode(),
        "1 of 3 values are not numbers in series 'bad' (1): row 3 series_id='bad' ts='2024-01-01T00:00:00Z' "
        "value='12 MW'",
    ),
    "nan_value": (
        f"series_id,ts,value\n{GOOD_ROWS}bad,2024-01-01T00:00:00Z,NaN\n".encode(),
        "1 of 3 values are missing or NaN in series 'bad' (1): row 3",
    ),
    "infinite_value": (
        f"series_id,ts,value\n{GOOD_ROWS}bad,2024-01-01T00:00:00Z,-inf\n".encode(),
        "1 of 3 values are infinite in series 'bad' (1): row 3",
    ),
    "empty_file": (b"", "the batch is empty (0 rows)"),
    "header_only": (b"series_id,ts,value\n", "the batch is empty (0 rows)"),
    "nul_in_series_id": (
        f'series_id,ts,value\n{GOOD_ROWS}"bad\x00id",2024-01-01T00:00:00Z,1\n'.encode(),
        "1 of 3 rows have a NUL byte (\\x00) in the series id in series 'bad\\x00id' (1), which PostgreSQL text",
    ),
    "ten_thousand_character_id": (
        f"series_id,ts,value\n{GOOD_ROWS}{'x' * 10_000},2024-01-01T00:00:00Z,1\n".encode(),
        "1 of 3 rows have a series id that is empty or longer than 256 characters in series "
        "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... (10000 characters) (1)",
    ),
}


def _snapshot(url: str) -> list[tuple[Any, ...]]:
    """Every stored row, updated_at included, so "unchanged" means not even rewritten."""
    engine = store.get_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(select(store.observations).order_by(store.observations.c.series_id, "ts")).all()
    return [tuple(r) for r in rows]


def _csv(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


@pytest.fixture
def baseline(db_url: str, tmp_path: Path, seqcast_home: Path) -> list[tuple[Any, ...]]:
    """The database holding three rows of series 'base'; returns its snapshot."""
    result = ingest(str(_csv(tmp_path, "base.csv", BASELINE)), db_url)
    assert result.new == 3
    return _snapshot(db_url)


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_and_writes_nothing(
    case: str, db_url: str, tmp_path: Path, baseline: list[tuple[Any, ...]]
) -> None:
    content, phrase = BAD_INPUTS[case]
    path = _csv(tmp_path, f"{case}.csv", content)
    with pytest.raises(DataValidationError) as info:
        ingest(str(path), db_url)
    message = str(info.value)
    assert phrase in message
    assert f"validation of {path} failed" in message
    assert "Traceback" not in message and len(message) < 3000
    assert _snapshot(db_url) == baseline  # not even the good series of the batch
    # the GX result of the failed batch is kept on disk
    report = info.value.report
    assert report is not None and report.json_path is not None and report.json_path.exists()
    assert read_report(report.json_path)["success"] is False


def test_hostile_series_ids_are_stored_verbatim_and_harm_nothing(
    db_url: str, tmp_path: Path, baseline: list[tuple[Any, ...]]
) -> None:
    frame = pd.DataFrame(
        {
            "series_id": [HOSTILE_SQL] * 3 + [HOSTILE_UNICODE] * 3,
            "ts": [f"2024-01-01T0{h}:00:00Z" for h in range(3)] * 2,
            "value": [1.5, 2.5, 3.5, -1.0, 0.0, 1.0],
        }
    )
    path = tmp_path / "hostile.csv"
    frame.to_csv(path, index=False)
    result = ingest(str(path), db_url)
    assert result.new == 6
    assert set(store.list_series(store.get_engine(db_url))) == {"base", HOSTILE_SQL, HOSTILE_UNICODE}
    stored = store.read_observations(store.get_engine(db_url), series_ids=[HOSTILE_SQL])
    assert stored["value"].tolist() == [1.5, 2.5, 3.5]
    assert [r for r in _snapshot(db_url) if r[0] == "base"] == baseline  # the table and its rows are intact
    again = ingest(str(path), db_url)
    assert (again.new, again.updated, again.unchanged) == (0, 0, 6)


def test_sample_electricity_then_reingest_changes_nothing(db_url: str, seqcast_home: Path) -> None:
    first = ingest("sample:electricity", db_url)
    assert (first.new, first.updated, first.unchanged) == (4032, 0, 0)
    [series] = first.summary.series
    assert series.series_id == "england_wales_demand"
    assert series.start == pd.Timestamp("2000-06-05 00:00", tz="UTC")
    assert series.end == pd.Timestamp("2000-08-27 23:30", tz="UTC")
    before = _snapshot(db_url)
    second = ingest("sample:electricity", db_url)
    assert (second.new, second.updated, second.unchanged) == (0, 0, 4032)
    assert _snapshot(db_url) == before


def test_changed_value_in_a_csv_replaces_the_stored_one(db_url: str, tmp_path: Path, seqcast_home: Path) -> None:
    path = _csv(tmp_path, "meter.csv", "ts,value\n2024-01-01 00:00,1\n2024-01-01 01:00,2\n2024-01-01 02:00,3\n")
    assert ingest(str(path), db_url).new == 3
    path.write_text("ts,value\n2024-01-01 00:00,1\n2024-01-01 01:00,20.5\n2024-01-01 02:00,3\n")
    result = ingest(str(path), db_url)
    assert (result.new, result.updated, result.unchanged) == (0, 1, 2)
    stored = store.read_observations(store.get_engine(db_url), series_ids=["meter"])
    assert stored["value"].tolist() == [1.0, 20.5, 3.0]


def test_sql_query_source(db_url: str, seqcast_home: Path) -> None:
    staging = Table(
        "staging_readings",
        MetaData(),
        Column("sensor", Text),
        Column("reading_time", DateTime(timezone=True)),
        Column("reading", Double),
    )
    engine = store.get_engine(db_url)
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    staging.create(engine)
    try:
        with engine.begin() as conn:
            conn.execute(
                staging.insert(),
                [
                    {"sensor": s, "reading_time": start + dt.timedelta(minutes=15 * i), "reading": i * 1.0}
                    for s in ("s1", HOSTILE_SQL)
                    for i in range(8)
                ],
            )
        result = ingest(
            db_url,
            db_url,
            query="SELECT sensor, reading_time, reading FROM staging_readings ORDER BY reading_time",
            series_col="sensor",
            time_col="reading_time",
            value_col="reading",
        )
        assert result.new == 16
        assert result.source.startswith("query on ")
        assert {s.series_id for s in result.summary.series} == {"s1", HOSTILE_SQL}
        assert result.report.series[0].freq == "15min"
        stored = store.read_observations(engine, series_ids=["s1"])
        assert stored["ts"].iloc[-1] == pd.Timestamp("2024-01-01 01:45", tz="UTC")
    finally:
        staging.drop(engine)


def test_failing_query_is_a_source_error_and_writes_nothing(db_url: str, baseline: list[tuple[Any, ...]]) -> None:
    with pytest.raises(SourceError, match=r"query failed on .*; fix the query"):
        ingest(db_url, db_url, query="SELECT * FROM no_such_table")
    assert _snapshot(db_url) == baseline


def test_gap_fill_policy_writes_filled_points(db_url: str, tmp_path: Path, seqcast_home: Path) -> None:
    rows = "".join(f"2024-01-01T{h:02d}:00:00Z,{h}\n" for h in range(8) if h not in (3, 4))
    path = _csv(tmp_path, "gappy.csv", "timestamp,load\n" + rows)
    with pytest.raises(DataValidationError, match="has 1 gaps, 2 missing steps"):
        ingest(str(path), db_url)
    result = ingest(str(path), db_url, gap_policy="fill", max_gap_steps=2)
    assert result.new == 8 and result.report.filled_points == 2
    stored = store.read_observations(store.get_engine(db_url), series_ids=["gappy"])
    assert stored["value"].tolist() == [float(h) for h in range(8)]


def test_nan_values_are_refused_with_the_fill_option_then_filled(
    db_url: str, tmp_path: Path, baseline: list[tuple[Any, ...]]
) -> None:
    rows = "".join(f"2024-01-01T{h:02d}:00:00Z,{'NaN' if h in (2, 3) else h}\n" for h in range(6))
    path = _csv(tmp_path, "nan.csv", "timestamp,load\n" + rows)
    with pytest.raises(DataValidationError) as info:
        ingest(str(path), db_url)
    assert (
        "2 of 6 values are missing or NaN in series 'nan' (2): row 3 series_id='nan' ts='2024-01-01T02:00:00Z' "
        "value='NaN'; row 4 series_id='nan' ts='2024-01-01T03:00:00Z' value='NaN'; drop those rows, fill them at "
        "the source, or use gap_policy='fill' with max_gap_steps=2 (--gap-policy fill --max-gap-steps 2) to "
        "interpolate them"
    ) in str(info.value)
    assert _snapshot(db_url) == baseline
    result = ingest(str(path), db_url, gap_policy="fill", max_gap_steps=2)
    assert result.new == 6 and (result.report.filled_points, result.report.filled_nan) == (2, 2)
    stored = store.read_observations(store.get_engine(db_url), series_ids=["nan"])
    assert stored["value"].tolist() == [float(h) for h in range(6)]


def test_trailing_nan_is_refused_under_fill_and_writes_nothing(
    db_url: str, tmp_path: Path, baseline: list[tuple[Any, ...]]
) -> None:
    path = _csv(tmp_path, "tail.csv", "ts,value\n2024-01-01,1\n2024-01-02,NaN\n2024-01-03,3\n2024-01-04,\n")
    with pytest.raises(DataValidationError) as info:
        ingest(str(path), db_url, gap_policy="fill", max_gap_steps=5)
    assert (
        "1 of 4 values are missing or NaN in series 'tail' (1): row 4 series_id='tail' ts='2024-01-04' value=''; "
        "they are at the start or end of series 'tail', where there is no value on one side to interpolate from: "
        "drop those rows or fill them at the source"
    ) in str(info.value)
    assert _snapshot(db_url) == baseline


def _load_with_spike_csv(tmp_path: Path) -> Path:
    """Three days of hourly load as a meter exports it (`timestamp,load`), with 1e12 at row 41; rolling median
    30000, MAD 100, so the band is 29000 to 31000."""
    rows = "".join(
        f"2024-01-{1 + h // 24:02d}T{h % 24:02d}:00:00Z,{'1e12' if h == 40 else 30000 + (0, 100, -100)[h % 3]}\n"
        for h in range(72)
    )
    return _csv(tmp_path, "load.csv", "timestamp,load\n" + rows)


def test_a_1e12_load_value_is_refused_and_writes_nothing(
    db_url: str, tmp_path: Path, baseline: list[tuple[Any, ...]]
) -> None:
    path = _load_with_spike_csv(tmp_path)
    with pytest.raises(DataValidationError) as info:
        ingest(str(path), db_url)
    assert (
        "1 of 72 values lie more than 10 MADs from their series' rolling median (49 points, centred) in series "
        "'load' (1): row 41 series_id='load' ts='2024-01-02T16:00:00Z' value='1e12' (rolling median 30000, band "
        "29000 to 31000); fix or drop them at the source, or pass --outlier-policy clip / warn "
        "(outlier_policy='clip' clips them to the band's edge, 'warn' keeps them)"
    ) in str(info.value)
    assert _snapshot(db_url) == baseline  # not even the other 71 rows


@pytest.mark.parametrize(("policy", "stored"), [("warn", 1e12), ("clip", 31000.0)])
def test_outlier_policy_warn_keeps_and_clip_stores_the_band_edge(
    db_url: str, tmp_path: Path, baseline: list[tuple[Any, ...]], policy: str, stored: float
) -> None:
    path = _load_with_spike_csv(tmp_path)
    result = ingest(str(path), db_url, outlier_policy=policy)  # type: ignore[arg-type]
    assert result.new == 72
    assert (result.report.outliers, result.report.clipped_points) == (1, 1 if policy == "clip" else 0)
    values = store.read_observations(store.get_engine(db_url), series_ids=["load"])["value"].tolist()
    assert values[40] == stored
    assert values[:40] + values[41:] == [30000.0 + (0, 100, -100)[h % 3] for h in range(72) if h != 40]
    assert result.report.json_path is not None
    saved = read_report(result.report.json_path)
    assert saved["outlier_policy"] == policy and saved["outliers"] == 1


def _nyse_close_csv(tmp_path: Path, name: str, start: str, end: str) -> tuple[Path, pd.DatetimeIndex]:
    """A stock close on NYSE trading days, as a data vendor ships it (`date,close`, no holiday rows)."""
    from models.frequency import to_offset

    days = pd.date_range(start, end, freq=to_offset("B-NYSE"))
    rows = "".join(f"{d:%Y-%m-%d},{100 + i * 0.5}\n" for i, d in enumerate(days))
    return _csv(tmp_path, name, "date,close\n" + rows), days


@pytest.mark.parametrize("calendar", [None, "NYSE"])
def test_stock_close_on_trading_days_ingests_without_invented_days(
    db_url: str, tmp_path: Path, seqcast_home: Path, calendar: str | None
) -> None:
    path, days = _nyse_close_csv(tmp_path, "spx.csv", "2023-11-01", "2024-12-31")
    result = ingest(str(path), db_url, calendar=calendar)
    assert result.new == len(days) and result.report.filled_points == 0
    [series] = result.report.series
    assert (series.freq, series.gaps) == ("B-NYSE", 0)
    assert result.report.calendar == calendar
    stored = store.read_observations(store.get_engine(db_url), series_ids=["spx"])
    assert stored["ts"].dt.tz_localize(None).tolist() == list(days)
    holidays = pd.to_datetime(["2024-07-04", "2024-12-25"], utc=True)
    assert not stored["ts"].isin(holidays).any()


def test_declared_calendar_refuses_a_row_on_a_holiday_and_writes_nothing(
    db_url: str, tmp_path: Path, baseline: list[tuple[Any, ...]]
) -> None:
    path = _csv(tmp_path, "carried.csv", "date,close\n2024-07-02,1\n2024-07-03,2\n2024-07-04,2\n2024-07-05,3\n")
    with pytest.raises(DataValidationError) as info:
        ingest(str(path), db_url, calendar="NYSE")
    assert (
        "series 'carried' (B-NYSE) has 1 off-grid steps: e.g. row 3 series_id='carried' ts='2024-07-04' "
        "value='2'; with calendar='NYSE' every row must fall on a NYSE trading day (no weekend, no holiday) at one "
        "time of day: drop the other rows, or ingest without --calendar"
    ) in str(info.value)
    assert _snapshot(db_url) == baseline


def test_cli_ingest_with_calendar_and_fill(
    db_url: str, tmp_path: Path, seqcast_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import main

    path, days = _nyse_close_csv(tmp_path, "spx.csv", "2024-06-03", "2024-07-31")
    lines = path.read_text().splitlines()
    lines[5] = lines[5].split(",")[0] + ",NaN"  # a NaN close
    del lines[10]  # and a trading day missing
    path.write_text("\n".join(lines) + "\n")
    args = ["ingest", "--source", str(path), "--calendar", "NYSE", "--database-url", db_url]
    assert main([*args, "--gap-policy", "fill", "--max-gap-steps", "1"]) == 0
    out = capsys.readouterr().out
    assert (
        f"{len(days)} new, 0 updated, 0 unchanged (1 series, 2 points filled (1 of them NaN values), NYSE trading "
        in out
    )
    assert main(["ingest", "--source", str(path), "--calendar", "MOON", "--database-url", db_url]) == 1
    assert "calendar='MOON' is not an exchange with a trading calendar" in capsys.readouterr().err


def test_too_short_series_is_refused(db_url: str, baseline: list[tuple[Any, ...]]) -> None:
    with pytest.raises(DataValidationError) as info:
        ingest("sample:electricity", db_url, min_length={"lookback": 4000, "horizon": 48, "test": 96})
    assert (
        "series 'england_wales_demand' has 4032 observations; lookback (4000) + horizon (48) + test (96) needs 4144"
        in str(info.value)
    )
    assert _snapshot(db_url) == baseline


# --- sources without a database ----------------------------------------------------------------------------------


def test_glob_of_files_without_series_column_gives_one_series_per_file(tmp_path: Path) -> None:
    for name in ("north", "south"):
        _csv(tmp_path, f"{name}.csv", "Date,Reading\n2024-01-01,1\n2024-01-02,2\n2024-01-03,3\n")
    frame = load_source(str(tmp_path / "*.csv"))
    assert sorted(frame["series_id"].unique()) == ["north", "south"]
    assert len(frame) == 6
    assert str(frame["ts"].dtype) == "datetime64[us, UTC]"


def test_two_column_file_takes_the_other_column_as_value(tmp_path: Path) -> None:
    path = _csv(tmp_path, "msft.csv", "date,MSFT\n2024-01-01,1\n2024-01-02,2\n")
    frame = load_source(str(path), series_id="microsoft")
    assert frame["series_id"].tolist() == ["microsoft", "microsoft"]
    assert frame["value"].tolist() == [1.0, 2.0]


def test_parquet_with_typed_naive_times_and_tz(tmp_path: Path) -> None:
    path = tmp_path / "plant.parquet"
    pd.DataFrame(
        {
            "meter": [7, 7, 7],
            "when": pd.date_range("2024-07-01", periods=3, freq="30min"),
            "kw": [1.0, 2.0, 3.0],
        }
    ).to_parquet(path)
    frame = load_source(str(path), series_col="meter", time_col="when", value_col="kw", tz="Europe/Paris")
    assert frame["series_id"].tolist() == ["7", "7", "7"]
    assert frame["ts"].iloc[0] == pd.Timestamp("2024-06-30 22:00", tz="UTC")


def test_named_column_that_does_not_exist(tmp_path: Path) -> None:
    path = _csv(tmp_path, "x.csv", "ts,y\n2024-01-01,1\n")
    with pytest.raises(DataValidationError, match=r"value_col='load' is not a column of the source .*fix --value-col"):
        load_source(str(path), value_col="load")


@pytest.mark.parametrize(
    ("source", "kwargs", "phrase"),
    [
        ("sample:weather", {}, "unknown sample 'sample:weather'; the bundled samples are sample:electricity"),
        ("nowhere/*.csv", {}, "no file matches the glob 'nowhere/*.csv'"),
        ("missing.csv", {}, "source file 'missing.csv' does not exist"),
        ("postgresql://u:secret@h/db", {}, "looks like a database URL; give the rows to read with a query"),
        ("data.csv", {"query": "select 1"}, "with query, source must be a SQLAlchemy URL"),
        ("data.csv", {"series_col": "a", "series_id": "b"}, "series_col='a' and series_id='b' both given"),
    ],
)
def test_source_errors_say_the_fix(source: str, kwargs: dict[str, str], phrase: str) -> None:
    with pytest.raises(SourceError) as info:
        read_source(source, **kwargs)  # type: ignore[arg-type]
    assert phrase in str(info.value)
    assert "secret" not in str(info.value)


def test_broken_csv_quoting_is_a_validation_error(tmp_path: Path) -> None:
    path = _csv(tmp_path, "broken.csv", 'ts,value\n2024-01-01,1\n2024-01-02,"2\n2024-01-03,3,4,5\n')
    with pytest.raises(DataValidationError, match="cannot parse CSV"):
        read_source(str(path))


# --- Prefect: the flow, the artifact, and which errors are retried -----------------------------------------------


@pytest.fixture
def flow_env(prefect_harness: None, seqcast_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    from tasks.settings import get_settings

    url = f"sqlite:///{tmp_path / 'flow.db'}"
    monkeypatch.setenv("SEQCAST_DATABASE_URL", url)
    get_settings.cache_clear()
    return url


@pytest.mark.integration
def test_ingest_flow_writes_and_publishes_the_validation_artifact(flow_env: str) -> None:
    from prefect.artifacts import Artifact

    from flows.ingest import ingest_flow

    result = ingest_flow(source="sample:electricity")
    assert result["new"] == 4032 and result["series"] == 1
    assert read_report(Path(result["validation_report"]))["success"] is True
    artifact = Artifact.get("validation-report")
    assert artifact is not None and "Validation passed: sample:electricity" in str(artifact.data)


@pytest.mark.integration
def test_ingest_flow_takes_a_calendar(flow_env: str, tmp_path: Path) -> None:
    from flows.ingest import ingest_flow

    path, days = _nyse_close_csv(tmp_path, "spx.csv", "2024-06-03", "2024-07-31")
    result = ingest_flow(source=str(path), calendar="NYSE")
    assert result["new"] == len(days)
    report = read_report(Path(result["validation_report"]))
    assert report["calendar"] == "NYSE" and report["series"][0]["freq"] == "B-NYSE"


@pytest.mark.integration
def test_failed_validation_in_the_flow_runs_once_and_writes_nothing(flow_env: str, tmp_path: Path) -> None:
    from flows.ingest import ingest_flow

    path = _csv(tmp_path, "bad.csv", "ts,value\n2024-01-01,1\n2024-01-02,abc\n")
    with pytest.raises(DataValidationError, match="values are not numbers"):
        ingest_flow(source=str(path))
    assert _snapshot(flow_env) == []


@pytest.mark.integration
def test_ingest_flow_refuses_an_outlier_then_clips_it(flow_env: str, tmp_path: Path) -> None:
    from flows.ingest import ingest_flow

    path = _load_with_spike_csv(tmp_path)
    with pytest.raises(DataValidationError, match="or pass --outlier-policy clip / warn"):
        ingest_flow(source=str(path))
    assert _snapshot(flow_env) == []
    result = ingest_flow(source=str(path), outlier_policy="clip")
    assert result["new"] == 72 and result["outliers"] == 1
    assert max(r[2] for r in _snapshot(flow_env)) == 31000.0


def _run_read_task(monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> tuple[int, str]:
    """Run read_source_task (no retry delay) in a flow; how often its body ran and its final state.

    Calls are counted in the process: Prefect records task-run states through its event stream, which a
    read right after the flow may not see yet.
    """
    from prefect import flow

    from tasks import ingest as ingest_module

    calls: list[int] = []
    real_read_source = ingest_module.read_source

    def counting_read_source(*args: Any, **kw: Any) -> Any:
        calls.append(1)
        return real_read_source(*args, **kw)

    monkeypatch.setattr(ingest_module, "read_source", counting_read_source)

    @flow
    def probe() -> str:
        state = ingest_module.read_source_task.with_options(retry_delay_seconds=0)(**kwargs, return_state=True)
        return str(state.name)

    final = probe()
    return len(calls), final


@pytest.mark.integration
def test_read_source_task_retries_a_database_it_cannot_open(
    flow_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'no-such-folder' / 'x.db'}"
    runs, final = _run_read_task(monkeypatch, source=url, query="select 1")
    assert runs == 3
    assert final == "Failed"


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["validation", "source"])
def test_read_source_task_does_not_retry_bad_data_or_a_wrong_source(
    flow_env: str, tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = str(_csv(tmp_path, "b.csv", 'ts,value\n2024-01-01,"1\n2,3,4\n')) if kind == "validation" else "nope.csv"
    runs, final = _run_read_task(monkeypatch, source=source)
    assert runs == 1
    assert final == "Failed"


def test_rewriting_many_series_counts_new_changed_and_unchanged_rows_per_series(db_url: str) -> None:
    """1,200 series (more than one look-up query's worth) with different spans: only real changes are written."""
    engine = store.get_engine(db_url)
    ids = [f"meter-{i:04d}" for i in range(1200)]
    start = pd.Timestamp("2024-01-01", tz="UTC")
    frame = pd.DataFrame(
        {
            "series_id": [sid for sid in ids for _ in range(2)],
            "ts": [start + pd.Timedelta(hours=i % 7 + k) for i in range(1200) for k in range(2)],
            "value": [float(i) for i in range(1200) for _ in range(2)],
        }
    )
    assert store.upsert_observations(engine, frame).new == 2400
    again = frame.copy()
    again.loc[again["series_id"] == "meter-1100", "value"] = [1100.0, -5.0]  # one change, in the second query
    extra = pd.DataFrame({"series_id": ["meter-0003"], "ts": [start + pd.Timedelta(hours=30)], "value": [3.0]})
    result = store.upsert_observations(engine, pd.concat([again, extra], ignore_index=True))
    assert (result.new, result.updated, result.unchanged) == (1, 1, 2399)
    by_series = {s.series_id: (s.new, s.updated, s.unchanged) for s in result.series}
    assert by_series["meter-1100"] == (0, 1, 1) and by_series["meter-0003"] == (1, 0, 2)
    stored = store.read_observations(engine, series_ids=["meter-1100"])
    assert stored["value"].tolist() == [1100.0, -5.0]


def test_observations_come_back_in_code_point_order_of_their_ids(db_url: str) -> None:
    """The order the window builder uses frames in without a re-sort, whatever the database's collation."""
    ids = ["b", "B", "a-2", "a1", "A", "é", "z"]
    frame = pd.DataFrame(
        {"series_id": ids, "ts": [pd.Timestamp("2024-01-01", tz="UTC")] * len(ids), "value": [1.0] * len(ids)}
    )
    engine = store.get_engine(db_url)
    store.upsert_observations(engine, frame)
    assert store.read_observations(engine)["series_id"].tolist() == sorted(ids)


def test_the_copy_upsert_and_the_batched_upsert_agree_on_postgresql(postgres_database: str) -> None:
    """psycopg writes with COPY; other PostgreSQL drivers with executemany batches: same rows, same counts."""
    import datetime as dt

    engine = store.get_engine(postgres_database)
    with engine.begin() as conn:
        conn.execute(store.observations.delete())
    start = pd.Timestamp("2024-01-01 00:00:00.123456", tz="UTC")
    frame = pd.DataFrame(
        {
            "series_id": ["a,b", "a,b", 'q"uote', "new\nline"],
            "ts": [start, start + pd.Timedelta(hours=1), start, start],
            "value": [1.0, 2.5e-300, -0.1, 7.0],
        }
    )
    first = store.upsert_observations(engine, frame)  # COPY
    assert (first.new, first.updated, first.unchanged) == (4, 0, 0)
    pd.testing.assert_frame_equal(
        store.read_observations(engine), frame.sort_values(["series_id", "ts"], ignore_index=True)
    )
    changed = frame.assign(value=[1.0, 3.0, -0.1, 8.0]).sort_values(["series_id", "ts"], ignore_index=True)
    with engine.begin() as conn:  # the batched path on the same rows
        written = store._upsert_changed_observations(conn, changed, dt.datetime.now(dt.UTC))
    assert sorted(written["series_id"]) == ["a,b", "new\nline"] and not written["inserted"].any()
    again = store.upsert_observations(engine, changed)  # COPY again: nothing left to change
    assert (again.new, again.updated, again.unchanged) == (0, 0, 4)
    assert store.read_observations(engine)["value"].tolist() == changed["value"].tolist()
