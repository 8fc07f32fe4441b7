"""MLflow as the place to compare nights (issue 11): what each training, forecast and backfill run leaves there.

A training run on a series that seasonal naive forecasts almost perfectly: its 1-epoch network cannot beat that
baseline, so the run is a rejected one, deterministically; the same night with `register_rejected` registers it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from forecast_setup import TINY, TINY_REGISTERED, Registered, use_train_settings
from test_gate import NO_CHAMPION, evaluation_of

from tasks import gate, registry, store

AS_OF = pd.Timestamp("2024-01-20 23:30", tz="UTC")  # the last of 960 half-hours


def seasonal_frame(days: int = 20) -> pd.DataFrame:
    """A half-hourly daily cycle with a little noise: seasonal naive's error is the noise alone."""
    t = np.arange(days * 48)
    values = 100 + 10 * np.sin(2 * np.pi * t / 48) + np.random.default_rng(7).normal(0, 0.05, len(t))
    ts = pd.date_range("2024-01-01", periods=len(t), freq="30min", tz="UTC")
    return pd.DataFrame({"series_id": "cycle", "ts": ts, "value": values})


@dataclass(frozen=True)
class Night:
    name: str  # registered model and experiment
    summary: Any  # flows.train.TrainSummary


@pytest.fixture(scope="module")
def rejected(mlflow_store: str, tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> Iterator[Night]:
    """One training night whose best candidate loses to seasonal naive (SQLite; MLflow is what is tested)."""
    from flows.train import train_flow
    from tasks.settings import get_settings

    folder = tmp_path_factory.mktemp("mlflow-pages")
    url = f"sqlite:///{folder / 'seqcast.db'}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SEQCAST_HOME", str(folder / "home"))
        name = use_train_settings(env, url, mlflow_store)
        store.upsert_observations(store.get_engine(url), seasonal_frame())
        summary = train_flow(TINY, as_of=AS_OF.to_pydatetime())
        yield Night(name, summary)
    get_settings.cache_clear()  # settings of the environment restored
    store.dispose_engines()


def _runs(night: Night) -> tuple[Any, list[Any]]:
    client = registry.get_client()
    parent = client.get_run(night.summary.parent_run_id)
    children = client.search_runs(
        [night.summary.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{night.summary.parent_run_id}'"
    )
    return parent, sorted(children, key=lambda run: run.data.tags["seqcast.cell"])


def test_the_parent_run_carries_the_winners_metrics_and_the_decision(rejected: Night) -> None:
    parent, children = _runs(rejected)
    summary = rejected.summary
    metrics, tags = parent.data.metrics, parent.data.tags
    winner = next(run for run in children if run.data.tags["seqcast.cell"] == summary.best_cell)
    for name in ("test_mae", "test_rmse", "test_smape", "test_coverage", "served_test_mae", "naive_test_mae"):
        assert metrics[name] == pytest.approx(winner.data.metrics[name]), name
    assert metrics["test_mase"] == pytest.approx(winner.data.metrics["test_mase"])
    assert {"served_test_mase", "naive_test_mase", "seasonal_naive_48_test_mase"} <= set(metrics)
    assert metrics["promoted"] == 0.0 and metrics["beats_baselines"] == 0.0
    assert tags["seqcast.decision"] == "rejected" and tags["seqcast.best_cell"] == summary.best_cell
    assert tags["seqcast.decision_reason"] == summary.reason and ", seasonal_naive_48 1." in summary.reason
    assert tags["seqcast.registered_version"] == "not registered"
    assert parent.info.run_name == "train 2024-01-20 23:30"


def test_child_runs_are_named_with_their_cell_and_night(rejected: Night) -> None:
    _, children = _runs(rejected)
    assert [run.info.run_name for run in children] == ["gru 2024-01-20 23:30", "lstm 2024-01-20 23:30"]
    for run in children:  # and they link back to the Prefect flow run that made them
        flow_run = run.data.tags["prefect.flow_run_id"]
        assert run.data.tags.get("prefect.flow_run_url") == registry.flow_run_url(flow_run)


def test_child_run_params_are_the_values_the_fit_used(rejected: Night) -> None:
    import torch

    _, children = _runs(rejected)
    for run in children:
        params = run.data.params
        unresolved = {k: v for k, v in params.items() if v in ("None", "null", "auto", "")}
        assert unresolved == {}, unresolved
        assert params["batch_size"] == "256" and params["head"] == "per_step"
        assert params["device"] == "cpu" and int(params["num_threads"]) in range(1, torch.get_num_threads() + 1)
        assert params["scaling"] in ("series", "last") and "scaling_val_loss_last" in run.data.metrics
        assert params["test_size"] == str(192) and params["val_size"] == str(96)  # 0.2 and 0.1 of 960
        assert params["lookback"] == "48" and params["freq"] == "30min"


def test_each_candidate_run_has_a_plot_of_mae_by_step_and_no_per_step_metrics(rejected: Night) -> None:
    client = registry.get_client()
    _, children = _runs(rejected)
    for run in children:
        run_id = run.info.run_id
        assert "plots/mae_by_step.png" in {a.path for a in client.list_artifacts(run_id, "plots")}
        assert "test_mae_by_step.csv" in {a.path for a in client.list_artifacts(run_id)}
        assert not [name for name in run.data.metrics if "step" in name], "one table and one plot, not H metrics"
        png = Path(client.download_artifacts(run_id, "plots/mae_by_step.png"))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_the_validation_report_is_an_artifact_of_the_parent_run(rejected: Night) -> None:
    import json

    client = registry.get_client()
    parent, _ = _runs(rejected)
    files = {Path(a.path).suffix: a.path for a in client.list_artifacts(parent.info.run_id, "validation")}
    assert set(files) == {".json", ".html"}
    assert parent.data.tags["seqcast.validation"] == files[".json"]
    report = json.loads(Path(client.download_artifacts(parent.info.run_id, files[".json"])).read_text())
    assert report["success"] is True and report["rows"] == 960


def test_a_candidate_that_loses_to_a_baseline_is_not_registered(rejected: Night) -> None:
    summary = rejected.summary
    assert summary.version is None and summary.alias == "not registered"
    assert registry.get_client().search_model_versions(f"name = '{rejected.name}'") == []
    assert summary.outcome().startswith(f"not registered: {summary.reason}; there is no champion yet: ")


@pytest.mark.usefixtures("prefect_harness")
def test_register_rejected_registers_it_as_challenger_with_a_described_version(
    mlflow_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flag keeps the old rule; the version's description holds the served scores and the whole reason."""
    from flows.train import train_flow

    url = f"sqlite:///{tmp_path / 'seqcast.db'}"
    monkeypatch.setenv("SEQCAST_HOME", str(tmp_path / "home"))
    name = use_train_settings(monkeypatch, url, mlflow_store)
    store.upsert_observations(store.get_engine(url), seasonal_frame())
    summary = train_flow(TINY_REGISTERED, as_of=AS_OF.to_pydatetime())

    assert summary.alias == "challenger" and summary.version == "1"
    [version] = registry.get_client().search_model_versions(f"name = '{name}'")
    assert str(version.version) == "1" and version.tags["promotion"] == "rejected"
    description = version.description
    assert f"MASE {summary.served['mase']:.4f}" in description and f"MAE {summary.served['mae']:.4g}" in description
    assert "coverage " in description and "of a 90% interval" in description
    assert f"Reason: {summary.reason}." in description and "register_rejected" in description
    assert summary.parent_run_id in description
    store.dispose_engines()


def test_beating_the_baselines_is_recorded_apart_from_beating_the_champion() -> None:
    evaluation, _, _ = evaluation_of(lambda actual, series: actual + 0.1)
    better = gate.ChampionScore("3", "run", gate.decide_promotion(evaluation, NO_CHAMPION).served_mase / 2, "v3")
    challenger = gate.decide_promotion(evaluation, better)
    assert challenger.beats_baselines and not challenger.promote  # registered, as challenger
    losing, _, _ = evaluation_of(lambda actual, series: actual - 11.0, names=("ramp",))
    assert not gate.decide_promotion(losing, NO_CHAMPION).beats_baselines
    text = gate.version_description(challenger, evaluation, ["MLflow run: `abc`"])
    assert text.startswith(f"Served test scores (lstm): MASE {challenger.served_mase:.4f} (mean per series), MAE ")
    assert "Decision: registered as challenger, not promoted." in text and f"Reason: {challenger.reason}." in text
    assert text.endswith("MLflow run: `abc`")


# --- forecast and backfill runs -------------------------------------------------------------------------------


def _serving_runs(flow_run_id: str | None, kind: str) -> list[Any]:
    from tasks.settings import get_settings

    client = registry.get_client()
    experiment = client.get_experiment_by_name(get_settings().experiment)
    assert experiment is not None
    return client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}' and tags.`seqcast.kind` = '{kind}'",
    )


@pytest.mark.usefixtures("prefect_harness")
def test_a_forecast_leaves_an_mlflow_run_with_the_version_and_the_rows(env: str, model: Registered) -> None:
    from flows.forecast import forecast_flow

    summary = forecast_flow(as_of=pd.Timestamp("2024-01-13 23:00", tz="UTC").to_pydatetime())  # actuals follow
    assert summary.rows_written > 0
    [run] = _serving_runs(summary.flow_run_id, "forecast")
    tags, metrics = run.data.tags, run.data.metrics
    assert run.info.run_name == "forecast 2024-01-13 23:00" and run.info.status == "FINISHED"
    assert (tags["seqcast.model_name"], tags["seqcast.model_version"]) == (model.name, model.version)
    assert tags["seqcast.model_run_id"] == model.run_id and tags["seqcast.trigger"] == "manual"
    assert metrics["rows_written"] == summary.rows_written and metrics["series"] == len(summary.series)
    assert metrics["realised_rows"] > 0 and 0 <= metrics["realised_coverage"] <= 1  # a past as_of: actuals exist
    assert "summary.json" in {a.path for a in registry.get_client().list_artifacts(run.info.run_id)}


@pytest.mark.usefixtures("prefect_harness")
def test_a_backfill_leaves_an_mlflow_run_of_its_range(env: str, model: Registered) -> None:
    from flows.backfill import backfill_flow

    start, end = pd.Timestamp("2024-01-12", tz="UTC"), pd.Timestamp("2024-01-13", tz="UTC")
    summary = backfill_flow(start=start.to_pydatetime(), end=end.to_pydatetime(), every="12h")
    [run] = _serving_runs(summary.flow_run_id, "backfill")
    assert run.info.run_name == "backfill 2024-01-12 00:00..2024-01-13 00:00"
    assert run.data.tags["seqcast.model_version"] == model.version and run.data.tags["seqcast.every"] == "12h"
    assert run.data.metrics["rows_written"] == summary.rows_written > 0
    assert run.data.metrics["origins_planned"] == summary.origins_planned


def test_an_unreachable_tracking_server_only_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import mlflow

    from tasks.forecast import ForecastSummary
    from tasks.settings import get_settings

    monkeypatch.setenv("SEQCAST_MLFLOW_RETRIES", "0")
    monkeypatch.setenv("SEQCAST_MLFLOW_TIMEOUT", "2")
    get_settings.cache_clear()
    summary = ForecastSummary("m", "1", "run", None, "2024-01-14T23:00:00+00:00", None, 12, {"a": "x"})
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        with caplog.at_level(logging.WARNING):
            assert registry.log_serving_run("http://127.0.0.1:1", "seqcast", summary, {}) is None
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
        get_settings.cache_clear()
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(
        "the forecast 2024-01-14 23:00 run was not recorded in MLflow (its forecasts are written)"
    )
    assert "cannot reach MLflow tracking server http://127.0.0.1:1" in warning


# --- links and what the commands print --------------------------------------------------------------------------


def test_links_to_mlflow_runs_when_the_tracking_uri_is_a_server_and_ids_otherwise() -> None:
    uri = "https://someone:secret@mlflow.example.com:5000/"
    assert registry.run_url(uri, "7", "abc") == "https://mlflow.example.com:5000/#/experiments/7/runs/abc"
    assert (
        registry.version_url(uri, "my model", "3") == "https://mlflow.example.com:5000/#/models/my%20model/versions/3"
    )
    assert registry.run_url("sqlite:////tmp/mlflow.db", "7", "abc") is None
    assert registry.markdown_link("abc", None) == "`abc`"
    assert registry.run_links(uri, "7", "abc", None) == [
        "MLflow run: [abc](https://mlflow.example.com:5000/#/experiments/7/runs/abc) (experiment `7`)"
    ]


def test_links_to_the_prefect_flow_run_when_its_ui_url_is_known() -> None:
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    with temporary_settings(updates={PREFECT_UI_URL: "http://prefect.example.com:4200/"}):
        assert registry.flow_run_url("f-1") == "http://prefect.example.com:4200/runs/flow-run/f-1"
    with temporary_settings(restore_defaults={PREFECT_UI_URL, PREFECT_API_URL}):
        assert registry.flow_run_url("f-1") is None
    assert registry.flow_run_url(None) is None


def _summary(**changes: Any) -> Any:
    from flows.train import CandidateSummary, TrainSummary

    scores = {"mae": 12.5, "rmse": 13.0, "smape": 1.0, "mase": 1.2}
    fields: dict[str, Any] = {
        "parent_run_id": "run1",
        "experiment_id": "4",
        "model_name": "seqcast",
        "version": None,
        "alias": "not registered",
        "reason": "lstm mean per-series MASE 1.2000 does not beat seasonal_naive_48 0.3000",
        "best_cell": "lstm",
        "champion_mase": 0.25,
        "as_of": "2026-11-30T02:00:00+00:00",
        "candidates": [CandidateSummary("lstm", "r1", "uri1", {f"test_{k}": v for k, v in scores.items()})],
        "baselines": {"seasonal_naive_48": {**scores, "mase": 0.3}},
        "served": scores,
        "champion_version": "3",
    }
    return TrainSummary(**{**fields, **changes})


def test_a_night_that_registers_nothing_says_why_and_who_keeps_serving(capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import _print_training
    from flows.train import summary_markdown

    _print_training(_summary())
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == (
        "not registered: lstm mean per-series MASE 1.2000 does not beat seasonal_naive_48 0.3000; "
        "the previous champion v3 keeps serving"
    )
    _print_training(_summary(champion_version=None, champion_mase=None))
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("not registered: lstm mean per-series MASE 1.2000 does not beat seasonal_naive_48 0.3000; ")
    assert "there is no champion yet: nothing is served until" in last and "--register-rejected" in last
    markdown = summary_markdown(_summary(run_url="http://mlflow:5000/#/experiments/4/runs/run1", flow_run_id="f-1"))
    assert "**seqcast: lstm not registered**: lstm mean per-series MASE 1.2000" in markdown
    assert "MLflow run: [run1](http://mlflow:5000/#/experiments/4/runs/run1) (experiment `4`)" in markdown
    assert "Prefect flow run: `f-1`" in markdown


def test_the_demo_says_how_to_open_the_runs_in_a_lean_mlflow_ui(seqcast_home: Path) -> None:
    from flows.demo import next_steps
    from tasks.forecast import ForecastSummary
    from tasks.settings import get_settings

    lines = next_steps(_summary(version="4", alias="champion"))
    command = next(line.strip() for line in lines if line.strip().startswith("mlflow ui"))
    assert command == f"mlflow ui --backend-store-uri {get_settings().tracking_uri} --workers 1 --port 5000"
    assert "  then http://127.0.0.1:5000/#/experiments/4/runs?workflowType=machine_learning" in lines
    assert "No forecasts written: there is no champion yet (lstm mean per-series MASE 1.2000 does not" in lines[0]
    assert next_steps(_summary())[0] == "No forecasts written: nothing was registered, and there is no champion yet."
    served = ForecastSummary("seqcast", "3", "r3", None, "2026-11-30T03:00:00+00:00", None, 48, {"a": "x"})
    line = next_steps(_summary(), served)[0]
    assert line.startswith("Forecasts: 48 rows of seqcast v3 (the previous champion: this training registered nothing)")


def test_against_an_mlflow_server_the_demo_links_its_page(seqcast_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.demo import next_steps
    from tasks.settings import get_settings

    monkeypatch.setenv("SEQCAST_MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    get_settings.cache_clear()
    lines = next_steps(_summary(version="4", alias="champion"))
    assert "  http://mlflow.internal:5000/#/experiments/4/runs?workflowType=machine_learning" in lines
    assert not any("mlflow ui" in line for line in lines)
