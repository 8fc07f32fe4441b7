"""What the forecast and backfill tests share: a tiny LSTM trained and registered once per test module, and
the synthetic hourly observations it forecasts, ingested into each test's database (SQLite and PostgreSQL); and
what the train flow's tests share: the TINY run spec, the electricity sample, the `train_env` settings, the
Prefect task runs of a run's network fits.

Loaded for every test by `pytest_plugins` in tests/conftest.py, so the fixtures `model`, `env` and `train_env` are
defined once.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tasks import registry, store
from tasks.settings import get_settings
from tasks.spec import RunSpec

LOOKBACK, HORIZON = 48, 12
HOSTILE = "x'; DROP TABLE forecasts; --\"ü名☃ \\ |"
TRAINED = ["a", "b", "g", HOSTILE]
LENGTH = 24 * 14
START = pd.Timestamp("2024-01-01", tz="UTC")
DEAD_URL = "postgresql+psycopg://postgres@127.0.0.1:1/x?connect_timeout=2"
KEY = ["series_id", "origin_ts", "target_ts", "model_name", "model_version"]


def synthetic_frame(ids: list[str] = TRAINED, length: int = LENGTH) -> pd.DataFrame:
    """Hourly daily-seasonal series with a little noise, one amplitude per series."""
    parts = []
    t = np.arange(length)
    for i, sid in enumerate(ids):
        values = 100 + 10 * (i + 1) * np.sin(2 * np.pi * t / 24) + np.random.default_rng(i).normal(0, 1, length)
        parts.append(
            pd.DataFrame({"series_id": sid, "ts": pd.date_range(START, periods=length, freq="h"), "value": values})
        )
    return pd.concat(parts, ignore_index=True)


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    run_id: str


def register_tiny_model(
    tracking_uri: str, folder: Path, name: str, fallback: dict[str, str] | None = None
) -> Registered:
    """Train the tiny model on `synthetic_frame()`, log it (with `fallback`), register it and make it champion."""
    from models.packaging import pyfunc_input, save_forecaster
    from tasks.evaluate import candidate_forecaster, evaluate_test_windows, forecast_test_windows, model_reference
    from tasks.intervals import calibrate_intervals
    from tasks.train import TrainConfig, fit_forecaster
    from tasks.windowing import WindowConfig, prepare_windows

    frame = synthetic_frame()
    data = prepare_windows(frame, WindowConfig(lookback=LOOKBACK, horizon=HORIZON, test_size=12, val_size=12))
    config = TrainConfig(
        hidden_size=8, num_layers=1, max_epochs=1, device="cpu", num_threads=1, seed=0, scaling="series"
    )
    fit = fit_forecaster(data, config)
    forecaster = candidate_forecaster(fit, data)
    calibration = calibrate_intervals(forecaster, data, 0.9, 24)
    evaluation = evaluate_test_windows(
        data, forecast_test_windows(forecaster, data), 24, model_name="lstm", fallback=fallback, calibration=calibration
    )
    experiment = registry.configure_mlflow(tracking_uri, f"forecast-tests-{uuid.uuid4().hex[:8]}", folder / "art")
    run_id = registry.start_run(experiment, "tiny", {})
    model_dir = save_forecaster(
        folder / "forecaster",
        fit.model,
        data.scalers,
        data.freq,
        {"mlflow_run_id": run_id},
        fallback=fallback,
        intervals=calibration,
        reference=model_reference(evaluation, data),
    )
    uri = registry.log_forecaster(run_id, model_dir, pyfunc_input(frame[frame["series_id"] == "a"].tail(LOOKBACK)))
    registry.end_run(run_id)
    version = str(registry.register_model(name, uri, run_id).version)
    registry.apply_decision(name, version, True, "test model")
    return Registered(name, version, run_id)


@pytest.fixture(scope="module")
def model(mlflow_store: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Registered:
    """The tiny model, registered as champion under a name of the requesting module's own."""
    return register_tiny_model(
        mlflow_store, tmp_path_factory.mktemp("model"), f"{request.module.__name__}-{uuid.uuid4().hex[:8]}"
    )


@pytest.fixture
def env(db_url: str, seqcast_home: Path, mlflow_store: str, model: Registered, monkeypatch: pytest.MonkeyPatch) -> str:
    """Settings pointing at `db_url` and the test MLflow store, with the synthetic observations ingested."""
    monkeypatch.setenv("SEQCAST_DATABASE_URL", db_url)
    monkeypatch.setenv("SEQCAST_MLFLOW_TRACKING_URI", mlflow_store)
    monkeypatch.setenv("SEQCAST_REGISTERED_MODEL", model.name)
    get_settings.cache_clear()
    store.upsert_observations(store.get_engine(db_url), synthetic_frame())
    return db_url


# --- the train flow's tests (tests/test_train_flow.py, tests/test_mlflow_pages.py) --------------------------------

TINY = RunSpec(
    window={"lookback": 48, "horizon": 12},
    model={"hidden_size": 8, "num_layers": 1},
    training={"max_epochs": 1, "batch_size": 256},
)
# TINY, registering its best candidate even when it loses to a baseline (a 1-epoch network may)
TINY_REGISTERED = RunSpec.model_validate({**TINY.model_dump(), "evaluation": {"register_rejected": True}})


def electricity(days: int = 20) -> pd.DataFrame:
    """The first `days` of the bundled half-hourly electricity sample."""
    frame = pd.read_csv(Path(__file__).parents[1] / "tasks" / "samples" / "electricity.csv.gz")
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame.head(days * 48)


@pytest.fixture
def train_env(db_url: str, seqcast_home: Path, mlflow_store: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Settings pointing at `db_url` and the session MLflow store, with a model name of this test's own."""
    return use_train_settings(monkeypatch, db_url, mlflow_store)


def use_train_settings(monkeypatch: pytest.MonkeyPatch, db_url: str, mlflow_store: str) -> str:
    """`train_env` for fixtures of any scope: returns the registered model's (and experiment's) new name."""
    name = f"model-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("SEQCAST_DATABASE_URL", db_url)
    monkeypatch.setenv("SEQCAST_MLFLOW_TRACKING_URI", mlflow_store)
    monkeypatch.setenv("SEQCAST_REGISTERED_MODEL", name)
    monkeypatch.setenv("SEQCAST_EXPERIMENT", name)
    get_settings.cache_clear()
    import mlflow

    # set here too: a flow that fails before configuring MLflow must still be checked against this store
    mlflow.set_tracking_uri(mlflow_store)
    mlflow.set_registry_uri(mlflow_store)
    return name


def forecasts(url: str) -> pd.DataFrame:
    return store.read_forecasts(store.get_engine(url))


def at(hours: int) -> pd.Timestamp:
    return START + pd.Timedelta(hours=hours)


def network_runs(summary: Any) -> dict[str, tuple[float, float]]:
    """{task run name: (start, end) in seconds} of the flow run's network fits (`train-network` tasks)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[summary.flow_run_id])), limit=200
        )
    return {
        run.name: (run.start_time.timestamp(), run.end_time.timestamp())
        for run in runs
        if run.task_key.startswith("fit_network_task") and run.start_time and run.end_time
    }


def any_overlap(spans: dict[str, tuple[float, float]]) -> bool:
    """Whether any two of the (start, end) spans ran at the same time."""
    ordered = sorted(spans.values())
    return any(end > later[0] for (_, end), later in itertools.pairwise(ordered))
