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
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

if TYPE_CHECKING:
    from tasks.train import FitResult
    from tasks.windowing import WindowedData

from models.frequency import infer_freq, season_length, weekly_season_length
from models.packaging import LoadedForecaster, forecast_origins
from models.windows import SeriesPanel

logger = logging.getLogger(__name__)

METRIC_NAMES = ("mae", "rmse", "smape", "mase")
NAIVE = "naive"
SEASONAL_NAIVE = "seasonal_naive"
WEEKLY_SEASONAL_NAIVE = "weekly_seasonal_naive"

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


def _starts(starts: np.ndarray) -> np.ndarray:
    out = np.asarray(starts, dtype=np.int64)
    if out.ndim != 1:
        raise ValueError(f"`starts` must be a 1-D array of flat window starts; got shape {out.shape}")
    return out


def target_values(values: np.ndarray, starts: np.ndarray, lookback: int, horizon: int) -> np.ndarray:
    """Actual targets `[N, H]` of the windows at `starts`: `values[s + L : s + L + H]`, one gather."""
    starts = _starts(starts)
    return np.asarray(values)[starts[:, None] + lookback + np.arange(horizon)]


def naive_forecasts(panel_values: np.ndarray, starts: np.ndarray, lookback: int, horizon: int) -> np.ndarray:
    """Naive baseline `[N, H]`: each window's last input (its origin value) repeated over the horizon."""
    starts = _starts(starts)
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
    starts = _starts(starts)
    h = np.arange(1, horizon + 1)
    shift = h - season * ((h + season - 1) // season)  # [H], in [1 - m, 0]
    origin = starts + lookback - 1  # [N]
    return np.asarray(panel_values, dtype=np.float64)[origin[:, None] + shift[None, :]]  # [N, H]


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


def _check_predicted(predicted: np.ndarray, n_windows: int, horizon: int) -> np.ndarray:
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
    window_scale = scale[series]  # [N]
    overall = {
        "mae": float(abs_row.sum() / err.size),
        "rmse": float(np.sqrt(sq_row.sum() / err.size)),
        "smape": float(smape_row.sum() / err.size),
        "mase": float(np.mean(abs_row / horizon / window_scale)),
    }
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
    starts = _starts(starts)
    train_end = _check_train_end(panel, train_end)
    series = _check_windows(panel, starts, lookback, horizon, train_end)
    predicted = _check_predicted(predicted, len(starts), horizon)
    actual = target_values(panel.values, starts, lookback, horizon)
    return _score(panel, series, actual, predicted, mase_scales(panel, train_end, season))


@dataclass(frozen=True)
class Evaluation:
    """The model and its baselines scored on the same windows; baselines keyed by their metric prefix."""

    model_name: str
    model: Scores
    baselines: dict[str, Scores]
    baseline_forecasts: dict[str, np.ndarray] = field(repr=False)
    season: int
    weekly_season: int | None

    def metrics(self, prefix: str = "test") -> dict[str, float]:
        """Flat MLflow metrics with stable names.

        `test_mae`, `test_rmse`, `test_smape`, `test_mase`; per baseline `naive_test_mae`, ...,
        `seasonal_naive_test_mase`, `weekly_seasonal_naive_test_*` (sub-daily data only); the model's MAE per
        step `test_mae_step_01` ... (zero-padded to at least two digits); `test_windows` (windows scored).
        """
        out = {f"{prefix}_{name}": value for name, value in self.model.overall.items()}
        for baseline, scores in self.baselines.items():
            out.update({f"{baseline}_{prefix}_{name}": value for name, value in scores.overall.items()})
        width = max(2, len(str(len(self.model.mae_by_step))))
        for h, value in enumerate(self.model.mae_by_step, start=1):
            out[f"{prefix}_mae_step_{h:0{width}d}"] = float(value)
        out[f"{prefix}_windows"] = float(self.model.n_windows)
        return out

    def table(self) -> pd.DataFrame:
        """Tidy scores: one row per (method, scope); scope "overall" (series_id empty) or "series"."""
        methods = {self.model_name: self.model, **self.baselines}
        overall = pd.DataFrame(
            [
                {"method": m, "scope": "overall", "series_id": "", "n_windows": s.n_windows, **s.overall}
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
        return pd.concat([overall, per_series], ignore_index=True)[columns]

    def table_rows(self, digits: int = 6) -> list[dict[str, Any]]:
        """`table()` as JSON-safe rows for a Prefect table artifact: metrics to `digits` significant, NaN -> None."""
        rows: list[dict[str, Any]] = [{str(k): v for k, v in r.items()} for r in self.table().to_dict("records")]
        for row in rows:
            for name in METRIC_NAMES:
                value = float(row[name])
                row[name] = float(f"{value:.{digits}g}") if math.isfinite(value) else None
            row["n_windows"] = int(row["n_windows"])
        return rows


def evaluate_against_baselines(
    panel: SeriesPanel,
    starts: np.ndarray,
    predicted: np.ndarray,
    lookback: int,
    horizon: int,
    season: int,
    train_end: np.ndarray,
    weekly_season: int | None = None,
    model_name: str = "model",
) -> Evaluation:
    """Score the model, naive and seasonal naive (and, given `weekly_season`, a weekly seasonal naive for
    sub-daily data) on exactly the windows at `starts`, all with the same MASE scales (season `season`).

    Seasonal naive needs `lookback >= season` (a clear error otherwise); the optional weekly baseline is skipped,
    with a warning, when `lookback` is shorter than a week, and `Evaluation.weekly_season` is then None.
    """
    starts = _starts(starts)
    train_end = _check_train_end(panel, train_end)
    series = _check_windows(panel, starts, lookback, horizon, train_end)
    predicted = _check_predicted(predicted, len(starts), horizon)
    forecasts = {
        NAIVE: naive_forecasts(panel.values, starts, lookback, horizon),
        SEASONAL_NAIVE: seasonal_naive_forecasts(panel.values, starts, lookback, horizon, season),
    }
    if weekly_season is not None and lookback < weekly_season:
        logger.warning(
            "weekly seasonal naive skipped: it reads %d inputs but `lookback` is %d", weekly_season, lookback
        )
        weekly_season = None
    if weekly_season is not None:
        forecasts[WEEKLY_SEASONAL_NAIVE] = seasonal_naive_forecasts(
            panel.values, starts, lookback, horizon, weekly_season
        )
    actual = target_values(panel.values, starts, lookback, horizon)
    scale = mase_scales(panel, train_end, season)
    model = _score(panel, series, actual, predicted, scale)
    baselines = {name: _score(panel, series, actual, fc, scale) for name, fc in forecasts.items()}
    return Evaluation(model_name, model, baselines, forecasts, season, weekly_season)


# ---------------------------------------------------------------------------------------------------------------
# plots


def _safe_name(series_id: str, limit: int = 60) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", series_id).strip("._")[:limit]
    return name or "series"


def _printable(text: str, limit: int = 60) -> str:
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _save_atomically(fig: Any, target: Path) -> None:
    """Write to a temporary file beside `target`, then swap it in, so a reader never sees half a PNG."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format="png", dpi=110)
        Path(tmp).replace(target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plot_forecasts(
    panel: SeriesPanel,
    starts: np.ndarray,
    predicted: np.ndarray,
    lookback: int,
    horizon: int,
    path: str | Path,
    max_series: int = 6,
    baseline: np.ndarray | None = None,
    max_origins: int = 4,
    scores: Scores | None = None,
    baseline_label: str = "seasonal naive",
) -> list[Path]:
    """One forecast-vs-actual PNG per series (the first `max_series` with windows) in folder `path`.

    Each shows the actual values from the first origin to the last target, the model's forecasts from up to
    `max_origins` origins spread over the test part, and `baseline [N, H]` from the same origins if given.
    The title names the series and its MAE, sMAPE (and MASE when `scores` is given). Returns the files written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    starts = _starts(starts)
    predicted = _check_predicted(predicted, len(starts), horizon)
    if baseline is not None and np.shape(baseline) != predicted.shape:
        raise ValueError(f"`baseline` must have the shape of `predicted` {predicted.shape}; got {np.shape(baseline)}")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    if len(starts) == 0 or max_series < 1:
        return []
    series = panel.series_of(starts)
    actual = target_values(panel.values, starts, lookback, horizon)
    by_id = {} if scores is None else scores.per_series.set_index("series_id")["mase"].to_dict()
    written: list[Path] = []
    for k in np.unique(series)[:max_series]:  # a handful of plots, not a hot path
        rows = np.flatnonzero(series == k)
        picks = rows[np.unique(np.linspace(0, len(rows) - 1, min(max_origins, len(rows))).round().astype(int))]
        k0 = int(panel.offsets[k])
        lo, hi = int(starts[rows].min()) + lookback - 1, int(starts[rows].max()) + lookback + horizon
        index = panel.timestamps[k]
        ts = (index.tz_convert("UTC").tz_localize(None) if index.tz is not None else index).to_numpy()
        sid = panel.series_ids[k]
        title = (
            f"{_printable(sid)}: MAE {mae(actual[rows], predicted[rows]):.4g}, "
            f"sMAPE {smape(actual[rows], predicted[rows]):.2f}%"
        )
        if sid in by_id:
            title += f", MASE {by_id[sid]:.3f}"

        fig = Figure(figsize=(11, 4.2), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot(ts[lo - k0 : hi - k0], panel.values[lo:hi], color="black", lw=1.2, label="actual")
        colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink"]
        for j, i in enumerate(picks):
            origin = int(starts[i]) + lookback - 1 - k0
            color = colors[j % len(colors)]
            x = ts[origin : origin + horizon + 1]  # the origin, then H targets
            ax.plot(x, np.r_[panel.values[origin + k0], predicted[i]], color=color, lw=1.6, label=f"forecast {j + 1}")
            if baseline is not None:
                ax.plot(x, np.r_[panel.values[origin + k0], baseline[i]], color=color, lw=1, ls="--", alpha=0.7)
            ax.plot(ts[origin], panel.values[origin + k0], "o", color=color, ms=4)
        if baseline is not None:
            ax.plot([], [], color="grey", ls="--", label=baseline_label)
        ax.set_title(title + f"  ({len(picks)} of {len(rows)} origins shown)", fontsize=10)
        ax.set_xlabel("time (UTC)")
        ax.set_ylabel("value")
        locator = AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8, ncol=2)
        target = folder / f"forecast_{len(written):03d}_{_safe_name(sid)}.png"
        _save_atomically(fig, target)
        written.append(target)
    return written


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


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(
    panel: SeriesPanel,
    starts: np.ndarray,
    predicted: np.ndarray,
    lookback: int,
    horizon: int,
    season: int,
    train_end: np.ndarray,
    weekly_season: int | None = None,
    model_name: str = "model",
    artifact_key: str | None = "test-evaluation",
) -> Evaluation:
    """Score against the baselines and, given `artifact_key`, publish the table as a Prefect artifact."""
    evaluation = evaluate_against_baselines(
        panel, starts, predicted, lookback, horizon, season, train_end, weekly_season, model_name
    )
    if artifact_key:
        publish_evaluation_table(evaluation, artifact_key)
    return evaluation


@task(name="plot-forecasts", cache_policy=NO_CACHE)
def plot_forecasts_task(
    panel: SeriesPanel,
    starts: np.ndarray,
    predicted: np.ndarray,
    lookback: int,
    horizon: int,
    path: str | Path,
    max_series: int = 6,
    baseline: np.ndarray | None = None,
    scores: Scores | None = None,
) -> list[Path]:
    """Forecast-vs-actual PNGs, see `plot_forecasts`."""
    return plot_forecasts(
        panel, starts, predicted, lookback, horizon, path, max_series=max_series, baseline=baseline, scores=scores
    )


# ---------------------------------------------------------------------------------------------------------------
# forecasting the test windows: candidates and the champion go through the serving code path


def forecast_test_windows(forecaster: LoadedForecaster, data: WindowedData) -> np.ndarray:
    """Forecasts `[N, H]` in original units from every test origin, exactly as serving would make them."""
    series, positions = data.window_index(data.test_starts)
    return forecast_origins(forecaster, data.panel, series, positions)


@dataclass(frozen=True)
class ChampionScore:
    """The current champion scored on this run's test windows; `mase` is None when it cannot be compared."""

    version: str | None
    run_id: str | None
    mase: float | None
    note: str


def score_champion(model_name: str, data: WindowedData, season: int, weekly_season: int | None) -> ChampionScore:
    """Score the registered champion on the same test windows as the candidates (its own scalers and weights)."""
    from tasks.registry import CHAMPION, get_alias, load_version

    version = get_alias(model_name, CHAMPION)
    if version is None:
        return ChampionScore(None, None, None, f"registered model '{model_name}' has no champion yet")
    champion = load_version(model_name, str(version.version))
    unknown = sorted(set(data.panel.series_ids) - set(champion.series_ids))
    reason = None
    if champion.horizon != data.horizon:
        reason = f"champion horizon {champion.horizon} differs from {data.horizon}"
    elif champion.freq != data.freq:
        reason = f"champion frequency {champion.freq!r} differs from {data.freq!r}"
    elif unknown:
        reason = f"champion was not trained on series {unknown[:5]!r}"
    if reason is not None:
        return ChampionScore(str(version.version), version.run_id, None, reason + "; not comparable")
    predicted = forecast_test_windows(champion, data)
    evaluation = evaluate_against_baselines(
        data.panel,
        data.test_starts,
        predicted,
        data.lookback,
        data.horizon,
        season,
        data.splits.train_end,
        weekly_season,
        model_name="champion",
    )
    mase_value = evaluation.model.overall["mase"]
    return ChampionScore(str(version.version), version.run_id, mase_value, f"champion v{version.version}")


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


@task(name="score-champion", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def score_champion_task(
    model_name: str, data: WindowedData, season: int, weekly_season: int | None = None
) -> ChampionScore:
    return score_champion(model_name, data, season, weekly_season)


@dataclass(frozen=True)
class Seasons:
    """The season used for MASE and seasonal naive, and the weekly one reported beside it (sub-daily data)."""

    freq: str
    season: int
    weekly: int | None


def seasons_for(frame: pd.DataFrame, override: int | None = None) -> Seasons:
    """Seasons from the frequency of the first series of a validated frame (all series share it)."""
    first = frame["series_id"].iloc[0]
    ts = pd.DatetimeIndex(frame.loc[frame["series_id"] == first, "ts"]).sort_values()
    freq = infer_freq(ts)
    return Seasons(freq=freq, season=season_length(freq, override), weekly=weekly_season_length(freq))


@task(name="seasons", cache_policy=NO_CACHE)
def seasons_task(frame: pd.DataFrame, override: int | None = None) -> Seasons:
    return seasons_for(frame, override)
