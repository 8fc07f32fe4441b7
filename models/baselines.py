"""Naive baselines over flat-panel windows: what every model is judged against, and what serves a series when
the network loses to them.

A baseline is named by its method string, the same in evaluation metrics, the model's fallback map and the
`method` column of the forecasts table: "naive" (the origin's value repeated) or "seasonal_naive_<m>" (the value
one season `m` before each target). Both read only the window's inputs (the `lookback` values up to the origin),
so a baseline serves from exactly the window the network reads.
"""

from __future__ import annotations

import re

import numpy as np

NAIVE = "naive"
_SEASONAL = re.compile(r"seasonal_naive_(\d+)")


def seasonal_method(season: int) -> str:
    """The method name of seasonal naive with season `season` ("seasonal_naive_48")."""
    return f"seasonal_naive_{int(season)}"


def baseline_methods(seasons: list[int] | tuple[int, ...], lookback: int) -> list[str]:
    """Naive, then seasonal naive at each distinct season that fits in `lookback` (longer ones cannot be served)."""
    fitting = sorted({int(m) for m in seasons if 1 < int(m) <= lookback})
    return [NAIVE, *(seasonal_method(m) for m in fitting)]


def is_baseline(method: str) -> bool:
    return method == NAIVE or _SEASONAL.fullmatch(method) is not None


def as_starts(starts: np.ndarray) -> np.ndarray:
    out = np.asarray(starts, dtype=np.int64)
    if out.ndim != 1:
        raise ValueError(f"`starts` must be a 1-D array of flat window starts; got shape {out.shape}")
    return out


def naive_forecasts(panel_values: np.ndarray, starts: np.ndarray, lookback: int, horizon: int) -> np.ndarray:
    """Naive baseline `[N, H]`: each window's last input (its origin value) repeated over the horizon."""
    starts = as_starts(starts)
    last = np.asarray(panel_values, dtype=np.float64)[starts + lookback - 1]  # [N]
    return np.repeat(last[:, None], horizon, axis=1)  # [N, H]


def seasonal_naive_forecasts(
    panel_values: np.ndarray, starts: np.ndarray, lookback: int, horizon: int, season: int
) -> np.ndarray:
    """Seasonal-naive baseline `[N, H]`: `y_hat[o + h] = y[o + h - m * ceil(h / m)]` for h = 1..H, origin o.

    It reads only the window's inputs, the last `m` of them, so it needs `lookback >= season`.
    """
    if season < 1:
        raise ValueError(f"`season` ({season}) must be at least 1")
    if lookback < season:
        raise ValueError(
            f"seasonal naive with season {season} reads {season} inputs but `lookback` is {lookback}; "
            f"raise `lookback` to at least {season} or use a shorter season"
        )
    starts = as_starts(starts)
    h = np.arange(1, horizon + 1)
    shift = h - season * ((h + season - 1) // season)  # [H], in [1 - m, 0]
    origin = starts + lookback - 1  # [N]
    return np.asarray(panel_values, dtype=np.float64)[origin[:, None] + shift[None, :]]  # [N, H]


def baseline_forecasts(
    method: str, panel_values: np.ndarray, starts: np.ndarray, lookback: int, horizon: int
) -> np.ndarray:
    """Forecasts `[N, H]` of the baseline named `method` for the windows at `starts` (original units)."""
    if method == NAIVE:
        return naive_forecasts(panel_values, starts, lookback, horizon)
    match = _SEASONAL.fullmatch(method)
    if match is None:
        raise ValueError(f"unknown baseline method {method!r}; expected 'naive' or 'seasonal_naive_<season>'")
    return seasonal_naive_forecasts(panel_values, starts, lookback, horizon, int(match.group(1)))


def serve_with_fallback(
    predicted: np.ndarray,
    baseline: dict[str, np.ndarray],
    series_ids: list[str],
    series: np.ndarray,
    fallback: dict[str, str],
) -> np.ndarray:
    """`predicted [N, H]` with the rows of fallback series replaced by their baseline's forecasts.

    `series [N]` is the series number (in `series_ids`) of each row; `baseline` maps a method to its forecasts
    `[N, H]` for the same rows; `fallback` maps a series id to the method that serves it.
    """
    served = np.array(predicted, dtype=np.float64, copy=True)
    if not fallback:
        return served
    methods = sorted(set(fallback.values()))
    missing = [m for m in methods if m not in baseline]
    if missing:
        raise ValueError(f"fallback methods {missing!r} were not computed for these windows")
    position = {sid: k for k, sid in enumerate(series_ids)}
    method_of = np.full(len(series_ids), -1, dtype=np.int64)  # [S] index into `methods`, -1 = the network
    for sid, method in fallback.items():
        if sid in position:
            method_of[position[sid]] = methods.index(method)
    row_method = method_of[np.asarray(series, dtype=np.int64)]  # [N]
    for j, method in enumerate(methods):
        rows = row_method == j
        served[rows] = baseline[method][rows]
    return served
