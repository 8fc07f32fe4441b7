"""The validation suite on small frames: parsing, keys, ids, regularity, gaps, length, and the kept GX result."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.validate import (
    CheckResult,
    DataValidationError,
    ValidationReport,
    latest_report_path,
    read_report,
    validate_observations,
)

SAMPLES = Path(__file__).resolve().parents[1] / "tasks" / "samples"


def _frame(series: str, ts: list[str], values: list[object]) -> pd.DataFrame:
    return pd.DataFrame({"series_id": [series] * len(ts), "ts": ts, "value": values})


def _hourly(series: str, n: int, start: str = "2024-01-01") -> pd.DataFrame:
    ts = pd.date_range(start, periods=n, freq="h")
    return pd.DataFrame({"series_id": series, "ts": ts.strftime("%Y-%m-%dT%H:%M:%S"), "value": np.arange(n) * 1.0})


def _fail(frame: pd.DataFrame, tmp_path: Path, **kwargs: object) -> DataValidationError:
    with pytest.raises(DataValidationError) as info:
        validate_observations(frame, source="test", report_dir=tmp_path, **kwargs)  # type: ignore[arg-type]
    assert info.value.report is not None and not info.value.report.success
    return info.value


def _failed_checks(error: DataValidationError) -> set[str]:
    assert error.report is not None
    return {c.check for c in error.report.failures}


def test_raw_text_becomes_sorted_utc_floats(tmp_path: Path) -> None:
    frame = _frame("a", ["2024-01-01T02:00:00Z", "2024-01-01 00:00", "2024-01-01T01:00:00+00:00"], ["3", "1", " 2.5 "])
    clean, report = validate_observations(frame, report_dir=tmp_path)
    assert report.success
    assert str(clean["ts"].dtype) == "datetime64[us, UTC]"
    assert clean["value"].dtype == np.float64
    assert clean["value"].tolist() == [1.0, 2.5, 3.0]
    assert clean["ts"].tolist() == list(pd.date_range("2024-01-01", periods=3, freq="h", tz="UTC"))
    assert report.series[0].freq == "h"


def test_naive_times_read_in_tz_and_stored_in_utc(tmp_path: Path) -> None:
    frame = _frame("a", ["2024-07-01 00:00", "2024-07-01 01:00", "2024-07-01 02:00"], [1, 2, 3])
    clean, _ = validate_observations(frame, tz="Europe/London", report_dir=tmp_path)
    assert clean["ts"].iloc[0] == pd.Timestamp("2024-06-30 23:00", tz="UTC")


def test_dst_fall_back_hour_is_inferred_from_order(tmp_path: Path) -> None:
    # local hourly readings over the October change: 01:00 appears twice and the series is still regular in UTC
    local = ["2024-10-27 00:00", "2024-10-27 01:00", "2024-10-27 01:00", "2024-10-27 02:00", "2024-10-27 03:00"]
    clean, report = validate_observations(_frame("uk", local, [1, 2, 3, 4, 5]), tz="Europe/London", report_dir=tmp_path)
    assert report.success
    assert clean["ts"].diff().dropna().eq(pd.Timedelta(hours=1)).all()
    assert clean["ts"].iloc[0] == pd.Timestamp("2024-10-26 23:00", tz="UTC")


def test_a_nonexistent_local_time_is_refused_with_a_hint(tmp_path: Path) -> None:
    local = ["2024-03-31 00:00", "2024-03-31 01:30", "2024-03-31 02:00"]
    error = _fail(_frame("uk", local, [1, 2, 3]), tmp_path, tz="Europe/London")
    assert "ts_parsed" in _failed_checks(error)
    assert "ambiguous in tz='Europe/London'" in str(error)


def test_offsets_that_differ_are_converted_to_utc(tmp_path: Path) -> None:
    frame = _frame("a", ["2024-01-01T01:00:00+01:00", "2024-01-01T01:00:00Z", "2024-01-01T04:00:00+02:00"], [1, 2, 3])
    clean, _ = validate_observations(frame, report_dir=tmp_path)
    assert clean["ts"].tolist() == list(pd.date_range("2024-01-01", periods=3, freq="h", tz="UTC"))


def test_missing_value_column_names_the_option(tmp_path: Path) -> None:
    frame = pd.DataFrame({"series_id": ["a"], "ts": ["2024-01-01"]})
    frame.attrs["seqcast_columns"] = {"value": "load"}
    frame.attrs["seqcast_source_columns"] = ["series_id", "ts", "amount"]
    error = _fail(frame, tmp_path)
    assert _failed_checks(error) == {"column_value"}
    assert "value_col='load' is not a column of the source (its columns: 'series_id', 'ts', 'amount')" in str(error)
    assert "--value-col" in str(error)


def test_unparsable_timestamp_is_named_with_its_row(tmp_path: Path) -> None:
    error = _fail(_frame("a", ["2024-01-01", "2024-13-45", "2024-01-03"], [1, 2, 3]), tmp_path)
    assert _failed_checks(error) == {"ts_parsed"}
    assert "1 of 3 timestamps are missing or cannot be parsed in series 'a' (1): row 2" in str(error)
    assert "ts='2024-13-45'" in str(error)


def test_numeric_timestamps_are_refused(tmp_path: Path) -> None:
    frame = pd.DataFrame({"series_id": ["a", "a"], "ts": [20240101, 20240102], "value": [1.0, 2.0]})
    error = _fail(frame, tmp_path)
    assert "timestamps are numbers" in str(error)


def test_duplicate_key_even_written_in_two_zones(tmp_path: Path) -> None:
    frame = _frame("a", ["2024-01-01T00:00:00Z", "2024-01-01T01:00:00+01:00", "2024-01-01T01:00:00Z"], [1, 2, 3])
    error = _fail(frame, tmp_path)
    assert _failed_checks(error) == {"keys_unique"}
    assert "2 rows repeat a (series_id, ts) key in series 'a' (2): row 1" in str(error)


@pytest.mark.parametrize(
    ("value", "check", "phrase"),
    [
        ("abc", "value_numeric", "1 of 3 values are not numbers in series 'a' (1): row 2 series_id='a'"),
        ("NaN", "value_not_null", "1 of 3 values are missing or NaN in series 'a' (1): row 2"),
        ("", "value_not_null", "1 of 3 values are missing or NaN in series 'a' (1): row 2"),
        ("inf", "value_finite", "1 of 3 values are infinite in series 'a' (1): row 2"),
        ("-inf", "value_finite", "values are infinite"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, value: str, check: str, phrase: str) -> None:
    error = _fail(_frame("a", ["2024-01-01", "2024-01-02", "2024-01-03"], ["1", value, "3"]), tmp_path)
    assert _failed_checks(error) == {check}
    assert phrase in str(error)


def test_typed_nan_and_inf_are_refused(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "series_id": ["a"] * 4,
            "ts": pd.date_range("2024-01-01", periods=4, freq="D", tz="UTC"),
            "value": [1.0, np.nan, np.inf, 4.0],
        }
    )
    assert _failed_checks(_fail(frame, tmp_path)) == {"value_not_null", "value_finite"}


def test_empty_batch(tmp_path: Path) -> None:
    error = _fail(pd.DataFrame({"series_id": [], "ts": [], "value": []}), tmp_path)
    assert _failed_checks(error) == {"not_empty"}
    assert "the batch is empty (0 rows)" in str(error)


@pytest.mark.parametrize(
    ("series_id", "check", "phrase"),
    [
        ("bad\x00id", "series_id_no_nul", "NUL byte (\\x00) in the series id in series 'bad\\x00id'"),
        ("x" * 10_000, "series_id_length", "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... (10000 characters)"),
        ("", "series_id_length", "empty or longer than 256 characters"),
    ],
)
def test_bad_series_ids_are_refused(tmp_path: Path, series_id: str, check: str, phrase: str) -> None:
    error = _fail(_frame(series_id, ["2024-01-01", "2024-01-02"], [1, 2]), tmp_path)
    assert _failed_checks(error) == {check}
    assert phrase in str(error)
    assert len(str(error)) < 2000  # a 10k-character id is cut in the message


def test_business_day_sample_is_regular(tmp_path: Path) -> None:
    frame = pd.read_csv(SAMPLES / "msft.csv.gz", dtype=str, na_filter=False)
    clean, report = validate_observations(frame, report_dir=tmp_path)
    assert report.series[0].freq == "B" and report.series[0].gaps == 0
    assert len(clean) == 8262


def test_monthly_series_is_regular_on_the_calendar(tmp_path: Path) -> None:
    ts = pd.date_range("2020-01-01", periods=24, freq="MS").strftime("%Y-%m-%d").tolist()
    _, report = validate_observations(_frame("sales", ts, list(range(24))), report_dir=tmp_path)
    assert report.success and report.series[0].freq == "MS"


def test_one_new_point_per_series_passes(tmp_path: Path) -> None:
    # the nightly increment: one row per series, no frequency to check
    frame = pd.DataFrame({"series_id": ["a", "b"], "ts": ["2024-01-01", "2024-01-01"], "value": [1, 2]})
    clean, report = validate_observations(frame, report_dir=tmp_path)
    assert report.success and len(clean) == 2


def test_gap_fails_by_default_and_suggests_fill(tmp_path: Path) -> None:
    frame = _hourly("a", 10).drop(index=[3, 4])
    error = _fail(frame, tmp_path)
    assert _failed_checks(error) == {"gaps"}
    assert "series 'a' (h) has 1 gaps, 2 missing steps, the largest 2" in str(error)
    assert "--gap-policy fill --max-gap-steps 2" in str(error)


def test_gap_fill_interpolates_linearly_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    frame = _hourly("a", 10).drop(index=[3, 4])
    with caplog.at_level(logging.INFO, logger="tasks.validate"):
        clean, report = validate_observations(frame, gap_policy="fill", max_gap_steps=2, report_dir=tmp_path)
    assert report.filled_points == 2 and report.series[0].filled == 2
    assert clean["value"].tolist() == [float(i) for i in range(10)]
    assert clean["ts"].diff().dropna().eq(pd.Timedelta(hours=1)).all()
    assert "filled 2 missing points" in caplog.text


def test_gap_fill_refuses_gaps_longer_than_allowed(tmp_path: Path) -> None:
    frame = _hourly("a", 10).drop(index=[3, 4, 5])
    error = _fail(frame, tmp_path, gap_policy="fill", max_gap_steps=2)
    assert "max_gap_steps=2 is too small" in str(error)


def test_gap_fill_of_business_days_skips_weekends(tmp_path: Path) -> None:
    ts = pd.bdate_range("2024-01-01", periods=10)
    frame = pd.DataFrame({"series_id": "s", "ts": ts, "value": np.arange(10.0)}).drop(index=[4])  # a Friday
    clean, report = validate_observations(frame, gap_policy="fill", max_gap_steps=1, report_dir=tmp_path)
    assert report.filled_points == 1
    assert clean["ts"].dt.tz_localize(None).tolist() == list(ts)


def test_off_grid_step_is_refused(tmp_path: Path) -> None:
    frame = _frame("a", ["2024-01-01 00:00", "2024-01-01 01:00", "2024-01-01 02:00", "2024-01-01 02:30"], [1, 2, 3, 4])
    error = _fail(frame, tmp_path)
    assert "frequency_regular" in _failed_checks(error)
    assert "series 'a' (h) has 1 off-grid steps" in str(error)


def test_too_short_series_message(tmp_path: Path) -> None:
    frame = pd.concat([_hourly("uk_load", 120), _hourly("long", 500)], ignore_index=True)
    error = _fail(frame, tmp_path, min_length={"lookback": 336, "horizon": 48, "test": 96})
    assert _failed_checks(error) == {"min_length"}
    assert "series 'uk_load' has 120 observations; lookback (336) + horizon (48) + test (96) needs 480" in str(error)
    assert "'long'" not in str(error)


def test_min_length_as_a_number(tmp_path: Path) -> None:
    error = _fail(_hourly("a", 5), tmp_path, min_length=6)
    assert "series 'a' has 5 observations; min_length needs 6" in str(error)


def test_failed_result_json_is_kept_with_the_gx_result(seqcast_home: Path) -> None:
    frame = _frame("a", ["2024-01-01", "2024-01-02", "2024-01-03"], ["1", "inf", "oops"])
    with pytest.raises(DataValidationError) as info:
        validate_observations(frame, source="unit test")
    report = info.value.report
    assert report is not None and report.json_path is not None
    assert report.json_path.parent == seqcast_home / "validation"
    assert latest_report_path() == report.json_path
    assert str(report.json_path) in str(info.value)
    # strict JSON: no NaN/Infinity tokens
    data = json.loads(report.json_path.read_text(encoding="utf-8"), parse_constant=lambda c: pytest.fail(c))
    assert data == read_report(report.json_path)
    assert data["success"] is False
    assert {c["check"] for c in data["checks"] if not c["success"]} == {"value_numeric", "value_finite"}
    gx_types = {r["expectation_config"]["type"] for r in data["gx_result"]["results"]}
    assert "expect_compound_columns_to_be_unique" in gx_types
    assert data["gx_result"]["success"] is False
    assert report.html_path is not None and "<table>" in report.html_path.read_text(encoding="utf-8")


def test_passed_report_is_saved_too(seqcast_home: Path) -> None:
    _, report = validate_observations(_hourly("a", 3), source="ok")
    assert isinstance(report, ValidationReport) and report.json_path is not None
    assert read_report(report.json_path)["success"] is True
    assert "Validation passed" in report.to_markdown()


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [
        ({"gap_policy": "skip"}, "gap_policy='skip' is not one of"),
        ({"gap_policy": "fill"}, "gap_policy='fill' needs max_gap_steps >= 1"),
        ({"max_gap_steps": -1}, "max_gap_steps=-1 must be a whole number >= 0"),
        ({"tz": "Mars/Olympus"}, "tz='Mars/Olympus' is not a time zone name"),
        ({"min_length": 0}, "min_length=0 must be >= 1"),
        ({"calendar": "MOON"}, "calendar='MOON' is not an exchange with a trading calendar; use one of ASX, B3,"),
        (
            {"outlier_policy": "drop"},
            "outlier_policy='drop' is not one of ('fail', 'warn', 'clip'); use 'fail', 'warn'",
        ),
    ],
)
def test_bad_arguments_say_the_fix(tmp_path: Path, kwargs: dict[str, object], phrase: str) -> None:
    with pytest.raises(ValueError, match=phrase.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        validate_observations(_hourly("a", 3), report_dir=tmp_path, **kwargs)  # type: ignore[arg-type]


# --- NaN values under the gap policies ------------------------------------------------------------------------


def _with_nan(n: int, nan_at: list[int]) -> pd.DataFrame:
    frame = _hourly("a", n)
    frame["value"] = frame["value"].astype(str)
    frame.loc[nan_at, "value"] = "NaN"
    return frame


def test_nan_under_fail_names_the_rows_and_the_option_that_fills_them(tmp_path: Path) -> None:
    error = _fail(_with_nan(8, [2, 3]), tmp_path)
    assert _failed_checks(error) == {"value_not_null"}
    assert (
        "2 of 8 values are missing or NaN in series 'a' (2): row 3 series_id='a' ts='2024-01-01T02:00:00' "
        "value='NaN'; row 4 series_id='a' ts='2024-01-01T03:00:00' value='NaN'; drop those rows, fill them at the "
        "source, or use gap_policy='fill' with max_gap_steps=2 (--gap-policy fill --max-gap-steps 2) to "
        "interpolate them [expect_column_values_to_not_be_null on chk_value_present]"
    ) in str(error)


def test_nan_fill_interpolates_linearly_and_reports_the_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tasks.validate"):
        clean, report = validate_observations(
            _with_nan(8, [2, 3, 6]), gap_policy="fill", max_gap_steps=2, report_dir=tmp_path
        )
    assert clean["value"].tolist() == [float(i) for i in range(8)]
    assert len(clean) == 8 and clean["ts"].diff().dropna().eq(pd.Timedelta(hours=1)).all()
    assert (report.filled_points, report.filled_nan) == (3, 3)
    assert (report.series[0].filled, report.series[0].filled_nan, report.series[0].nan_values) == (3, 3, 3)
    assert "3 points filled (3 of them NaN values)" in report.to_markdown()
    assert "filled 0 missing points and 3 NaN values" in caplog.text


def test_typed_nan_is_filled_too(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"series_id": "a", "ts": pd.date_range("2024-01-01", periods=4, freq="D", tz="UTC"), "value": [1, np.nan, 3, 4]}
    )
    clean, report = validate_observations(frame, gap_policy="fill", max_gap_steps=1, report_dir=tmp_path)
    assert clean["value"].tolist() == [1.0, 2.0, 3.0, 4.0] and report.filled_nan == 1


def test_nan_next_to_a_gap_counts_as_one_run(tmp_path: Path) -> None:
    frame = _with_nan(8, [2]).drop(index=[3, 4])  # 02:00 NaN, 03:00 and 04:00 missing: a run of 3
    error = _fail(frame, tmp_path, gap_policy="fill", max_gap_steps=2)
    assert _failed_checks(error) == {"gaps"}
    assert (
        "series 'a' (h) has 1 gaps, 2 missing steps, the largest 2, and 1 NaN values; the longest run of missing "
        "steps and NaN values is 3 (first gaps end at row 4 series_id='a' ts='2024-01-01T05:00:00' value='5.0'); "
        "max_gap_steps=2 is too small for these; raise it or fix the source"
    ) in str(error)
    clean, report = validate_observations(frame, gap_policy="fill", max_gap_steps=3, report_dir=tmp_path)
    assert clean["value"].tolist() == [float(i) for i in range(8)]
    assert (report.filled_points, report.filled_nan) == (3, 1)


@pytest.mark.parametrize("nan_at", [[0], [7], [6, 7]])
def test_nan_at_the_start_or_end_cannot_be_filled(tmp_path: Path, nan_at: list[int]) -> None:
    error = _fail(_with_nan(8, nan_at), tmp_path, gap_policy="fill", max_gap_steps=3)
    assert _failed_checks(error) == {"value_not_null"}
    assert f"{len(nan_at)} of 8 values are missing or NaN in series 'a' ({len(nan_at)}): row {nan_at[0] + 1} " in str(
        error
    )
    assert (
        "; they are at the start or end of series 'a', where there is no value on one side to interpolate from: "
        "drop those rows or fill them at the source"
    ) in str(error)


def test_nan_under_fail_at_the_start_says_it_cannot_be_interpolated(tmp_path: Path) -> None:
    error = _fail(_with_nan(8, [0]), tmp_path)
    assert str(error).endswith(
        "1 of 8 values are missing or NaN in series 'a' (1): row 1 series_id='a' ts='2024-01-01T00:00:00' "
        "value='NaN'; the first or last value of a series cannot be interpolated: drop those rows or fill them at "
        "the source [expect_column_values_to_not_be_null on chk_value_present]"
    )


@pytest.mark.parametrize(("value", "check"), [("abc", "value_numeric"), ("inf", "value_finite")])
def test_text_and_inf_stay_refused_under_fill(tmp_path: Path, value: str, check: str) -> None:
    frame = _with_nan(8, [2])
    frame.loc[4, "value"] = value
    assert _failed_checks(_fail(frame, tmp_path, gap_policy="fill", max_gap_steps=3)) == {check}


# --- trading calendars ------------------------------------------------------------------------------------------


def _nyse_days(start: str, end: str) -> pd.DatetimeIndex:
    from models.frequency import to_offset

    return pd.date_range(start, end, freq=to_offset("B-NYSE"))


def test_trading_days_pass_without_and_with_a_declared_calendar(tmp_path: Path) -> None:
    days = _nyse_days("2024-06-03", "2024-07-31")  # Juneteenth and the 4th of July are missing
    frame = pd.DataFrame({"series_id": "spx", "ts": days, "value": np.arange(len(days), dtype=float)})
    _, detected = validate_observations(frame, report_dir=tmp_path)
    assert detected.series[0].freq == "B-NYSE" and detected.series[0].gaps == 0 and detected.calendar is None
    _, declared = validate_observations(frame, calendar="nyse", report_dir=tmp_path)
    assert declared.series[0].freq == "B-NYSE" and declared.calendar == "NYSE"
    assert "trading calendar NYSE" in declared.to_markdown()


def test_declared_calendar_counts_a_missing_trading_day_as_a_gap(tmp_path: Path) -> None:
    days = _nyse_days("2024-06-03", "2024-07-31")
    frame = pd.DataFrame({"series_id": "spx", "ts": days, "value": np.arange(len(days), dtype=float)})
    frame = frame[frame["ts"] != pd.Timestamp("2024-07-05")]  # the day after the 4th: a gap of 1, not 2
    error = _fail(frame, tmp_path, calendar="NYSE")
    assert _failed_checks(error) == {"gaps"}
    assert "series 'spx' (B-NYSE) has 1 gaps, 1 missing steps, the largest 1" in str(error)
    clean, report = validate_observations(
        frame, calendar="NYSE", gap_policy="fill", max_gap_steps=1, report_dir=tmp_path
    )
    assert report.filled_points == 1 and clean["ts"].dt.tz_localize(None).tolist() == list(days)
    # interpolated in trading days: halfway between the 3rd and the 8th, as the 4th and the weekend are no steps
    assert clean.loc[clean["ts"] == pd.Timestamp("2024-07-05", tz="UTC"), "value"].tolist() == [22.0]


# --- outliers ---------------------------------------------------------------------------------------------------


def _load_with_spike() -> pd.DataFrame:
    """Three days of hourly load (30000, 30100, 29900 repeating: rolling median 30000, MAD 100) with 1e12 at 16:00
    on day two (row 41)."""
    ts = pd.date_range("2024-01-01", periods=72, freq="h").strftime("%Y-%m-%dT%H:%M:%SZ")
    values = [str(30000 + (0, 100, -100)[h % 3]) for h in range(72)]
    values[40] = "1e12"
    return pd.DataFrame({"series_id": "load", "ts": ts, "value": values})


def _outlier_check(report: ValidationReport) -> CheckResult:
    return next(c for c in report.checks if c.check == "outliers")


def test_a_1e12_in_a_load_series_is_refused_with_its_row_and_the_fix(tmp_path: Path) -> None:
    error = _fail(_load_with_spike(), tmp_path)
    assert _failed_checks(error) == {"outliers"}
    assert (
        "  - 1 of 72 values lie more than 10 MADs from their series' rolling median (49 points, centred) in series "
        "'load' (1): row 41 series_id='load' ts='2024-01-02T16:00:00Z' value='1e12' (rolling median 30000, band "
        "29000 to 31000); fix or drop them at the source, or pass --outlier-policy clip / warn "
        "(outlier_policy='clip' clips them to the band's edge, 'warn' keeps them) "
        "[expect_column_values_to_be_between on chk_outlier_score]"
    ) in str(error)


def test_warn_keeps_an_outlier_logs_it_and_reports_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tasks.validate"):
        clean, report = validate_observations(
            _load_with_spike(), source="test", outlier_policy="warn", report_dir=tmp_path
        )
    assert report.success and clean["value"].iloc[40] == 1e12
    assert (report.outlier_policy, report.outliers, report.clipped_points) == ("warn", 1, 0)
    assert report.series[0].outliers == 1
    assert (
        "series 'load' of test: 1 outliers kept (outlier_policy='warn'): row 41 series_id='load' "
        "ts='2024-01-02T16:00:00Z' value='1e12' (rolling median 30000, band 29000 to 31000)"
    ) in caplog.text
    assert report.json_path is not None
    saved = next(c for c in read_report(report.json_path)["checks"] if c["check"] == "outliers")
    assert saved["success"] is True and saved["unexpected_count"] == 1
    assert saved["examples"] == [
        {
            "row": 41,
            "series_id": "load",
            "ts": "2024-01-02T16:00:00Z",
            "value": "1e12",
            "median": 30000.0,
            "low": 29000.0,
            "high": 31000.0,
        }
    ]
    assert "outlier policy `warn` (1 outliers kept)" in report.to_markdown()


def test_clip_replaces_an_outlier_by_the_edge_of_its_band(tmp_path: Path) -> None:
    frame = _load_with_spike()
    clean, report = validate_observations(frame, outlier_policy="clip", report_dir=tmp_path)
    # the band is rolling median 30000 +- 10 x MAD 100; 1e12 lies above it, so it becomes the upper edge
    assert clean["value"].iloc[40] == 31000.0
    expected = frame["value"].astype(float).drop(index=40)
    assert clean["value"].drop(index=40).tolist() == expected.tolist()
    assert (report.outliers, report.clipped_points) == (1, 1)
    assert "clipped to the edge of their band (outlier_policy='clip')" in _outlier_check(report).message


@pytest.mark.parametrize("name", ["electricity", "temperature", "msft"])
def test_bundled_samples_pass_the_outlier_check_at_the_default(tmp_path: Path, name: str) -> None:
    frame = pd.read_csv(SAMPLES / f"{name}.csv.gz", dtype=str, na_filter=False)
    _, report = validate_observations(frame, report_dir=tmp_path)
    check = _outlier_check(report)
    assert check.success and check.unexpected_count == 0
    assert report.outliers == 0


def test_a_small_move_in_a_flat_stretch_is_no_outlier(tmp_path: Path) -> None:
    # 30 hours flat at 60 (the window's MAD is 0) with one move to 62, then 42 hours of 70, 80, 90: the series' MAD
    # of 10 floors the scale at 2.5, so the move scores 0.8; a move to 90 there scores 12 and is refused
    values = [60.0] * 30 + [70.0, 80.0, 90.0] * 14
    values[10] = 62.0
    frame = pd.DataFrame({"series_id": "hr", "ts": pd.date_range("2024-01-01", periods=72, freq="h"), "value": values})
    _, report = validate_observations(frame, report_dir=tmp_path)
    assert _outlier_check(report).success and report.outliers == 0
    frame.loc[10, "value"] = 90.0
    assert "row 11 series_id='hr' ts='2024-01-01T10:00:00' value=90.0 (rolling median 60, band 35 to 85)" in str(
        _fail(frame, tmp_path)
    )


def test_rolling_median_and_mad_match_nanmedian_on_every_window() -> None:
    """The fast path (numpy's median on windows without NaN) gives the same figures as nanmedian on every window:
    series longer and shorter than the window, NaN inside, and windows with too few numbers."""
    from tasks.validate import OUTLIER_MIN_POINTS, OUTLIER_WINDOW, _rolling_median_and_mad

    rng = np.random.default_rng(5)
    lengths = [200, 30, OUTLIER_WINDOW, 11, 120]
    keys = np.repeat(np.arange(len(lengths)), lengths)
    values = rng.normal(100, 10, len(keys)).round(1)  # rounded: ties, as real readings have
    values[rng.choice(len(values), 25, replace=False)] = np.nan
    center, mad = _rolling_median_and_mad(values, keys)

    expected_center, expected_mad = np.full(len(values), np.nan), np.full(len(values), np.nan)
    start = 0
    for length in lengths:
        part = values[start : start + length]
        for i in range(length):
            first = min(max(i - OUTLIER_WINDOW // 2, 0), max(length - OUTLIER_WINDOW, 0))
            window = part[first : first + OUTLIER_WINDOW]
            if np.count_nonzero(~np.isnan(window)) >= OUTLIER_MIN_POINTS:
                expected_center[start + i] = np.nanmedian(window)
                expected_mad[start + i] = np.nanmedian(np.abs(window - expected_center[start + i]))
        start += length
    np.testing.assert_array_equal(center, expected_center)
    np.testing.assert_array_equal(mad, expected_mad)
