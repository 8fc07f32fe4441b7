"""What a user does with the production set, on real servers: deploy, start a worker, press Run, read the table.

A real Prefect server and MLflow server on PostgreSQL and a process worker (tests/servers.py) run the deployments
that flows/deploy.py registers. Setup stores the bundled electricity sample in the session's PostgreSQL database
and trains a tiny model in this process against the MLflow server. Then the backfill deployment is started through
the Prefect API with a date range, as the dashboard's Run button does, and so is the forecast deployment; the
worker runs both, and their rows must be in the forecasts table, stamped with their flow run ids.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from servers import ROOT, WORK_POOL, MlflowServer, PrefectServer, PrefectWorker, base_env, executable

FLOW_FILES = ("flows/train.py", "flows/forecast.py", "flows/backfill.py")
MISSING_FLOWS = [name for name in FLOW_FILES if not (ROOT / name).is_file()]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.postgres,
    pytest.mark.timeout(600),
    # until the flows land, there is nothing to deploy (and no server is started for nothing)
    pytest.mark.skipif(bool(MISSING_FLOWS), reason=f"{', '.join(MISSING_FLOWS)} not written yet"),
]

SERIES = "england_wales_demand"
LAST_TS = pd.Timestamp("2000-08-27 23:30", tz="UTC")  # the sample's last observation
BACKFILL_START = pd.Timestamp("2000-08-27 00:00", tz="UTC")
BACKFILL_END = pd.Timestamp("2000-08-27 06:00", tz="UTC")
TIMEZONE = "Europe/London"  # not UTC, so a lost time zone shows
RUN_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def prefect_api(prefect_server: PrefectServer) -> Iterator[str]:
    """This process talks to the test server (a context, so no other test's Prefect settings are touched)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
        yield prefect_server.api_url


@pytest.fixture(scope="module")
def observations(postgres_database: str) -> pd.DataFrame:
    """The bundled electricity sample, stored in the session's PostgreSQL database."""
    from importlib.resources import files

    from tasks import store

    with (files("tasks.samples") / "electricity.csv.gz").open("rb") as fh:
        frame = pd.read_csv(fh, compression="gzip")
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    engine = store.get_engine(postgres_database)
    with engine.begin() as conn:
        conn.execute(store.forecasts.delete())
    store.upsert_observations(engine, frame)
    assert frame["ts"].max() == LAST_TS
    return frame


@pytest.fixture(scope="module")
def champion(
    observations: pd.DataFrame,
    postgres_database: str,
    mlflow_server: MlflowServer,
    prefect_api: str,
    prefect_worker_process: PrefectWorker,  # asked for so the worker starts up while the model trains
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    """A trained champion in the MLflow server: the train flow, run in this process with a tiny config.

    Returns its version. A tiny model may lose to seasonal naive, and then the flow rightly promotes nothing (it
    registers it, as challenger, because the spec says `register_rejected`); these tests are about deployments, so
    setup then names the trained version champion itself.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from tasks.settings import get_settings

    with pytest.MonkeyPatch.context() as env:
        env.setenv("SEQCAST_DATABASE_URL", postgres_database)
        env.setenv("MLFLOW_TRACKING_URI", mlflow_server.tracking_uri)
        env.setenv("SEQCAST_HOME", str(tmp_path_factory.mktemp("train-home")))
        env.delenv("SEQCAST_MLFLOW_TRACKING_URI", raising=False)
        get_settings.cache_clear()
        try:
            from flows.train import train_flow
            from tasks.spec import RunSpec

            train_flow(
                RunSpec(
                    window={"lookback": 48, "horizon": 12},
                    model={"cells": ["gru"]},
                    training={"max_epochs": 1},
                    evaluation={"register_rejected": True},  # registered even if it loses to a baseline
                ),
                series=[SERIES],
                as_of=LAST_TS.to_pydatetime(),
            )
            name = get_settings().registered_model
        finally:
            get_settings.cache_clear()

    client = MlflowClient(tracking_uri=mlflow_server.tracking_uri, registry_uri=mlflow_server.tracking_uri)
    versions = client.search_model_versions(f"name = '{name}'")
    assert versions, f"the train flow registered no version of {name!r}"
    try:
        return str(client.get_model_version_by_alias(name, "champion").version)
    except MlflowException:  # no champion: the tiny model lost to seasonal naive
        latest = max(versions, key=lambda v: int(v.version))
        client.set_registered_model_alias(name, "champion", latest.version)
        return str(latest.version)


@pytest.fixture(scope="module")
def deployment_ids(prefect_api: str) -> dict[str, str]:
    """The three deployments, registered the way `seqcast deploy` does it."""
    from flows.deploy import deploy_all

    return deploy_all(api_url=prefect_api, work_pool=WORK_POOL, timezone=TIMEZONE, project_dir=ROOT)


def _read_deployment(name: str) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name)


@pytest.fixture(scope="module")
def flow_runs(
    deployment_ids: dict[str, str], champion: str, prefect_worker: PrefectWorker, prefect_api: str
) -> dict[str, Any]:
    """A backfill and a forecast started through the API, as the dashboard's Run button does (not waited for).

    Both are created at once, so the worker runs them side by side.
    """
    from prefect.deployments import run_deployment

    backfill = run_deployment(
        name="seqcast-backfill/on-demand",
        parameters={"start": BACKFILL_START.isoformat(), "end": BACKFILL_END.isoformat(), "series": [SERIES]},
        timeout=0,
        as_subflow=False,
    )
    # A scheduled deployment started by hand. The sample is from 2000, so `as_of` is given instead of
    # defaulting to now: the forecast origin is then the sample's last observation.
    forecast = run_deployment(
        name="seqcast-forecast/nightly-forecast",
        parameters={"as_of": LAST_TS.isoformat(), "series": [SERIES]},
        timeout=0,
        as_subflow=False,
    )
    return {"backfill": backfill, "forecast": forecast}


def _wait_for(flow_run_id: Any, worker: PrefectWorker, timeout: float = RUN_TIMEOUT) -> Any:
    """The flow run once it is final; fails early if the worker dies (its log is attached to the report)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run
            process = worker.service.process
            if process is not None and process.poll() is not None:
                pytest.fail(f"the worker exited ({process.returncode}) while flow run {run.name} was {run.state_name}")
            if time.monotonic() > deadline:
                pytest.fail(f"flow run {run.name} ({flow_run_id}) still {run.state_name} after {timeout:.0f} s")
            time.sleep(1)


def _forecast_rows(db_url: str, flow_run_id: Any) -> pd.DataFrame:
    from tasks import store

    frame = store.read_forecasts(store.get_engine(db_url), series_ids=[SERIES])
    return frame[frame["flow_run_id"] == str(flow_run_id)]


# ------------------------------------------------------------------------------------------ the deployments


def test_deployments_registered_on_the_pool_with_schedules_and_limits(deployment_ids: dict[str, str]) -> None:
    from flows.deploy import CRON_FORECAST, CRON_MONITOR, CRON_TRAIN, DEPLOYMENTS, FLOW_RUN_ENV

    assert sorted(deployment_ids) == sorted(spec.full_name for spec in DEPLOYMENTS)
    crons = {"train": CRON_TRAIN, "forecast": CRON_FORECAST, "monitor": CRON_MONITOR}
    for spec in DEPLOYMENTS:
        deployment = _read_deployment(spec.full_name)
        assert str(deployment.id) == deployment_ids[spec.full_name]
        assert deployment.work_pool_name == WORK_POOL
        assert deployment.entrypoint == spec.entrypoint
        assert deployment.parameters == spec.parameters
        assert deployment.job_variables == {"env": FLOW_RUN_ENV}
        assert deployment.enforce_parameter_schema is True
        assert deployment.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
        assert set(spec.tags) <= set(deployment.tags)
        if spec.schedule is None:
            assert deployment.schedules == []
        else:
            assert len(deployment.schedules) == 1
            schedule = deployment.schedules[0]
            assert schedule.active
            assert schedule.schedule.cron == crons[spec.schedule]
            assert schedule.schedule.timezone == TIMEZONE
            assert schedule.parameters == spec.schedule_parameters
        limit = deployment.global_concurrency_limit
        if spec.concurrency_limit is None:
            assert limit is None
        else:
            assert limit is not None and limit.limit == spec.concurrency_limit


def test_backfill_deployment_asks_for_a_date_range_in_a_form(deployment_ids: dict[str, str]) -> None:
    schema = _read_deployment("seqcast-backfill/on-demand").parameter_openapi_schema
    properties = schema["properties"]
    assert {"start", "end", "every", "model_alias", "model_version", "series"} <= set(properties)
    assert {"start", "end"} <= set(schema.get("required", []))
    for name in ("start", "end"):
        assert properties[name].get("format") == "date-time", properties[name]
    every_types = {option.get("type") for option in properties["every"].get("anyOf", [properties["every"]])}
    assert "string" in every_types
    # the train and forecast forms have no required field: a schedule starts them with the defaults
    for name in ("seqcast-train/nightly-retrain", "seqcast-forecast/nightly-forecast"):
        assert not _read_deployment(name).parameter_openapi_schema.get("required")


# ------------------------------------------------------------------------------------------ runs on the worker


def test_backfill_started_from_the_api_writes_its_forecasts(
    flow_runs: dict[str, Any], postgres_database: str, champion: str, prefect_worker: PrefectWorker
) -> None:
    run = _wait_for(flow_runs["backfill"].id, prefect_worker)
    assert run.state.is_completed(), f"backfill ended {run.state_name}: {run.state.message}"
    assert run.parameters["start"] is not None and run.work_pool_name == WORK_POOL

    rows = _forecast_rows(postgres_database, run.id)
    assert not rows.empty, "the backfill run wrote no rows stamped with its flow run id"
    assert rows["origin_ts"].min() >= BACKFILL_START
    assert rows["origin_ts"].max() <= BACKFILL_END
    assert (rows["target_ts"] > rows["origin_ts"]).all()
    assert set(rows["model_version"]) == {champion}
    assert not rows.duplicated(["series_id", "origin_ts", "target_ts", "model_name", "model_version"]).any()


def test_forecast_deployment_started_by_hand_writes_the_champions_forecast(
    flow_runs: dict[str, Any], postgres_database: str, champion: str, prefect_worker: PrefectWorker
) -> None:
    run = _wait_for(flow_runs["forecast"].id, prefect_worker)
    assert run.state.is_completed(), f"forecast ended {run.state_name}: {run.state.message}"

    rows = _forecast_rows(postgres_database, run.id)
    assert not rows.empty, "the forecast run wrote no rows stamped with its flow run id"
    assert set(rows["origin_ts"]) == {LAST_TS}
    assert (rows["target_ts"] > LAST_TS).all()
    assert set(rows["model_version"]) == {champion}
    # the worker's console carries the flow's own lines, not Prefect's state line per task (the UI keeps those)
    worker_log = prefect_worker.service.log_path.read_text(errors="replace")
    assert "wrote " in worker_log and " rows of " in worker_log
    assert "Finished in state Completed()" not in worker_log


# ------------------------------------------------------------------------------------------ deploying again


def _snapshot(name: str) -> dict[str, Any]:
    """What a deployment does, without its pull step and version."""
    deployment = _read_deployment(name)
    limit = deployment.global_concurrency_limit
    options = deployment.concurrency_options
    return {
        "id": str(deployment.id),
        "entrypoint": deployment.entrypoint,
        "description": deployment.description,
        "work_pool_name": deployment.work_pool_name,
        "parameters": deployment.parameters,
        "job_variables": deployment.job_variables,
        "parameter_openapi_schema": deployment.parameter_openapi_schema,
        "enforce_parameter_schema": deployment.enforce_parameter_schema,
        "tags": sorted(deployment.tags),
        "schedules": [
            (s.schedule.cron, s.schedule.timezone, s.slug, s.active, s.parameters) for s in deployment.schedules
        ],
        "concurrency": (limit.limit if limit else None, str(options.collision_strategy) if options else None),
    }


def test_prefect_yaml_registers_the_same_deployments(
    deployment_ids: dict[str, str], prefect_api: str, tmp_path: Path
) -> None:
    """`prefect deploy --all --prefect-file deployments/prefect.yaml` updates the same three deployments to the
    same settings; only the pull step differs (SEQCAST_PROJECT_DIR, read on the worker, instead of a path)."""
    before = {name: _snapshot(name) for name in deployment_ids}
    env = {
        **base_env(),
        "PREFECT_API_URL": prefect_api,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "SEQCAST_TIMEZONE": TIMEZONE,
    }
    argv = ["prefect", "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"]
    done = subprocess.run(executable(argv), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}"
    after = {name: _snapshot(name) for name in deployment_ids}
    assert after == before
    for name in deployment_ids:
        assert _read_deployment(name).pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $SEQCAST_PROJECT_DIR }}"}}
        ]


def test_deploying_again_updates_in_place(deployment_ids: dict[str, str], prefect_api: str) -> None:
    """Same ids, one schedule each, new cron and time zone: no duplicate schedule, no second deployment."""
    from flows.deploy import deploy_all

    again = deploy_all(api_url=prefect_api, cron_train="30 1 * * *", timezone="UTC", project_dir=Path(ROOT))
    assert again == deployment_ids
    train = _read_deployment("seqcast-train/nightly-retrain")
    assert [(s.schedule.cron, s.schedule.timezone, s.parameters) for s in train.schedules] == [
        ("30 1 * * *", "UTC", {"trigger": "schedule"})
    ]
    forecast = _read_deployment("seqcast-forecast/nightly-forecast")
    assert [(s.schedule.cron, s.schedule.timezone) for s in forecast.schedules] == [("0 3 * * *", "UTC")]
    assert _read_deployment("seqcast-backfill/on-demand").schedules == []
