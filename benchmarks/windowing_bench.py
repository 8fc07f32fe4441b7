"""Windowing memory: peak resident memory of `prepare_windows` on many long series, against the raw values.

Then the same work step by step (what `prepare_windows` calls, in its order, keeping what it keeps), each step's
own peak above the memory held before it, to show which step sets the peak.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import numpy as np

from benchmarks.common import mib, peak_memory, synthetic_frame


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
    kept = (
        data.scaled.nbytes
        + data.panel.values.nbytes
        + data.train_starts.nbytes
        + data.val_starts.nbytes
        + data.test_starts.nbytes
        + sum(ts.asi8.nbytes for ts in data.panel.timestamps)
    )
    n_windows = len(data.train_starts) + len(data.val_starts) + len(data.test_starts)
    del data
    gc.collect()

    steps: dict[str, float] = {}
    with peak_memory() as m:
        panel = panel_from_frame(frame)
    steps["panel_from_frame (sort, factorize, to_datetime, per-series index)"] = m.delta_mib
    test_size, val_size = config.part_sizes(panel.lengths)
    splits = split_panel(panel, lookback, horizon, test_size, val_size)
    with peak_memory() as m:
        scalers = Scalers.fit(panel, splits.train_end)
    steps["Scalers.fit"] = m.delta_mib
    with peak_memory() as m:
        scaled = scalers.transform(panel).values.astype(np.float32)
    steps["Scalers.transform + float32 cast"] = m.delta_mib
    with peak_memory() as m:
        first = panel.offsets[:-1]
        train = window_starts(panel, lookback, horizon, first, splits.train_end - 1)
    steps["window_starts (train)"] = m.delta_mib
    del panel, scalers, scaled, train
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
        "kept_after_mib": round(mib(kept), 1),
        "target": "<= 2x raw values",
        "memory_method": mem.method,
        "step_peaks_mib": {k: round(v, 1) for k, v in steps.items()},
    }
