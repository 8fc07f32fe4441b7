"""Prediction intervals: the conformal pieces, their coverage on series with known noise, and bounds on every path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from models.intervals import (
    IntervalCalibration,
    conformal_quantiles,
    interval_bounds,
    scaled_scores,
    spread_floors,
    spread_lag,
    step_conformal_quantiles,
    window_spread,
)
from models.packaging import LoadedForecaster, forecast_frame, load_forecaster, save_forecaster
from models.windows import panel_from_frame
from tasks.evaluate import evaluate_test_windows, forecast_test_windows, model_reference
from tasks.intervals import calibrate_intervals, interval_score_terms, score_intervals
from tasks.train import TrainConfig, fit_forecaster
from tasks.windowing import WindowConfig, WindowedData, prepare_windows

LEVEL = 0.9


def test_window_spread_is_the_mean_absolute_change_of_each_window() -> None:
    values = np.array([0.0, 1.0, 3.0, 6.0, 6.0, 2.0, 2.5])
    starts = np.array([0, 2, 3])
    expected = [np.mean(np.abs(np.diff(values[s : s + 4]))) for s in starts]
    np.testing.assert_allclose(window_spread(values, starts, 4), expected)


def test_spread_floor_is_a_tenth_of_the_training_change_and_positive_for_a_constant_series() -> None:
    values = np.array([1.0, 3.0, 1.0, 3.0, 100.0, 5.0, 5.0, 5.0, 5.0])  # series 0: [0, 5), series 1: [5, 9)
    floors = spread_floors(values, np.array([0, 5]), np.array([4, 9]))  # series 0 trains on its first 4
    assert floors[0] == pytest.approx(0.1 * 2.0)
    assert 0 < floors[1] < 1e-9


def test_conformal_quantile_takes_the_finite_sample_rank() -> None:
    scores = np.arange(1.0, 20.0)[:, None] * np.array([1.0, 2.0])  # 19 windows, 2 steps
    np.testing.assert_allclose(step_conformal_quantiles(scores, 0.9), [18.0, 36.0])  # rank ceil(20 * 0.9) = 18
    # pooled: ratios to each step's mean (10, 20) are the same 19 values twice; rank ceil(39 * 0.9) = 36 -> 1.8
    np.testing.assert_allclose(conformal_quantiles(scores, 0.9), [18.0, 36.0])
    few = step_conformal_quantiles(np.array([[1.0], [5.0], [np.nan]]), 0.9)  # 2 finite scores: the largest
    np.testing.assert_allclose(few, [5.0])
    with pytest.raises(ValueError, match="between 0 and 1"):
        conformal_quantiles(scores, 90)


def test_pooling_over_steps_calibrates_a_few_windows_below_their_largest_error() -> None:
    """Four validation windows (a monthly series' validation part): per step, the quantile is the largest of four
    errors; pooled over twelve steps, 48 ratios give a real 90% rank, still growing with the step's mean error."""
    rng = np.random.default_rng(0)
    growth = np.sqrt(np.arange(1, 13))
    scores = np.abs(rng.normal(size=(4, 12))) * growth
    np.testing.assert_allclose(step_conformal_quantiles(scores, 0.9), scores.max(axis=0))
    pooled = conformal_quantiles(scores, 0.9)
    profile = scores.mean(axis=0)
    ratios = np.sort((scores / profile).ravel())
    q = pooled / profile
    np.testing.assert_allclose(q, ratios[45 - 1])  # one quantile for every step: rank ceil(49 * 0.9) = 45 of 48
    assert q[0] < ratios[-1], "not the largest ratio"
    assert np.isnan(conformal_quantiles(np.full((3, 2), np.nan), 0.9)).all()


def test_interval_score_penalises_misses_by_two_over_alpha() -> None:
    actual = np.array([[5.0, 12.0, 0.0]])
    lower = np.array([[4.0, 4.0, 4.0]])
    upper = np.array([[6.0, 6.0, 6.0]])
    np.testing.assert_allclose(interval_score_terms(actual, lower, upper, 0.9), [[2.0, 2.0 + 20 * 6, 2.0 + 20 * 4]])


def random_walks(n: int, sigmas: tuple[float, ...], seed: int = 0) -> pd.DataFrame:
    """Gaussian random walks, one per noise level, hourly; naive is their best forecast."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC")
    parts = [
        pd.DataFrame({"series_id": f"sigma_{s:g}", "ts": ts, "value": 1000 + np.cumsum(rng.normal(0, s, n))})
        for s in sigmas
    ]
    return pd.concat(parts, ignore_index=True)


def naive_coverage(data: WindowedData, spread_scaled: bool) -> dict[str, float]:
    """Per-series coverage on the test windows of naive's intervals calibrated on the validation windows, pooled
    over series, with or without the window-spread scaling."""
    panel, lookback, horizon = data.panel, data.lookback, data.horizon

    def spread(starts: np.ndarray) -> np.ndarray:
        if not spread_scaled:
            return np.ones(len(starts))
        return window_spread(panel.values, starts, lookback)

    def naive(starts: np.ndarray) -> np.ndarray:
        return np.repeat(panel.values[starts + lookback - 1][:, None], horizon, axis=1)

    val, test = np.asarray(data.val_starts, np.int64), np.asarray(data.test_starts, np.int64)
    q = conformal_quantiles(scaled_scores(data.targets(val), naive(val), spread(val)), LEVEL)
    half = q[None, :] * spread(test)[:, None]
    actual, points = data.targets(test), naive(test)
    inside = (actual >= points - half) & (actual <= points + half)
    series = panel.series_of(test)
    return {sid: float(inside[series == k].mean()) for k, sid in enumerate(panel.series_ids)}


def test_spread_scaled_intervals_hold_their_level_on_each_series_of_a_mixed_panel() -> None:
    """Pooled over a quiet and a volatile random walk, window-spread scaling covers about 90% on each; without it,
    one quantile for both over-covers the quiet one and under-covers the volatile one."""
    data = prepare_windows(
        random_walks(4000, (1.0, 10.0)), WindowConfig(lookback=24, horizon=6, test_size=1500, val_size=1500)
    )
    scaled = naive_coverage(data, spread_scaled=True)
    assert all(abs(c - LEVEL) < 0.04 for c in scaled.values()), scaled
    plain = naive_coverage(data, spread_scaled=False)
    assert plain["sigma_1"] > 0.97 and plain["sigma_10"] < 0.8, plain


def noisy_seasonal(n: int = 900, seed: int = 3) -> pd.DataFrame:
    """Two hourly daily-seasonal series with Gaussian noise of known size (sd 2 and 6)."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC")
    t = np.arange(n)
    parts = [
        pd.DataFrame(
            {
                "series_id": sid,
                "ts": ts,
                "value": 50 * (k + 1) + 10 * np.sin(2 * np.pi * t / 24) + rng.normal(0, sd, n),
            }
        )
        for k, (sid, sd) in enumerate((("quiet", 2.0), ("noisy", 6.0)))
    ]
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def calibrated() -> tuple[WindowedData, LoadedForecaster, IntervalCalibration]:
    torch.set_num_threads(1)
    data = prepare_windows(noisy_seasonal(), WindowConfig(lookback=48, horizon=6, test_size=250, val_size=250))
    config = TrainConfig(hidden_size=16, num_layers=1, max_epochs=8, device="cpu", num_threads=1, seed=0)
    fit = fit_forecaster(data, config)
    forecaster = LoadedForecaster(fit.model, fit.config, data.scalers, data.freq, torch.device("cpu"))
    return data, forecaster, calibrate_intervals(forecaster, data, LEVEL, 24)


def test_a_trained_network_s_intervals_cover_near_their_level_on_its_test_windows(
    calibrated: tuple[WindowedData, LoadedForecaster, IntervalCalibration],
) -> None:
    data, forecaster, calibration = calibrated
    assert set(calibration.quantiles) == {forecaster.config.cell, "naive", "seasonal_naive_24"}
    evaluation = evaluate_test_windows(
        data, forecast_test_windows(forecaster, data), 24, model_name=forecaster.config.cell, calibration=calibration
    )
    network = evaluation.intervals[forecaster.config.cell]
    assert abs(network.coverage - LEVEL) < 0.05, network
    assert evaluation.intervals["seasonal_naive_24"].coverage == pytest.approx(LEVEL, abs=0.05)
    lower, upper = evaluation.bounds[forecaster.config.cell]
    widths = (upper - lower).mean(axis=1)
    series = data.panel.series_of(np.asarray(data.test_starts, np.int64))
    quiet, noisy = (widths[series == data.panel.series_ids.index(sid)].mean() for sid in ("quiet", "noisy"))
    assert noisy > 2 * quiet, "intervals widen with the series' noise"
    metrics = evaluation.metrics()
    assert metrics["test_coverage"] == network.coverage and metrics["served_test_msis"] > 0
    table = evaluation.table()
    assert table.loc[table["scope"] == "overall", "coverage"].notna().all()


def test_saved_intervals_and_reference_serve_the_same_bounds(
    calibrated: tuple[WindowedData, LoadedForecaster, IntervalCalibration], tmp_path: Path
) -> None:
    data, forecaster, calibration = calibrated
    evaluation = evaluate_test_windows(
        data, forecast_test_windows(forecaster, data), 24, model_name=forecaster.config.cell, calibration=calibration
    )
    reference = model_reference(evaluation, data)
    folder = save_forecaster(
        tmp_path / "model",
        forecaster.model,
        data.scalers,
        data.freq,
        fallback={"noisy": "seasonal_naive_24"},
        intervals=calibration,
        reference=reference,
    )
    loaded = load_forecaster(folder)
    assert loaded.reference == reference and loaded.reference.level == LEVEL
    assert set(loaded.reference.series) == {"quiet", "noisy"} and len(reference.mae_by_step) == data.horizon
    frame = noisy_seasonal()
    out = forecast_frame(loaded, frame)
    assert (out["level"] == LEVEL).all()
    assert (out["lower"] < out["point"]).all() and (out["point"] < out["upper"]).all()
    # the fallback series' bounds come from its baseline's quantiles, around the baseline's points
    noisy = out[out["series_id"] == "noisy"]
    assert (noisy["method"] == "seasonal_naive_24").all()
    panel = panel_from_frame(frame[frame["series_id"] == "noisy"].tail(48), freq=data.freq)
    lower, upper = interval_bounds(
        noisy["point"].to_numpy()[None, :],
        panel.values,
        np.array([0]),
        48,
        calibration.floors(["noisy"]),
        calibration.row_quantiles(np.array(["seasonal_naive_24"], dtype=object)),
        calibration.lag,
    )
    np.testing.assert_allclose(noisy["lower"].to_numpy(), lower[0])
    np.testing.assert_allclose(noisy["upper"].to_numpy(), upper[0])


def test_a_model_saved_without_intervals_forecasts_without_bounds(
    calibrated: tuple[WindowedData, LoadedForecaster, IntervalCalibration], tmp_path: Path
) -> None:
    data, forecaster, _ = calibrated
    folder = save_forecaster(tmp_path / "old", forecaster.model, data.scalers, data.freq)
    out = forecast_frame(load_forecaster(folder), noisy_seasonal())
    assert out[["lower", "upper", "level"]].isna().all().all()
    assert out["point"].notna().all()


def test_score_intervals_counts_missing_bounds_as_misses() -> None:
    actual = np.array([[1.0, 2.0], [3.0, 4.0]])
    lower = np.array([[0.0, np.nan], [2.0, 5.0]])
    upper = np.array([[2.0, np.nan], [4.0, 6.0]])
    scores = score_intervals(actual, lower, upper, 0.9, np.array([0, 0]), np.array([1.0]))
    assert scores.coverage == 0.5
    np.testing.assert_allclose(scores.coverage_by_step, [1.0, 0.0])


def test_a_seasonal_spread_holds_the_level_when_the_daily_cycle_shrinks_but_one_step_changes_do_not() -> None:
    """Hourly: a daily cycle whose amplitude falls from 20 to 2 in the test part, plus day-to-day level changes of
    constant size. Seasonal naive's errors are the day-to-day changes: a window's mean one-step change follows the
    cycle's amplitude and shrinks the intervals (under-covers), its mean change over a day does not."""
    rng = np.random.default_rng(5)
    days = 400
    n = 24 * days
    t = np.arange(n)
    amplitude = np.where(t < int(0.75 * n), 20.0, 2.0)
    level = np.repeat(np.cumsum(rng.normal(0, 3.0, days)), 24)
    frame = pd.DataFrame(
        {
            "series_id": "city",
            "ts": pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC"),
            "value": level + amplitude * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.3, n),
        }
    )
    data = prepare_windows(frame, WindowConfig(lookback=168, horizon=24, test_size=int(0.25 * n), val_size=2400))
    values, lookback = data.panel.values, data.lookback

    def coverage(lag: int) -> float:
        def spread(starts: np.ndarray) -> np.ndarray:
            return window_spread(values, starts, lookback, lag)

        def seasonal_naive(starts: np.ndarray) -> np.ndarray:
            origin = starts + lookback - 1
            return values[origin[:, None] + np.arange(1, 25) - 24]

        val, test = np.asarray(data.val_starts, np.int64), np.asarray(data.test_starts, np.int64)
        q = conformal_quantiles(scaled_scores(data.targets(val), seasonal_naive(val), spread(val)), LEVEL)
        half = q[None, :] * spread(test)[:, None]
        error = np.abs(data.targets(test) - seasonal_naive(test))
        return float((error <= half).mean())

    assert coverage(lag=24) == pytest.approx(LEVEL, abs=0.05)
    assert coverage(lag=1) < 0.6, "one-step changes shrink with the cycle and under-cover"
    assert spread_lag(24, 168) == 24 and spread_lag(24, 20) == 1 and spread_lag(1, 168) == 1
    assert spread_lag(12, 36) == 1, "three seasons in the window: their changes measure the trend"
