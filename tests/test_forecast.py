"""The forecast flow on real stores: SQLite and PostgreSQL tables, a real MLflow registry, the Prefect harness.

A tiny LSTM (lookback 48, horizon 12, hidden 8, one epoch) is trained and registered once per module.
"""

from __future__ import annotations

import inspect
import threading
import uuid
from pathlib import Path

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
    START,
    TRAINED,
    Registered,
    at,
    forecasts,
    register_tiny_model,
    synthetic_frame,
)
from sqlalchemy import text

from tasks import forecast as fc
from tasks import registry, store


@pytest.mark.usefixtures("prefect_harness")
def test_fallback_series_are_written_by_their_baseline_with_its_method(
    env: str, mlflow_store: str, tmp_path: Path
) -> None:
    from flows.forecast import forecast_flow

    name = f"fallback-{uuid.uuid4().hex[:8]}"
    register_tiny_model(mlflow_store, tmp_path, name, fallback={"b": "seasonal_naive_24", HOSTILE: "naive"})
    forecast_flow(registered_model=name)
    rows = forecasts(env)
    rows = rows[rows["model_name"] == name]
    methods = rows.groupby("series_id")["method"].agg(set).to_dict()
    assert methods == {"a": {"lstm"}, "b": {"seasonal_naive_24"}, "g": {"lstm"}, HOSTILE: {"naive"}}
    observed = synthetic_frame().set_index(["series_id", "ts"])["value"]
    b = rows[rows["series_id"] == "b"].sort_values("step")
    day_before = [observed[("b", target - pd.Timedelta(hours=24))] for target in b["target_ts"]]
    np.testing.assert_allclose(b["point"], day_before)
    hostile = rows[rows["series_id"] == HOSTILE]
    assert (hostile["point"] == observed[(HOSTILE, at(LENGTH - 1))]).all()
    assert (rows["lower"] < rows["point"]).all() and (rows["point"] < rows["upper"]).all()


def test_predict_batch_matches_predict_windows_default() -> None:
    from models.forecaster import predict_windows

    assert inspect.signature(predict_windows).parameters["batch_size"].default == fc.PREDICT_BATCH


@pytest.mark.usefixtures("prefect_harness")
def test_forecast_twice_writes_the_same_rows_once(env: str, model: Registered) -> None:
    from flows.forecast import forecast_flow

    first = forecast_flow()
    rows_1 = forecasts(env)
    second = forecast_flow()
    rows_2 = forecasts(env)

    assert first.rows_written == second.rows_written == len(TRAINED) * HORIZON
    assert len(rows_1) == len(rows_2) == len(TRAINED) * HORIZON
    pd.testing.assert_frame_equal(rows_1[[*KEY, "step", "point"]], rows_2[[*KEY, "step", "point"]])
    last = at(LENGTH - 1)
    assert (rows_2["origin_ts"] == last).all()
    assert sorted(first.origins) == sorted(TRAINED) and set(first.origins.values()) == {last.isoformat()}
    steps = rows_2["step"].to_numpy()
    assert (rows_2["target_ts"] == rows_2["origin_ts"] + pd.to_timedelta(steps, unit="h")).all()
    assert set(steps) == set(range(1, HORIZON + 1))
    assert (rows_2["model_name"] == model.name).all() and (rows_2["model_version"] == model.version).all()
    assert (rows_2["mlflow_run_id"] == model.run_id).all()
    assert (rows_2["flow_run_id"] == second.flow_run_id).all() and second.flow_run_id != first.flow_run_id
    assert ((rows_2["lower"] < rows_2["point"]) & (rows_2["point"] < rows_2["upper"])).all()
    assert (rows_2["level"] == 0.9).all()
    assert (rows_2["method"] == "lstm").all()  # the network's cell (TrainConfig's default) produced every row
    assert np.isfinite(rows_2["point"]).all()
    assert first.skipped == [] and first.model_version == model.version and first.mlflow_run_id == model.run_id

    # the summary's query reads exactly this run's rows
    with store.get_engine(env).connect() as conn:
        assert len(conn.execute(text(second.query)).all()) == second.rows_written


@pytest.mark.usefixtures("prefect_harness")
def test_hostile_series_id_is_forecast_and_stored_verbatim(env: str) -> None:
    from flows.forecast import forecast_flow

    summary = forecast_flow(series=[HOSTILE])
    rows = forecasts(env)
    assert set(rows["series_id"]) == {HOSTILE} and len(rows) == HORIZON
    assert list(summary.origins) == [HOSTILE]
    assert len(store.read_observations(store.get_engine(env))) == len(TRAINED) * LENGTH  # tables intact
    markdown = fc.forecast_markdown(summary)
    assert "\\|" in markdown and HOSTILE not in markdown  # escaped in the artifact's table


@pytest.mark.usefixtures("prefect_harness")
def test_as_of_reads_only_observations_up_to_it(env: str) -> None:
    from flows.forecast import forecast_flow

    as_of = at(200) + pd.Timedelta(minutes=30)  # between observations: the origin is the one before
    summary = forecast_flow(as_of=as_of.to_pydatetime())
    rows = forecasts(env)
    assert (rows["origin_ts"] == at(200)).all() and len(rows) == len(TRAINED) * HORIZON
    assert summary.as_of == as_of.isoformat() and summary.stale_reference == as_of.isoformat()


@pytest.mark.usefixtures("prefect_harness")
def test_no_champion_is_a_clear_error_and_writes_nothing(env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.forecast import forecast_flow

    calls: list[str] = []
    real_resolve = registry.resolve_version

    def counted(name: str, alias: str | None = None, version: str | None = None):  # type: ignore[no-untyped-def]
        calls.append(name)
        return real_resolve(name, alias, version)

    monkeypatch.setattr(registry, "resolve_version", counted)
    name = f"untrained-{uuid.uuid4().hex[:6]}"
    with pytest.raises(registry.RegistryError, match=f"registered model '{name}' has no 'champion' alias yet"):
        forecast_flow(registered_model=name)
    assert calls == [name], "a missing champion is a definite answer: never retried"
    with pytest.raises(registry.RegistryError, match="has no version 99"):
        forecast_flow(model_version="99")
    assert len(forecasts(env)) == 0


@pytest.mark.usefixtures("prefect_harness")
def test_pinned_version_gives_the_same_rows_as_the_alias(env: str, model: Registered) -> None:
    from flows.forecast import forecast_flow

    by_alias = forecast_flow()
    rows_alias = forecasts(env)
    by_version = forecast_flow(model_version=model.version, model_alias="no-such-alias")
    assert by_version.model_version == by_alias.model_version == model.version
    pd.testing.assert_frame_equal(rows_alias[[*KEY, "point"]], forecasts(env)[[*KEY, "point"]])


def _troubled_observations(url: str) -> None:
    """'a' healthy; 'b' stale (stops 30 h early); 'g' with a gap in its last window; HOSTILE too short (only its
    last 30 observations); 'zzz' unknown to the model."""
    engine = store.get_engine(url)
    with engine.begin() as conn:
        obs = store.observations
        conn.execute(obs.delete().where(obs.c.series_id == "b", obs.c.ts > at(LENGTH - 31).to_pydatetime()))
        conn.execute(obs.delete().where(obs.c.series_id == "g", obs.c.ts == at(LENGTH - 5).to_pydatetime()))
        conn.execute(obs.delete().where(obs.c.series_id == HOSTILE, obs.c.ts < at(LENGTH - 30).to_pydatetime()))
    store.upsert_observations(engine, synthetic_frame(["zzz"]))


@pytest.mark.usefixtures("prefect_harness")
def test_skip_policy_lists_stale_short_gapped_and_unknown_series(env: str) -> None:
    from flows.forecast import forecast_flow

    _troubled_observations(env)
    summary = forecast_flow()
    rows = forecasts(env)
    assert set(rows["series_id"]) == {"a"} and len(rows) == HORIZON
    assert summary.rows_written == HORIZON and list(summary.origins) == ["a"]
    reasons = {s.series_id: s.reason for s in summary.skipped}
    assert set(reasons) == {"b", "g", HOSTILE, "zzz"}
    last_b, last = at(LENGTH - 31).isoformat(), at(LENGTH - 1).isoformat()
    assert reasons["b"] == f"stale: last observation {last_b} is more than `horizon` (12 x h) before {last}"
    assert reasons["g"].startswith(f"gap: the last 48 observations up to {last} are not every h")
    assert reasons[HOSTILE].startswith("too short: 30 observations at or before")
    assert reasons[HOSTILE].endswith("`lookback` needs 48")
    assert reasons["zzz"].startswith("not in the model's training data (4 series)")
    markdown = fc.forecast_markdown(summary)
    assert "**Skipped (4)**" in markdown and "| zzz | not in the model's training data" in markdown

    requested = forecast_flow(series=["a", "nope", "a"])
    assert [s.series_id for s in requested.skipped] == ["nope"]
    assert requested.skipped[0].reason.startswith("no observations at or before")


@pytest.mark.usefixtures("prefect_harness")
def test_fail_policy_fails_the_run_and_writes_nothing(env: str) -> None:
    from flows.forecast import forecast_flow

    _troubled_observations(env)
    with pytest.raises(fc.ForecastInputError) as caught:
        forecast_flow(stale_policy="fail")
    message = str(caught.value)
    assert message.startswith("stale_policy='fail' and 4 series cannot be forecast as of ")
    for sid in ("'b': stale", "'g': gap", "'zzz': not in the model's training data", "too short: 30"):
        assert sid in message
    assert message.endswith("Nothing was written; fix these series or use stale_policy='skip'")
    assert len(forecasts(env)) == 0
    with pytest.raises(fc.ForecastInputError, match=r"'zzz': not in the model's training data"):
        forecast_flow(series=["a", "zzz"], stale_policy="fail")
    assert len(forecasts(env)) == 0


@pytest.mark.usefixtures("prefect_harness")
def test_as_of_before_lookback_observations_is_a_clear_error(env: str) -> None:
    from flows.forecast import forecast_flow

    with pytest.raises(fc.ForecastInputError) as caught:
        forecast_flow(as_of=at(20).to_pydatetime())
    message = str(caught.value)
    assert message.startswith("nothing to forecast as of 2024-01-01T20:00:00+00:00: every series was skipped: ")
    assert "'a': too short: 21 observations at or before 2024-01-01T20:00:00+00:00, `lookback` needs 48" in message
    with pytest.raises(fc.ForecastInputError, match="no observations at or before as_of 2023-12-01T00:00:00"):
        forecast_flow(as_of=pd.Timestamp("2023-12-01").to_pydatetime())
    assert len(forecasts(env)) == 0


@pytest.mark.usefixtures("prefect_harness")
def test_database_down_during_the_write_retries_then_fails_with_no_rows(
    env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.forecast
    from flows.cli import _error_message

    attempts: list[str] = []
    real_write = fc.write_forecasts

    def write_to_a_dead_server(url: str, frame: pd.DataFrame) -> int:
        attempts.append(url)
        return real_write(DEAD_URL, frame)

    monkeypatch.setattr(fc, "write_forecasts", write_to_a_dead_server)
    monkeypatch.setattr(
        flows.forecast, "write_forecasts_task", fc.write_forecasts_task.with_options(retry_delay_seconds=0)
    )
    with pytest.raises(store.StoreUnavailableError) as caught:
        flows.forecast.forecast_flow()
    assert len(attempts) == 1 + fc.write_forecasts_task.retries == 4
    assert _error_message(caught.value).startswith("cannot reach database postgresql+psycopg://postgres@127.0.0.1:1/x")
    assert len(forecasts(env)) == 0


def test_concurrent_writers_of_the_same_keys_leave_one_complete_set(postgres_database: str) -> None:
    engine = store.get_engine(postgres_database)
    n_series, n_origins = 20, 25
    base = pd.DataFrame(
        {
            "series_id": np.repeat([f"s{i}" for i in range(n_series)], n_origins * HORIZON),
            "origin_ts": np.tile(np.repeat(pd.date_range(START, periods=n_origins, freq="h"), HORIZON), n_series),
            "step": np.tile(np.arange(1, HORIZON + 1), n_series * n_origins),
        }
    )
    base["target_ts"] = base["origin_ts"] + pd.to_timedelta(base["step"], unit="h")
    base = base.assign(model_name="concurrent", model_version="1", mlflow_run_id="run")
    writers = {f"writer-{w}": base.assign(point=float(w), flow_run_id=f"writer-{w}") for w in range(2)}
    for _ in range(3):
        with engine.begin() as conn:
            conn.execute(store.forecasts.delete().where(store.forecasts.c.model_name == "concurrent"))
        barrier = threading.Barrier(len(writers))
        errors: list[BaseException] = []

        def write(
            frame: pd.DataFrame, barrier: threading.Barrier = barrier, errors: list[BaseException] = errors
        ) -> None:
            try:
                barrier.wait()
                fc.write_forecasts(postgres_database, frame)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(frame,)) for frame in writers.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        rows = store.read_forecasts(engine, model_name="concurrent")
        assert len(rows) == len(base)
        assert not rows.duplicated(KEY).any()
        winner = rows["flow_run_id"].unique()
        assert len(winner) == 1, "rows from both writers: not one complete set"
        assert (rows["point"] == writers[winner[0]]["point"].iloc[0]).all()


def test_padding_makes_a_forecast_independent_of_its_batch(model: Registered, mlflow_store: str) -> None:
    from models.windows import panel_from_frame

    loaded = fc.load_model(mlflow_store, fc.ModelRef(model.name, model.version, model.run_id, None))
    panel = panel_from_frame(synthetic_frame(), freq=loaded.freq)
    series = np.repeat(np.arange(len(TRAINED)), 100)
    positions = np.tile(np.arange(LOOKBACK + 50, LOOKBACK + 150), len(TRAINED))
    together, _, _ = fc.predict_origins(loaded, panel, series, positions)
    for i in (0, 1, 137, 399):
        alone, _, _ = fc.predict_origins(loaded, panel, series[i : i + 1], positions[i : i + 1])
        np.testing.assert_array_equal(alone[0], together[i])
    three, _, _ = fc.predict_origins(loaded, panel, series[[5, 250, 7]], positions[[5, 250, 7]])
    np.testing.assert_array_equal(three, together[[5, 250, 7]])


def test_window_checks_find_short_and_gapped_windows() -> None:
    from models.windows import panel_from_frame

    frame = synthetic_frame(["a", "b"], length=20)
    frame = frame.drop(index=frame.index[(frame["series_id"] == "b") & (frame["ts"] == at(10))])
    panel = panel_from_frame(frame, freq="h")
    long_enough, regular = fc.window_checks(panel, np.array([0, 0, 1, 1, 1]), np.array([3, 19, 9, 13, 18]), lookback=5)
    # b lacks 10 h: its window ending at position 13 (14 h) reads 9 h, 11 h .. 14 h
    assert long_enough.tolist() == [False, True, True, True, True]
    assert regular.tolist() == [False, True, True, False, True]


def test_read_command_quotes_for_the_shell() -> None:
    sql = "select 1 from forecasts where model_name = 'm'"
    assert fc.read_command("sqlite:////tmp/x y/seqcast.db", sql) == f"sqlite3 '/tmp/x y/seqcast.db' \"{sql}\""
    command = fc.read_command("postgresql+psycopg://me:secret@db:5432/seqcast", sql)
    assert command == f'psql postgresql://me@db:5432/seqcast -c "{sql}"' and "secret" not in command


@pytest.mark.usefixtures("prefect_harness")
def test_cli_forecast_prints_rows_version_origin_skipped_and_query(
    env: str, model: Registered, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import main

    store.upsert_observations(store.get_engine(env), synthetic_frame(["zzz"]))
    assert main(["forecast", "--series", "a", "--series", "zzz", "--as-of", "2024-01-10T12:00:00"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {HORIZON} rows to forecasts" in out
    assert f"{model.name} v{model.version} (MLflow run {model.run_id}), as of 2024-01-10T12:00:00+00:00" in out
    assert "origin 2024-01-10T12:00:00+00:00 for 1 series" in out
    assert "skipped 1 series\n  zzz: not in the model's training data" in out
    assert (
        "read them with:" in out and "select series_id, origin_ts, target_ts, step, point, method from forecasts" in out
    )

    assert main(["forecast", "--series", "zzz", "--stale-policy", "fail"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: stale_policy='fail' and 1 series cannot be forecast") and err.count("\n") == 1
