"""The one window builder: training, evaluation, forecasting and backfill all cut windows here.

All series of a run live in one flat array; a window is named by its flat start index `s`:
inputs `values[s : s + L]`, targets `values[s + L : s + L + H]`, origin (last input) at `s + L - 1`.
Windows are gathered per batch from the flat array, so memory grows with the data, not with windows x L.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch

from models.errors import UnusableDataError
from models.frequency import infer_freq

GROUP_SIZE = 1 << 20  # points (or windows) per group of series in the grouped passes: bounds their temporaries


def series_groups(sizes: np.ndarray, group_size: int = GROUP_SIZE) -> list[tuple[int, int]]:
    """Consecutive series ranges `[a, b)` of about `group_size` points each (a longer series is a group alone).

    Passes over the panel run group by group so their temporaries stay O(group), not O(total).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if len(sizes) == 0:
        return []
    bucket = (np.cumsum(sizes) - sizes) // max(group_size, 1)  # group of each series, by its first point
    bounds = [0, *(np.flatnonzero(np.diff(bucket)) + 1).tolist(), len(sizes)]
    return list(pairwise(bounds))


@dataclass(frozen=True)
class SeriesPanel:
    """Every series of a run, concatenated: series k is `values[offsets[k] : offsets[k + 1]]`."""

    series_ids: list[str]
    values: np.ndarray  # [total] float64, original units
    offsets: np.ndarray  # [S + 1] int64
    timestamps: list[pd.DatetimeIndex]  # per series, UTC
    freq: str  # pandas offset alias shared by all series, e.g. "30min", "h", "D", "B"
    flat_timestamps: pd.DatetimeIndex | None = None  # [total] UTC, when `timestamps` are views of it

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def series_values(self, k: int) -> np.ndarray:
        return self.values[self.offsets[k] : self.offsets[k + 1]]

    def series_of(self, flat_index: np.ndarray) -> np.ndarray:
        """Series number of each flat index."""
        return np.searchsorted(self.offsets, flat_index, side="right") - 1

    def flat_times(self) -> np.ndarray:
        """Every timestamp as naive UTC datetime64 `[total]`, aligned with `values`: a view of `flat_timestamps`
        when the panel has it (no copy), else the per-series indexes concatenated."""
        if self.flat_timestamps is not None:
            return self.flat_timestamps.asi8.view(f"M8[{self.flat_timestamps.unit}]")
        if not self.timestamps:
            return np.zeros(0, dtype="M8[ns]")
        return np.concatenate([pd.DatetimeIndex(ts).as_unit("ns").asi8 for ts in self.timestamps]).view("M8[ns]")

    def with_values(self, values: np.ndarray) -> SeriesPanel:
        return SeriesPanel(self.series_ids, values, self.offsets, self.timestamps, self.freq, self.flat_timestamps)


def panel_from_frame(frame: pd.DataFrame, freq: str | None = None) -> SeriesPanel:
    """Build a panel from a long frame `series_id, ts, value` (validated: regular, no NaN, unique keys).

    A frame already sorted by (series_id, ts), as `read_observations` returns it, with pyarrow string ids and
    tz-aware timestamps, is used in place: values and timestamps are views of its columns, nothing is copied.
    Any other frame is sorted first (a copy of the whole frame).
    """
    layout = _sorted_layout(frame)
    if layout is None:
        frame = frame.sort_values(["series_id", "ts"], kind="stable")
        series_codes, unique_ids = pd.factorize(frame["series_id"], sort=True)
        counts = np.bincount(series_codes, minlength=len(unique_ids))
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        ts_all = pd.DatetimeIndex(pd.to_datetime(frame["ts"], utc=True))
        series_ids = [str(s) for s in unique_ids]
    else:
        series_ids, offsets, ts_all = layout
    timestamps = [ts_all[offsets[k] : offsets[k + 1]] for k in range(len(series_ids))]  # views
    if freq is None:
        freqs = {infer_freq(ts) for ts in timestamps}
        if len(freqs) != 1:
            by_series = {sid: infer_freq(ts) for sid, ts in zip(series_ids, timestamps, strict=True)}
            raise UnusableDataError(f"series have different frequencies {by_series}; train them in separate runs")
        freq = freqs.pop()
    return SeriesPanel(
        series_ids=series_ids,
        values=frame["value"].to_numpy(dtype=np.float64),
        offsets=offsets,
        timestamps=timestamps,
        freq=freq,
        flat_timestamps=ts_all,
    )


def _sorted_layout(
    frame: pd.DataFrame, group_size: int = GROUP_SIZE
) -> tuple[list[str], np.ndarray, pd.DatetimeIndex] | None:
    """Series ids, offsets and UTC timestamps of a frame already in (series_id, ts) order, without copying it.

    None when the frame is not in that order (or its columns are not pyarrow strings and tz-aware timestamps):
    the caller then sorts. Ids are run-length encoded `group_size` rows at a time; sorted ids make few runs.
    """
    ids, ts = frame["series_id"], frame["ts"]
    if not isinstance(ts.dtype, pd.DatetimeTZDtype) or len(frame) == 0:
        return None
    arrow_backed = isinstance(ids.dtype, pd.ArrowDtype) or (
        isinstance(ids.dtype, pd.StringDtype) and ids.dtype.storage == "pyarrow"
    )
    if not arrow_backed:
        return None
    chunked = pa.chunked_array(ids.array.__arrow_array__())
    if not (pa.types.is_string(chunked.type) or pa.types.is_large_string(chunked.type)) or chunked.null_count:
        return None

    run_values: list[pa.Array] = []
    run_ends: list[np.ndarray] = []
    base = 0
    for a in range(0, len(chunked), group_size):
        for ree in pc.run_end_encode(chunked.slice(a, group_size)).chunks:
            values = ree.values  # neighbouring runs differ; the last one may continue in the next slice
            if len(values) > 1 and not pc.all(pc.less(values[:-1], values[1:])).as_py():
                return None  # an unsorted frame is refused at its first slice, before encoding the rest
            if run_values and run_values[-1][-1].as_py() > values[0].as_py():
                return None
            run_values.append(values)
            run_ends.append(base + ree.run_ends.to_numpy().astype(np.int64))
            base += len(ree)
    values = pa.concat_arrays(run_values)
    new = np.append(True, pc.not_equal(values[:-1], values[1:]).to_numpy(zero_copy_only=False))  # run starts a series
    offsets = np.append(0, np.concatenate(run_ends)[np.append(new[1:], True)]).astype(np.int64)

    index = pd.DatetimeIndex(ts).tz_convert("UTC")
    if not _ascending_within_series(index.asi8, offsets, group_size):
        return None
    return [str(s) for s in values.filter(pa.array(new)).to_pylist()], offsets, index


def _ascending_within_series(ts: np.ndarray, offsets: np.ndarray, group_size: int) -> bool:
    """Whether int64 times `ts` never decrease inside a series (steps back only at series starts) and hold no NaT."""
    nat = np.iinfo(np.int64).min
    for a in range(0, len(ts), group_size):
        seg = ts[a : a + group_size + 1]  # one past the slice: the step into the next slice is checked too
        drops = np.flatnonzero(seg[1:] < seg[:-1]) + a + 1
        if (seg == nat).any() or not np.isin(drops, offsets[1:-1]).all():
            return False
    return True


@dataclass(frozen=True)
class Scalers:
    """Per-series standardisation, fit on the training part only; a constant series gets std 1."""

    series_ids: list[str]
    mean: np.ndarray  # [S]
    std: np.ndarray  # [S]

    @classmethod
    def fit(cls, panel: SeriesPanel, train_end: np.ndarray, group_size: int = GROUP_SIZE) -> Scalers:
        """Fit on `values[offsets[k] : train_end[k]]` of each series (train_end is a flat index).

        Per-series sums of centred values (no prefix sums across the whole panel, whose rounding error grows
        with everything before a series and turned constant series into tiny non-unit stds). Computed over
        groups of about `group_size` points; each series lies in one group, so the results do not depend on it.
        """
        start = panel.offsets[:-1]
        lengths = panel.lengths
        counts = np.asarray(train_end, dtype=np.int64) - start
        if (counts <= 0).any() or (counts > lengths).any():
            bad = [panel.series_ids[k] for k in np.flatnonzero((counts <= 0) | (counts > lengths))]
            raise ValueError(f"scalers need 1..length training observations per series; series {bad[:5]!r} have none")
        mean = np.empty(len(counts))
        std = np.empty(len(counts))
        for a, b in series_groups(lengths, group_size):
            lo, hi = panel.offsets[a], panel.offsets[b]
            mean[a:b], std[a:b] = _centred_moments(panel.values[lo:hi], lengths[a:b], counts[a:b])
        std = np.where(std > 1e-8 * np.maximum(np.abs(mean), 1.0), std, 1.0)
        return cls(list(panel.series_ids), mean, std)

    def transform(self, panel: SeriesPanel) -> SeriesPanel:
        """The panel in scaled units; its series must be ones these scalers were fit on."""
        return panel.with_values(self._scale_into(panel, np.empty(len(panel.values), dtype=np.float64)))

    def transform_float32(self, panel: SeriesPanel, group_size: int = GROUP_SIZE) -> np.ndarray:
        """`transform(panel).values.astype(np.float32)`, bit for bit, without the float64 panel in between."""
        return self._scale_into(panel, np.empty(len(panel.values), dtype=np.float32), group_size)

    def _scale_into(self, panel: SeriesPanel, out: np.ndarray, group_size: int = GROUP_SIZE) -> np.ndarray:
        idx = self.indices(panel.series_ids)
        mean, std, lengths = self.mean[idx], self.std[idx], panel.lengths
        for a, b in series_groups(lengths, group_size):
            lo, hi = panel.offsets[a], panel.offsets[b]
            scaled = panel.values[lo:hi] - np.repeat(mean[a:b], lengths[a:b])  # float64, as one pass would
            scaled /= np.repeat(std[a:b], lengths[a:b])
            out[lo:hi] = scaled
        return out

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


def _centred_moments(values: np.ndarray, lengths: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the first `counts[k]` of each of the concatenated series `values` (lengths `lengths`)."""
    n = len(lengths)
    series = np.repeat(np.arange(n), lengths)  # series number of each point
    in_train = (np.arange(len(values)) - np.repeat(np.cumsum(lengths) - lengths, lengths)) < np.repeat(counts, lengths)
    train_values = np.where(in_train, values, 0.0)
    mean = np.bincount(series, weights=train_values, minlength=n) / counts
    dev = np.where(in_train, values - mean[series], 0.0)
    shift = np.bincount(series, weights=dev, minlength=n) / counts  # second pass: exact mean
    var = np.maximum(np.bincount(series, weights=dev**2, minlength=n) / counts - shift**2, 0.0)
    return mean + shift, np.sqrt(var)


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
    group_size: int = GROUP_SIZE,
) -> np.ndarray:
    """Flat starts of every window whose targets all fall in `[first_target[k], last_target[k]]` of series k.

    `first_target` and `last_target` are flat indices (inclusive), one per series; inputs may reach back
    before `first_target` (they are observed history), never targets past `last_target`.
    Windows start every `stride` steps, counted back from the latest one so the newest origin is always kept.
    Ascending; int32 while the panel has fewer than 2**31 points (one starts array per part can be the largest
    thing a run holds), int64 beyond. Built `group_size` windows at a time.
    """
    first_target = np.asarray(first_target, dtype=np.int64)
    last_target = np.asarray(last_target, dtype=np.int64)
    lo = np.maximum(first_target - lookback, panel.offsets[:-1])  # earliest start: inputs inside the series
    hi = last_target - lookback - horizon + 1  # latest start: last target at last_target
    counts = np.where(hi >= lo, (hi - lo) // stride + 1, 0)
    dtype = np.int32 if int(panel.offsets[-1]) <= np.iinfo(np.int32).max else np.int64
    total = int(counts.sum())
    starts = np.empty(total, dtype=dtype)
    if total == 0:
        return starts
    # window i (flat, series k, rank j = i - before[k]) starts at first[k] + j * stride
    first = hi - (counts - 1) * stride
    before = np.cumsum(counts) - counts
    for a, b in series_groups(counts, group_size):
        i0, i1 = before[a], before[b - 1] + counts[b - 1]
        chunk = np.arange(i0 * stride, i1 * stride, stride, dtype=np.int64)
        chunk += np.repeat(first[a:b] - before[a:b] * stride, counts[a:b])
        starts[i0:i1] = chunk
    used = counts > 0
    if (first[used][1:] <= hi[used][:-1]).any():  # parts that overlap the next series' part: not one sorted run
        starts.sort()
    return starts


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
