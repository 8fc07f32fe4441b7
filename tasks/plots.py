"""Plots of the test windows, what a user looks at in MLflow before trusting a model: forecast vs actual per
series, and MAE (and interval coverage) by horizon step."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from models.baselines import as_starts
from models.windows import SeriesPanel
from tasks.evaluate import Evaluation, Scores, check_predicted, mae, smape, target_values


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
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
    level: float | None = None,
) -> list[Path]:
    """One forecast-vs-actual PNG per series (the first `max_series` with windows) in folder `path`.

    Each shows the actual values from the first origin to the last target, the model's forecasts from up to
    `max_origins` origins spread over the test part, each with its interval as a shaded band when `bounds`
    (lower, upper `[N, H]`, at `level`) are given, and `baseline [N, H]` from the same origins if given.
    The title names the series and its MAE, sMAPE (and MASE when `scores` is given). Returns the files written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    starts = as_starts(starts)
    predicted = check_predicted(predicted, len(starts), horizon)
    if baseline is not None and np.shape(baseline) != predicted.shape:
        raise ValueError(f"`baseline` must have the shape of `predicted` {predicted.shape}; got {np.shape(baseline)}")
    if bounds is not None and any(np.shape(b) != predicted.shape for b in bounds):
        raise ValueError(f"`bounds` must be two arrays of the shape of `predicted` {predicted.shape}")
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
            if bounds is not None:
                ax.fill_between(x[1:], bounds[0][i], bounds[1][i], color=color, alpha=0.15, lw=0)
            if baseline is not None:
                ax.plot(x, np.r_[panel.values[origin + k0], baseline[i]], color=color, lw=1, ls="--", alpha=0.7)
            ax.plot(ts[origin], panel.values[origin + k0], "o", color=color, ms=4)
        if baseline is not None:
            ax.plot([], [], color="grey", ls="--", label=baseline_label)
        if bounds is not None:
            shown = "interval" if level is None else f"{level:.0%} interval"
            ax.fill_between([], [], [], color="grey", alpha=0.15, lw=0, label=shown)
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
    baseline_label: str = "seasonal naive",
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
    level: float | None = None,
) -> list[Path]:
    """Forecast-vs-actual PNGs, see `plot_forecasts`."""
    return plot_forecasts(
        panel,
        starts,
        predicted,
        lookback,
        horizon,
        path,
        max_series=max_series,
        baseline=baseline,
        scores=scores,
        baseline_label=baseline_label,
        bounds=bounds,
        level=level,
    )


def plot_mae_by_step(evaluation: Evaluation, path: str | Path, max_baselines: int = 3) -> Path:
    """`mae_by_step.png` in folder `path`: test MAE at each horizon step of the network, of what is served and of
    the best `max_baselines` baselines (lowest mean per-series MASE first), from `Evaluation.mae_by_step()`; with
    intervals, a second panel of their coverage by step against the nominal level. Returns the file written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = evaluation.mae_by_step()
    baselines = sorted(evaluation.baselines, key=lambda m: evaluation.baselines[m].overall["mase"])[:max_baselines]
    methods = [evaluation.model_name, "served", *baselines]
    covered = [m for m in methods if f"{m}_coverage" in table.columns]
    styles = {evaluation.model_name: ("tab:blue", "-", 2.0), "served": ("black", ":", 1.6)}
    colors = ["tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    for i, name in enumerate(baselines):
        styles[name] = (colors[i % len(colors)], "--", 1.3)

    fig = Figure(figsize=(9, 6.5 if covered else 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2 if covered else 1, 1, sharex=True, squeeze=False)[:, 0]
    steps = table["step"].to_numpy()
    for name in methods:
        color, line, width = styles[name]
        axes[0].plot(steps, table[name].to_numpy(), color=color, ls=line, lw=width, marker=".", label=name)
    axes[0].set_ylabel("test MAE")
    axes[0].set_title(f"{evaluation.model_name}: test MAE by horizon step (lower is better)", fontsize=10)
    if covered:
        level = evaluation.calibration.level if evaluation.calibration is not None else None
        for name in covered:
            color, line, width = styles[name]
            axes[1].plot(steps, table[f"{name}_coverage"].to_numpy(), color=color, ls=line, lw=width, label=name)
        if level is not None:
            axes[1].axhline(level, color="grey", lw=1, label=f"level {level:.0%}")
        lowest = min([float(table[f"{name}_coverage"].min()) for name in covered] + [level or 1.0])
        axes[1].set_ylim(max(0.0, lowest - 0.1), 1.02)
        axes[1].set_ylabel("interval coverage")
        axes[1].legend(loc="best", fontsize=8, ncol=3)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize=8, ncol=2)
    axes[-1].set_xlabel("horizon step")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "mae_by_step.png"
    _save_atomically(fig, target)
    return target


@task(name="plot-mae-by-step", cache_policy=NO_CACHE)
def plot_mae_by_step_task(evaluation: Evaluation, path: str | Path) -> Path:
    """Test MAE (and coverage) by horizon step as one PNG, see `plot_mae_by_step`."""
    return plot_mae_by_step(evaluation, path)
