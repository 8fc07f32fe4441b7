"""The window builder and the windowing stage, checked by index arithmetic on np.arange series."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from models.frequency import infer_freq
from models.windows import (
    Scalers,
    SeriesPanel,
    _sorted_layout,
    gather_windows,
    make_windows,
    origin_starts,
    panel_from_frame,
    series_groups,
    window_starts,
)
from tasks.windowing import WindowConfig, WindowedData, prepare_windows, split_panel

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
        assert starts.ndim == 1 and starts.dtype == np.int32  # one integer per window, not L + H values
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


# ---------------------------------------------------------------------------------------------------------------
# memory: sorted frames used in place, grouped passes, int32 starts; results equal to the straightforward code


def noisy_frame(lengths: dict[str, int], seed: int = 0) -> pd.DataFrame:
    """Series sorted by (series_id, ts) with random values, as `read_observations` returns them."""
    rng = np.random.default_rng(seed)
    parts = [
        pd.DataFrame(
            {
                "series_id": sid,
                "ts": pd.date_range("2024-03-30", periods=n, freq="h", tz="UTC"),
                "value": rng.normal(rng.uniform(-1e4, 1e4), rng.uniform(0.1, 100.0), n),
            }
        )
        for sid, n in sorted(lengths.items())
    ]
    return pd.concat(parts, ignore_index=True)


MIXED_IDS = {"B": 40, "a": 33, "a1": 57, "b": 25, "z": 31, "\u00e9t\u00e9": 28, "Zulu": 36}  # code-point order


def assert_same_windows(a: WindowedData, b: WindowedData) -> None:
    assert a.panel.series_ids == b.panel.series_ids and a.panel.freq == b.panel.freq
    assert np.array_equal(a.panel.offsets, b.panel.offsets)
    assert np.array_equal(a.panel.values, b.panel.values)
    for x, y in zip(a.panel.timestamps, b.panel.timestamps, strict=True):
        assert x.equals(y) and str(x.tz) == "UTC"
    assert np.array_equal(a.scalers.mean, b.scalers.mean) and np.array_equal(a.scalers.std, b.scalers.std)
    assert np.array_equal(a.scaled, b.scaled)
    for name in ("train_starts", "val_starts", "test_starts"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    every = np.arange(len(a.panel.values))
    assert a.timestamps_at(every).equals(b.timestamps_at(every))
    pd.testing.assert_frame_equal(a.split_frame(), b.split_frame())


def test_sorted_and_shuffled_frames_give_identical_windowed_data() -> None:
    frame = noisy_frame(MIXED_IDS)
    assert frame["series_id"].dtype == "str"  # pyarrow-backed strings: the in-place path
    config = WindowConfig(lookback=LOOKBACK, horizon=HORIZON, test_size=6, val_size=4, stride=2, train_stride=3)
    data = prepare_windows(frame, config)
    assert data.panel.series_ids == sorted(MIXED_IDS)
    # used in place: values and timestamps are views of the frame's columns
    assert np.shares_memory(data.panel.values, frame["value"].to_numpy())
    assert np.shares_memory(data.panel.timestamps[2].asi8, frame["ts"].array.asi8)
    assert data.timestamps_at(np.array([0])).unit == "ns"

    naive = frame.assign(ts=frame["ts"].dt.tz_localize(None))
    london = frame.assign(ts=frame["ts"].dt.tz_convert("Europe/London"))  # crosses a DST change
    as_object = frame.assign(series_id=frame["series_id"].astype(object))
    for other in (
        frame.sample(frac=1.0, random_state=1),
        frame.iloc[::-1],
        naive,
        naive.sample(frac=1.0, random_state=2),
        london,
        london.sample(frac=1.0, random_state=3),
        as_object,
        as_object.sample(frac=1.0, random_state=4),
    ):
        assert_same_windows(data, prepare_windows(other, config))


def test_sorted_layout_checks_every_slice_boundary() -> None:
    frame = noisy_frame({"a": 11, "b": 7, "c": 13})
    found = _sorted_layout(frame, group_size=4)  # series continue across slices of 4 rows
    assert found is not None
    ids, offsets, ts = found
    assert ids == ["a", "b", "c"] and offsets.tolist() == [0, 11, 18, 31]
    assert ts.equals(pd.DatetimeIndex(frame["ts"]))

    swapped_ids = frame.copy()
    swapped_ids.loc[[7, 8], "series_id"] = ["b", "a"]  # rows 7 | 8 sit on a slice boundary
    assert _sorted_layout(swapped_ids, group_size=4) is None
    swapped_ts = frame.copy()
    swapped_ts.loc[[7, 8], "ts"] = swapped_ts.loc[[8, 7], "ts"].to_numpy()
    assert _sorted_layout(swapped_ts, group_size=4) is None
    assert _sorted_layout(frame.iloc[::-1], group_size=4) is None
    with_nat = frame.copy()
    with_nat.loc[11, "ts"] = pd.NaT  # first of series b: not an ascending order once NaT sorts last
    assert _sorted_layout(with_nat, group_size=4) is None


def reference_window_starts(
    offsets: np.ndarray, lookback: int, horizon: int, first: np.ndarray, last: np.ndarray, stride: int
) -> np.ndarray:
    """One series at a time: every `stride` steps back from the newest window, sorted."""
    parts = []
    for k in range(len(offsets) - 1):
        lo = max(first[k] - lookback, offsets[k])
        hi = last[k] - lookback - horizon + 1
        parts.append(np.arange(hi, lo - 1, -stride, dtype=np.int64))
    return np.sort(np.concatenate(parts))


def test_int32_window_starts_equal_the_reference() -> None:
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 60, 40)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    panel = SeriesPanel([f"s{k}" for k in range(40)], np.zeros(offsets[-1]), offsets, [], "h")
    first = offsets[:-1] + rng.integers(0, 30, 40)
    last = offsets[1:] - 1 - rng.integers(0, 5, 40)
    for stride in (1, 2, 3, 7):
        expected = reference_window_starts(offsets, LOOKBACK, HORIZON, first, last, stride)
        assert len(expected) > 0
        for group_size in (1, 9, 1 << 20):
            starts = window_starts(panel, LOOKBACK, HORIZON, first, last, stride=stride, group_size=group_size)
            assert starts.dtype == np.int32
            assert np.array_equal(starts, expected)
    # parts that overlap the next series' part still come back sorted
    wide = window_starts(panel, LOOKBACK, HORIZON, first, last + 6, stride=2)
    assert np.array_equal(wide, reference_window_starts(offsets, LOOKBACK, HORIZON, first, last + 6, 2))
    assert window_starts(panel, LOOKBACK, HORIZON, first, first).dtype == np.int32  # no window at all
    # from 2**31 points on, starts no longer fit int32
    huge = SeriesPanel(["x"], np.zeros(0), np.array([0, 2**31 + 100]), [], "h")
    starts = window_starts(huge, LOOKBACK, HORIZON, np.array([2**31]), np.array([2**31 + 99]), stride=5)
    assert starts.dtype == np.int64
    assert np.array_equal(
        starts, reference_window_starts(huge.offsets, LOOKBACK, HORIZON, np.array([2**31]), np.array([2**31 + 99]), 5)
    )


def test_int32_starts_gather_with_torch(panel: SeriesPanel) -> None:
    starts = window_starts(panel, LOOKBACK, HORIZON, panel.offsets[:-1], panel.offsets[1:] - 1)
    values = torch.from_numpy(panel.values)
    x32, y32 = gather_windows(values, torch.from_numpy(starts), LOOKBACK, HORIZON)
    x64, y64 = gather_windows(values, torch.from_numpy(starts.astype(np.int64)), LOOKBACK, HORIZON)
    assert torch.equal(x32, x64) and torch.equal(y32, y64)


def random_panel(n_series: int = 30, seed: int = 1) -> SeriesPanel:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 200, n_series)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = np.concatenate([rng.normal(rng.uniform(-1e5, 1e5), rng.uniform(1e-3, 1e3), n) for n in lengths])
    values[offsets[3] : offsets[4]] = 7.25  # a constant series
    return SeriesPanel([f"s{k:02d}" for k in range(n_series)], values, offsets, [], "h")


def test_scalers_do_not_depend_on_the_group_size() -> None:
    panel = random_panel()
    train_end = panel.offsets[:-1] + np.maximum(panel.lengths * 3 // 4, 1)
    whole = Scalers.fit(panel, train_end, group_size=1 << 30)  # one group: the whole panel at once
    assert whole.std[3] == 1.0
    for group_size in (1, 97, 500):
        assert len(series_groups(panel.lengths, group_size)) > 1
        grouped = Scalers.fit(panel, train_end, group_size=group_size)
        assert np.array_equal(grouped.mean, whole.mean) and np.array_equal(grouped.std, whole.std)


def test_float32_transform_equals_the_float64_one_cast() -> None:
    panel = random_panel()
    scalers = Scalers.fit(panel, panel.offsets[1:])
    scaled64 = scalers.transform(panel).values
    assert scaled64.dtype == np.float64
    assert np.array_equal(
        scaled64, (panel.values - np.repeat(scalers.mean, panel.lengths)) / np.repeat(scalers.std, panel.lengths)
    )
    for group_size in (1, 100, 1 << 20):
        scaled32 = scalers.transform_float32(panel, group_size=group_size)
        assert scaled32.dtype == np.float32
        assert np.array_equal(scaled32, scaled64.astype(np.float32))  # the same rounding, bit for bit
        assert (np.abs(scaled32 - scaled64) <= np.spacing(np.abs(scaled32))).all()  # within 1 ulp


def test_series_groups_cover_the_series_in_order() -> None:
    sizes = np.array([5, 0, 3, 12, 1, 1, 1, 0, 7])
    for group_size in (1, 4, 10, 100):
        groups = series_groups(sizes, group_size)
        assert groups[0][0] == 0 and groups[-1][1] == len(sizes)
        assert all(b0 == a1 and a0 < b0 for (a0, b0), (a1, _) in itertools.pairwise(groups))
        assert all(sizes[a:b].sum() <= group_size + sizes[a:b].max() for a, b in groups)
    assert series_groups(np.zeros(0, dtype=np.int64)) == []


def test_timestamps_at_without_a_flat_index() -> None:
    config = WindowConfig(lookback=LOOKBACK, horizon=HORIZON, test_size=3, val_size=3)
    data = prepare_windows(arange_frame({"a": 40, "b": 25}), config)
    assert data.panel.flat_timestamps is not None
    per_series = dataclasses.replace(data, panel=dataclasses.replace(data.panel, flat_timestamps=None))
    index = np.array([0, 39, 40, 64])
    assert data.timestamps_at(index).equals(per_series.timestamps_at(index))
    assert data.timestamps_at(index).unit == per_series.timestamps_at(index).unit == "ns"


@pytest.mark.parametrize(
    ("freq", "named"), [("MS", "MS"), ("ME", "ME"), ("QS", "QS-JAN"), ("YS", "YS-JAN"), ("h", "h"), ("B", "B")]
)
def test_calendar_frequencies_are_named_by_the_calendar(freq: str, named: str) -> None:
    assert infer_freq(pd.date_range("2019-01-31", periods=30, freq=freq, tz="UTC")) == named


def test_a_gap_in_monthly_data_falls_back_to_the_most_common_step() -> None:
    gapped = pd.date_range("2019-01-01", periods=30, freq="MS", tz="UTC").delete(5)
    assert infer_freq(gapped) == "744h"  # validation reports the gap; windows are never cut across it
