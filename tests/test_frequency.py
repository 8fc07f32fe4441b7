"""Frequency-driven defaults: the window, the seasonal-naive seasons and the evaluation stride a run uses."""

from __future__ import annotations

import math

import pytest

from models.frequency import (
    EVAL_ORIGINS,
    MAX_DEFAULT_LOOKBACK,
    MAX_EVAL_ORIGINS,
    default_eval_stride,
    default_window,
    season_length,
    seasons,
    weekly_season_length,
)


@pytest.mark.parametrize(
    ("freq", "window"),
    [
        ("30min", (336, 48)),  # a week in, a day out
        ("h", (168, 24)),
        ("15min", (672, 96)),
        ("5min", (2016, 288)),
        ("1min", (1440, 60)),  # a week would be 10,080 steps: a day in, an hour out
        ("2h", (84, 12)),
        ("D", (56, 14)),
        ("24h", (56, 14)),
        ("2D", (28, 7)),
        ("B", (60, 5)),
        ("B-NYSE", (60, 5)),
        ("W", (104, 13)),
        ("W-SUN", (104, 13)),
        ("7D", (104, 13)),  # how `infer_freq` names weekly data
        ("2W", (52, 7)),
        ("MS", (36, 12)),
        ("ME", (36, 12)),
        ("QS-JAN", (16, 8)),
        ("QE-DEC", (16, 8)),
        ("YS-JAN", (10, 3)),
        ("YE", (10, 3)),
    ],
)
def test_default_window_per_frequency(freq: str, window: tuple[int, int]) -> None:
    assert default_window(freq) == window


def test_default_window_of_fine_data_stays_within_the_limit() -> None:
    for freq in ("1s", "10s", "30s", "1min", "5min"):
        lookback, horizon = default_window(freq)
        assert 1 <= horizon < lookback <= MAX_DEFAULT_LOOKBACK, freq


def test_default_window_of_an_unknown_alias_asks_for_the_options() -> None:
    with pytest.raises(ValueError, match=r"pass `lookback` and `horizon` \(--lookback N --horizon N\)"):
        default_window("5X")


@pytest.mark.parametrize(
    ("freq", "lookback", "expected"),
    [
        ("30min", 336, [48, 336]),  # a day and a week
        ("30min", 100, [48]),  # the week does not fit in the window
        ("30min", 24, []),
        ("h", 168, [24, 168]),
        ("15min", 672, [96, 672]),
        ("D", 56, [7]),
        ("D", 400, [7, 365]),  # a year once the window covers one
        ("B", 60, [5]),
        ("W", 104, [52]),
        ("W", 26, []),
        ("MS", 36, [12]),
        ("QS-JAN", 16, [4]),
        ("YS-JAN", 10, []),  # a yearly season of 1 step is naive itself
    ],
)
def test_seasons_the_frequency_implies_that_fit_in_the_lookback(freq: str, lookback: int, expected: list[int]) -> None:
    assert seasons(freq, lookback) == expected


def test_default_window_covers_the_main_season() -> None:
    for freq in ("30min", "h", "15min", "D", "B", "W", "MS", "QS-JAN"):
        lookback, _ = default_window(freq)
        assert season_length(freq) in seasons(freq, lookback), freq


def _origins(test_length: int, horizon: int, stride: int) -> int:
    return (test_length - horizon) // stride + 1


def test_eval_stride_of_the_issue_visits_every_clock_time() -> None:
    """Half-hourly data, horizon 1, 800 test points: not 48 (17 origins, all at the same time of day)."""
    stride = default_eval_stride("30min", 800, 1)
    assert stride == 11
    assert math.gcd(stride, 48) == 1
    origins = _origins(800, 1, stride)
    assert 50 <= origins <= MAX_EVAL_ORIGINS
    clock_times = {(k * stride) % 48 for k in range(origins)}
    assert clock_times == set(range(48))


def test_short_test_parts_are_scored_at_every_origin() -> None:
    assert default_eval_stride("30min", 100, 1) == 1
    assert default_eval_stride("30min", 96, 48) == 1
    assert default_eval_stride("MS", 24, 12) == 1
    assert default_eval_stride("h", 10, 24) == 1  # fewer points than a horizon: the windowing stage says so


@pytest.mark.parametrize("freq", ["30min", "h", "15min", "D", "B", "W", "MS", "QS-JAN", "YS-JAN"])
def test_eval_stride_is_coprime_with_the_cycle_and_aims_at_75_origins(freq: str) -> None:
    cycle = weekly_season_length(freq) or season_length(freq)
    _, horizon = default_window(freq)
    for test_length in (150, 400, 807, 1752, 5000, 40_000):
        stride = default_eval_stride(freq, test_length, horizon)
        origins = _origins(test_length, horizon, stride)
        assert math.gcd(stride, cycle) == 1, (freq, test_length, stride)
        assert origins <= MAX_EVAL_ORIGINS or abs(origins - EVAL_ORIGINS) <= 40, (freq, test_length, origins)
