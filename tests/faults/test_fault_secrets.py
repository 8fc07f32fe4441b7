"""A database password never leaves the URL it came in: ingest, train and forecast on PostgreSQL through a URL with a
password, then look for the password everywhere they write what a person reads: the console, Prefect's logs,
artifacts and flow-run parameters, and MLflow's params, tags and registered-model versions.

The server trusts local connections, so it accepts the URL whatever its password; the password is only a marker.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tasks.settings import get_settings

pytestmark = [
    pytest.mark.faults,
    pytest.mark.postgres,
    pytest.mark.integration,
    pytest.mark.usefixtures("prefect_harness"),
]

SECRET = "Pw-" + uuid.uuid4().hex[:12]
TINY = ["--lookback", "48", "--horizon", "12", "--hidden-size", "8", "--layers", "1", "--epochs", "1"]


def _prefect_records(since: dt.datetime) -> list[str]:
    """Logs, artifacts and parameters of every flow run that started after `since`, as text."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterStartTime,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # logs are sent in batches, from a background worker
    records: list[str] = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)))
        ids = [run.id for run in runs]
        assert ids, "no flow run recorded"
        records += [json.dumps(run.parameters, default=str) for run in runs]
        records += [run.name for run in runs]
        offset = 0
        while True:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)), limit=200, offset=offset
            )
            records += [log.message for log in logs]
            offset += len(logs)
            if len(logs) < 200:
                break
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids)))
        records += [json.dumps([a.key, a.data, a.description], default=str) for a in artifacts]
    assert any("wrote" in r or "rows" in r for r in records), "the runs logged nothing: the search would prove nothing"
    return records


def _mlflow_records(tracking_uri: str, experiment: str, model_name: str) -> list[str]:
    """Params, tags and run names of the experiment's runs, and the tags and descriptions of the model's versions."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    runs = client.search_runs([found.experiment_id])
    assert runs, "no MLflow runs"
    records: list[str] = []
    for run in runs:
        records += [f"{k}={v}" for k, v in run.data.params.items()]
        records += [f"{k}={v}" for k, v in run.data.tags.items()]
        records.append(run.info.run_name or "")
    for version in client.search_model_versions(f"name = '{model_name}'"):
        records += [f"{k}={v}" for k, v in version.tags.items()]
        records.append(version.description or "")
    return records


def test_a_database_password_appears_in_no_output_log_artifact_or_mlflow_record(
    fresh_postgres: str,
    seqcast_home: Path,
    mlflow_store: str,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from flows.cli import main
    from flows.ingest import ingest_flow

    url = make_url(fresh_postgres).set(password=SECRET).render_as_string(hide_password=False)
    assert SECRET in url
    name = f"secrets-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("SEQCAST_DATABASE_URL", url)
    monkeypatch.setenv("SEQCAST_MLFLOW_TRACKING_URI", mlflow_store)
    monkeypatch.setenv("SEQCAST_REGISTERED_MODEL", name)
    monkeypatch.setenv("SEQCAST_EXPERIMENT", name)
    get_settings.cache_clear()
    since = dt.datetime.now(dt.UTC)

    assert main(["ingest", "--source", "sample:electricity"]) == 0
    ingest_flow(source="sample:electricity")
    assert main(["train", *TINY, "--register-rejected"]) == 0  # a version even if the 1-epoch network loses
    assert main(["forecast", "--version", "1"]) == 0  # champion or not

    console = capfd.readouterr()
    assert "4032 new" in console.out and "wrote 12 rows" in console.out, console.out[-2000:]
    assert SECRET not in console.out and SECRET not in console.err
    for record in _prefect_records(since):
        assert SECRET not in record, record
    for record in _mlflow_records(mlflow_store, name, name):
        assert SECRET not in record, record
