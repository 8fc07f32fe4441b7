"""Rolling-origin evaluation on the held-out test part, in original units, against naive baselines.

Every forecast is scored on windows named by their flat starts (`models/windows.py`): targets of window `s`
are `values[s + L : s + L + H]`, its origin is `s + L - 1`. The model and every baseline are scored on exactly
the same windows, so their numbers compare like for like. Metrics are averaged over all windows' points
(every origin and every step weighs the same).

MASE divides errors by the in-sample seasonal-naive MAE of each series' training part, season `m`:
`scale_k = mean |y_t - y_{t-m}|` over `t` in the training part of series k. A scale that is zero (a constant
training part) or undefined (a training part of `m` points or fewer) falls back to the naive `m = 1` scale, and
when that is zero or undefined too, to 1.0 (MASE is then the MAE in original units). "Zero" means below
`1e-8 * max(mean |y_train|, 1)`, the rule `Scalers` uses for a constant series.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

if TYPE_CHECKING:
    from tasks.train import FitResult
    from tasks.windowing import WindowedData

from models.baselines import as_starts, baseline_forecasts, baseline_methods, serve_with_fallback
from models.intervals import IntervalCalibration, interval_bounds
from models.packaging import LoadedForecaster, forecast_origins
from models.reference import ModelReference, SeriesReference
from models.windows import SeriesPanel
from tasks.intervals import IntervalScores, score_intervals

logger = logging.getLogger(__name__)

METRIC_NAMES = ("mae", "rmse", "smape", "mase")
INTERVAL_COLUMNS = ("coverage", "interval_width", "msis")  # overall rows of `Evaluation.table()`, with intervals

# ---------------------------------------------------------------------------------------------------------------
# metrics on arrays [N, H]


def _pair(actual: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    actual = np.asarray(actual, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    if actual.shape != predicted.shape:
        raise ValueError(f"`actual` {actual.shape} and `predicted` {predicted.shape} must have the same shape")
    if actual.size == 0:
        raise ValueError("no forecasts to score: `actual` and `predicted` are empty")
    return actual, predicted


def _smape_terms(actual: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Per-point sMAPE in percent, 0..200; a point where both are 0 counts as 0 (a perfect forecast)."""
    denom = np.abs(actual) + np.abs(predicted)
    num = 200.0 * np.abs(actual - predicted)
    return np.divide(num, denom, out=np.zeros_like(num), where=denom > 0)


def mae(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Mean absolute error over every point."""
    actual, predicted = _pair(actual, predicted)
    return float(np.mean(np.abs(actual - predicted)))


def rmse(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Root mean squared error over every point."""
    actual, predicted = _pair(actual, predicted)
    return float(np.sqrt(np.mean((actual - predicted) ** 2)))


def smape(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Symmetric MAPE in percent (0..200): mean of 200 |a - p| / (|a| + |p|), with 0/0 taken as 0."""
    actual, predicted = _pair(actual, predicted)
    return float(np.mean(_smape_terms(actual, predicted)))


def mase(actual: np.ndarray, predicted: np.ndarray, scale: float | np.ndarray) -> float:
    """Mean over windows of each window's MAE divided by its series' scale (a scalar, or one per window [N])."""
    actual, predicted = _pair(actual, predicted)
    errors = np.abs(actual - predicted).reshape(actual.shape[0], -1)  # [N, H]
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), (actual.shape[0],))
    if not (scale > 0).all():
        raise ValueError(f"MASE scales must be positive; got {scale[~(scale > 0)][:5].tolist()}")
    return float(np.mean(errors.mean(axis=1) / scale))


def _prefix_sum(x: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(x)])


def _naive_scale(values: np.ndarray, start: np.ndarray, train_end: np.ndarray, m: int) -> np.ndarray:
    """mean |y_t - y_{t-m}| over t in [start + m, train_end) per series; NaN where there are no such t."""
    diffs = np.zeros_like(values)
    if m < len(values):
        diffs[m:] = np.abs(values[m:] - values[:-m])  # diffs[t] crosses a series start only for t < start + m
    csum = _prefix_sum(diffs)
    count = train_end - start - m
    lo = np.minimum(start + m, train_end)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (csum[train_end] - csum[lo]) / np.maximum(count, 1), np.nan)


def _check_train_end(panel: SeriesPanel, train_end: np.ndarray) -> np.ndarray:
    train_end = np.asarray(train_end, dtype=np.int64)
    n_series = len(panel.series_ids)
    if train_end.shape != (n_series,):
        raise ValueError(f"`train_end` needs one flat index per series ({n_series}); got shape {train_end.shape}")
    bad = (train_end < panel.offsets[:-1]) | (train_end > panel.offsets[1:])
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"`train_end` ({int(train_end[k])}) of series {panel.series_ids[k]!r} is outside its flat range "
            f"[{int(panel.offsets[k])}, {int(panel.offsets[k + 1])}]; it is the flat index just past the training part"
        )
    return train_end


def mase_scales(panel: SeriesPanel, train_end: np.ndarray, season: int) -> np.ndarray:
    """Per-series MASE scale [S]: in-sample seasonal-naive MAE of the training part (rule in the module doc).

    `train_end [S]` is a flat index per series, one past the last training point (as `Scalers.fit` takes it).
    """
    if season < 1:
        raise ValueError(f"`season` ({season}) must be at least 1")
    train_end = _check_train_end(panel, train_end)
    start = panel.offsets[:-1]
    seasonal = _naive_scale(panel.values, start, train_end, season)
    naive = _naive_scale(panel.values, start, train_end, 1)
    count = train_end - start
    abs_sum = _prefix_sum(np.abs(panel.values))
    level = np.where(count > 0, (abs_sum[train_end] - abs_sum[start]) / np.maximum(count, 1), 0.0)
    tol = 1e-8 * np.maximum(level, 1.0)
    use_seasonal = np.isfinite(seasonal) & (seasonal > tol)
    use_naive = ~use_seasonal & np.isfinite(naive) & (naive > tol)
    scale = np.where(use_seasonal, seasonal, np.where(use_naive, naive, 1.0))
    if not use_seasonal.all():
        fallback = [panel.series_ids[k] for k in np.flatnonzero(~use_seasonal)]
        logger.warning(
            "MASE: %d series have a zero or undefined season-%d scale (constant or short training part) and use "
            "the naive (m=1) scale, or 1.0: %s",
            len(fallback),
            season,
            fallback[:10],
        )
    return scale.astype(np.float64)


# ---------------------------------------------------------------------------------------------------------------
# baselines over the same windows


def target_values(values: np.ndarray, starts: np.ndarray, lookback: int, horizon: int) -> np.ndarray:
    """Actual targets `[N, H]` of the windows at `starts`: `values[s + L : s + L + H]`, one gather."""
    starts = as_starts(starts)
    return np.asarray(values)[starts[:, None] + lookback + np.arange(horizon)]


# ---------------------------------------------------------------------------------------------------------------
# scoring


@dataclass(frozen=True)
class Scores:
    """One method's scores on a set of windows (original units).

    `overall`: `mae`, `rmse`, `smape` (percent) over all windows' points and `mase` (mean over windows of
    window MAE / its series' scale). `per_series`: series_id, n_windows and the same metrics plus the
    `mase_scale` used, for series with at least one window. `mae_by_step [H]`: MAE at each horizon step.
    """

    overall: dict[str, float]
    per_series: pd.DataFrame
    mae_by_step: np.ndarray
    n_windows: int


def _check_windows(
    panel: SeriesPanel, starts: np.ndarray, lookback: int, horizon: int, train_end: np.ndarray
) -> np.ndarray:
    """Series of each window; refuses empty sets, windows across series, and targets in the training part."""
    if lookback < 1 or horizon < 1:
        raise ValueError(f"`lookback` ({lookback}) and `horizon` ({horizon}) must be at least 1")
    if len(starts) == 0:
        raise ValueError("no windows to score: `starts` is empty (is the test part shorter than the horizon?)")
    last = starts + lookback + horizon - 1
    if starts.min() < 0 or last.max() >= len(panel.values):
        raise ValueError(f"window starts must lie in [0, {len(panel.values) - lookback - horizon}]")
    series = panel.series_of(starts)
    crossing = series != panel.series_of(last)
    if crossing.any():
        i = int(np.flatnonzero(crossing)[0])
        raise ValueError(
            f"window at flat start {int(starts[i])} runs past the end of series {panel.series_ids[series[i]]!r}; "
            "build starts with models.windows.window_starts"
        )
    leaked = starts + lookback < train_end[series]
    if leaked.any():
        i = int(np.flatnonzero(leaked)[0])
        k = int(series[i])
        raise ValueError(
            f"window at flat start {int(starts[i])} of series {panel.series_ids[k]!r} has targets from position "
            f"{int(starts[i] + lookback - panel.offsets[k])}, inside the training part (ends before position "
            f"{int(train_end[k] - panel.offsets[k])}); score only held-out windows"
        )
    return series


def check_predicted(predicted: np.ndarray, n_windows: int, horizon: int) -> np.ndarray:
    out = np.asarray(predicted, dtype=np.float64)
    if out.shape != (n_windows, horizon):
        raise ValueError(f"`predicted` must be [windows, horizon] = [{n_windows}, {horizon}]; got {list(out.shape)}")
    return out


def _score(
    panel: SeriesPanel, series: np.ndarray, actual: np.ndarray, predicted: np.ndarray, scale: np.ndarray
) -> Scores:
    n_windows, horizon = actual.shape
    err = actual - predicted  # [N, H]
    abs_row = np.abs(err).sum(axis=1)  # [N]
    sq_row = (err**2).sum(axis=1)  # [N]
    smape_row = _smape_terms(actual, predicted).sum(axis=1)  # [N]
    n_series = len(panel.series_ids)
    count = np.bincount(series, minlength=n_series)  # [S]
    scored = np.flatnonzero(count)
    points = count[scored] * horizon

    def by_series(row: np.ndarray) -> np.ndarray:
        return np.bincount(series, weights=row, minlength=n_series)[scored]

    series_mae = by_series(abs_row) / points
    per_series = pd.DataFrame(
        {
            "series_id": [panel.series_ids[k] for k in scored],
            "n_windows": count[scored].astype(np.int64),
            "mae": series_mae,
            "rmse": np.sqrt(by_series(sq_row) / points),
            "smape": by_series(smape_row) / points,
            "mase": series_mae / scale[scored],
            "mase_scale": scale[scored],
        }
    )
    overall = {
        "mae": float(abs_row.sum() / err.size),
        "rmse": float(np.sqrt(sq_row.sum() / err.size)),
        "smape": float(smape_row.sum() / err.size),
        "mase": float(per_series["mase"].mean()),  # each series weighs the same, however many windows it has
    }
    return Scores(overall, per_series, np.abs(err).mean(axis=0), n_windows)


def score_forecasts(
    panel: SeriesPanel,
    starts: np.ndarray,
    predicted: np.ndarray,
    lookback: int,
    horizon: int,
    season: int,
    train_end: np.ndarray,
) -> Scores:
    """Score `predicted [N, H]` (original units) against the targets of the windows at `starts [N]`.

    `season` is MASE's `m`; `train_end [S]` is the flat index just past each series' training part, where the
    MASE scale is measured. Targets must lie after it. NaN forecasts give NaN metrics (never promoted).
    """
    starts = as_starts(starts)
    train_end = _check_train_end(panel, train_end)
    series = _check_windows(panel, starts, lookback, horizon, train_end)
    predicted = check_predicted(predicted, len(starts), horizon)
    actual = target_values(panel.values, starts, lookback, horizon)
    return _score(panel, series, actual, predicted, mase_scales(panel, train_end, season))


@dataclass(frozen=True)
class Evaluation:
    """The model, every baseline and the served forecast scored on the same windows.

    Baselines are keyed by method name ("naive", "seasonal_naive_48", ...; see `models.baselines`). `fallback`
    maps each series on which the model does not beat its best baseline (per-series MASE) to that baseline;
    `served` scores what would be served: the model's forecasts, with those series' rows replaced by their
    baseline's. `season` is MASE's `m`. With an interval `calibration`, `intervals` scores the bounds of the model,
    of what is served and of every baseline (same keys as `table()`'s methods), and `bounds` holds them `[N, H]`.
    """

    model_name: str
    model: Scores
    baselines: dict[str, Scores]
    baseline_forecasts: dict[str, np.ndarray] = field(repr=False)
    season: int
    fallback: dict[str, str]
    served: Scores
    calibration: IntervalCalibration | None = None
    intervals: dict[str, IntervalScores] = field(default_factory=dict)
    bounds: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    def metrics(self, prefix: str = "test") -> dict[str, float]:
        """Flat MLflow metrics with stable names.

        `test_mae`, `test_rmse`, `test_smape`, `test_mase` (the model alone), `served_test_*` (with fallback),
        per baseline `naive_test_mae`, ..., `seasonal_naive_48_test_mase`; `test_windows` (windows scored),
        `test_fallback_series` (series served by a baseline); with intervals, `test_coverage`,
        `test_interval_width`, `test_winkler`, `test_msis` of the model and `served_test_*` of what is served.
        """
        out = {f"{prefix}_{name}": value for name, value in self.model.overall.items()}
        out.update({f"served_{prefix}_{name}": value for name, value in self.served.overall.items()})
        if self.model_name in self.intervals:
            out.update(self.intervals[self.model_name].metrics(prefix))
            out.update(self.intervals["served"].metrics(f"served_{prefix}"))
        for baseline, scores in self.baselines.items():
            out.update({f"{baseline}_{prefix}_{name}": value for name, value in scores.overall.items()})
        out[f"{prefix}_windows"] = float(self.model.n_windows)
        out[f"{prefix}_fallback_series"] = float(len(self.fallback))
        return out

    def mae_by_step(self) -> pd.DataFrame:
        """MAE at each horizon step `[H]` of the model, what is served and every baseline, and with intervals the
        coverage of each (`<method>_coverage`): one table instead of H metrics each."""
        methods = {self.model_name: self.model, "served": self.served, **self.baselines}
        steps = np.arange(1, len(self.model.mae_by_step) + 1)
        columns = {m: s.mae_by_step for m, s in methods.items()}
        columns.update({f"{m}_coverage": i.coverage_by_step for m, i in self.intervals.items()})
        return pd.DataFrame({"step": steps, **columns})

    def best_baseline(self) -> str:
        """The baseline with the lowest mean per-series MASE."""
        return min(self.baselines, key=lambda m: self.baselines[m].overall["mase"])

    def series_table(self) -> pd.DataFrame:
        """Per series: MASE of the model and of each baseline, the best baseline, the model's ratio to it, and
        the method served (the model's cell or the baseline it falls back to) with its MASE."""
        frame = self.model.per_series[["series_id", "n_windows", "mae", "mase"]].rename(
            columns={"mae": "model_mae", "mase": "model_mase"}
        )
        for name, scores in self.baselines.items():
            frame[f"{name}_mase"] = scores.per_series["mase"].to_numpy()
        frame["best_baseline"], frame["best_baseline_mase"] = best_baselines(self.baselines)
        with np.errstate(divide="ignore", invalid="ignore"):
            frame["ratio"] = frame["model_mase"] / frame["best_baseline_mase"]
        frame["served"] = [self.fallback.get(sid, self.model_name) for sid in frame["series_id"]]
        frame["served_mase"] = self.served.per_series["mase"].to_numpy()
        return frame

    def table(self) -> pd.DataFrame:
        """Tidy scores: one row per (method, scope); scope "overall" (series_id empty) or "series"."""
        methods = {self.model_name: self.model, "served": self.served, **self.baselines}
        overall = pd.DataFrame(
            [
                {"method": m, "scope": "overall", "series_id": "", "n_windows": s.n_windows, **s.overall}
                | self._interval_columns(m)
                for m, s in methods.items()
            ]
        )
        per_series = pd.concat(
            [s.per_series.drop(columns="mase_scale").assign(method=m, scope="series") for m, s in methods.items()],
            ignore_index=True,
        )
        order = {m: i for i, m in enumerate(methods)}
        per_series = per_series.sort_values(
            ["series_id", "method"], key=lambda col: col.map(order) if col.name == "method" else col, kind="stable"
        )
        columns = ["method", "scope", "series_id", "n_windows", *METRIC_NAMES]
        if self.intervals:
            columns += list(INTERVAL_COLUMNS)
        return pd.concat([overall, per_series], ignore_index=True)[columns]

    def _interval_columns(self, method: str) -> dict[str, float]:
        scores = self.intervals.get(method)
        if scores is None:
            return {}
        return {"coverage": scores.coverage, "interval_width": scores.width, "msis": scores.msis}

    def table_rows(self, digits: int = 6) -> list[dict[str, Any]]:
        """`table()` as JSON-safe rows for a Prefect table artifact: metrics to `digits` significant, NaN -> None."""
        rows: list[dict[str, Any]] = [{str(k): v for k, v in r.items()} for r in self.table().to_dict("records")]
        for row in rows:
            for name in (*METRIC_NAMES, *INTERVAL_COLUMNS):
                if name not in row:
                    continue
                value = float(row[name])
                row[name] = float(f"{value:.{digits}g}") if math.isfinite(value) else None
            row["n_windows"] = int(row["n_windows"])
        return rows


def model_reference(evaluation: Evaluation, data: WindowedData) -> ModelReference:
    """What the model promises as served on `data`'s test windows, for monitoring to hold it to: MASE per series
    and its scale, MAE and coverage per step, and each series' level and spread over its last `lookback`
    observations (what new observations are compared with to detect drift)."""
    panel = data.panel
    ends = panel.offsets[1:]
    begins = np.maximum(ends - data.lookback, panel.offsets[:-1])
    count = (ends - begins).astype(np.float64)
    csum = _prefix_sum(panel.values)
    csq = _prefix_sum(panel.values**2)
    mean = (csum[ends] - csum[begins]) / count
    std = np.sqrt(np.maximum((csq[ends] - csq[begins]) / count - mean**2, 0.0))
    data_end = data.timestamps_at(ends - 1)
    served = evaluation.served.per_series
    scale = dict(zip(served["series_id"], served["mase_scale"].astype(float), strict=True))
    served_mase = dict(zip(served["series_id"], served["mase"].astype(float), strict=True))
    series = {
        sid: SeriesReference(
            mase_scale=scale[sid],
            method=evaluation.fallback.get(sid, evaluation.model_name),
            test_mase=served_mase[sid],
            recent_mean=float(mean[k]),
            recent_std=float(std[k]),
            data_end=data_end[k].isoformat(),
        )
        for k, sid in enumerate(panel.series_ids)
        if sid in scale
    }
    coverage = evaluation.intervals.get("served")
    return ModelReference(
        season=evaluation.season,
        level=None if evaluation.calibration is None else evaluation.calibration.level,
        test_mase=evaluation.served.overall["mase"],
        mae_by_step=[float(v) for v in evaluation.served.mae_by_step],
        coverage=None if coverage is None else coverage.coverage,
        coverage_by_step=None if coverage is None else [float(v) for v in coverage.coverage_by_step],
        series=series,
    )


def best_baselines(baselines: dict[str, Scores]) -> tuple[list[str], np.ndarray]:
    """Per series (in `per_series` order): the baseline with the lowest MASE (the first listed on a tie) and that
    MASE `[S]`."""
    names = list(baselines)
    baseline_mase = np.stack([baselines[m].per_series["mase"].to_numpy() for m in names], axis=1)  # [S, B]
    best = np.argmin(baseline_mase, axis=1)  # [S]
    return [names[i] for i in best], baseline_mase[np.arange(len(best)), best]


def choose_fallback(model: Scores, baselines: dict[str, Scores]) -> dict[str, str]:
    """Series -> best baseline, for every series on which the model's MASE is not below that baseline's.

    A tie goes to the baseline, and so does a NaN forecast: a series is served by the network only when the
    network is known to be better there.
    """
    best, best_mase = best_baselines(baselines)
    loses = ~(model.per_series["mase"].to_numpy() < best_mase)
    ids = model.per_series["series_id"].tolist()
    return {ids[k]: best[k] for k in np.flatnonzero(loses)}


def evaluate_against_baselines(
    panel: SeriesPanel,
    starts: np.ndarray,
    predicted: np.ndarray,
    lookback: int,
    horizon: int,
    season: int,
    train_end: np.ndarray,
    seasons: Sequence[int] = (),
    model_name: str = "model",
    fallback: dict[str, str] | None = None,
    calibration: IntervalCalibration | None = None,
) -> Evaluation:
    """Score the model, naive and seasonal naive at each of `seasons` that fits in `lookback` on exactly the
    windows at `starts`, all with the same MASE scales (season `season`), and what would be served.

    `fallback` (series -> baseline) is chosen from these scores unless given: a registered model scored again
    on new windows keeps the fallback it was registered with. With `calibration`, every method's interval bounds
    are scored too (the model's under `model_name`, which must be its key in the calibration).
    """
    starts = as_starts(starts)
    train_end = _check_train_end(panel, train_end)
    series = _check_windows(panel, starts, lookback, horizon, train_end)
    predicted = check_predicted(predicted, len(starts), horizon)
    forecasts = {
        method: baseline_forecasts(method, panel.values, starts, lookback, horizon)
        for method in baseline_methods([season, *seasons], lookback)
    }
    actual = target_values(panel.values, starts, lookback, horizon)
    scale = mase_scales(panel, train_end, season)
    model = _score(panel, series, actual, predicted, scale)
    baselines = {name: _score(panel, series, actual, fc, scale) for name, fc in forecasts.items()}
    if fallback is None:
        fallback = choose_fallback(model, baselines)
    served_forecasts = serve_with_fallback(predicted, forecasts, panel.series_ids, series, fallback)
    served = _score(panel, series, actual, served_forecasts, scale)
    fallback = dict(sorted(fallback.items()))
    bounds: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    intervals: dict[str, IntervalScores] = {}
    if calibration is not None:
        if model_name not in calibration.quantiles:
            raise ValueError(
                f"the interval calibration has no quantiles for {model_name!r} (it has "
                f"{sorted(calibration.quantiles)}); pass the network's cell as `model_name`"
            )
        floors = calibration.floors(panel.series_ids)[series]
        ids = np.asarray(panel.series_ids, dtype=object)[series]
        served_methods = np.array([fallback.get(sid, model_name) for sid in ids], dtype=object)
        rows = {
            model_name: (predicted, np.full(len(starts), model_name, dtype=object)),
            "served": (served_forecasts, served_methods),
            **{m: (fc, np.full(len(starts), m, dtype=object)) for m, fc in forecasts.items()},
        }
        for name, (points, methods) in rows.items():
            quantiles = calibration.row_quantiles(methods)
            bounds[name] = interval_bounds(points, panel.values, starts, lookback, floors, quantiles, calibration.lag)
            intervals[name] = score_intervals(actual, *bounds[name], calibration.level, series, scale)
    return Evaluation(model_name, model, baselines, forecasts, season, fallback, served, calibration, intervals, bounds)


# ---------------------------------------------------------------------------------------------------------------
# Prefect tasks: thin wrappers


def publish_evaluation_table(evaluation: Evaluation, key: str = "test-evaluation") -> None:
    """The tidy scores as a Prefect table artifact (key: lowercase letters, digits and dashes)."""
    from prefect.artifacts import create_table_artifact

    create_table_artifact(
        table=evaluation.table_rows(),
        key=key,
        description=(
            f"Test-part scores of {evaluation.model_name} and baselines on {evaluation.model.n_windows} windows "
            f"(MASE season {evaluation.season})"
        ),
    )


def evaluate_test_windows(
    data: WindowedData,
    predicted: np.ndarray,
    season: int,
    seasons: Sequence[int] = (),
    model_name: str = "model",
    calibration: IntervalCalibration | None = None,
    fallback: dict[str, str] | None = None,
) -> Evaluation:
    """Score forecasts `[N, H]` of every test window of `data` against the baselines (see
    `evaluate_against_baselines`)."""
    return evaluate_against_baselines(
        data.panel,
        data.test_starts,
        predicted,
        data.lookback,
        data.horizon,
        season,
        data.splits.train_end,
        seasons,
        model_name,
        fallback=fallback,
        calibration=calibration,
    )


@task(name="evaluate", task_run_name="evaluate-{model_name}", cache_policy=NO_CACHE)
def evaluate_task(
    data: WindowedData,
    predicted: np.ndarray,
    season: int,
    seasons: Sequence[int] = (),
    model_name: str = "model",
    artifact_key: str | None = "test-evaluation",
    calibration: IntervalCalibration | None = None,
) -> Evaluation:
    """Score against the baselines (and the intervals, given a `calibration`) and, given `artifact_key`, publish
    the table as a Prefect artifact."""
    evaluation = evaluate_test_windows(data, predicted, season, seasons, model_name, calibration)
    if artifact_key:
        publish_evaluation_table(evaluation, artifact_key)
    return evaluation


# ---------------------------------------------------------------------------------------------------------------
# forecasting the test windows: candidates and the champion go through the serving code path


def forecast_test_windows(forecaster: LoadedForecaster, data: WindowedData) -> np.ndarray:
    """Forecasts `[N, H]` in original units from every test origin, exactly as serving would make them."""
    series, positions = data.window_index(data.test_starts)
    return forecast_origins(forecaster, data.panel, series, positions)


def candidate_forecaster(fit: FitResult, data: WindowedData) -> LoadedForecaster:
    """A freshly trained network with the scalers and frequency of its data, as serving would load it."""
    import torch

    return LoadedForecaster(
        model=fit.model, config=fit.config, scalers=data.scalers, freq=data.freq, device=torch.device("cpu")
    )


@task(name="forecast-test-windows", cache_policy=NO_CACHE)
def forecast_test_windows_task(fit: FitResult, data: WindowedData) -> np.ndarray:
    """The candidate's forecasts from every test origin, in original units."""
    return forecast_test_windows(candidate_forecaster(fit, data), data)
