"""The one window builder: training, evaluation, forecasting and backfill all cut windows here.

All series of a run live in one flat array; a window is named by its flat start index `s`:
inputs `values[s : s + L]`, targets `values[s + L : s + L + H]`, origin (last input) at `s + L - 1`.
Windows are gathered per batch from the flat array, so memory grows with the data, not with windows x L.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch


@dataclass(frozen=True)
class SeriesPanel:
    """Every series of a run, concatenated: series k is `values[offsets[k] : offsets[k + 1]]`."""

    series_ids: list[str]
    values: np.ndarray  # [total] float64, original units
    offsets: np.ndarray  # [S + 1] int64
    timestamps: list[pd.DatetimeIndex]  # per series, UTC
    freq: str  # pandas offset alias shared by all series, e.g. "30min", "h", "D", "B"

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def series_values(self, k: int) -> np.ndarray:
        return self.values[self.offsets[k] : self.offsets[k + 1]]

    def series_of(self, flat_index: np.ndarray) -> np.ndarray:
        """Series number of each flat index."""
        return np.searchsorted(self.offsets, flat_index, side="right") - 1

    def with_values(self, values: np.ndarray) -> SeriesPanel:
        return SeriesPanel(self.series_ids, values, self.offsets, self.timestamps, self.freq)


def infer_freq(ts: pd.DatetimeIndex) -> str:
    """The series frequency as a pandas alias: the most common step, or "B" for business days."""
    if len(ts) < 2:
        raise ValueError("a series needs at least two timestamps to infer its frequency")
    steps = np.diff(ts.asi8)
    values, counts = np.unique(steps, return_counts=True)
    step = pd.Timedelta(int(values[np.argmax(counts)]), unit=ts.unit)
    if step == pd.Timedelta(days=1) and (ts.day_of_week < 5).all() and (steps > values.min()).any():
        return "B"
    return pd.tseries.frequencies.to_offset(step).freqstr


def panel_from_frame(frame: pd.DataFrame, freq: str | None = None) -> SeriesPanel:
    """Build a panel from a long frame `series_id, ts, value` (validated: regular, no NaN, unique keys)."""
    frame = frame.sort_values(["series_id", "ts"], kind="stable")
    series_codes, series_ids = pd.factorize(frame["series_id"], sort=True)
    counts = np.bincount(series_codes, minlength=len(series_ids))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    ts_all = pd.DatetimeIndex(pd.to_datetime(frame["ts"], utc=True))
    timestamps = [ts_all[offsets[k] : offsets[k + 1]] for k in range(len(series_ids))]
    if freq is None:
        freqs = {infer_freq(ts) for ts in timestamps}
        if len(freqs) != 1:
            by_series = {sid: infer_freq(ts) for sid, ts in zip(series_ids, timestamps, strict=True)}
            raise ValueError(f"series have different frequencies {by_series}; train them in separate runs")
        freq = freqs.pop()
    return SeriesPanel(
        series_ids=[str(s) for s in series_ids],
        values=frame["value"].to_numpy(dtype=np.float64),
        offsets=offsets,
        timestamps=timestamps,
        freq=freq,
    )


@dataclass(frozen=True)
class Scalers:
    """Per-series standardisation, fit on the training part only; a constant series gets std 1."""

    series_ids: list[str]
    mean: np.ndarray  # [S]
    std: np.ndarray  # [S]

    @classmethod
    def fit(cls, panel: SeriesPanel, train_end: np.ndarray) -> Scalers:
        """Fit on `values[offsets[k] : train_end[k]]` of each series (train_end is a flat index).

        Per-series sums of centred values (no prefix sums across the whole panel, whose rounding error grows
        with everything before a series and turned constant series into tiny non-unit stds).
        """
        start = panel.offsets[:-1]
        lengths = panel.lengths
        counts = np.asarray(train_end, dtype=np.int64) - start
        if (counts <= 0).any() or (counts > lengths).any():
            bad = [panel.series_ids[k] for k in np.flatnonzero((counts <= 0) | (counts > lengths))]
            raise ValueError(f"scalers need 1..length training observations per series; series {bad[:5]!r} have none")
        series = np.repeat(np.arange(len(counts)), lengths)  # [total] series number of each point
        in_train = (np.arange(len(panel.values)) - np.repeat(start, lengths)) < np.repeat(counts, lengths)
        train_values = np.where(in_train, panel.values, 0.0)
        mean = np.bincount(series, weights=train_values, minlength=len(counts)) / counts
        dev = np.where(in_train, panel.values - mean[series], 0.0)
        shift = np.bincount(series, weights=dev, minlength=len(counts)) / counts  # second pass: exact mean
        var = np.maximum(np.bincount(series, weights=dev**2, minlength=len(counts)) / counts - shift**2, 0.0)
        mean = mean + shift
        std = np.sqrt(var)
        std = np.where(std > 1e-8 * np.maximum(np.abs(mean), 1.0), std, 1.0)
        return cls(list(panel.series_ids), mean, std)

    def _per_point(self, panel: SeriesPanel, stats: np.ndarray) -> np.ndarray:
        return np.repeat(stats, panel.lengths)

    def transform(self, panel: SeriesPanel) -> SeriesPanel:
        """The panel in scaled units; its series must be ones these scalers were fit on."""
        idx = self.indices(panel.series_ids)
        scaled = (panel.values - self._per_point(panel, self.mean[idx])) / self._per_point(panel, self.std[idx])
        return panel.with_values(scaled)

    def inverse(self, scaled: np.ndarray, series_index: np.ndarray) -> np.ndarray:
        """Back to original units: `scaled [N, H]` for windows of series `series_index [N]`."""
        return scaled * self.std[series_index, None] + self.mean[series_index, None]

    def indices(self, series_ids: list[str]) -> np.ndarray:
        """Positions of `series_ids` in these scalers; unknown series are refused by name."""
        lookup = {sid: i for i, sid in enumerate(self.series_ids)}
        missing = [sid for sid in series_ids if sid not in lookup]
        if missing:
            raise KeyError(f"series {missing[:5]!r} were not in the model's training data; retrain to include them")
        return np.array([lookup[sid] for sid in series_ids], dtype=np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {"series_ids": self.series_ids, "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scalers:
        return cls(list(data["series_ids"]), np.asarray(data["mean"], float), np.asarray(data["std"], float))


def make_windows(values: np.ndarray, lookback: int, horizon: int) -> np.ndarray:
    """All windows of one series as a read-only strided view `[T - L - H + 1, L + H]` (no copy)."""
    return np.lib.stride_tricks.sliding_window_view(values, lookback + horizon)


def gather_windows(
    values: torch.Tensor, starts: torch.Tensor, lookback: int, horizon: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One gather for a batch: `values [total]`, `starts [B]` -> inputs `[B, L, 1]`, targets `[B, H]`.

    With horizon 0 only inputs are gathered (forecasting), and targets come back as `[B, 0]`.
    """
    offsets = torch.arange(lookback + horizon, device=values.device)  # [L + H]
    block = values[starts[:, None] + offsets]  # [B, L + H]
    return block[:, :lookback, None], block[:, lookback:]


def window_starts(
    panel: SeriesPanel,
    lookback: int,
    horizon: int,
    first_target: np.ndarray,
    last_target: np.ndarray,
    stride: int = 1,
) -> np.ndarray:
    """Flat starts of every window whose targets all fall in `[first_target[k], last_target[k]]` of series k.

    `first_target` and `last_target` are flat indices (inclusive), one per series; inputs may reach back
    before `first_target` (they are observed history), never targets past `last_target`.
    Windows start every `stride` steps, counted back from the latest one so the newest origin is always kept.
    """
    lo = np.maximum(first_target - lookback, panel.offsets[:-1])  # earliest start: inputs inside the series
    hi = last_target - lookback - horizon + 1  # latest start: last target at last_target
    counts = np.where(hi >= lo, (hi - lo) // stride + 1, 0)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    series = np.repeat(np.arange(len(counts)), counts)
    rank = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)  # 0.. within each series
    starts = hi[series] - rank * stride
    return np.sort(starts).astype(np.int64)


def origin_starts(
    panel: SeriesPanel, series_index: np.ndarray, origin_positions: np.ndarray, lookback: int
) -> np.ndarray:
    """Flat starts of windows whose origin (last input) is at `origin_positions` within series `series_index`."""
    series_index = np.asarray(series_index, dtype=np.int64)
    origin_positions = np.asarray(origin_positions, dtype=np.int64)
    starts = panel.offsets[series_index] + origin_positions - lookback + 1
    if (origin_positions - lookback + 1 < 0).any():
        bad = series_index[origin_positions - lookback + 1 < 0]
        names = sorted({panel.series_ids[k] for k in bad})
        raise ValueError(f"series {names!r} have fewer than lookback={lookback} observations before the origin")
    past_end = origin_positions >= panel.lengths[series_index]
    if past_end.any():
        names = sorted({panel.series_ids[k] for k in series_index[past_end]})
        raise ValueError(f"origins past the last observation of series {names!r}; a window would read the next series")
    return starts.astype(np.int64)
