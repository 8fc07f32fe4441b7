"""Frequency and calendar logic in one place: naming a series' frequency, and the seasons it implies.

Every stage (validation, windowing, evaluation, forecasting) asks this module, so they agree on what "monthly"
or "half-hourly" means and how many steps make a day, a week or a year.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pandas as pd


def infer_freq(ts: pd.DatetimeIndex) -> str:
    """The series frequency as a pandas alias: the most common step, "B" for business days, or a calendar alias
    ("MS", "ME", "QS-JAN", "YS-JAN", ...) when the steps vary but follow the calendar.

    Monthly data steps 28 to 31 days; naming it by its most common step ("31D") would put forecasts off the
    month boundaries, so steps that vary are checked against pandas' calendar frequencies first.
    """
    if len(ts) < 2:
        raise ValueError("a series needs at least two timestamps to infer its frequency")
    steps = np.diff(ts.asi8)
    values, counts = np.unique(steps, return_counts=True)
    step = pd.Timedelta(int(values[np.argmax(counts)]), unit=ts.unit)
    if step == pd.Timedelta(days=1) and (ts.day_of_week < 5).all() and (steps > values.min()).any():
        return "B"
    if len(values) > 1 and step >= pd.Timedelta(days=28) and len(ts) >= 3:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            calendar = pd.infer_freq(ts)
        if calendar is not None:
            return str(calendar)
    return pd.tseries.frequencies.to_offset(step).freqstr


# periods per natural cycle for calendar frequencies (n = 1); "D" is handled apart
_CALENDAR_SEASONS = {
    "B": 5,
    "C": 5,
    "W": 52,
    "SMS": 24,
    "SME": 24,
    "SM": 24,
    "MS": 12,
    "ME": 12,
    "M": 12,
    "BMS": 12,
    "BME": 12,
    "BM": 12,
    "CBMS": 12,
    "CBME": 12,
    "QS": 4,
    "QE": 4,
    "Q": 4,
    "BQS": 4,
    "BQE": 4,
    "BQ": 4,
    "YS": 1,
    "YE": 1,
    "Y": 1,
    "A": 1,
    "AS": 1,
    "BYS": 1,
    "BYE": 1,
    "BY": 1,
    "BA": 1,
}
# nanoseconds per sub-daily unit, legacy aliases included
_UNIT_NS = {
    "h": 3_600 * 10**9,
    "H": 3_600 * 10**9,
    "min": 60 * 10**9,
    "T": 60 * 10**9,
    "s": 10**9,
    "S": 10**9,
    "ms": 10**6,
    "L": 10**6,
    "us": 10**3,
    "U": 10**3,
    "ns": 1,
    "N": 1,
}
_DAY_NS = 86_400 * 10**9


def _parse_freq(freq: str) -> tuple[int, str]:
    match = re.fullmatch(r"\s*(\d*)\s*([A-Za-z]+)(?:-[A-Za-z0-9]+)?\s*", freq)
    if match is None:
        raise ValueError(f"`freq` {freq!r} is not a pandas offset alias; pass the season length explicitly")
    n = int(match.group(1)) if match.group(1) else 1
    if n < 1:
        raise ValueError(f"`freq` {freq!r} has a step of 0; pass the season length explicitly")
    return n, match.group(2)


def _subdaily_step_ns(n: int, base: str) -> int | None:
    if base not in _UNIT_NS:
        return None
    step = n * _UNIT_NS[base]
    return step if step < _DAY_NS else None


def season_length(freq: str, override: int | None = None) -> int:
    """Steps in one natural cycle of `freq`, the `m` of seasonal naive and MASE.

    Sub-daily data cycles over a day (48 for "30min", 24 for "h", 96 for "15min"; a step that does not divide a
    day gives the steps until the clock time repeats, e.g. 24 for "7h"). Then 7 for "D", 5 for "B", 52 for "W"
    (and "7D", how `infer_freq` names weekly data), 12 for monthly ("MS", "ME", "M", or "28D".."31D"), 4 for
    quarterly, 1 for yearly; multiples divide the cycle when they can ("2W" -> 26), else 1 (no season).
    `override` (>= 1) wins over all of it; an alias it cannot read is a ValueError asking for the override.
    """
    if override is not None:
        if override < 1:
            raise ValueError(f"`season` override ({override}) must be at least 1")
        return int(override)
    n, base = _parse_freq(freq)
    if base in _UNIT_NS:
        step_ns = n * _UNIT_NS[base]
        if step_ns < _DAY_NS:
            return _DAY_NS // math.gcd(_DAY_NS, step_ns)
        if step_ns % _DAY_NS:
            return 1
        n, base = step_ns // _DAY_NS, "D"  # e.g. "48h" is "2D"
    if base == "D":
        if n == 7:
            return 52
        if 28 <= n <= 31:
            return 12
        if 89 <= n <= 92:
            return 4
        return 7 // n if 7 % n == 0 else 1
    if base in _CALENDAR_SEASONS:
        cycle = _CALENDAR_SEASONS[base]
        return cycle // n if cycle % n == 0 else 1
    raise ValueError(f"`freq` {freq!r} has no known season length; pass the season length explicitly")


def weekly_season_length(freq: str) -> int | None:
    """Steps in a week for sub-daily data (336 for "30min", 168 for "h"), the second seasonal-naive baseline.

    None when the data is daily or coarser (the main season already covers a week or more), or when a week is
    not a whole number of steps longer than the daily season.
    """
    n, base = _parse_freq(freq)
    step_ns = _subdaily_step_ns(n, base)
    if step_ns is None:
        return None
    week_ns = 7 * _DAY_NS
    if week_ns % step_ns:
        return None
    weekly = week_ns // step_ns
    return weekly if weekly > season_length(freq) else None
