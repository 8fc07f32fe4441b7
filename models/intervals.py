"""Prediction intervals by split-conformal calibration, scaled by each window's own spread.

A window's spread is the mean absolute change over one season of its `lookback` inputs, mean |y[t] - y[t - m]|
with m the frequency's season when the window holds at least four of them (else one step): the seasonal-naive
error the window itself shows, MASE's scale measured locally. On held-back windows, each forecast error at horizon
step h is divided by its window's spread; those scores, pooled over steps after dividing each step's by its mean,
give one conformal quantile, and the half-width at step h is that quantile x step h's mean score x a new window's
spread: `point +- q[h] * spread`. The interval widens with the horizon as errors do, and on volatile windows as
they do, and holds its level on exchangeable windows whatever the series' units. Lag and pooling were chosen by
measurement on the accuracy panel (docs/benchmarks.md): one-step changes follow a daily cycle's amplitude rather
than the day-to-day changes that forecast errors follow (hourly temperature under-covers), a season's change over
only two or three seasons measures their trend (monthly air passengers under-covers), and per-step quantiles of a
few validation windows are their largest error.

Quantiles are kept per method ("lstm", "naive", "seasonal_naive_24", ...): a series served by a baseline fallback
gets intervals from that baseline's own errors. A constant window has no spread; each series' spread is floored
at a tenth of its training part's mean absolute change (`spread_floor`), so such a window still gets an interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_LEVEL = 0.9
FLOOR_FRACTION = 0.1  # a window's spread is at least this fraction of its series' training mean |change|
TINY = 1e-12


MIN_SEASONS = 4  # a window's change over a season is measured only when it holds at least this many seasons


def spread_lag(season: int, lookback: int) -> int:
    """The window spread's lag: the season `season` when the window holds at least MIN_SEASONS of them, else 1
    (over two or three seasons, the changes across a season mostly measure the trend of those years)."""
    return int(season) if int(season) > 1 and lookback >= MIN_SEASONS * int(season) else 1


def check_level(level: float) -> float:
    """`level` as a float strictly between 0 and 1 (0.9 for a 90% interval)."""
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"interval level must be between 0 and 1 (0.9 for 90%); got {level}")
    return level


def _lagged_changes(values: np.ndarray, lag: int) -> np.ndarray:
    """Prefix sums `[T + 1]` of |y[t] - y[t - lag]| (0 for t < lag)."""
    changes = np.zeros(len(values))
    if lag < len(values):
        changes[lag:] = np.abs(values[lag:] - values[:-lag])
    return np.concatenate([[0.0], np.cumsum(changes)])


def window_spread(values: np.ndarray, starts: np.ndarray, lookback: int, lag: int = 1) -> np.ndarray:
    """Mean |y[t] - y[t - lag]| over the inputs `values[s : s + lookback]` of each window `[N]` (prefix sums, no
    loop). A window of `lag` inputs or fewer has no change to measure: its spread is 0 (the floor applies)."""
    values = np.asarray(values, dtype=np.float64)
    starts = np.asarray(starts, dtype=np.int64)
    if lookback <= lag:
        return np.zeros(len(starts))
    csum = _lagged_changes(values, lag)
    # changes inside the window: t in [s + lag, s + lookback - 1]
    return (csum[starts + lookback] - csum[starts + lag]) / (lookback - lag)


def spread_floors(values: np.ndarray, first: np.ndarray, train_end: np.ndarray, lag: int = 1) -> np.ndarray:
    """Per series `[S]`: FLOOR_FRACTION x the mean |y[t] - y[t - lag]| over its training part
    `values[first:train_end]` (flat indices), and a tiny positive number where that is zero (a constant series)."""
    values = np.asarray(values, dtype=np.float64)
    first = np.asarray(first, dtype=np.int64)
    train_end = np.asarray(train_end, dtype=np.int64)
    csum = _lagged_changes(values, lag)
    lo = np.minimum(first + lag, train_end)
    mean_change = (csum[train_end] - csum[lo]) / np.maximum(train_end - lo, 1)
    scale = np.maximum(np.abs(values[first]), 1.0)
    return np.maximum(FLOOR_FRACTION * mean_change, TINY * scale)


def step_conformal_quantiles(scores: np.ndarray, level: float) -> np.ndarray:
    """Split-conformal quantile of each horizon step's own scores `[H]` (NaN scores ignored).

    The ceil((n + 1) level)-th smallest of the n scores at each step; with too few scores for that rank
    (n < level / (1 - level)), the largest one, which covers less than `level` is promised. NaN where a step has no
    score at all.
    """
    level = check_level(level)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"`scores` must be [windows, horizon]; got shape {scores.shape}")
    ordered = np.sort(np.where(np.isfinite(scores), scores, np.inf), axis=0)  # NaN/inf last
    n = np.isfinite(scores).sum(axis=0)  # [H]
    rank = np.minimum(np.ceil((n + 1) * level).astype(np.int64), n)  # 1-based
    out = np.full(scores.shape[1], np.nan)
    has = n > 0
    out[has] = ordered[rank[has] - 1, np.flatnonzero(has)]
    return out


def conformal_quantiles(scores: np.ndarray, level: float) -> np.ndarray:
    """Half-widths per unit of spread `[H]` from the scores `[N, H]` of held-back windows: each step's scores are
    divided by that step's mean score (the error's growth with the horizon), the conformal quantile is taken once
    over all steps' ratios, and multiplied back by each step's mean.

    Pooling gives H times as many scores as a quantile per step (`step_conformal_quantiles`): a validation part of
    a few windows (monthly and quarterly series) still calibrates, where per step the largest of four errors is all
    there is. NaN for a step without a finite score.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"`scores` must be [windows, horizon]; got shape {scores.shape}")
    finite = np.isfinite(scores)
    count = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        profile = np.where(finite, scores, 0.0).sum(axis=0) / count  # [H], NaN without scores
    usable = np.isfinite(profile) & (profile > 0)
    ratios = np.where(usable[None, :], scores / np.where(usable, profile, 1.0)[None, :], np.nan)
    pooled = step_conformal_quantiles(ratios.reshape(-1, 1), level)[0]
    # a step whose errors were all zero keeps a zero half-width; one without scores has none
    return np.where(usable, pooled * profile, np.where(count > 0, 0.0, np.nan))


def scaled_scores(actual: np.ndarray, predicted: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """|actual - predicted| / spread `[N, H]`, the nonconformity score of each forecast point."""
    return np.abs(np.asarray(actual, dtype=np.float64) - predicted) / np.asarray(spread, dtype=np.float64)[:, None]


@dataclass(frozen=True)
class IntervalCalibration:
    """What serving needs to put bounds on a forecast: the level, per method a quantile per horizon step, the
    spread floor of each series and the spread's lag."""

    level: float
    quantiles: dict[str, np.ndarray]  # method -> [H] scaled half-widths
    spread_floor: dict[str, float] = field(default_factory=dict)  # series id -> floor of its windows' spread
    lag: int = 1  # the spread is the window's mean |y[t] - y[t - lag]|

    def row_quantiles(self, methods: np.ndarray) -> np.ndarray:
        """Quantiles `[N, H]` of each row's method (the half-width of its interval per unit of spread); NaN for a
        method calibrated without quantiles (no bounds rather than wrong ones)."""
        methods = np.asarray(methods, dtype=object)
        horizon = len(next(iter(self.quantiles.values()))) if self.quantiles else 0
        out = np.full((len(methods), horizon), np.nan)
        for method in set(methods.tolist()):
            if method in self.quantiles:
                out[methods == method] = self.quantiles[method]
        return out

    def floors(self, series_ids: list[str]) -> np.ndarray:
        """Spread floor `[S]` of `series_ids` (TINY for a series calibrated without one)."""
        return np.array([self.spread_floor.get(sid, TINY) for sid in series_ids], dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "split_conformal_window_spread",
            "level": self.level,
            "quantiles": {m: [_finite_or_none(v) for v in q] for m, q in sorted(self.quantiles.items())},
            "spread_floor": dict(sorted(self.spread_floor.items())),
            "lag": self.lag,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IntervalCalibration:
        return cls(
            level=check_level(data["level"]),
            quantiles={
                str(m): np.array([np.nan if v is None else float(v) for v in q]) for m, q in data["quantiles"].items()
            },
            spread_floor={str(k): float(v) for k, v in data.get("spread_floor", {}).items()},
            lag=int(data.get("lag", 1)),
        )


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def interval_bounds(
    points: np.ndarray,
    values: np.ndarray,
    starts: np.ndarray,
    lookback: int,
    floors: np.ndarray,
    quantiles: np.ndarray,
    lag: int,
) -> tuple[np.ndarray, np.ndarray]:
    """`(lower, upper)` `[N, H]`: points -+ quantiles `[N, H]` x the spread (at `lag`) of each window at
    `starts [N]` (flat starts into `values`), floored by `floors [N]`."""
    spread = np.maximum(window_spread(values, starts, lookback, lag), floors)
    width = np.asarray(quantiles, dtype=np.float64) * spread[:, None]
    return points - width, points + width
