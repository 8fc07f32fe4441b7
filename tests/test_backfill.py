"""The backfill flow on real stores: equal to the forecast flow, leak-free, idempotent, resumable, clear errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from forecast_setup import (
    DEAD_URL,
    HORIZON,
    HOSTILE,
    KEY,
    LENGTH,
    LOOKBACK,
    TRAINED,
    at,
    forecasts,
    synthetic_frame,
)

from tasks import forecast as fc
from tasks import store

pytestmark = pytest.mark.usefixtures("prefect_harness")


def clear_forecasts(url: str) -> None:
    with store.get_engine(url).begin() as conn:
        conn.execute(store.forecasts.delete())


def table(url: str) -> pd.DataFrame:
    """The forecasts table without the columns that say which run wrote a row."""
    return forecasts(url)[[*KEY, "step", "point", "mlflow_run_id"]].reset_index(drop=True)


def backfill(start: pd.Timestamp, end: pd.Timestamp, **options: object) -> fc.BackfillSummary:
    """The backfill flow, at every observation (hourly) unless `every` is given: the flow's default is one a day."""
    from flows.backfill import backfill_flow

    options.setdefault("every", "h")
    return backfill_flow(start=start.to_pydatetime(), end=end.to_pydatetime(), **options)  # type: ignore[arg-type]


def test_backfill_equals_the_forecast_flow_at_the_same_origin(env: str) -> None:
    from flows.forecast import forecast_flow

    origin = at(250)
    summary = backfill(at(150), at(255))  # 106 origins x 4 series: several inference batches' worth
    assert summary.origins_planned == summary.origins_written == 106 * len(TRAINED)
    backfilled = forecasts(env)
    # the summary's realised accuracy is that of every row whose target was observed
    observed = synthetic_frame().rename(columns={"ts": "target_ts", "value": "actual"})
    joined = backfilled.merge(observed, on=["series_id", "target_ts"])
    assert summary.realised is not None and summary.realised.rows == len(joined) > 0
    inside = (joined["actual"] >= joined["lower"]) & (joined["actual"] <= joined["upper"])
    assert summary.realised.coverage == pytest.approx(inside.mean()) and summary.realised.level == 0.9
    assert summary.realised.mae == pytest.approx((joined["actual"] - joined["point"]).abs().mean())
    assert "inside the 90% intervals" in fc.backfill_markdown(summary)
    backfilled = backfilled[backfilled["origin_ts"] == origin].reset_index(drop=True)
    assert len(backfilled) == len(TRAINED) * HORIZON

    clear_forecasts(env)
    past = forecast_flow(as_of=origin.to_pydatetime())
    assert past.realised is not None and past.realised.rows == len(TRAINED) * HORIZON  # every target observed
    forecast = forecasts(env).reset_index(drop=True)
    cols = [*KEY, "step"]
    pd.testing.assert_frame_equal(backfilled[cols], forecast[cols])
    np.testing.assert_array_equal(backfilled["point"].to_numpy(), forecast["point"].to_numpy())  # bit for bit


def test_changing_the_future_does_not_change_a_backfilled_origin(env: str) -> None:
    cut = at(200)
    backfill(at(190), cut)
    before = table(env)

    clear_forecasts(env)
    engine = store.get_engine(env)
    future = synthetic_frame()
    future = future[future["ts"] > cut].assign(value=lambda f: f["value"] * 10 + 1000)
    store.upsert_observations(engine, future)  # rewrite everything after the cut ...
    with engine.begin() as conn:  # ... and delete some of it
        obs = store.observations
        conn.execute(obs.delete().where(obs.c.ts > (cut + pd.Timedelta(hours=30)).to_pydatetime()))
    backfill(at(190), cut)
    pd.testing.assert_frame_equal(before, table(env))

    # the same holds when the backfill range reaches past the changed data
    clear_forecasts(env)
    backfill(at(190), at(220))
    after = table(env)
    pd.testing.assert_frame_equal(before, after[after["origin_ts"] <= cut].reset_index(drop=True))


def test_backfill_twice_or_in_pieces_in_reverse_order_gives_the_same_table(env: str) -> None:
    first = backfill(at(100), at(160))
    whole = table(env)
    assert len(whole) == 61 * len(TRAINED) * HORIZON and not whole.duplicated(KEY).any()

    again = backfill(at(100), at(160))
    assert again.origins_existing == again.origins_planned and again.rows_written == 0 and again.chunks == 0
    pd.testing.assert_frame_equal(whole, table(env))
    assert (forecasts(env)["flow_run_id"] == first.flow_run_id).all()  # nothing rewritten

    clear_forecasts(env)
    late = backfill(at(131), at(160))
    early = backfill(at(100), at(135))  # overlaps the first piece by 5 origins
    assert early.origins_existing == 5 * len(TRAINED)
    assert late.rows_written + early.rows_written == len(whole)
    pd.testing.assert_frame_equal(whole, table(env))


def test_a_rerun_after_a_failed_chunk_fills_in_what_is_missing(env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.backfill

    backfill(at(100), at(130))
    reference = table(env)
    clear_forecasts(env)

    origins_per_chunk = 10
    monkeypatch.setattr(fc, "BACKFILL_CHUNK_ROWS", origins_per_chunk * HORIZON)
    monkeypatch.setattr(
        flows.backfill, "write_forecasts_task", fc.write_forecasts_task.with_options(retry_delay_seconds=0)
    )
    calls: list[int] = []
    real_write = fc.write_forecasts

    def database_dies_after_the_first_chunk(url: str, frame: pd.DataFrame) -> int:
        calls.append(len(frame))
        return real_write(url if len(calls) == 1 else DEAD_URL, frame)

    monkeypatch.setattr(fc, "write_forecasts", database_dies_after_the_first_chunk)
    with pytest.raises(store.StoreUnavailableError):
        backfill(at(100), at(130))
    assert len(calls) == 1 + 1 + fc.write_forecasts_task.retries  # chunk 1, then chunk 2 and its retries
    partial = forecasts(env)
    assert len(partial) == origins_per_chunk * HORIZON  # exactly the committed first chunk
    first_run = partial["flow_run_id"].iloc[0]

    monkeypatch.setattr(fc, "write_forecasts", real_write)
    resumed = backfill(at(100), at(130))
    assert resumed.origins_existing == origins_per_chunk
    assert resumed.origins_written == len(reference) // HORIZON - origins_per_chunk
    assert resumed.chunks == -(-resumed.origins_written // origins_per_chunk)
    pd.testing.assert_frame_equal(reference, table(env))
    rows = forecasts(env)
    assert (rows["flow_run_id"] == first_run).sum() == origins_per_chunk * HORIZON


def test_origin_times_snap_back_to_observations(env: str) -> None:
    daily = backfill(at(100) + pd.Timedelta(minutes=15), at(200), every="1D", series=["a"])
    origins = sorted(set(forecasts(env)["origin_ts"]))
    assert origins == [at(100 + 24 * k) for k in range(5)]  # 04:15 each day snaps to 04:00
    assert daily.every == "1D" and daily.origins_planned == 5 and daily.series == ["a"]

    clear_forecasts(env)
    fine = backfill(at(100), at(110), every="20min", series=["a"])
    assert fine.origins_planned == 11  # three times an hour, one origin per observation
    assert sorted(set(forecasts(env)["origin_ts"])) == [at(h) for h in range(100, 111)]


def test_origins_without_lookback_observations_are_skipped_and_reported(
    env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import main

    store.upsert_observations(store.get_engine(env), synthetic_frame(["zzz"]))
    summary = backfill(at(-5), at(LOOKBACK + 9), series=["a", HOSTILE, "zzz", "nope"])  # starts before the data
    assert summary.origins_planned == 2 * 11  # origins 47 h .. 57 h of 'a' and HOSTILE
    skipped = {(s.series_id, s.reason.split(" (")[0]): s.origins for s in summary.skipped}
    assert skipped == {
        ("a", "origin times before its first observation"): 5,
        ("a", "fewer than `lookback`"): LOOKBACK - 1,
        (HOSTILE, "origin times before its first observation"): 5,
        (HOSTILE, "fewer than `lookback`"): LOOKBACK - 1,
        ("nope", "no observations at or before 2024-01-03T09:00:00+00:00"): 1,
        ("zzz", "not in the model's training data"): 1,
    }
    assert set(forecasts(env)["series_id"]) == {"a", HOSTILE}

    clear_forecasts(env)
    code = main(
        ["backfill", "--start", "2024-01-02T23:00:00", "--end", "2024-01-03 09:00", "--every", "h", "--series", "a"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "backfilled 2024-01-02T23:00:00+00:00 .. 2024-01-03T09:00:00+00:00 every h with" in out
    assert "11 origins over 1 series (2024-01-02T23:00:00+00:00 .. 2024-01-03T09:00:00+00:00): 11 forecast now" in out
    assert f"wrote {11 * HORIZON} rows in 1 transactions" in out
    assert "read them with:" in out


def test_reversed_range_is_a_clear_error(env: str) -> None:
    with pytest.raises(
        fc.BackfillRangeError,
        match=r"^backfill range is reversed: start 2024-01-05T00:00:00\+00:00 is after end 2024-01-04T00:00:00\+00:00",
    ):
        backfill(at(96), at(72))
    assert len(forecasts(env)) == 0


def test_range_outside_the_data_names_the_data_span(env: str) -> None:
    span = f"which span {at(0).isoformat()} .. {at(LENGTH - 1).isoformat()}".replace("+", r"\+")
    for start, end in ((at(LENGTH + 10), at(LENGTH + 100)), (at(-100), at(-1))):
        with pytest.raises(fc.BackfillRangeError, match=f"lies outside the observations, {span}"):
            backfill(start, end)
    with pytest.raises(fc.BackfillRangeError, match=r"outside the observations of series 'a', which span"):
        backfill(at(LENGTH + 10), at(LENGTH + 100), series=["a"])
    assert len(forecasts(env)) == 0


def test_a_range_with_no_usable_origin_is_a_clear_error(env: str) -> None:
    with pytest.raises(fc.BackfillRangeError) as caught:
        backfill(at(0), at(20))
    message = str(caught.value)
    assert message.startswith("no origin in 2024-01-01T00:00:00+00:00 .. 2024-01-01T20:00:00+00:00 can be forecast")
    assert f"The first origin with `lookback` (48) observations before it is {at(LOOKBACK - 1).isoformat()}" in message
    assert len(forecasts(env)) == 0


def test_origins_are_one_day_apart_by_default(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The flow (and so the dashboard's form) and the CLI space origins a day apart unless told otherwise, as the
    nightly forecast makes them; `every=None` still means every observation."""
    from flows.backfill import backfill_flow
    from flows.cli import main

    summary = backfill_flow(start=at(100).to_pydatetime(), end=at(200).to_pydatetime(), series=["a"])
    assert summary.every == "1D" and summary.origins_planned == 5
    assert sorted(set(forecasts(env)["origin_ts"])) == [at(100 + 24 * k) for k in range(5)]

    clear_forecasts(env)
    assert main(["backfill", "--start", at(100).isoformat(), "--end", at(200).isoformat(), "--series", "a"]) == 0
    assert f"backfilled {at(100).isoformat()} .. {at(200).isoformat()} every 1D with" in capsys.readouterr().out
    assert sorted(set(forecasts(env)["origin_ts"])) == [at(100 + 24 * k) for k in range(5)]

    clear_forecasts(env)
    every_step = backfill(at(100), at(110), every=None, series=["a"])
    assert every_step.every == "h" and every_step.origins_planned == 11  # the series' own step


def test_bad_every_is_a_clear_error(env: str) -> None:
    with pytest.raises(fc.BackfillRangeError, match=r"`every` \('fortnightly-ish'\) is not a pandas offset alias"):
        backfill(at(100), at(120), every="fortnightly-ish")
    with pytest.raises(fc.BackfillRangeError, match=r"`every` \('-1h'\) must move forward in time"):
        backfill(at(100), at(120), every="-1h")
    assert len(forecasts(env)) == 0


def test_backfill_publishes_progress(env: str) -> None:
    from prefect.artifacts import Artifact

    backfill(at(100), at(110))
    progress = Artifact.get("backfill-progress")
    assert progress is not None and float(progress.data) == 100.0  # type: ignore[union-attr, arg-type]
    summary = Artifact.get("backfill-summary")
    assert summary is not None and "44 origins over 4 series" in str(summary.data)  # type: ignore[union-attr]
