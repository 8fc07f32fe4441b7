"""What the monitoring tests share: a model reference built by hand (so every expected figure is known), a tiny model
registered with it, and forecasts and observations laid out night by night.

Used by tests/test_monitor.py (SQLite, PostgreSQL, MLflow in a temp folder, Prefect's harness) and by
tests/integration/test_monitor_automation.py (the real Prefect server, worker and MLflow server).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from models.reference import ModelReference, SeriesReference

HORIZON = 4  # steps per forecast in the hand-made rows (hourly)
ORIGIN_HOUR = 12  # each night's forecast is made at 12:00 UTC


def make_reference(
    series: dict[str, float],
    test_mase: float = 1.0,
    mae_by_step: list[float | None] | None = None,
    level: float | None = 0.9,
    recent_mean: float = 100.0,
    recent_std: float = 5.0,
    data_end: str = "2024-01-01T00:00:00+00:00",
) -> ModelReference:
    """A reference whose series have the MASE scales `series` ({id: scale}), all with `test_mase`."""
    return ModelReference(
        season=24,
        level=level,
        test_mase=test_mase,
        mae_by_step=mae_by_step if mae_by_step is not None else [1.0] * HORIZON,
        coverage=level,
        coverage_by_step=None if level is None else [level] * HORIZON,
        series={
            sid: SeriesReference(
                mase_scale=scale,
                method="lstm",
                test_mase=test_mase,
                recent_mean=recent_mean,
                recent_std=recent_std,
                data_end=data_end,
            )
            for sid, scale in series.items()
        },
    )


def forecast_rows(
    series_ids: list[str],
    nights: list[str],
    model_name: str,
    version: str,
    point: float = 100.0,
    half_width: float | None = None,
    level: float | None = 0.9,
    horizon: int = HORIZON,
) -> pd.DataFrame:
    """One forecast per series and night, made at ORIGIN_HOUR, `horizon` hourly steps of `point` (bounds
    point +/- `half_width`, or none)."""
    parts = []
    for sid in series_ids:
        for night in nights:
            origin = pd.Timestamp(night, tz="UTC") + pd.Timedelta(hours=ORIGIN_HOUR)
            steps = np.arange(1, horizon + 1)
            parts.append(
                pd.DataFrame(
                    {
                        "series_id": sid,
                        "origin_ts": origin,
                        "target_ts": origin + pd.to_timedelta(steps, unit="h"),
                        "step": steps,
                        "point": point,
                        "lower": np.nan if half_width is None else point - half_width,
                        "upper": np.nan if half_width is None else point + half_width,
                        "level": np.nan if half_width is None else level,
                        "method": "lstm",
                        "model_name": model_name,
                        "model_version": version,
                        "mlflow_run_id": "run",
                        "flow_run_id": None,
                        "created_at": pd.Timestamp("2024-01-01", tz="UTC"),
                    }
                )
            )
    return pd.concat(parts, ignore_index=True)


def actuals(forecasts: pd.DataFrame, values: float | np.ndarray) -> pd.DataFrame:
    """Observations at the forecasts' targets (one per series and time)."""
    frame = forecasts[["series_id", "target_ts"]].drop_duplicates().rename(columns={"target_ts": "ts"})
    return frame.assign(value=values).reset_index(drop=True)


@dataclass(frozen=True)
class RegisteredWithReference:
    name: str
    version: str
    run_id: str
    reference: ModelReference | None


def register_with_reference(
    tracking_uri: str,
    folder: Path,
    reference: ModelReference | None,
    name: str | None = None,
    frame: pd.DataFrame | None = None,
    lookback: int | None = None,
    horizon: int = 12,
) -> RegisteredWithReference:
    """A tiny LSTM (one epoch on `frame`, default tests/forecast_setup.py's synthetic series) saved with `reference`
    (None: as models were saved before references existed), logged, registered and made champion of `name` (default
    a fresh name)."""
    from forecast_setup import LOOKBACK, synthetic_frame

    from models.packaging import pyfunc_input, save_forecaster
    from tasks import registry
    from tasks.train import TrainConfig, fit_forecaster
    from tasks.windowing import WindowConfig, prepare_windows

    name = name or f"monitor-{uuid.uuid4().hex[:8]}"
    frame = synthetic_frame() if frame is None else frame
    lookback = lookback or LOOKBACK
    data = prepare_windows(frame, WindowConfig(lookback=lookback, horizon=horizon, test_size=horizon, val_size=horizon))
    config = TrainConfig(
        hidden_size=8, num_layers=1, max_epochs=1, device="cpu", num_threads=1, seed=0, scaling="series"
    )
    fit = fit_forecaster(data, config)
    experiment = registry.configure_mlflow(tracking_uri, f"monitor-tests-{uuid.uuid4().hex[:8]}", folder / "art")
    run_id = registry.start_run(experiment, "tiny", {})
    model_dir = save_forecaster(
        folder / "forecaster", fit.model, data.scalers, data.freq, {"mlflow_run_id": run_id}, reference=reference
    )
    first = str(data.panel.series_ids[0])
    example = pyfunc_input(frame[frame["series_id"] == first].sort_values("ts").tail(lookback))
    uri = registry.log_forecaster(run_id, model_dir, example)
    registry.end_run(run_id)
    version = str(registry.register_model(name, uri, run_id).version)
    registry.apply_decision(name, version, True, "test model")
    return RegisteredWithReference(name, version, run_id, reference)
