"""Trading calendars: "B-<MARKET>" frequencies, their offsets, detection from a series, and a stock close from
ingest to forecast on NYSE days."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.frequency import (
    business_calendar,
    detect_market,
    infer_freq,
    market_freq,
    market_of,
    season_length,
    to_offset,
)
from models.packaging import target_timestamps
from tasks.validate import DataValidationError, validate_observations

# the NYSE's full-day closures on weekdays in 2024, written out by hand (not taken from the holidays package)
NYSE_2024 = pd.to_datetime(
    [
        "2024-01-01",  # New Year's Day
        "2024-01-15",  # Martin Luther King Jr. Day
        "2024-02-19",  # Washington's Birthday
        "2024-03-29",  # Good Friday
        "2024-05-27",  # Memorial Day
        "2024-06-19",  # Juneteenth
        "2024-07-04",  # Independence Day
        "2024-09-02",  # Labor Day
        "2024-11-28",  # Thanksgiving
        "2024-12-25",  # Christmas
    ]
)


def _trading_days_2024() -> pd.DatetimeIndex:
    """Weekdays of 2024 minus the hand-written NYSE holidays: 252 trading days."""
    weekdays = pd.bdate_range("2024-01-01", "2024-12-31")
    return weekdays[~weekdays.isin(NYSE_2024)]


def _close(days: pd.DatetimeIndex, series_id: str = "spx") -> pd.DataFrame:
    """A raw long frame, as a CSV reads: a random-walk close on `days`."""
    values = 4700 + np.cumsum(np.random.default_rng(0).normal(0, 20, len(days)))
    return pd.DataFrame({"series_id": series_id, "ts": days.strftime("%Y-%m-%d"), "value": values.astype(str)})


# --- the offset ------------------------------------------------------------------------------------------------


def test_nyse_offset_skips_the_2024_holidays_and_weekends() -> None:
    days = pd.date_range("2024-01-01", "2024-12-31", freq=to_offset("B-NYSE"))
    assert len(days) == 252
    assert list(days) == list(_trading_days_2024())
    assert not days.isin(NYSE_2024).any()


def test_mic_code_lower_case_market_and_multiples_name_the_same_days() -> None:
    nyse = pd.date_range("2024-06-01", "2024-12-31", freq=to_offset("B-NYSE"))
    assert list(pd.date_range("2024-06-01", "2024-12-31", freq=to_offset("B-XNYS"))) == list(nyse)
    assert list(pd.date_range("2024-06-01", "2024-12-31", freq=to_offset("B-nyse"))) == list(nyse)
    assert list(pd.date_range(nyse[0], nyse[-1], freq=to_offset("2B-NYSE"))) == list(nyse[::2])


def test_pandas_aliases_are_pandas_own_offsets() -> None:
    for alias in ("h", "30min", "D", "B", "W-SUN", "MS", "QS-JAN"):
        assert to_offset(alias) == pd.tseries.frequencies.to_offset(alias)


@pytest.mark.parametrize(
    ("freq", "phrase"),
    [
        ("B-MOON", "`freq` 'B-MOON' names market 'MOON', which has no trading calendar; use one of"),
        ("0B-NYSE", "`freq` '0B-NYSE' has a step of 0; use e.g. 'B-NYSE'"),
        ("fortnightly", "fortnightly"),
    ],
)
def test_unknown_frequencies_are_refused(freq: str, phrase: str) -> None:
    with pytest.raises(ValueError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        to_offset(freq)


def test_the_frequency_string_round_trips_through_json() -> None:
    freq = market_freq("nyse")
    assert freq == "B-NYSE" and market_of(freq) == "NYSE" and market_of("B") is None
    again = json.loads(json.dumps({"freq": freq}))["freq"]
    assert to_offset(again) == to_offset(freq)
    start = pd.Timestamp("2024-07-03", tz="UTC")
    assert start + to_offset(again) == pd.Timestamp("2024-07-05", tz="UTC")


def test_season_of_a_trading_day_week_is_5() -> None:
    assert season_length("B-NYSE") == 5 and season_length("B") == 5


def test_business_calendar_counts_trading_days() -> None:
    nyse = business_calendar("B-NYSE")
    plain = business_calendar("B")
    assert nyse is not None and plain is not None and business_calendar("h") is None
    july = (np.datetime64("2024-07-01"), np.datetime64("2024-07-08"))
    assert np.busday_count(*july, busdaycal=nyse) == 4  # Mon..Fri less the 4th
    assert np.busday_count(*july, busdaycal=plain) == 5


def test_target_timestamps_land_on_trading_days() -> None:
    origins = pd.DatetimeIndex(["2024-07-03", "2024-12-24 21:00"], tz="UTC")
    targets = pd.DataFrame(target_timestamps(origins, "B-NYSE", 3))
    assert targets.iloc[0].tolist() == list(pd.to_datetime(["2024-07-05", "2024-07-08", "2024-07-09"]))
    assert targets.iloc[1].tolist() == list(
        pd.to_datetime(["2024-12-26 21:00", "2024-12-27 21:00", "2024-12-30 21:00"])
    )
    assert not pd.DatetimeIndex(targets.to_numpy().ravel()).normalize().isin(NYSE_2024).any()


# --- detection -------------------------------------------------------------------------------------------------


def test_trading_day_index_is_named_b_nyse() -> None:
    assert infer_freq(_trading_days_2024()) == "B-NYSE"
    assert infer_freq(_trading_days_2024().tz_localize("UTC")) == "B-NYSE"
    assert detect_market(_trading_days_2024()) == "NYSE"


def test_weekday_index_without_holiday_gaps_stays_plain_b() -> None:
    assert infer_freq(pd.bdate_range("2024-01-01", "2024-12-31")) == "B"
    assert detect_market(pd.bdate_range("2024-01-01", "2024-12-31")) is None


def test_a_row_on_a_holiday_is_not_that_market() -> None:
    # holidays carried forward, except Christmas: the series trades on NYSE holidays, so it is no NYSE series
    weekdays = pd.bdate_range("2024-01-01", "2024-12-31")
    assert infer_freq(weekdays[weekdays != pd.Timestamp("2024-12-25")]) == "B"


def test_many_missing_weekdays_are_not_explained_by_holidays() -> None:
    days = _trading_days_2024()
    sparse = days[np.arange(len(days)) % 3 != 0]  # a third of the days gone: gaps, not a calendar
    assert detect_market(sparse) is None


def test_another_exchange_is_named_by_its_code() -> None:
    london = pd.date_range("2023-01-01", "2024-12-31", freq=to_offset("B-XLON"))
    assert infer_freq(london) == "B-XLON"


def test_a_real_missing_trading_day_is_still_a_gap(tmp_path: Path) -> None:
    days = _trading_days_2024()
    frame = _close(days.delete(days.get_loc(pd.Timestamp("2024-03-12"))))
    with pytest.raises(DataValidationError) as info:
        validate_observations(frame, source="spx", report_dir=tmp_path)
    assert (
        "series 'spx' (B-NYSE) has 1 gaps, 1 missing steps, the largest 1 (first gaps end at row 49 "
        "series_id='spx' ts='2024-03-13'"
    ) in str(info.value)
    assert "(--gap-policy fill --max-gap-steps 1)" in str(info.value)
    clean, report = validate_observations(frame, gap_policy="fill", max_gap_steps=1, report_dir=tmp_path)
    assert report.filled_points == 1 and report.series[0].freq == "B-NYSE"
    assert clean["ts"].dt.tz_localize(None).tolist() == list(days)


# --- a stock close from ingest to forecast ---------------------------------------------------------------------


def test_nyse_close_ingests_trains_and_forecasts_on_trading_days(
    db_url: str, tmp_path: Path, seqcast_home: Path
) -> None:
    from models.packaging import forecast_frame, load_forecaster, save_forecaster
    from tasks import store
    from tasks.ingest import ingest
    from tasks.train import TrainConfig, fit_forecaster
    from tasks.windowing import WindowConfig, prepare_windows

    path = tmp_path / "spx.csv"
    _close(_trading_days_2024()).drop(columns="series_id").rename(columns={"ts": "date", "value": "close"}).to_csv(
        path, index=False
    )
    result = ingest(str(path), db_url, calendar="NYSE")
    assert result.new == 252 and result.report.calendar == "NYSE" and result.report.series[0].gaps == 0

    stored = store.read_observations(store.get_engine(db_url), series_ids=["spx"])
    data = prepare_windows(stored, WindowConfig(lookback=20, horizon=5, test_size=10, val_size=10))
    assert data.freq == "B-NYSE"
    config = TrainConfig(hidden_size=4, num_layers=1, max_epochs=1, device="cpu", num_threads=1, seed=0)
    fit = fit_forecaster(data, config)
    folder = save_forecaster(tmp_path / "model", fit.model, data.scalers, data.freq)
    assert json.loads((folder / "config.json").read_text(encoding="utf-8"))["freq"] == "B-NYSE"
    loaded = load_forecaster(folder)

    # forecast from 2024-07-02 and from 2024-12-23: targets step over the 4th of July and Christmas
    for origin, expected in [
        ("2024-07-02", ["2024-07-03", "2024-07-05", "2024-07-08", "2024-07-09", "2024-07-10"]),
        ("2024-12-23", ["2024-12-24", "2024-12-26", "2024-12-27", "2024-12-30", "2024-12-31"]),
    ]:
        history = stored[stored["ts"] <= pd.Timestamp(origin, tz="UTC")]
        out = forecast_frame(loaded, history)
        assert out["target_ts"].dt.tz_localize(None).tolist() == list(pd.to_datetime(expected))
        assert np.isfinite(out["point"]).all()


def test_declared_calendar_refuses_rows_on_holidays(tmp_path: Path) -> None:
    # business days with the holidays carried forward, as sample:msft was made: declared NYSE, they are refused
    frame = _close(pd.bdate_range("2024-06-03", "2024-07-31"), "carried")
    with pytest.raises(DataValidationError) as info:
        validate_observations(frame, source="carried", calendar="NYSE", report_dir=tmp_path)
    assert ("series 'carried' (B-NYSE) has 2 off-grid steps: e.g. row 13 series_id='carried' ts='2024-06-19'") in str(
        info.value
    )
    assert "every row must fall on a NYSE trading day (no weekend, no holiday)" in str(info.value)
