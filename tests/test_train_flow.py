"""The training flow end to end on real stores: SQLite and PostgreSQL, a real MLflow store, Prefect's harness."""

from __future__ import annotations

import logging
import math

import pytest
from forecast_setup import TINY, TINY_REGISTERED
from forecast_setup import electricity as _electricity

from models.frequency import default_eval_stride
from tasks import registry, store
from tasks.spec import RunSpec
from tasks.validate import DataValidationError

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]

# the TINY spec, the electricity sample and the `train_env` fixture (tests/forecast_setup.py) are shared with
# tests/test_mlflow_pages.py


def test_train_flow_logs_lstm_and_gru_children_and_registers_one_version(train_env: str, db_url: str) -> None:
    from flows.train import train_flow

    store.upsert_observations(store.get_engine(db_url), _electricity())
    summary = train_flow(TINY_REGISTERED)  # a 1-epoch network may lose to a baseline: registered all the same

    assert summary.version is not None
    assert [c.cell for c in summary.candidates] == ["lstm", "gru"]
    client = registry.get_client()
    children = client.search_runs(
        [summary.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{summary.parent_run_id}'"
    )
    assert sorted(r.data.tags["seqcast.cell"] for r in children) == ["gru", "lstm"]
    for run in children:
        assert {"test_mae", "test_mase", "seasonal_naive_48_test_mase", "train_loss"} <= set(run.data.metrics)
        assert 0 < run.data.metrics["test_coverage"] <= 1 and run.data.metrics["served_test_msis"] > 0
    parent = client.get_run(summary.parent_run_id)
    assert parent.data.tags["seqcast.trigger"] == "manual" and "data.test_start" in parent.data.tags
    # the resolved spec, with the values the run used where the spec left them to the data
    params = parent.data.params
    assert (params["window.lookback"], params["window.horizon"], params["model.hidden_size"]) == ("48", "12", "8")
    test_length = math.ceil(0.2 * 20 * 48)  # the test part of 20 days of half-hours
    assert params["window.eval_stride"] == str(default_eval_stride("30min", test_length, 12))
    assert params["evaluation.seasons"] == "[48]", "the weekly season does not fit in a lookback of 48"
    assert params["training.batch_size"] == '{"lstm": 256, "gru": 256}' and params["model.head"] == "per_step"
    assert "None" not in params.values() and "null" not in params.values()
    versions = client.search_model_versions(f"name = '{train_env}'")
    assert [str(v.version) for v in versions] == [summary.version]
    alias = registry.get_alias(train_env, summary.alias)
    assert alias is not None and str(alias.version) == summary.version
    # the gate's decision is on the parent run, and the registered model serves what its table says
    assert parent.data.tags["seqcast.decision"] == ("promoted" if summary.alias == "champion" else "rejected")
    assert parent.data.tags["seqcast.best_cell"] == summary.best_cell
    assert {"test_mase", "served_test_mase", "naive_test_mase", "promoted"} <= set(parent.data.metrics)
    assert {a.path for a in client.list_artifacts(summary.parent_run_id)} >= {"gate_series.csv", "gate.md"}
    served = {row["series_id"]: row["served"] for row in summary.series}
    loaded = registry.load_version(train_env, summary.version)
    assert loaded.fallback == {sid: method for sid, method in served.items() if method != summary.best_cell}
    assert loaded.config.scaling in ("series", "last")  # "auto" kept the one with the lower validation loss
    # intervals at the spec's level, and the test figures the monitor holds this version to
    assert loaded.intervals is not None and loaded.intervals.level == 0.9
    assert {summary.best_cell, "naive", "seasonal_naive_48"} <= set(loaded.intervals.quantiles)
    assert loaded.reference is not None and set(loaded.reference.series) == set(served)
    assert loaded.reference.test_mase == pytest.approx(summary.served["mase"])


def test_a_series_too_short_for_the_window_stops_before_anything_is_registered(train_env: str, db_url: str) -> None:
    from flows.train import train_flow

    store.upsert_observations(store.get_engine(db_url), _electricity(days=1))
    with pytest.raises(DataValidationError, match="england_wales_demand"):
        train_flow(TINY)
    assert registry.get_client().search_model_versions(f"name = '{train_env}'") == []


def test_a_series_too_short_for_the_default_window_names_it_and_the_option(train_env: str, db_url: str) -> None:
    from flows.train import train_flow

    store.upsert_observations(store.get_engine(db_url), _electricity(days=9))  # 432 half-hours: under a week + 3 days
    with pytest.raises(DataValidationError) as info:
        train_flow(RunSpec(training={"max_epochs": 1}))
    message = str(info.value)
    assert "series 'england_wales_demand' has 432 observations, needs 519: lookback (336) + horizon (48)" in message
    assert "--lookback" in message
    assert registry.get_client().search_model_versions(f"name = '{train_env}'") == []


def test_a_gap_in_stored_observations_stops_the_flow_before_training(train_env: str, db_url: str) -> None:
    from flows.train import train_flow

    frame = _electricity()
    store.upsert_observations(store.get_engine(db_url), frame.drop(index=[300, 301, 302]))
    with pytest.raises(DataValidationError, match="gap"):
        train_flow(TINY)
    experiment = registry.get_client().get_experiment_by_name(train_env)
    assert experiment is None or registry.get_client().search_runs([experiment.experiment_id]) == []


def test_a_stored_outlier_stops_training_unless_the_spec_says_what_to_do_with_it(train_env: str, db_url: str) -> None:
    from flows.train import train_flow

    frame = _electricity(days=12)
    frame.loc[300, "value"] = 1e12  # stored before validation had an outlier check
    store.upsert_observations(store.get_engine(db_url), frame)
    with pytest.raises(DataValidationError, match="--outlier-policy clip / warn"):
        train_flow(TINY)
    spec = TINY.model_copy(update={"data": TINY.data.model_copy(update={"outlier_policy": "clip"})})
    summary = train_flow(spec)
    params = registry.get_client().get_run(summary.parent_run_id).data.params
    assert params["data.outlier_policy"] == "clip"
    assert 0.5 < summary.baselines["naive"]["mase"] < 100  # a kept 1e12 would inflate the scale: MASE near 0


def test_a_training_failure_marks_its_mlflow_runs_failed_and_registers_nothing(
    train_env: str, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A diverged GRU after a finished LSTM: the parent and the GRU run end FAILED, the LSTM run stays FINISHED."""
    import tasks.partitions
    import tasks.train
    from flows.train import train_flow

    real_fit = tasks.train.fit_forecaster

    def diverge_on_gru(data, config, on_epoch=None, initial_state=None, level=logging.INFO):  # type: ignore[no-untyped-def]
        if config.cell == "gru":
            raise tasks.train.TrainingDivergedError("gru training diverged at epoch 1: train loss nan")
        return real_fit(data, config, on_epoch, initial_state, level)

    monkeypatch.setattr(tasks.partitions, "fit_forecaster", diverge_on_gru)  # where the flow's networks train
    store.upsert_observations(store.get_engine(db_url), _electricity())
    with pytest.raises(tasks.train.TrainingDivergedError, match="gru training diverged"):
        train_flow(TINY)

    client = registry.get_client()
    experiment = client.get_experiment_by_name(train_env)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    status = {r.data.tags.get("seqcast.cell", "parent"): r.info.status for r in runs}
    assert status == {"parent": "FAILED", "lstm": "FINISHED", "gru": "FAILED"}
    assert len({r.data.tags["prefect.flow_run_id"] for r in runs}) == 1
    assert client.search_model_versions(f"name = '{train_env}'") == []
