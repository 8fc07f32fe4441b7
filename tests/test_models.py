"""The forecaster, its packaging and its MLflow pyfunc wrapper, on small seeded synthetic series."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from models.forecaster import ForecasterConfig, RecurrentForecaster, predict_windows
from models.packaging import (
    ArtifactIntegrityError,
    LoadedForecaster,
    SeqcastForecaster,
    forecast_frame,
    forecast_origins,
    load_forecaster,
    pyfunc_input,
    save_forecaster,
    target_timestamps,
)
from models.windows import Scalers
from tasks.train import FitResult, TrainConfig, TrainingDivergedError, fit_forecaster
from tasks.windowing import WindowConfig, WindowedData, prepare_windows

LOOKBACK, HORIZON = 24, 6
CELLS = ["lstm", "gru"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sine_frame(n: int = 300, series: tuple[str, ...] = ("s1", "s2"), seed: int = 0) -> pd.DataFrame:
    """Noisy sines with period 12 and different levels and amplitudes, hourly from 2024-01-01 UTC."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC")
    parts = []
    for k, sid in enumerate(series):
        level, amp = 100.0 * (k + 1), 10.0 * (k + 1)
        value = level + amp * np.sin(2 * np.pi * np.arange(n) / 12 + k) + rng.normal(0, 0.05 * amp, n)
        parts.append(pd.DataFrame({"series_id": sid, "ts": ts, "value": value}))
    return pd.concat(parts, ignore_index=True)


def window(frame: pd.DataFrame) -> WindowedData:
    return prepare_windows(frame, WindowConfig(lookback=LOOKBACK, horizon=HORIZON, test_size=12, val_size=12))


def small(cell: str = "lstm", **overrides: object) -> TrainConfig:
    base: dict[str, object] = {
        "cell": cell,
        "hidden_size": 16,
        "num_layers": 2,
        "batch_size": 64,
        "max_epochs": 1,
        "learning_rate": 1e-2,
        "device": "cpu",
        "seed": 7,
        "num_threads": 1,  # tests share a 2-core machine; one thread keeps them fast under contention
        "scaling": "series",  # one network per fit; "auto" is tested in tests/test_train.py
    }
    base.update(overrides)
    return TrainConfig.model_validate(base)


def loaded_from(fit: FitResult, data: WindowedData) -> LoadedForecaster:
    return LoadedForecaster(fit.model, fit.config, data.scalers, data.freq, torch.device("cpu"))


@pytest.fixture(scope="module")
def sine_data() -> WindowedData:
    return window(sine_frame())


@pytest.fixture(scope="module")
def trained(sine_data: WindowedData) -> FitResult:
    return fit_forecaster(sine_data, small(max_epochs=2))


def test_config_ranges_are_validated() -> None:
    with pytest.raises(ValueError):
        ForecasterConfig(cell="rnn", lookback=10, horizon=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ForecasterConfig(lookback=0, horizon=2)
    with pytest.raises(ValueError):
        ForecasterConfig(lookback=10, horizon=2, dropout=1.0)


def test_head_choice_and_its_limits() -> None:
    assert ForecasterConfig.model_validate({"lookback": 10, "horizon": 2}).head == "last", "older config.json files"
    with pytest.raises(ValueError, match="`lookback` \\(4\\) must be at least `horizon`"):
        ForecasterConfig(lookback=4, horizon=6, head="per_step")
    assert TrainConfig(scaling="series").forecaster_config(24, 6).head == "per_step"
    assert TrainConfig(scaling="series").forecaster_config(4, 6).head == "last"
    assert TrainConfig(scaling="series", head="last").forecaster_config(24, 6).head == "last"


@pytest.mark.parametrize("cell", CELLS)
def test_per_step_head_reads_each_step_from_its_own_hidden_state(cell: str) -> None:
    """Step k reads the hidden state at input L - H + k: the last input moves only the last step's output."""
    torch.manual_seed(0)
    config = ForecasterConfig(cell=cell, lookback=LOOKBACK, horizon=HORIZON, hidden_size=8, head="per_step")
    model = RecurrentForecaster(config)
    assert model.head.out_features == 1
    x = torch.randn(2, LOOKBACK, 1)
    changed = x.clone()
    changed[:, -1, 0] += 5.0
    with torch.no_grad():
        before, after = model(x), model(changed)
    assert before.shape == (2, HORIZON)
    assert torch.equal(before[:, :-1], after[:, :-1])
    assert (before[:, -1] != after[:, -1]).all()
    last = RecurrentForecaster(ForecasterConfig(cell=cell, lookback=LOOKBACK, horizon=HORIZON, head="last"))
    assert last.head.out_features == HORIZON


@pytest.mark.parametrize("cell", CELLS)
def test_contract_fits_an_epoch_and_forecasts_every_series(cell: str, sine_data: WindowedData) -> None:
    fit = fit_forecaster(sine_data, small(cell))
    assert isinstance(fit.model.rnn, torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)
    assert not fit.model.training and next(fit.model.parameters()).device.type == "cpu"
    assert len(fit.history) == 1 and np.isfinite(fit.history[0]["train_loss"])
    panel = sine_data.panel
    points = forecast_origins(loaded_from(fit, sine_data), panel, np.arange(2), panel.lengths - 1)
    assert points.shape == (2, HORIZON)
    assert np.isfinite(points).all()
    x = torch.zeros(3, LOOKBACK, 1)
    assert fit.model(x).shape == (3, HORIZON)


def test_predict_windows_batches_agree_and_read_nothing_after_the_origin(trained: FitResult) -> None:
    values = torch.randn(200)
    starts = np.arange(0, 200 - LOOKBACK + 1, 7)
    whole = predict_windows(trained.model, values, starts, LOOKBACK, HORIZON)
    batched = predict_windows(trained.model, values, starts, LOOKBACK, HORIZON, batch_size=4)
    assert whole.shape == (len(starts), HORIZON)
    np.testing.assert_allclose(whole, batched, rtol=1e-5, atol=1e-6)
    # the last window's origin is the last value: nothing beyond it is needed
    last = predict_windows(trained.model, values[: starts[-1] + LOOKBACK], starts[-1:], LOOKBACK, HORIZON)
    np.testing.assert_allclose(last, whole[-1:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", CELLS)
def test_constant_input_gives_a_near_constant_forecast(cell: str) -> None:
    ts = pd.date_range("2024-01-01", periods=200, freq="h", tz="UTC")
    frame = pd.concat(
        [pd.DataFrame({"series_id": sid, "ts": ts, "value": level}) for sid, level in (("flat", 5.0), ("big", 250.0))]
    )
    data = window(frame)
    config = small(
        cell, num_layers=1, hidden_size=8, max_epochs=10, learning_rate=5e-2, patience=10, lr_schedule="none"
    )
    fit = fit_forecaster(data, config)
    points = forecast_origins(loaded_from(fit, data), data.panel, np.arange(2), data.panel.lengths - 1)
    np.testing.assert_allclose(points[0], 250.0, atol=0.05)  # "big" sorts first
    np.testing.assert_allclose(points[1], 5.0, atol=0.05)


def test_scaling_a_series_scales_its_forecast(trained: FitResult, sine_data: WindowedData) -> None:
    loaded = loaded_from(trained, sine_data)
    panel = sine_data.panel
    base = forecast_origins(loaded, panel, np.arange(2), panel.lengths - 1)
    scalers = sine_data.scalers
    tenfold = dataclasses.replace(loaded, scalers=Scalers(scalers.series_ids, scalers.mean * 10, scalers.std * 10))
    scaled = forecast_origins(tenfold, panel.with_values(panel.values * 10), np.arange(2), panel.lengths - 1)
    np.testing.assert_allclose(scaled, base * 10, rtol=1e-5)


def test_same_seed_gives_identical_weights(sine_data: WindowedData) -> None:
    first = fit_forecaster(sine_data, small(max_epochs=2)).model.state_dict()
    second = fit_forecaster(sine_data, small(max_epochs=2)).model.state_dict()
    other = fit_forecaster(sine_data, small(max_epochs=2, seed=8)).model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_nan_loss_aborts_with_a_clear_error(sine_data: WindowedData) -> None:
    scaled = sine_data.scaled.copy()
    scaled[sine_data.train_starts[3] + 2] = np.nan
    broken = dataclasses.replace(sine_data, scaled=scaled)
    seen: list[dict[str, float]] = []
    with pytest.raises(TrainingDivergedError, match=r"lstm training diverged at epoch 1: train loss nan"):
        fit_forecaster(broken, small(max_epochs=3), on_epoch=seen.append)
    assert len(seen) == 1


def test_exploding_loss_aborts(sine_data: WindowedData) -> None:
    huge = dataclasses.replace(sine_data, scaled=sine_data.scaled * 1e5)
    with pytest.raises(TrainingDivergedError, match="diverged at epoch 1"):
        fit_forecaster(huge, small(max_epochs=2, grad_clip=None))


def test_save_load_round_trip_gives_identical_predictions(
    trained: FitResult, sine_data: WindowedData, tmp_path: Path
) -> None:
    folder = save_forecaster(tmp_path / "model", trained.model, sine_data.scalers, sine_data.freq, {"run": "x"})
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "manifest.json", "scalers.json", "weights.pt"]
    loaded = load_forecaster(folder)
    assert loaded.config == trained.config and loaded.freq == "h" and loaded.metadata == {"run": "x"}
    panel = sine_data.panel
    positions = panel.lengths - 1 - np.array([0, 5])
    before = forecast_origins(loaded_from(trained, sine_data), panel, np.arange(2), positions)
    after = forecast_origins(loaded, panel, np.arange(2), positions)
    assert np.array_equal(before, after)
    # saving again over the folder replaces it whole
    save_forecaster(folder, trained.model, sine_data.scalers, sine_data.freq)
    assert load_forecaster(folder).metadata == {}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary folders left behind


def test_tampered_weights_are_refused(trained: FitResult, sine_data: WindowedData, tmp_path: Path) -> None:
    folder = save_forecaster(tmp_path / "model", trained.model, sine_data.scalers, sine_data.freq)
    state = torch.load(folder / "weights.pt", weights_only=True)
    state["head.bias"] += 1.0
    torch.save(state, folder / "weights.pt")
    with pytest.raises(ArtifactIntegrityError, match=r"weights.pt in .* has sha256 [0-9a-f]{64}, but the manifest"):
        load_forecaster(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(ArtifactIntegrityError, match=r"manifest\.json is missing"):
        load_forecaster(folder)


def test_forecast_frame_uses_the_last_lookback_rows(trained: FitResult, sine_data: WindowedData) -> None:
    loaded = loaded_from(trained, sine_data)
    frame = sine_frame()
    out = forecast_frame(loaded, frame.sample(frac=1.0, random_state=1))  # row order does not matter
    assert list(out.columns) == [
        "series_id",
        "origin_ts",
        "target_ts",
        "step",
        "point",
        "lower",
        "upper",
        "level",
        "method",
    ]
    assert (out["method"] == "lstm").all()
    assert out[["lower", "upper", "level"]].isna().all().all(), "a model saved without intervals has no bounds"
    assert len(out) == 2 * HORIZON
    last = pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(hours=299)
    assert (out["origin_ts"] == last).all()
    assert (out["target_ts"] == last + pd.to_timedelta(out["step"], unit="h")).all()
    assert out["step"].tolist() == list(range(1, HORIZON + 1)) * 2
    panel = sine_data.panel
    expected = forecast_origins(loaded, panel, np.arange(2), panel.lengths - 1)
    np.testing.assert_allclose(out["point"].to_numpy().reshape(2, HORIZON), expected, rtol=1e-6)
    # original units: forecasts near each series' level, not near 0
    assert abs(out.loc[out["series_id"] == "s2", "point"].mean() - 200.0) < 40.0
    # only the last `lookback` rows matter
    tail = frame.groupby("series_id").tail(LOOKBACK)
    pd.testing.assert_frame_equal(forecast_frame(loaded, tail), out)


def test_forecast_frame_refuses_bad_input(trained: FitResult, sine_data: WindowedData) -> None:
    loaded = loaded_from(trained, sine_data)
    frame = sine_frame()
    with pytest.raises(
        ValueError, match=r"`lookback` \(24\) needs 24 recent observations per series; series 's2' has 5"
    ):
        forecast_frame(loaded, pd.concat([frame[frame.series_id == "s1"], frame[frame.series_id == "s2"].tail(5)]))
    unknown = frame.assign(series_id=frame["series_id"].replace({"s2": "nope"}))
    with pytest.raises(ValueError, match=r"series \['nope'\] .* were not in this model's training data"):
        forecast_frame(loaded, unknown)
    with pytest.raises(ValueError, match=r"series 's1': its last 24 observations are not every 'h'"):
        forecast_frame(loaded, frame.drop(index=frame.index[frame.series_id == "s1"][-3]))
    with pytest.raises(ValueError, match=r"missing \['value'\]"):
        forecast_frame(loaded, frame.drop(columns="value"))
    with pytest.raises(ValueError, match=r"series \['s1'\] have NaN"):
        forecast_frame(loaded, frame.assign(value=frame["value"].where(frame.index != 290)))


def test_monthly_series_are_trained_and_forecast_on_month_starts() -> None:
    """Monthly steps vary (28-31 days): the panel, the saved model and the forecast targets all say "MS"."""
    frame = sine_frame(n=120)
    months = pd.date_range("2010-01-01", periods=120, freq="MS", tz="UTC")
    frame["ts"] = np.tile(months, 2)
    data = window(frame)
    assert data.freq == "MS"
    fit = fit_forecaster(data, small(max_epochs=1))
    out = forecast_frame(loaded_from(fit, data), frame)
    targets = pd.DatetimeIndex(out.loc[out["series_id"] == "s1", "target_ts"])
    assert list(targets) == list(pd.date_range("2020-01-01", periods=HORIZON, freq="MS", tz="UTC"))


def test_business_day_targets_skip_weekends() -> None:
    friday = pd.DatetimeIndex([pd.Timestamp("2024-01-05", tz="UTC")])
    targets = pd.DatetimeIndex(target_timestamps(friday, "B", 3)[0])
    assert [t.day_name() for t in targets] == ["Monday", "Tuesday", "Wednesday"]


def test_pyfunc_model_forecasts_in_original_units(trained: FitResult, sine_data: WindowedData, tmp_path: Path) -> None:
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    from tasks.intervals import calibrate_intervals

    calibration = calibrate_intervals(loaded_from(trained, sine_data), sine_data, 0.8, 12)
    folder = save_forecaster(
        tmp_path / "forecaster", trained.model, sine_data.scalers, sine_data.freq, intervals=calibration
    )
    frame = pyfunc_input(sine_frame().groupby("series_id").tail(LOOKBACK + 3).reset_index(drop=True))
    assert frame["ts"].dt.tz is None  # MLflow's schema enforcement takes naive datetimes only (UTC here)
    direct = forecast_frame(load_forecaster(folder), frame)
    mlflow.pyfunc.save_model(
        path=str(tmp_path / "pyfunc"),
        python_model=SeqcastForecaster(),
        artifacts={"forecaster": str(folder)},
        signature=infer_signature(frame, direct),
        pip_requirements=["mlflow", "torch", "pandas"],
    )
    model = mlflow.pyfunc.load_model(str(tmp_path / "pyfunc"))
    out = model.predict(frame)
    assert list(out.columns) == [
        "series_id",
        "origin_ts",
        "target_ts",
        "step",
        "point",
        "lower",
        "upper",
        "level",
        "method",
    ]
    assert (out["method"] == "lstm").all() and (out["level"] == 0.8).all()
    assert ((out["lower"] < out["point"]) & (out["point"] < out["upper"])).all()
    np.testing.assert_allclose(out[["lower", "upper"]].to_numpy(), direct[["lower", "upper"]].to_numpy(), rtol=1e-6)
    last = pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(hours=299)
    assert (pd.to_datetime(out["origin_ts"], utc=True) == last).all()
    assert (pd.to_datetime(out["target_ts"], utc=True) == last + pd.to_timedelta(out["step"], unit="h")).all()
    np.testing.assert_allclose(out["point"].to_numpy(), direct["point"].to_numpy(), rtol=1e-6)
    assert abs(out.loc[out["series_id"] == "s1", "point"].mean() - 100.0) < 20.0


def test_fallback_series_are_served_by_their_baseline_and_say_so(
    trained: FitResult, sine_data: WindowedData, tmp_path: Path
) -> None:
    folder = save_forecaster(
        tmp_path / "model", trained.model, sine_data.scalers, sine_data.freq, fallback={"s2": "seasonal_naive_12"}
    )
    loaded = load_forecaster(folder)
    assert loaded.fallback == {"s2": "seasonal_naive_12"}
    frame = sine_frame()
    out = forecast_frame(loaded, frame)
    by_series = {sid: part for sid, part in out.groupby("series_id")}
    assert (by_series["s1"]["method"] == "lstm").all() and (by_series["s2"]["method"] == "seasonal_naive_12").all()
    s2 = frame[frame.series_id == "s2"]["value"].to_numpy()
    np.testing.assert_array_equal(by_series["s2"]["point"].to_numpy(), s2[-12:][:HORIZON])  # the value a day before
    network = forecast_frame(loaded_from(trained, sine_data), frame)
    np.testing.assert_array_equal(by_series["s1"]["point"], network[network.series_id == "s1"]["point"])
    # the fallback map is covered by the manifest: editing it is refused like editing the weights
    config = folder / "config.json"
    config.write_text(config.read_text().replace("seasonal_naive_12", "naive"))
    with pytest.raises(ArtifactIntegrityError, match=r"config\.json in .* has sha256"):
        load_forecaster(folder)


def test_a_fallback_must_be_a_baseline_the_window_can_serve(trained: FitResult, sine_data: WindowedData) -> None:
    for fallback, message in (
        ({"s2": "seasonal_naive_48"}, r"fallback of series 's2': seasonal naive with season 48 reads 48 inputs"),
        ({"s2": "arima"}, r"fallback of series 's2': unknown baseline method 'arima'"),
        ({"nope": "naive"}, r"fallback for series 'nope', which is not in the model's training data"),
    ):
        with pytest.raises(ValueError, match=message):
            save_forecaster(Path("unused"), trained.model, sine_data.scalers, sine_data.freq, fallback=fallback)


def test_models_saved_before_scaling_and_fallback_load_as_before(
    trained: FitResult, sine_data: WindowedData, tmp_path: Path
) -> None:
    import hashlib
    import json

    folder = save_forecaster(tmp_path / "model", trained.model, sine_data.scalers, sine_data.freq)
    config = json.loads((folder / "config.json").read_text())
    del config["fallback"], config["forecaster"]["scaling"]
    (folder / "config.json").write_text(json.dumps(config))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["config.json"]["sha256"] = hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    loaded = load_forecaster(folder)
    assert loaded.config.scaling == "series" and loaded.fallback == {}


@pytest.mark.parametrize("scaling", ["last", "window"])
def test_window_scaling_forecasts_from_where_the_series_is_now(scaling: str) -> None:
    # The network reads the window relative to its own level: shifting a window by a constant shifts the forecast
    # by the same constant, whatever level training saw.
    config = ForecasterConfig(cell="gru", lookback=LOOKBACK, horizon=HORIZON, hidden_size=8, scaling=scaling)
    torch.manual_seed(0)
    model = RecurrentForecaster(config).eval()
    x = torch.randn(4, LOOKBACK, 1)
    with torch.inference_mode():
        base, shifted = model(x), model(x + 25.0)
    torch.testing.assert_close(shifted, base + 25.0, rtol=0, atol=1e-4)
    if scaling == "window":  # RevIN: scaling the window scales the forecast around its mean
        with torch.inference_mode():
            torch.testing.assert_close(model(x * 3.0), base * 3.0, rtol=1e-4, atol=1e-4)


def test_a_trending_series_is_forecast_near_its_last_value() -> None:
    # A series that rises every year: its test part lies above anything training saw. With the default scaling
    # the forecast at the last origin starts near the last value instead of falling back to the training range.
    n = 52 * 6
    t = np.arange(n, dtype=np.float64)
    rng = np.random.default_rng(3)
    value = 10 + 0.2 * t + 3 * np.sin(2 * np.pi * t / 52) + rng.normal(0, 0.3, n)
    ts = pd.date_range("2019-01-06", periods=n, freq="W-SUN", tz="UTC")
    frame = pd.DataFrame({"series_id": "rising", "ts": ts, "value": value})
    data = prepare_windows(frame, WindowConfig(lookback=52, horizon=4, test_fraction=0.2, val_fraction=0.1))
    assert value[-1] > data.panel.values[: data.splits.train_end[0]].max() + 10  # far above the training range
    fit = fit_forecaster(data, TrainConfig(cell="gru", max_epochs=15, num_threads=1, device="cpu"))
    loaded = loaded_from(fit, data)
    points = forecast_origins(loaded, data.panel, np.array([0]), data.panel.lengths - 1)
    spread = value[-52:].std()
    assert abs(points[0, 0] - value[-1]) < spread, (points[0], value[-1])
