"""The windowing stage: chronological splits per series, scalers fit on train only, window starts per part.

Built on `models.windows` (the one window builder): a window is its flat start index, so each part is an
int32 array of starts (O(windows); int64 from 2**31 points) over one flat array of scaled values (O(data));
nothing is copied per window.

Each series k is cut by time into three parts (flat, exclusive ends):
    train  offsets[k]   .. train_end[k]
    val    train_end[k] .. val_end[k]
    test   val_end[k]   .. offsets[k + 1]      (the last observations)
A window belongs to the part its targets fall in; its inputs may reach back into earlier parts (observed history).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.errors import UnusableDataError
from models.windows import Scalers, SeriesPanel, panel_from_frame, window_starts
from tasks.spec import RunSpec, WindowSpec

_WINDOW = WindowSpec()  # the one set of defaults: the run spec's


class WindowConfig(BaseModel):
    """How series are cut into windows and parts.

    - `lookback` (L) / `horizon` (H): input and output lengths of every window.
    - `test_size` / `val_size`: observations per series held out at the end for test / before it for
      validation; when None, `test_fraction` / `val_fraction` of each series' length (at least H).
    - `stride`: steps between test (evaluation) origins, counted back from the newest so it is always kept.
    - `train_stride`: steps between training windows (1 = every window).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    lookback: int = Field(ge=1, le=100_000)
    horizon: int = Field(ge=1, le=10_000)
    test_size: int | None = Field(default=None, ge=1)
    test_fraction: float = Field(default=_WINDOW.test_fraction, gt=0.0, lt=1.0)
    val_size: int | None = Field(default=None, ge=1)
    val_fraction: float = Field(default=_WINDOW.val_fraction, gt=0.0, lt=1.0)
    stride: int = Field(default=1, ge=1)
    train_stride: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _parts_hold_a_horizon(self) -> WindowConfig:
        for name in ("test_size", "val_size"):
            size = getattr(self, name)
            if size is not None and size < self.horizon:
                raise ValueError(
                    f"`{name}` ({size}) must be at least `horizon` ({self.horizon}) so the part holds one window"
                )
        return self

    def part_sizes(self, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Test and validation sizes per series `[S]` for series of `lengths [S]`."""
        lengths = np.asarray(lengths, dtype=np.int64)

        def size(fixed: int | None, fraction: float) -> np.ndarray:
            if fixed is not None:
                return np.full(len(lengths), fixed, dtype=np.int64)
            return np.maximum(np.ceil(fraction * lengths).astype(np.int64), self.horizon)

        return size(self.test_size, self.test_fraction), size(self.val_size, self.val_fraction)


@dataclass(frozen=True)
class Splits:
    """Flat exclusive ends per series: train is `offsets[k]:train_end[k]`, val `train_end[k]:val_end[k]`,
    test `val_end[k]:offsets[k + 1]`."""

    train_end: np.ndarray  # [S] int64
    val_end: np.ndarray  # [S] int64


def split_panel(
    panel: SeriesPanel,
    lookback: int,
    horizon: int,
    test_size: int | np.ndarray,
    val_size: int | np.ndarray,
) -> Splits:
    """Chronological split of every series: the last `test_size` observations are test, the `val_size` before
    them validation, the rest train. Train must hold one full window (L + H), validation and test one horizon each.
    """
    n = len(panel.series_ids)
    test = np.broadcast_to(np.asarray(test_size, dtype=np.int64), (n,))
    val = np.broadcast_to(np.asarray(val_size, dtype=np.int64), (n,))
    if (test < horizon).any() or (val < horizon).any():
        raise ValueError(
            f"test ({test.min()}) and validation ({val.min()}) parts must each hold `horizon` ({horizon}) observations"
        )
    needed = lookback + horizon + val + test  # [S]
    lengths = panel.lengths
    short = np.flatnonzero(lengths < needed)
    if len(short):
        described = "; ".join(
            f"series {panel.series_ids[k]!r} has {lengths[k]}, needs {needed[k]}" for k in short[:5]
        ) + (f"; and {len(short) - 5} more" if len(short) > 5 else "")
        raise UnusableDataError(
            f"series too short: `lookback` ({lookback}) + `horizon` ({horizon}) + validation ({val[short[0]]}) "
            f"+ test ({test[short[0]]}) observations are needed: {described}. "
            "Drop these series, shorten lookback, or use smaller test/validation parts."
        )
    ends = panel.offsets[1:]
    val_end = ends - test
    train_end = val_end - val
    return Splits(train_end=train_end.astype(np.int64), val_end=val_end.astype(np.int64))


@dataclass(frozen=True)
class WindowedData:
    """Everything training and evaluation need, without a single materialised window.

    `panel` is in original units; `scaled [total]` float32 is the same panel scaled by `scalers` (fit on the
    train parts only). `*_starts` are flat window starts: inputs `scaled[s:s+L]`, targets `scaled[s+L:s+L+H]`.
    """

    config: WindowConfig
    panel: SeriesPanel
    scaled: np.ndarray  # [total] float32
    scalers: Scalers
    splits: Splits
    train_starts: np.ndarray  # [N_train] int32 (int64 from 2**31 points)
    val_starts: np.ndarray  # [N_val] same
    test_starts: np.ndarray  # [N_test] same

    @property
    def lookback(self) -> int:
        return self.config.lookback

    @property
    def horizon(self) -> int:
        return self.config.horizon

    @property
    def freq(self) -> str:
        return self.panel.freq

    @cached_property
    def _flat_ts(self) -> np.ndarray:
        """Every timestamp of the panel as naive UTC datetime64 `[total]` (see `SeriesPanel.flat_times`)."""
        return self.panel.flat_times()

    def timestamps_at(self, flat_index: np.ndarray) -> pd.DatetimeIndex:
        """UTC timestamps (ns) of flat indices."""
        return pd.DatetimeIndex(self._flat_ts[np.asarray(flat_index, dtype=np.int64)]).as_unit("ns").tz_localize("UTC")

    def window_index(self, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Series number `[N]` and origin position within its series `[N]` of windows `starts [N]`."""
        origins = np.asarray(starts, dtype=np.int64) + self.lookback - 1
        series = self.panel.series_of(origins)
        return series, origins - self.panel.offsets[series]

    def origin_timestamps(self, starts: np.ndarray) -> pd.DatetimeIndex:
        """Origin (last input) time of each window."""
        return self.timestamps_at(np.asarray(starts, dtype=np.int64) + self.lookback - 1)

    def targets(self, starts: np.ndarray) -> np.ndarray:
        """Actual target values `[N, H]` in original units (one gather)."""
        index = np.asarray(starts, dtype=np.int64)[:, None] + self.lookback + np.arange(self.horizon)
        return self.panel.values[index]

    def split_frame(self) -> pd.DataFrame:
        """Per series: first/last timestamp of each part and the number of windows in it."""
        p, s = self.panel, self.splits
        starts = p.offsets[:-1]
        ends = p.offsets[1:]
        counts = {
            name: np.bincount(p.series_of(arr + self.lookback - 1), minlength=len(p.series_ids)) if len(arr) else 0
            for name, arr in (("train", self.train_starts), ("val", self.val_starts), ("test", self.test_starts))
        }
        return pd.DataFrame(
            {
                "series_id": p.series_ids,
                "train_start": self.timestamps_at(starts),
                "train_end": self.timestamps_at(s.train_end - 1),
                "val_start": self.timestamps_at(s.train_end),
                "val_end": self.timestamps_at(s.val_end - 1),
                "test_start": self.timestamps_at(s.val_end),
                "test_end": self.timestamps_at(ends - 1),
                "train_windows": counts["train"],
                "val_windows": counts["val"],
                "test_windows": counts["test"],
            }
        )

    def split_tags(self) -> dict[str, str]:
        """The data window of this run as MLflow tags (earliest start and latest end of each part over series)."""
        frame = self.split_frame()
        tags = {
            f"data.{column}": (frame[column].min() if column.endswith("_start") else frame[column].max()).isoformat()
            for column in ("train_start", "train_end", "val_start", "val_end", "test_start", "test_end")
        }
        tags.update(
            {
                "data.freq": self.freq,
                "data.series": str(len(self.panel.series_ids)),
                "data.observations": str(len(self.panel.values)),
                "data.train_windows": str(len(self.train_starts)),
                "data.val_windows": str(len(self.val_starts)),
                "data.test_windows": str(len(self.test_starts)),
            }
        )
        return tags


def windows_from_panel(panel: SeriesPanel, config: WindowConfig) -> WindowedData:
    """Split `panel` (original units), fit scalers on the train parts, and list the window starts of each part."""
    lookback, horizon = config.lookback, config.horizon
    test_size, val_size = config.part_sizes(panel.lengths)
    splits = split_panel(panel, lookback, horizon, test_size, val_size)
    scalers = Scalers.fit(panel, splits.train_end)
    scaled = scalers.transform_float32(panel)
    first = panel.offsets[:-1]
    last = panel.offsets[1:] - 1
    return WindowedData(
        config=config,
        panel=panel,
        scaled=scaled,
        scalers=scalers,
        splits=splits,
        train_starts=window_starts(panel, lookback, horizon, first, splits.train_end - 1, stride=config.train_stride),
        val_starts=window_starts(panel, lookback, horizon, splits.train_end, splits.val_end - 1),
        test_starts=window_starts(panel, lookback, horizon, splits.val_end, last, stride=config.stride),
    )


def prepare_windows(frame: pd.DataFrame, config: WindowConfig, freq: str | None = None) -> WindowedData:
    """Windows for a validated long frame `series_id, ts, value` (sorted or not, regular, no NaN)."""
    if len(frame) == 0:
        raise UnusableDataError("no observations to window; ingest data first")
    return windows_from_panel(panel_from_frame(frame, freq=freq), config)


@task(name="resolve-spec", cache_policy=NO_CACHE)
def resolve_spec_task(spec: RunSpec, frame: pd.DataFrame, freq: str | None = None) -> RunSpec:
    """The spec with the settings it leaves empty (lookback, horizon, stride, seasons) filled from the data
    (`tasks.spec.resolve_for_frame`); not retried: bad data fails the same way again."""
    from tasks.spec import resolve_for_frame

    return resolve_for_frame(spec, frame, freq)


@task(name="make-windows", cache_policy=NO_CACHE)
def make_windows_task(frame: pd.DataFrame, config: WindowConfig) -> WindowedData:
    """Prefect wrapper of `prepare_windows` (bad data raises once; a retry would fail the same way)."""
    return prepare_windows(frame, config)
