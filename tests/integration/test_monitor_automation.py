"""Monitoring end to end on the production set: a degraded model raises an event, and the automation retrains.

A real Prefect server and MLflow server on PostgreSQL and a process worker (tests/servers.py), with the deployments
and the retraining automation registered as `seqcast deploy` does (the fixtures of test_deployments.py, reused).
Setup registers a tiny model with a reference built by hand (its test MASE 1 on the electricity sample) and
backfills its forecasts of three nights; then the actuals of those nights are ingested again, revised 30% up (a
level shift the model never saw). The monitor deployment, started through the API, runs on the worker, finds the
model degraded and emits `seqcast.forecast.degraded`; the automation starts a run of `seqcast-train/nightly-retrain`
(observed through the API, then cancelled: the training itself is tested elsewhere). A second monitor run emits the
event again, and the cool-down keeps it from starting a second training.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from monitor_setup import RegisteredWithReference, make_reference, register_with_reference
from servers import MlflowServer, PrefectWorker
from test_deployments import (  # noqa: F401 - fixtures are registered by being imported here
    LAST_TS,
    SERIES,
    _wait_for,
    deployment_ids,
    observations,
    prefect_api,
)

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.timeout(600)]

NIGHTS = pd.date_range("2000-08-25 12:00", "2000-08-27 12:00", freq="1D", tz="UTC")  # one origin a night
DATA_END = pd.Timestamp("2000-08-24 23:30", tz="UTC")  # what the model "last saw"
AS_OF = pd.Timestamp("2000-08-28 00:00", tz="UTC")
HORIZON = 12
SHIFT = 1.3
EVENT_TIMEOUT = 60.0
AUTOMATION_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def degraded_model(
    observations: pd.DataFrame,  # noqa: F811
    postgres_database: str,
    mlflow_server: MlflowServer,
    prefect_api: str,  # noqa: F811
    prefect_worker_process: PrefectWorker,  # asked for so the worker starts up meanwhile
    tmp_path_factory: pytest.TempPathFactory,
) -> RegisteredWithReference:
    """The model registered with its reference, its forecasts of three nights backfilled (in this process), and
    then the actuals of those nights revised up by 30%."""
    from tasks import store
    from tasks.settings import get_settings

    sample = observations.sort_values("ts")
    known = sample[sample["ts"] <= DATA_END]
    values = known["value"].to_numpy(dtype=np.float64)
    reference = make_reference(
        {SERIES: float(np.mean(np.abs(values[48:] - values[:-48])))},  # in-sample seasonal-naive MAE (a day)
        test_mase=1.0,
        mae_by_step=[1.0] * HORIZON,
        level=None,
        recent_mean=float(values[-48:].mean()),
        recent_std=float(values[-48:].std()),
        data_end=DATA_END.isoformat(),
    )
    model = register_with_reference(
        mlflow_server.tracking_uri,
        tmp_path_factory.mktemp("degraded-model"),
        reference,
        frame=known,
        lookback=48,
        horizon=HORIZON,
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SEQCAST_DATABASE_URL", postgres_database)
        env.setenv("MLFLOW_TRACKING_URI", mlflow_server.tracking_uri)
        env.setenv("SEQCAST_HOME", str(tmp_path_factory.mktemp("monitor-home")))
        env.delenv("SEQCAST_MLFLOW_TRACKING_URI", raising=False)
        get_settings.cache_clear()
        try:
            from flows.backfill import backfill_flow

            summary = backfill_flow(
                start=NIGHTS[0].to_pydatetime(),
                end=NIGHTS[-1].to_pydatetime(),
                every="1D",
                registered_model=model.name,
                series=[SERIES],
            )
        finally:
            get_settings.cache_clear()
    assert summary.origins_planned == len(NIGHTS), summary

    revised = sample[sample["ts"] > NIGHTS[0]].assign(value=lambda f: f["value"] * SHIFT)
    written = store.upsert_observations(store.get_engine(postgres_database), revised)
    assert written.updated == len(revised)
    assert NIGHTS[-1] + pd.Timedelta(minutes=30 * HORIZON) <= LAST_TS  # every actual is in
    return model


def _run_monitor(model: RegisteredWithReference, worker: PrefectWorker) -> Any:
    """The monitor deployment started through the API (as the dashboard's Run does), waited for."""
    from prefect.deployments import run_deployment

    started = run_deployment(
        name="seqcast-monitor/nightly-monitor",
        parameters={"registered_model": model.name, "as_of": AS_OF.isoformat()},
        timeout=0,
        as_subflow=False,
    )
    run = _wait_for(started.id, worker)
    assert run.state.is_completed(), f"monitor ended {run.state_name}: {run.state.message}"
    return run


def _events_of(model: RegisteredWithReference) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter

    from tasks.monitor_publish import DEGRADED_EVENT, event_resource

    resource = event_resource(model.name, model.version)["prefect.resource.id"]
    with get_client(sync_client=True) as client:
        page = client.read_events(
            EventFilter(
                event=EventNameFilter(name=[DEGRADED_EVENT]),
                resource=EventResourceFilter(id=[resource]),
                occurred=EventOccurredFilter(since=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)),
            ),
            limit=50,
        )
    return list(page.events)


def _event_of_run(model: RegisteredWithReference, flow_run_id: Any) -> Any:
    """The degradation event that monitor run `flow_run_id` emitted, once the API has stored it."""
    deadline = time.monotonic() + EVENT_TIMEOUT
    while time.monotonic() < deadline:
        for event in _events_of(model):
            if any(r.id == f"prefect.flow-run.{flow_run_id}" for r in event.related):
                return event
        time.sleep(1)
    pytest.fail(f"monitor run {flow_run_id} emitted no seqcast.forecast.degraded within {EVENT_TIMEOUT:.0f} s")


def _automation() -> Any:
    from prefect.client.orchestration import get_client

    from flows.deploy import RETRAIN_AUTOMATION

    with get_client(sync_client=True) as client:
        found = client.read_automations_by_name(RETRAIN_AUTOMATION)
    assert len(found) == 1, f"expected one {RETRAIN_AUTOMATION} automation, found {len(found)}"
    return found[0]


def _training_runs_started_by(automation_id: Any, train_deployment_id: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[train_deployment_id])), limit=200
        )
    return [r for r in runs if (r.idempotency_key or "").startswith(f"automation {automation_id}")]


def _cancel(runs: list[Any]) -> None:
    """Stop the training the automation started (a scheduled run is cancelled; a running one killed by its worker)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled, Cancelling

    with get_client(sync_client=True) as client:
        for run in runs:
            current = client.read_flow_run(run.id)
            if current.state is None or current.state.is_final():
                continue
            state = Cancelling() if current.state.is_running() else Cancelled()
            client.set_flow_run_state(run.id, state, force=True)


def test_degradation_event_starts_training_once_per_cool_down(
    degraded_model: RegisteredWithReference,
    deployment_ids: dict[str, str],  # noqa: F811
    prefect_worker: PrefectWorker,
    postgres_database: str,
    mlflow_server: MlflowServer,
) -> None:
    from tasks.monitor_publish import DEGRADED_EVENT

    automation = _automation()  # deploying again (test_deployments.py deployed first) kept one automation
    train_id = deployment_ids["seqcast-train/nightly-retrain"]
    assert str(automation.actions[0].deployment_id) == train_id
    assert automation.trigger.expect == {DEGRADED_EVENT}
    before = _training_runs_started_by(automation.id, train_id)

    started = time.monotonic()
    monitor = _run_monitor(degraded_model, prefect_worker)
    event = _event_of_run(degraded_model, monitor.id)
    assert event.payload["version"] == degraded_model.version
    assert [s["series_id"] for s in event.payload["degraded_series"]] == [SERIES]
    assert event.payload["realised_mase"] > 1.5 * event.payload["test_mase"]

    deadline = time.monotonic() + AUTOMATION_TIMEOUT
    runs: list[Any] = []
    while time.monotonic() < deadline:
        runs = [r for r in _training_runs_started_by(automation.id, train_id) if r.id not in {b.id for b in before}]
        if runs:
            break
        time.sleep(1)
    try:
        assert len(runs) == 1, f"the automation started no training within {AUTOMATION_TIMEOUT:.0f} s of the event"
        seconds = time.monotonic() - started
        print(f"monitor run + event + automation -> training run created: {seconds:.1f} s")

        # the monitor again (a rerun, or the next night): the event fires again, the cool-down holds it
        again = _run_monitor(degraded_model, prefect_worker)
        _event_of_run(degraded_model, again.id)
        time.sleep(10)  # the triggers service has seen it by now (it saw the first within seconds)
        later = [r for r in _training_runs_started_by(automation.id, train_id) if r.id not in {b.id for b in before}]
        assert [r.id for r in later] == [runs[0].id], "the cool-down let a second training start"
    finally:
        _cancel(runs)

    # what the two monitor runs left: the three nights' scores once, and one MLflow monitor run with the night
    _assert_scores_and_mlflow_record(degraded_model, mlflow_server, postgres_database)


def _assert_scores_and_mlflow_record(
    model: RegisteredWithReference, mlflow_server: MlflowServer, postgres_database: str
) -> None:
    from mlflow import MlflowClient

    from tasks import scores, store
    from tasks.monitor_publish import night_step

    table = scores.read_scores(store.get_engine(postgres_database), model.name)
    assert len(table) == len(NIGHTS) * HORIZON
    assert not table.duplicated(["series_id", "origin_ts", "target_ts", "model_version"]).any()
    assert (table["scaled_error"] > 0).all()

    client = MlflowClient(mlflow_server.tracking_uri)
    experiment = client.get_experiment_by_name("seqcast-monitor")
    assert experiment is not None
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`seqcast.monitor.model` = '{model.name}'"
    )
    assert len(runs) == 1
    [point] = client.get_metric_history(runs[0].info.run_id, "realised_mase")  # two runs, one night: one point
    assert point.step == night_step(AS_OF.date().isoformat())
    files = {Path(a.path).name for a in client.list_artifacts(runs[0].info.run_id, f"nights/{AS_OF.date()}")}
    assert {"series.csv", "steps.csv", "report.md", "mae_by_step.png"} <= files
