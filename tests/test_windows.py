"""The window builder and the windowing stage, checked by index arithmetic on np.arange series."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from models.windows import (
    Scalers,
    SeriesPanel,
    gather_windows,
    make_windows,
    origin_starts,
    panel_from_frame,
    window_starts,
)
from tasks.windowing import WindowConfig, prepare_windows, split_panel

LOOKBACK, HORIZON = 5, 3


def arange_frame(lengths: dict[str, int], freq: str = "h") -> pd.DataFrame:
    """Series whose value is its own flat index in the sorted panel (series sorted by id)."""
    parts = []
    offset = 0
    for sid in sorted(lengths):
        n = lengths[sid]
        parts.append(
            pd.DataFrame(
                {
                    "series_id": sid,
                    "ts": pd.date_range("2024-01-01", periods=n, freq=freq, tz="UTC"),
                    "value": np.arange(offset, offset + n, dtype=float),
                }
            )
        )
        offset += n
    # shuffled rows: the panel must sort them
    return pd.concat(parts, ignore_index=True).sample(frac=1.0, random_state=0)


@pytest.fixture
def panel() -> SeriesPanel:
    return panel_from_frame(arange_frame({"a": 40, "b": 25}))


def test_panel_is_flat_and_sorted(panel: SeriesPanel) -> None:
    assert panel.series_ids == ["a", "b"]
    assert panel.offsets.tolist() == [0, 40, 65]
    assert np.array_equal(panel.values, np.arange(65.0))
    assert panel.freq == "h"
    assert panel.series_of(np.array([0, 39, 40, 64])).tolist() == [0, 0, 1, 1]


def test_gather_windows_matches_index_arithmetic(panel: SeriesPanel) -> None:
    values = torch.from_numpy(panel.values)
    starts = window_starts(panel, LOOKBACK, HORIZON, panel.offsets[:-1], panel.offsets[1:] - 1)
    x, y = gather_windows(values, torch.from_numpy(starts), LOOKBACK, HORIZON)
    assert x.shape == (len(starts), LOOKBACK, 1)
    assert y.shape == (len(starts), HORIZON)
    for i, s in enumerate(starts):
        assert x[i, :, 0].tolist() == list(range(s, s + LOOKBACK))
        assert y[i].tolist() == list(range(s + LOOKBACK, s + LOOKBACK + HORIZON))
    # every window of each series and no window crossing series
    per_series = [40 - LOOKBACK - HORIZON + 1, 25 - LOOKBACK - HORIZON + 1]
    assert len(starts) == sum(per_series)
    assert (panel.series_of(starts) == panel.series_of(starts + LOOKBACK + HORIZON - 1)).all()


def test_gather_without_horizon_reads_inputs_only(panel: SeriesPanel) -> None:
    values = torch.from_numpy(panel.values[:10])  # nothing after the origin exists
    x, y = gather_windows(values, torch.tensor([5]), LOOKBACK, 0)
    assert x[0, :, 0].tolist() == [5, 6, 7, 8, 9]
    assert y.shape == (1, 0)


def test_window_starts_respects_bounds_and_stride(panel: SeriesPanel) -> None:
    first = np.array([20, 50])
    last = np.array([39, 64])
    starts = window_starts(panel, LOOKBACK, HORIZON, first, last, stride=4)
    series = panel.series_of(starts)
    assert (starts + LOOKBACK >= first[series]).all()
    assert (starts + LOOKBACK + HORIZON - 1 <= last[series]).all()
    assert (starts >= panel.offsets[series]).all()
    # newest window of each series kept, then every 4 steps back
    a = starts[series == 0]
    b = starts[series == 1]
    assert a[-1] == 39 - LOOKBACK - HORIZON + 1 and (np.diff(a) == 4).all()
    assert b[-1] == 64 - LOOKBACK - HORIZON + 1 and (np.diff(b) == 4).all()
    assert a[0] - 4 + LOOKBACK < 20  # one more step back would put a target before first_target


def test_make_windows_is_a_read_only_view() -> None:
    values = np.arange(20.0)
    windows = make_windows(values, LOOKBACK, HORIZON)
    assert windows.shape == (20 - LOOKBACK - HORIZON + 1, LOOKBACK + HORIZON)
    assert np.shares_memory(windows, values)
    assert not windows.flags.writeable
    for i in range(len(windows)):
        assert windows[i].tolist() == list(range(i, i + LOOKBACK + HORIZON))


def test_origin_starts_and_its_errors(panel: SeriesPanel) -> None:
    starts = origin_starts(panel, np.array([0, 1]), np.array([39, 24]), LOOKBACK)
    assert starts.tolist() == [39 - LOOKBACK + 1, 40 + 24 - LOOKBACK + 1]
    with pytest.raises(ValueError, match=r"\['b'\] have fewer than lookback=5"):
        origin_starts(panel, np.array([1]), np.array([3]), LOOKBACK)
    with pytest.raises(ValueError, match=r"past the last observation of series \['a'\]"):
        origin_starts(panel, np.array([0]), np.array([40]), LOOKBACK)


def test_scalers_are_exact_and_constant_series_get_unit_std() -> None:
    rng = np.random.default_rng(0)
    long = rng.normal(30_000.0, 5_000.0, 20_000)
    values = np.concatenate([long, np.full(300, 12_345.678)])
    panel = SeriesPanel(["a", "b"], values, np.array([0, 20_000, 20_300]), [], "h")
    scalers = Scalers.fit(panel, np.array([20_000, 20_300]))
    assert scalers.mean[0] == pytest.approx(long.mean(), rel=1e-12)
    assert scalers.std[0] == pytest.approx(long.std(), rel=1e-9)
    assert scalers.mean[1] == pytest.approx(12_345.678, rel=1e-14)
    assert scalers.std[1] == 1.0  # constant: no divide by (almost) zero
    scaled = scalers.transform(panel).values
    assert np.abs(scaled[20_000:]).max() < 1e-9
    round_trip = Scalers.from_dict(scalers.to_dict())
    assert np.array_equal(round_trip.mean, scalers.mean) and np.array_equal(round_trip.std, scalers.std)


def test_split_panel_boundaries(panel: SeriesPanel) -> None:
    splits = split_panel(panel, LOOKBACK, HORIZON, test_size=6, val_size=4)
    assert splits.val_end.tolist() == [40 - 6, 65 - 6]
    assert splits.train_end.tolist() == [40 - 10, 65 - 10]


def test_too_short_series_is_named_with_the_length_needed() -> None:
    panel = panel_from_frame(arange_frame({"long": 60, "uk_load": 12}))
    with pytest.raises(ValueError) as info:
        split_panel(panel, LOOKBACK, HORIZON, test_size=3, val_size=3)
    message = str(info.value)
    assert "series 'uk_load' has 12, needs 14" in message
    assert "`lookback` (5) + `horizon` (3) + validation (3) + test (3)" in message
    assert "'long'" not in message


def test_window_config_refuses_parts_shorter_than_horizon() -> None:
    with pytest.raises(ValueError, match=r"`test_size` \(2\) must be at least `horizon` \(3\)"):
        WindowConfig(lookback=LOOKBACK, horizon=HORIZON, test_size=2)


@pytest.fixture
def windowed() -> tuple[pd.DataFrame, WindowConfig]:
    frame = arange_frame({"a": 60, "b": 45})
    return frame, WindowConfig(lookback=LOOKBACK, horizon=HORIZON, test_size=9, val_size=6, stride=2)


def test_prepare_windows_parts_do_not_leak(windowed: tuple[pd.DataFrame, WindowConfig]) -> None:
    frame, config = windowed
    data = prepare_windows(frame, config)
    p, s = data.panel, data.splits
    horizon = np.arange(HORIZON)

    def target_index(starts: np.ndarray) -> np.ndarray:
        return starts[:, None] + LOOKBACK + horizon

    for starts, lo, hi in (
        (data.train_starts, p.offsets[:-1], s.train_end),
        (data.val_starts, s.train_end, s.val_end),
        (data.test_starts, s.val_end, p.offsets[1:]),
    ):
        assert len(starts) > 0
        series = p.series_of(starts)
        targets = target_index(starts)
        assert (targets >= lo[series, None]).all() and (targets < hi[series, None]).all()
        assert (starts >= p.offsets[series]).all()  # inputs stay inside the series
        # last input time strictly before first target time
        assert (data.origin_timestamps(starts) < data.timestamps_at(targets[:, 0])).all()
    train_targets = set(target_index(data.train_starts).ravel().tolist())
    train_inputs = set((data.train_starts[:, None] + np.arange(LOOKBACK)).ravel().tolist())
    for starts in (data.val_starts, data.test_starts):
        assert not (set(target_index(starts).ravel().tolist()) & (train_targets | train_inputs))
    # test origins every `stride` steps, newest one ends exactly at the series end
    for k in range(2):
        mine = data.test_starts[p.series_of(data.test_starts) == k]
        assert (np.diff(mine) == config.stride).all()
        assert mine[-1] + LOOKBACK + HORIZON == p.offsets[k + 1]
    # targets gathered in original units match the arange values
    assert np.array_equal(data.targets(data.test_starts), target_index(data.test_starts).astype(float))


def test_scalers_are_fit_on_train_only(windowed: tuple[pd.DataFrame, WindowConfig]) -> None:
    frame, config = windowed
    data = prepare_windows(frame, config)
    changed = frame.copy()
    ts_cut = data.split_frame().set_index("series_id")["val_start"]
    after_train = changed["ts"] >= changed["series_id"].map(ts_cut)
    changed.loc[after_train, "value"] = 1e9  # validation and test parts only
    other = prepare_windows(changed, config)
    assert np.array_equal(other.scalers.mean, data.scalers.mean)
    assert np.array_equal(other.scalers.std, data.scalers.std)
    expected_mean = [np.arange(0, 45).mean(), np.arange(60, 60 + 30).mean()]  # train parts of a and b
    assert data.scalers.mean.tolist() == pytest.approx(expected_mean)
    changed.loc[~after_train & (changed["series_id"] == "a"), "value"] += 1.0
    assert prepare_windows(changed, config).scalers.mean[0] != data.scalers.mean[0]


def test_windowed_data_memory_is_o_data_plus_windows(windowed: tuple[pd.DataFrame, WindowConfig]) -> None:
    frame, config = windowed
    data = prepare_windows(frame, config)
    total = len(frame)
    assert data.scaled.shape == (total,) and data.scaled.dtype == np.float32
    for starts in (data.train_starts, data.val_starts, data.test_starts):
        assert starts.ndim == 1 and starts.dtype == np.int64  # one integer per window, not L + H values
    # train parts: a has 60 - 15 = 45 points, b 45 - 15 = 30; a part of n points holds n - (L + H) + 1 windows
    assert len(data.train_starts) == (45 - 8 + 1) + (30 - 8 + 1)
    values = torch.from_numpy(data.scaled)
    x, _ = gather_windows(values, torch.from_numpy(data.train_starts[:4]), LOOKBACK, HORIZON)
    assert x.shape == (4, LOOKBACK, 1)  # a batch is gathered, the panel itself is never windowed


def test_split_tags_describe_the_data_window(windowed: tuple[pd.DataFrame, WindowConfig]) -> None:
    frame, config = windowed
    data = prepare_windows(frame, config)
    tags = data.split_tags()
    assert tags["data.train_start"] == "2024-01-01T00:00:00+00:00"
    assert tags["data.test_end"] == pd.Timestamp("2024-01-01", tz="UTC").__add__(pd.Timedelta(hours=59)).isoformat()
    assert tags["data.freq"] == "h" and tags["data.series"] == "2"
    table = data.split_frame()
    assert (table["train_end"] < table["val_start"]).all() and (table["val_end"] < table["test_start"]).all()
    assert table["test_windows"].sum() == len(data.test_starts)


def test_fractions_give_each_series_at_least_a_horizon() -> None:
    data = prepare_windows(
        arange_frame({"a": 100, "b": 200}), WindowConfig(lookback=LOOKBACK, horizon=HORIZON, test_fraction=0.01)
    )
    test_len = data.panel.offsets[1:] - data.splits.val_end
    assert test_len.tolist() == [HORIZON, HORIZON]
    val_len = data.splits.val_end - data.splits.train_end
    assert val_len.tolist() == [10, 20]
