"""Windowing memory: peak resident memory of `prepare_windows` on many long series, against the raw values.

Then the same work step by step (what `prepare_windows` calls, in its order, keeping what it keeps), each step's
own peak above the memory held before it, to show which step sets the peak.

The input frame is sorted by (series_id, ts) as `read_observations` returns it, so the panel's values and
timestamps are views of the frame's columns: they are part of the frame's memory, not of what windowing keeps.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import mib, peak_memory, synthetic_frame


def _owned_bytes(array: np.ndarray, frame_arrays: list[np.ndarray]) -> int:
    """Bytes of `array` not shared with the input frame's columns (a view of a column costs nothing more)."""
    return 0 if any(np.shares_memory(array, f) for f in frame_arrays) else array.nbytes


def _kept_bytes(data: Any, frame: pd.DataFrame) -> dict[str, int]:
    """What the WindowedData holds beyond the input frame, by field."""
    columns = [frame["value"].to_numpy(), frame["ts"].array.asi8]
    panel = data.panel
    if panel.flat_timestamps is not None:
        timestamps = _owned_bytes(panel.flat_timestamps.asi8, columns)
    else:
        timestamps = sum(_owned_bytes(ts.asi8, columns) for ts in panel.timestamps)
    return {
        "panel.values": _owned_bytes(panel.values, columns),
        "timestamps": timestamps,
        "scaled (float32)": data.scaled.nbytes,
        f"starts ({data.train_starts.dtype})": data.train_starts.nbytes
        + data.val_starts.nbytes
        + data.test_starts.nbytes,
    }


def run_windowing_bench(n_series: int, length: int, lookback: int = 48, horizon: int = 24) -> dict[str, Any]:
    from models.windows import Scalers, panel_from_frame, window_starts
    from tasks.windowing import WindowConfig, prepare_windows, split_panel

    frame = synthetic_frame(n_series, length)
    config = WindowConfig(lookback=lookback, horizon=horizon)
    raw_bytes = n_series * length * 8  # the values as float64
    frame_bytes = int(frame.memory_usage(deep=True).sum())
    gc.collect()

    with peak_memory() as mem:
        t = time.perf_counter()
        data = prepare_windows(frame, config)
        seconds = time.perf_counter() - t
    kept = _kept_bytes(data, frame)
    n_windows = len(data.train_starts) + len(data.val_starts) + len(data.test_starts)
    del data
    gc.collect()

    steps: dict[str, float] = {}
    with peak_memory() as m:
        panel = panel_from_frame(frame)
    steps["panel_from_frame (sorted frame used in place: run-end encoded ids, views of value and ts)"] = m.delta_mib
    test_size, val_size = config.part_sizes(panel.lengths)
    splits = split_panel(panel, lookback, horizon, test_size, val_size)
    with peak_memory() as m:
        scalers = Scalers.fit(panel, splits.train_end)
    steps["Scalers.fit (groups of about 1M points)"] = m.delta_mib
    with peak_memory() as m:
        scaled = scalers.transform_float32(panel)
    steps["Scalers.transform_float32 (one float32 array, filled per group)"] = m.delta_mib
    with peak_memory() as m:
        first = panel.offsets[:-1]
        train = window_starts(panel, lookback, horizon, first, splits.train_end - 1)
    steps[f"window_starts (train, {train.dtype}, per group)"] = m.delta_mib
    with peak_memory() as m:
        val = window_starts(panel, lookback, horizon, splits.train_end, splits.val_end - 1)
        test = window_starts(panel, lookback, horizon, splits.val_end, panel.offsets[1:] - 1)
    steps["window_starts (val and test)"] = m.delta_mib
    del panel, scalers, scaled, train, val, test
    gc.collect()

    peak = mem.delta_mib
    return {
        "series": n_series,
        "steps_per_series": length,
        "lookback": lookback,
        "horizon": horizon,
        "windows": n_windows,
        "raw_values_mib": round(mib(raw_bytes), 1),
        "input_frame_mib": round(mib(frame_bytes), 1),
        "prepare_windows_s": round(seconds, 2),
        "peak_rss_delta_mib": round(peak, 1),
        "ratio_peak_vs_raw": round(peak / mib(raw_bytes), 2),
        "kept_after_mib": round(mib(sum(kept.values())), 1),
        "kept_mib": {k: round(mib(v), 1) for k, v in kept.items()},
        "target": "<= 2x raw values",
        "memory_method": mem.method,
        "step_peaks_mib": {k: round(v, 1) for k, v in steps.items()},
    }
