"""Monitoring on real stores: forecasts written, then their actuals, then scores (SQLite and PostgreSQL); a rerun
changes nothing, a late actual adds its row, a corrected one updates it; aggregation, degradation and drift against a
reference built by hand; the monitor flow under Prefect's harness emits `seqcast.forecast.degraded` (read back through
Prefect's events API) and records the night in MLflow; the CLI prints the table.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from forecast_setup import HOSTILE, synthetic_frame
from monitor_setup import (
    HORIZON,
    RegisteredWithReference,
    actuals,
    forecast_rows,
    make_reference,
    register_with_reference,
)

from tasks import monitor as mon
from tasks import store
from tasks.monitor_publish import (
    DEGRADED_EVENT,
    event_payload,
    event_resource,
    night_step,
    report_markdown,
    series_rows,
)
from tasks.scores import ScoreWriteSummary, read_scores, score_forecasts

pytestmark = pytest.mark.integration

UTC = dt.UTC


def at(night: str, hour: float) -> pd.Timestamp:
    return pd.Timestamp(night, tz="UTC") + pd.Timedelta(hours=hour)


def nights(first: str, count: int) -> list[str]:
    return [d.date().isoformat() for d in pd.date_range(first, periods=count, freq="D")]


@pytest.fixture
def engine(db_url: str) -> Iterator[Any]:
    """The test's database (SQLite file or the session's PostgreSQL database) with no scores left from other tests."""
    engine = store.get_engine(db_url)
    with engine.begin() as conn:
        conn.execute(store.forecast_scores.delete())
    yield engine


def model_name() -> str:
    return f"monitor-{uuid.uuid4().hex[:8]}"


def write(engine: Any, forecasts: pd.DataFrame, observations: pd.DataFrame | None = None) -> None:
    store.upsert_forecasts(engine, forecasts)
    if observations is not None and len(observations):
        store.upsert_observations(engine, observations)


def run_monitor(
    engine: Any,
    name: str,
    references: dict[str, Any],
    as_of: pd.Timestamp,
    config: mon.MonitorConfig | None = None,
) -> mon.MonitorReport:
    """What the flow does, with the plain functions: score, read, aggregate, compare."""
    config = config or mon.MonitorConfig()
    window = mon.monitor_window(as_of, config.days)
    score_forecasts(engine, name, mon.mase_scales(references), window.end, window.start)
    scores = read_scores(engine, name, None, window.start, window.end)
    observations = store.read_observations(engine, start=window.start, end=window.end)
    return mon.monitor(scores, observations, references, config, name, window)


# ------------------------------------------------------------------------------------------ scoring


def test_scores_arrive_with_their_actuals_and_a_rerun_changes_nothing(engine: Any) -> None:
    name = model_name()
    forecasts = forecast_rows(["a", HOSTILE], ["2024-01-02", "2024-01-03"], name, "1")  # 2 x 2 x 4 rows
    write(engine, forecasts)
    scales = {"1": {"a": 2.0, HOSTILE: 4.0}}
    as_of = pd.Timestamp("2024-01-05", tz="UTC")

    assert score_forecasts(engine, name, scales, as_of) == ScoreWriteSummary(0, 0, 0)  # no actual yet

    observed = actuals(forecasts, 103.0)
    late = (observed["series_id"] == "a") & (observed["ts"] == observed["ts"].max())
    store.upsert_observations(engine, observed[~late])
    assert score_forecasts(engine, name, scales, as_of) == ScoreWriteSummary(15, 0, 0)
    first = read_scores(engine, name)
    assert len(first) == 15 and not first.duplicated(["series_id", "origin_ts", "target_ts"]).any()
    assert (first["abs_error"] == 3.0).all() and (first["actual"] == 103.0).all()
    expected_scaled = np.where(first["series_id"] == "a", 1.5, 0.75)
    np.testing.assert_allclose(first["scaled_error"], expected_scaled)
    assert first["inside"].isna().all() and first["level"].isna().all()  # no bounds: no coverage
    assert set(first["series_id"]) == {"a", HOSTILE}  # the hostile id stored verbatim

    again = score_forecasts(engine, name, scales, as_of)
    assert again == ScoreWriteSummary(0, 0, 15) and again.changed == 0
    pd.testing.assert_frame_equal(read_scores(engine, name), first)  # not even updated_at moved

    store.upsert_observations(engine, observed[late])  # the late actual arrives
    assert score_forecasts(engine, name, scales, as_of) == ScoreWriteSummary(1, 0, 15)

    target = first.loc[first["series_id"] == "a", "target_ts"].min()
    store.upsert_observations(engine, pd.DataFrame({"series_id": ["a"], "ts": [target], "value": [110.0]}))
    assert score_forecasts(engine, name, scales, as_of) == ScoreWriteSummary(0, 1, 15)
    after = read_scores(engine, name).set_index(["series_id", "target_ts"])
    before = first.set_index(["series_id", "target_ts"])
    corrected = after.loc[("a", target)]
    assert (corrected["actual"], corrected["abs_error"], corrected["scaled_error"]) == (110.0, 10.0, 5.0)
    assert corrected["updated_at"] > before.loc[("a", target), "updated_at"]
    assert corrected["scored_at"] == before.loc[("a", target), "scored_at"]
    untouched = before.index.drop(("a", target))
    pd.testing.assert_series_equal(after.loc[untouched, "updated_at"], before.loc[untouched, "updated_at"])


def test_only_observations_up_to_as_of_are_scored(engine: Any) -> None:
    name = model_name()
    forecasts = forecast_rows(["a"], ["2024-01-02"], name, "1")
    write(engine, forecasts, actuals(forecasts, 101.0))
    summary = score_forecasts(engine, name, {}, at("2024-01-02", 14))  # targets 13:00, 14:00 are due
    assert summary == ScoreWriteSummary(2, 0, 0)
    assert read_scores(engine, name)["step"].tolist() == [1, 2]
    assert read_scores(engine, name)["scaled_error"].isna().all()  # no reference: no scaled errors


def test_bounds_give_inside_and_null_bounds_give_no_coverage(engine: Any) -> None:
    name = model_name()
    bounded = forecast_rows(["a"], ["2024-01-02"], name, "1", half_width=2.0)
    unbounded = forecast_rows(["b"], ["2024-01-02"], name, "1")
    forecasts = pd.concat([bounded, unbounded], ignore_index=True)
    values = np.array([101.0, 103.0, 99.0, 90.0] * 2)  # a: inside, outside, inside, outside
    write(engine, forecasts, actuals(forecasts, values))
    references = {"1": make_reference({"a": 1.0, "b": 1.0})}
    report = run_monitor(engine, name, references, pd.Timestamp("2024-01-03", tz="UTC"))

    scores = read_scores(engine, name)
    assert scores.loc[scores["series_id"] == "a", "inside"].tolist() == [True, False, True, False]
    assert scores.loc[scores["series_id"] == "b", "inside"].tolist() == [None] * 4
    series = report.series.set_index("series_id")
    assert series.loc["a", "coverage"] == 0.5 and series.loc["a", "bounded"] == 4
    assert np.isnan(series.loc["b", "coverage"]) and series.loc["b", "bounded"] == 0
    [verdict] = report.versions
    assert verdict.coverage == 0.5 and verdict.level == 0.9  # pooled over the bounded rows only


# ------------------------------------------------------------------------------------------ aggregation


def test_aggregation_against_the_reference(engine: Any) -> None:
    name = model_name()
    forecasts = forecast_rows(["a", "b"], ["2024-01-02", "2024-01-03"], name, "7")
    observed = forecasts[["series_id", "target_ts", "step"]].rename(columns={"target_ts": "ts"})
    # error = step on a, 2 x step on b
    observed["value"] = 100.0 + observed["step"] * np.where(observed["series_id"] == "a", 1.0, 2.0)
    write(engine, forecasts, observed.drop(columns="step"))
    reference = make_reference({"a": 2.0, "b": 4.0}, test_mase=1.0, mae_by_step=[1.0, 2.0, 3.0, 4.0])
    report = run_monitor(engine, name, {"7": reference}, pd.Timestamp("2024-01-04", tz="UTC"))

    series = report.series.set_index("series_id")
    assert series.loc["a", "mae"] == 2.5 and series.loc["b", "mae"] == 5.0
    assert series.loc["a", "mase"] == 1.25 and series.loc["b", "mase"] == 1.25  # mean(1..4) / 2, mean(2..8) / 4
    assert series.loc["a", "test_mase"] == 1.0 and series.loc["a", "mase_ratio"] == 1.25
    assert (series["nights"] == 2).all() and (series["nights_bad"] == 0).all()  # 1.25 < 1.5 x 1.0
    assert (series["status"] == "ok").all()

    steps = report.steps.set_index("step")
    assert steps["mae"].tolist() == [1.5, 3.0, 4.5, 6.0]  # pooled over both series
    assert steps["test_mae"].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert (steps["rows"] == 4).all()
    per_series = report.series_steps.set_index(["series_id", "step"])
    assert per_series.loc["a", "mae"].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert per_series.loc["b", "mase"].tolist() == [0.5, 1.0, 1.5, 2.0]

    nights_table = report.nights
    # every step of each night is in: the expected MASE is the test MASE itself
    np.testing.assert_allclose(nights_table["expected_mase"], 1.0)

    [verdict] = report.versions
    assert (verdict.version, verdict.status, verdict.rows, verdict.current) == ("7", "ok", 16, True)
    assert verdict.mae == 3.75 and verdict.mase == 1.25 and verdict.test_mase == 1.0 and verdict.test_mae == 2.5
    assert verdict.degraded == [] and not report.degraded


def test_a_partial_night_is_compared_with_the_steps_it_has(engine: Any) -> None:
    """Only step 1 of the latest night has arrived: its expected MASE is the test MASE x step 1's share."""
    name = model_name()
    forecasts = forecast_rows(["a"], ["2024-01-02"], name, "1")
    write(engine, forecasts, actuals(forecasts, 101.0))
    reference = make_reference({"a": 1.0}, test_mase=2.0, mae_by_step=[1.0, 2.0, 3.0, 6.0])  # mean 3
    report = run_monitor(engine, name, {"1": reference}, at("2024-01-02", 13))
    [night] = report.nights.to_dict("records")
    assert night["rows"] == 1 and night["mase"] == 1.0
    assert night["expected_mase"] == pytest.approx(2.0 / 3.0)


# ------------------------------------------------------------------------------------------ degradation


def test_degraded_after_the_configured_nights_and_not_before(engine: Any) -> None:
    name = model_name()
    days = nights("2024-01-01", 5)
    forecasts = forecast_rows(["a", "b"], days, name, "3")
    observed = actuals(forecasts, 0.0)
    night_of = observed["ts"].dt.strftime("%Y-%m-%d")
    # a: error 1 (MASE 1) on the first two nights, then 2 (MASE 2 > 1.5 x 1); b: error 1 throughout
    observed["value"] = 100.0 + np.where((observed["series_id"] == "a") & night_of.isin(days[2:]), 2.0, 1.0)
    write(engine, forecasts, observed)
    reference = {"3": make_reference({"a": 1.0, "b": 1.0}, test_mase=1.0)}

    before = run_monitor(engine, name, reference, at(days[3], 23))  # two bad nights so far
    series = before.series.set_index("series_id")
    assert series.loc["a", "nights_bad"] == 2 and series.loc["a", "status"] == "ok"
    assert not before.degraded and before.versions[0].status == "ok"

    after = run_monitor(engine, name, reference, at(days[4], 23))  # the third
    series = after.series.set_index("series_id")
    assert series.loc["a", "nights_bad"] == 3 and series.loc["a", "status"] == "degraded"
    assert series.loc["b", "status"] == "ok"
    [verdict] = after.versions
    assert verdict.status == "degraded" and verdict.emits and after.degraded
    [finding] = verdict.degraded
    assert finding.series_id == "a"
    assert finding.reasons == [
        "realised MASE above 1.5 x expected on the last 3 nights "
        "(2024-01-03: 2 vs 1, 2024-01-04: 2 vs 1, 2024-01-05: 2 vs 1)"
    ]
    again = run_monitor(engine, name, reference, at(days[4], 23))  # computed from the table alone: same verdict
    assert again.versions == after.versions

    stricter = run_monitor(engine, name, reference, at(days[4], 23), mon.MonitorConfig(degraded_nights=4))
    assert not stricter.degraded


def test_a_good_night_breaks_the_run_of_bad_ones(engine: Any) -> None:
    name = model_name()
    days = nights("2024-01-01", 5)
    forecasts = forecast_rows(["a"], days, name, "1")
    observed = actuals(forecasts, 0.0)
    good = observed["ts"].dt.strftime("%Y-%m-%d") == days[2]
    observed["value"] = 100.0 + np.where(good, 1.0, 5.0)
    write(engine, forecasts, observed)
    report = run_monitor(engine, name, {"1": make_reference({"a": 1.0})}, at(days[4], 23))
    assert report.series["nights_bad"].tolist() == [2] and not report.degraded


def test_coverage_below_level_minus_tolerance_degrades(engine: Any) -> None:
    name = model_name()
    days = nights("2024-01-01", 10)
    forecasts = forecast_rows(["a"], days, name, "1", half_width=1.0)  # 40 bounded forecasts, level 0.9
    observed = actuals(forecasts, 100.5)
    observed.loc[observed.index % 10 < 3, "value"] = 105.0  # 30% outside: coverage 0.7 < 0.85
    write(engine, forecasts, observed)
    references = {"1": make_reference({"a": 100.0})}  # a large scale: the MASE is fine
    report = run_monitor(engine, name, references, at(days[-1], 23), mon.MonitorConfig(days=10))
    [verdict] = report.versions
    assert verdict.status == "degraded" and verdict.coverage == pytest.approx(0.7)
    assert verdict.degraded[0].reasons == ["coverage 0.70 below level 0.90 - 0.05 over 40 forecasts"]

    too_few = run_monitor(engine, name, references, at(days[-1], 23), mon.MonitorConfig(days=5))  # 20 < 30 points
    assert not too_few.degraded


# ------------------------------------------------------------------------------------------ drift


def test_drift_lists_level_and_spread_changes_after_data_end(engine: Any) -> None:
    ts = pd.date_range("2024-01-03", periods=24, freq="h", tz="UTC")
    wiggle = np.where(np.arange(24) % 2 == 0, 1.0, -1.0)
    observed = pd.concat(
        [
            pd.DataFrame({"series_id": "shifted", "ts": ts, "value": 130.0 + 5.0 * wiggle}),  # mean 6 std away
            pd.DataFrame({"series_id": "wider", "ts": ts, "value": 100.0 + 20.0 * wiggle}),  # std 20 vs 5
            pd.DataFrame({"series_id": "steady", "ts": ts, "value": 100.0 + 4.0 * wiggle}),
            pd.DataFrame({"series_id": "short", "ts": ts[:3], "value": 200.0 + wiggle[:3]}),  # 3 < 5 points
        ],
        ignore_index=True,
    )
    before = pd.DataFrame({"series_id": "steady", "ts": [pd.Timestamp("2024-01-02", tz="UTC")], "value": [999.0]})
    store.upsert_observations(engine, pd.concat([observed, before], ignore_index=True))
    ids = ["shifted", "wider", "steady", "short"]
    reference = make_reference(dict.fromkeys(ids, 1.0), recent_mean=100.0, recent_std=5.0, data_end="2024-01-02")
    window = mon.monitor_window(pd.Timestamp("2024-01-04", tz="UTC"), 7)
    recent = store.read_observations(engine, ids, window.start, window.end)
    drift = mon.detect_drift(recent, {"1": reference}, window, mon.MonitorConfig(), ids).set_index("series_id")

    assert drift["drifted"].to_dict() == {"shifted": True, "wider": True, "steady": False, "short": False}
    assert drift.loc["shifted", "shift_std"] == pytest.approx(6.0)
    assert drift.loc["shifted", "reasons"] == ["level moved 6.0 std (130 vs 100; more than 3)"]
    assert drift.loc["wider", "spread_ratio"] == pytest.approx(4.0)
    assert drift.loc["wider", "reasons"] == ["spread x4.00 (20 vs 5; outside 1/3..x3)"]
    assert drift.loc["steady", "points"] == 24  # the observation at data_end is not new
    assert drift.loc["short", "points"] == 3


def test_drifted_series_are_listed_in_the_report_and_the_event(engine: Any) -> None:
    name = model_name()
    days = nights("2024-01-02", 3)
    forecasts = forecast_rows(["a"], days, name, "2")
    write(engine, forecasts, actuals(forecasts, 150.0))  # far above the level the model last saw
    reference = make_reference({"a": 1.0}, recent_mean=100.0, recent_std=1.0, data_end="2024-01-01")
    report = run_monitor(engine, name, {"2": reference}, at(days[-1], 23))
    [verdict] = report.versions
    assert verdict.status == "degraded" and [f.series_id for f in verdict.drifted] == ["a"]
    payload = event_payload(report, verdict)
    assert payload["drifted_series"][0]["series_id"] == "a" and payload["drifted_count"] == 1
    assert payload["degraded_series"][0]["reasons"][0].startswith("realised MASE above 1.5 x expected")
    assert "drift v2 a: level moved 50.0 std" in report_markdown(report)
    assert series_rows(report)[0]["drift"] is True


# ------------------------------------------------------------------------------------------ no reference


def test_a_version_without_reference_is_scored_but_not_compared(engine: Any) -> None:
    name = model_name()
    forecasts = forecast_rows(["a"], nights("2024-01-01", 4), name, "1", half_width=1.0)
    write(engine, forecasts, actuals(forecasts, 150.0))
    report = run_monitor(engine, name, {"1": None}, pd.Timestamp("2024-01-05", tz="UTC"))
    scores = read_scores(engine, name)
    assert scores["scaled_error"].isna().all() and (scores["abs_error"] == 50.0).all()
    [verdict] = report.versions
    assert (verdict.status, verdict.mase, verdict.test_mase, verdict.mae) == ("no reference", None, None, 50.0)
    assert report.series["status"].tolist() == ["no reference"] and not report.degraded
    assert verdict.coverage == 0.0  # bounds still give coverage
    assert report.drift.empty
    assert "| v1 | no reference | 16 |" in report_markdown(report)


def test_replaced_version_is_shown_but_raises_nothing(engine: Any) -> None:
    """v1 degraded and was replaced by v2 (which forecasts from the last night on): v1 asks for no retraining."""
    name = model_name()
    days = nights("2024-01-01", 4)
    old = forecast_rows(["a"], days[:3], name, "1", point=0.0)
    new = forecast_rows(["a"], days[3:], name, "2")
    forecasts = pd.concat([old, new], ignore_index=True)
    write(engine, forecasts, actuals(forecasts, 100.0))
    references = {"1": make_reference({"a": 1.0}), "2": make_reference({"a": 1.0})}
    report = run_monitor(engine, name, references, at(days[-1], 23))
    verdicts = {v.version: v for v in report.versions}
    assert verdicts["1"].status == "degraded" and not verdicts["1"].current and not verdicts["1"].emits
    assert verdicts["2"].status == "ok" and verdicts["2"].current
    assert not report.degraded


# ------------------------------------------------------------------------------------------ configuration


def test_every_setting_is_described_and_bad_combinations_are_refused() -> None:
    schema = mon.MonitorConfig.model_json_schema()
    assert schema.get("description")
    assert [name for name, p in schema["properties"].items() if not p.get("description")] == []
    assert mon.MonitorConfig() == mon.make_config()
    defaults = mon.MonitorConfig()
    assert (defaults.mase_factor, defaults.degraded_nights, defaults.coverage_tolerance) == (1.5, 3, 0.05)
    assert (defaults.drift_k, defaults.drift_ratio) == (3.0, 3.0)
    with pytest.raises(mon.MonitorError) as info:
        mon.make_config(days=2, degraded_nights=3)
    assert str(info.value) == (
        "monitor settings refused: `degraded_nights` (3) needs a window of at least that many nights; `days` is 2: "
        "raise `days` or lower `degraded_nights`"
    )
    with pytest.raises(mon.MonitorError, match=r"`mase_factor` \(0.5\): Input should be greater than or equal to 1"):
        mon.make_config(mase_factor=0.5)


def test_window_holds_the_last_days_utc_nights() -> None:
    window = mon.monitor_window(pd.Timestamp("2024-03-30 21:30", tz="America/New_York"), 3)  # 01:30 UTC
    assert window.nights == ["2024-03-29", "2024-03-30", "2024-03-31"]
    assert window.start == pd.Timestamp("2024-03-29", tz="UTC") and window.night == "2024-03-31"
    assert night_step("1970-01-02") == 1 and night_step("2024-01-01") == 19723


def test_event_resource_names_the_model_and_version() -> None:
    assert event_resource("seqcast", "4") == {
        "prefect.resource.id": "seqcast.model.seqcast.v4",
        "prefect.resource.name": "seqcast v4",
        "seqcast.model.name": "seqcast",
        "seqcast.model.version": "4",
    }


# ------------------------------------------------------------------------------------------ the flow


@pytest.fixture
def referenced(mlflow_store: str, tmp_path_factory: pytest.TempPathFactory) -> RegisteredWithReference:
    """A tiny model registered with a reference: MASE scale 1 and test MASE 1 for 'a' and the hostile id, which
    last looked like 100 +/- 1 up to 2024-01-10. One per test, so each has its own monitor run and events."""
    reference = make_reference(
        {"a": 1.0, HOSTILE: 1.0}, recent_mean=100.0, recent_std=1.0, data_end="2024-01-10T23:00:00+00:00"
    )
    return register_with_reference(mlflow_store, tmp_path_factory.mktemp("referenced"), reference)


@pytest.fixture
def monitored(
    db_url: str, seqcast_home: Path, mlflow_store: str, referenced: RegisteredWithReference, monkeypatch: Any
) -> str:
    """Settings on `db_url` and the MLflow store; the synthetic observations (to 2024-01-14 23:00) ingested and the
    referenced model's forecasts of three nights written, each 50 above what happened."""
    from tasks.settings import get_settings

    monkeypatch.setenv("SEQCAST_DATABASE_URL", db_url)
    monkeypatch.setenv("SEQCAST_MLFLOW_TRACKING_URI", mlflow_store)
    get_settings.cache_clear()
    engine = store.get_engine(db_url)
    with engine.begin() as conn:
        conn.execute(store.forecast_scores.delete())
    observed = synthetic_frame()
    store.upsert_observations(engine, observed)
    forecasts = forecast_rows(["a", HOSTILE], nights("2024-01-11", 3), referenced.name, referenced.version)
    truth = observed.set_index(["series_id", "ts"])["value"]
    forecasts["point"] = truth.reindex(pd.MultiIndex.from_frame(forecasts[["series_id", "target_ts"]])).to_numpy() + 50
    store.upsert_forecasts(engine, forecasts)
    return db_url


def read_degraded_event(resource_id: str, event_id: str, timeout: float = 30.0) -> Any:
    """The degradation event `event_id` of `resource_id` as the Prefect API stored it (events arrive
    asynchronously); None if it never shows."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            page = client.read_events(
                EventFilter(
                    event=EventNameFilter(name=[DEGRADED_EVENT]),
                    resource=EventResourceFilter(id=[resource_id]),
                    occurred=EventOccurredFilter(since=dt.datetime.now(UTC) - dt.timedelta(hours=1)),
                ),
                limit=50,  # the API's maximum (the client's default of 100 is refused)
            )
        found = [event for event in page.events if str(event.id) == event_id]
        if found:
            return found[0]
        time.sleep(0.5)
    return None


@pytest.mark.usefixtures("prefect_harness")
def test_monitor_flow_emits_the_event_and_records_the_night(
    monitored: str, referenced: RegisteredWithReference, mlflow_store: str
) -> None:
    from mlflow import MlflowClient
    from prefect.events.worker import EventsWorker

    from flows.monitor import monitor_flow

    # Prefect keeps one events worker per process, bound to the API it first saw; tests before this one may have
    # pointed it at a server that has stopped since (a real process keeps one API). Start this test's afresh.
    EventsWorker.drain_all()

    as_of = dt.datetime(2024, 1, 14, 23, tzinfo=UTC)
    summary = monitor_flow(registered_model=referenced.name, as_of=as_of)

    assert (summary.scores_new, summary.scores_updated, summary.scores_unchanged) == (2 * 3 * HORIZON, 0, 0)
    [verdict] = summary.versions
    assert verdict.version == referenced.version and verdict.status == "degraded" and summary.degraded
    assert sorted(f.series_id for f in verdict.degraded) == sorted(["a", HOSTILE])
    assert verdict.mase == pytest.approx(50.0)
    assert sorted(f.series_id for f in verdict.drifted) == sorted(["a", HOSTILE])  # 10-20 wide daily swings vs 1
    assert len(summary.events) == 1

    resource = event_resource(referenced.name, referenced.version)["prefect.resource.id"]
    event = read_degraded_event(resource, summary.events[0])
    assert event is not None, "the event never reached the Prefect API"
    assert event.resource["seqcast.model.version"] == referenced.version
    assert sorted(s["series_id"] for s in event.payload["degraded_series"]) == sorted(["a", HOSTILE])
    assert event.payload["night"] == "2024-01-14" and event.payload["drifted_count"] == 2
    assert any(r.id.startswith("prefect.flow-run.") for r in event.related)  # which monitor run raised it

    client = MlflowClient(mlflow_store)
    run_id = summary.mlflow_runs[referenced.version]
    [point] = client.get_metric_history(run_id, "realised_mase")
    assert point.step == night_step("2024-01-14") and point.value == pytest.approx(50.0)
    assert point.timestamp == int(pd.Timestamp("2024-01-14", tz="UTC").timestamp() * 1000)
    files = {a.path for a in client.list_artifacts(run_id, "nights/2024-01-14")}
    names = {Path(f).name for f in files}
    assert {"series.csv", "steps.csv", "series_steps.csv", "nights.csv", "report.md", "mae_by_step.png"} <= names

    # the same night again: nothing new to score, the same run, no second point
    again = monitor_flow(registered_model=referenced.name, as_of=as_of)
    assert (again.scores_new, again.scores_updated, again.scores_unchanged) == (0, 0, 2 * 3 * HORIZON)
    assert again.mlflow_runs == summary.mlflow_runs
    assert len(client.get_metric_history(run_id, "realised_mase")) == 1
    # the next night: a second point, one night later
    monitor_flow(registered_model=referenced.name, as_of=as_of + dt.timedelta(days=1))
    steps = [m.step for m in client.get_metric_history(run_id, "realised_mase")]
    assert sorted(steps) == [night_step("2024-01-14"), night_step("2024-01-15")]


@pytest.mark.usefixtures("prefect_harness")
def test_monitor_cli_prints_the_table_and_the_findings(
    monitored: str, referenced: RegisteredWithReference, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import main

    code = main(["monitor", "--model", referenced.name, "--days", "5", "--as-of", "2024-01-14 23:00"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"monitored {referenced.name} as of 2024-01-14T23:00:00+00:00, nights 2024-01-10 .. 2024-01-14" in out
    assert "scores 24 new, 0 updated, 0 unchanged" in out
    assert f"v{referenced.version}" in out and "degraded" in out and "(1)" in out  # test MASE beside realised
    assert f"degraded: v{referenced.version} a: realised MASE above 1.5 x expected on the last 3 nights" in out
    assert "drift: v" in out and "event seqcast.forecast.degraded emitted" in out
    assert "MLflow: v" in out and "experiment seqcast-monitor" in out


def test_monitor_cli_refuses_bad_settings_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    assert main(["monitor", "--days", "2", "--nights", "3"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: monitor settings refused: `degraded_nights` (3) needs a window")
    assert "Traceback" not in err
    assert main(["monitor", "--days", "0"]) == 2
    assert "Invalid value for '--days'" in capsys.readouterr().err


def test_references_of_a_model_saved_without_one_are_none_with_one_log_line(
    mlflow_store: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = register_with_reference(mlflow_store, tmp_path, None)
    with caplog.at_level(logging.WARNING, logger="tasks.monitor"):
        references = mon.load_references(mlflow_store, old.name, [old.version, "99"])
    assert references == {old.version: None, "99": None}
    lines = [r.getMessage() for r in caplog.records if r.name == "tasks.monitor"]
    assert len(lines) == 2
    assert lines[0] == (
        f"{old.name} v{old.version} was saved without a reference (before monitoring existed): its scores get no "
        "scaled errors and it is not compared with test figures; retrain to monitor it fully"
    )
    assert lines[1].startswith(f"{old.name} v99: not compared with a reference")


# ------------------------------------------------------------------------------------------ the automation


@pytest.mark.usefixtures("prefect_harness")
def test_deploying_again_keeps_one_retraining_automation_and_updates_it_in_place() -> None:
    from prefect.client.orchestration import get_client

    from flows import deploy

    def stored() -> list[Any]:
        with get_client(sync_client=True) as client:
            return list(client.read_automations_by_name(deploy.RETRAIN_AUTOMATION))

    def last_updated(automation_id: str) -> str:
        with get_client(sync_client=True) as client:
            return str(client.request("GET", "/automations/{id}", path_params={"id": automation_id}).json()["updated"])

    for automation in stored():  # left by another test of this session
        with get_client(sync_client=True) as client:
            client.delete_automation(automation.id)
    train_id = str(uuid.uuid4())
    first = deploy.ensure_retrain_automation(train_id, 72)
    stamp = last_updated(first)

    assert deploy.ensure_retrain_automation(train_id, 72) == first
    assert [str(a.id) for a in stored()] == [first]
    assert last_updated(first) == stamp, "an unchanged automation is left alone (its cool-down state with it)"

    assert deploy.ensure_retrain_automation(train_id, 24) == first  # a new cool-down: updated in place
    [automation] = stored()
    assert automation.trigger.within == dt.timedelta(hours=24)
    assert str(automation.actions[0].deployment_id) == train_id

    with get_client(sync_client=True) as client:  # a copy, as two first deploys at once would leave
        client.create_automation(deploy.retrain_automation(train_id, 24))
    assert len(stored()) == 2
    assert deploy.ensure_retrain_automation(train_id, 24) == first
    assert [str(a.id) for a in stored()] == [first]
