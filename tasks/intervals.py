"""Prediction intervals of a candidate: calibrated on its validation windows, scored on its test windows.

Calibration (`calibrate_intervals`) forecasts every validation window with the candidate and with every baseline,
and keeps per method the split-conformal quantiles of the spread-scaled errors (`models/intervals.py`). Scoring
(`score_intervals`) measures what those bounds deliver on other windows: coverage (overall and per horizon step),
mean width, and the interval (Winkler) score, raw and scaled by the series' MASE scale (MSIS).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from models.baselines import baseline_forecasts, baseline_methods
from models.intervals import (
    IntervalCalibration,
    check_level,
    conformal_quantiles,
    scaled_scores,
    spread_floors,
    spread_lag,
    window_spread,
)
from models.packaging import LoadedForecaster, forecast_origins
from tasks.run_context import run_logger

if TYPE_CHECKING:
    from tasks.train import FitResult
    from tasks.windowing import WindowedData


def calibrate_intervals(
    forecaster: LoadedForecaster, data: WindowedData, level: float, season: int, seasons: Sequence[int] = ()
) -> IntervalCalibration:
    """Quantiles per horizon step for the forecaster's network (keyed by its cell) and for naive and seasonal
    naive at `season` and each of `seasons` that fits the lookback, from their errors on `data`'s validation
    windows; each window's spread is measured over one `season` (see `models.intervals`)."""
    level = check_level(level)
    starts = np.asarray(data.val_starts, dtype=np.int64)
    panel = data.panel
    lag = spread_lag(season, data.lookback)
    floors = spread_floors(panel.values, panel.offsets[:-1], data.splits.train_end, lag)  # [S]
    series, positions = data.window_index(starts)
    spread = np.maximum(window_spread(panel.values, starts, data.lookback, lag), floors[series])
    enough = math.ceil(level / (1.0 - level) - 1e-9)  # windows for a conformal rank below the largest score
    if len(starts) < enough:
        run_logger(__name__).warning(
            "only %d validation windows calibrate the %.0f%% intervals (fewer than %d): they may cover less than "
            "promised; a longer series or a larger validation part helps",
            len(starts),
            100 * level,
            enough,
        )
    actual = data.targets(starts)
    forecasts: dict[str, np.ndarray] = {
        str(forecaster.config.cell): forecast_origins(forecaster, panel, series, positions)
    }
    for method in baseline_methods([season, *seasons], data.lookback):
        forecasts[method] = baseline_forecasts(method, panel.values, starts, data.lookback, data.horizon)
    quantiles = {m: conformal_quantiles(scaled_scores(actual, fc, spread), level) for m, fc in forecasts.items()}
    return IntervalCalibration(
        level=level,
        quantiles=quantiles,
        spread_floor={sid: float(f) for sid, f in zip(panel.series_ids, floors, strict=True)},
        lag=lag,
    )


@dataclass(frozen=True)
class IntervalScores:
    """How intervals at `level` did on a set of windows: `coverage` (share of actuals inside), `coverage_by_step
    [H]`, `width` (mean upper - lower, original units), `winkler` (mean interval score, original units) and `msis`
    (mean per series of its interval score divided by its MASE scale: comparable across series)."""

    level: float
    coverage: float
    coverage_by_step: np.ndarray
    width: float
    winkler: float
    msis: float

    def metrics(self, prefix: str) -> dict[str, float]:
        """MLflow metrics `<prefix>_coverage`, `<prefix>_interval_width`, `<prefix>_winkler`, `<prefix>_msis`."""
        return {
            f"{prefix}_coverage": self.coverage,
            f"{prefix}_interval_width": self.width,
            f"{prefix}_winkler": self.winkler,
            f"{prefix}_msis": self.msis,
        }


def interval_score_terms(actual: np.ndarray, lower: np.ndarray, upper: np.ndarray, level: float) -> np.ndarray:
    """The interval (Winkler) score of each point: width, plus 2 / (1 - level) times the distance by which the
    actual falls outside the interval."""
    alpha = 1.0 - check_level(level)
    below = np.maximum(lower - actual, 0.0)
    above = np.maximum(actual - upper, 0.0)
    return (upper - lower) + (2.0 / alpha) * (below + above)


def score_intervals(
    actual: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    level: float,
    series: np.ndarray,
    scale: np.ndarray,
) -> IntervalScores:
    """Coverage, width and interval scores of bounds `[N, H]` against `actual [N, H]`; `series [N]` numbers each
    window's series and `scale [S]` is each series' MASE scale. Points without bounds (NaN) count as not covered."""
    actual = np.asarray(actual, dtype=np.float64)
    inside = (actual >= lower) & (actual <= upper)  # NaN bounds compare False
    terms = interval_score_terms(actual, lower, upper, level)  # [N, H]
    series = np.asarray(series, dtype=np.int64)
    n_series = len(scale)
    count = np.bincount(series, minlength=n_series)
    scored = np.flatnonzero(count)
    per_series = np.bincount(series, weights=terms.mean(axis=1), minlength=n_series)[scored] / count[scored]
    return IntervalScores(
        level=level,
        coverage=float(inside.mean()),
        coverage_by_step=inside.mean(axis=0),
        width=float(np.mean(upper - lower)),
        winkler=float(np.mean(terms)),
        msis=float(np.mean(per_series / np.asarray(scale, dtype=np.float64)[scored])),
    )


@task(name="calibrate-intervals", cache_policy=NO_CACHE)
def calibrate_intervals_task(
    fit: FitResult, data: WindowedData, level: float, season: int, seasons: Sequence[int] = ()
) -> IntervalCalibration:
    """The candidate's interval calibration on its validation windows (not retried: the same data fails alike)."""
    from tasks.evaluate import candidate_forecaster

    return calibrate_intervals(candidate_forecaster(fit, data), data, level, season, seasons)
