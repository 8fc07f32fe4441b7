"""Frequency and calendar logic in one place: naming a series' frequency, and the seasons it implies.

Every stage (validation, windowing, evaluation, forecasting) asks this module, so they agree on what "monthly"
or "half-hourly" means and how many steps make a day, a week or a year.
"""

from __future__ import annotations

import functools
import math
import re
import warnings

import numpy as np
import pandas as pd
from pandas.tseries.offsets import BaseOffset


def infer_freq(ts: pd.DatetimeIndex) -> str:
    """The series frequency as a pandas alias: the most common step, "B" for business days, "B-<MARKET>" (e.g.
    "B-NYSE") for business days missing on an exchange's holidays (see `detect_market`), or a calendar alias
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
        market = detect_market(ts)  # weekdays missing exactly on an exchange's holidays: its trading days
        return "B" if market is None else market_freq(market)
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


def seasons(freq: str, lookback: int | None = None) -> list[int]:
    """The seasonal-naive seasons the frequency implies, shortest first: the natural cycle (`season_length`),
    a week for sub-daily data, a year for daily data; only those that fit in `lookback` when it is given (a
    baseline reads only the window's inputs)."""
    found = [season_length(freq)]
    weekly = weekly_season_length(freq)
    if weekly is not None:
        found.append(weekly)
    n, base = _parse_freq(freq)
    if (base == "D" and n == 1) or (base in _UNIT_NS and n * _UNIT_NS[base] == _DAY_NS):
        found.append(365)
    return sorted({m for m in found if m > 1 and (lookback is None or m <= lookback)})


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


# ---------------------------------------------------------------------------------------------------------------
# Default windows and evaluation origins: what a run uses when the run spec leaves lookback, horizon or the
# evaluation stride empty.

# (lookback, horizon) for one step of a calendar frequency, keyed by its periods per year (`_CALENDAR_SEASONS`)
_CALENDAR_WINDOWS = {
    5: (60, 5),  # business days: twelve trading weeks in, one week out
    52: (104, 13),  # weekly: two years in, a quarter out
    24: (72, 24),  # semi-monthly: three years in, one year out
    12: (36, 12),  # monthly: three years in, one year out
    4: (16, 8),  # quarterly: four years in, two years out (the M4 competition's quarterly horizon)
    1: (10, 3),  # yearly: ten years in, three out
}
# daily: eight weeks in (eight weekly cycles, enough for the per-step head to see each weekday often), two weeks out
DAILY_WINDOW = (56, 14)
# A recurrent network reads its window step by step; sub-daily data whose week is longer than this falls back to
# a day in and an hour out (1-minute data: 1440/60), then an hour in and a minute out.
MAX_DEFAULT_LOOKBACK = 2016  # one week of 5-minute data
_MINUTE_NS = 60 * 10**9
_HOUR_NS = 3_600 * 10**9
_WEEK_NS = 7 * _DAY_NS


def _ceil_div(a: float, b: float) -> int:
    return max(math.ceil(a / b), 1)


def default_window(freq: str) -> tuple[int, int]:
    """The (lookback, horizon) a run uses on data of `freq` when the run spec leaves them empty.

    Sub-daily data reads one week and forecasts one day ("30min" -> 336/48, "h" -> 168/24, "15min" -> 672/96;
    finer data, whose week exceeds MAX_DEFAULT_LOOKBACK steps, reads a day and forecasts an hour). Daily data
    ("D") 56/14, business days ("B", "B-NYSE") 60/5, weekly ("W", "7D") 104/13, semi-monthly 72/24, monthly
    36/12, quarterly 16/8, yearly 10/3; a multiple of a frequency divides them, rounding up ("2W" -> 52/7).
    An alias this cannot read is a ValueError that asks for `lookback` and `horizon`.
    """
    n, base = _parse_freq(freq)
    days: float = n
    if base in _UNIT_NS:
        step_ns = n * _UNIT_NS[base]
        if step_ns < _DAY_NS:
            for long_ns, short_ns in ((_WEEK_NS, _DAY_NS), (_DAY_NS, _HOUR_NS), (_HOUR_NS, _MINUTE_NS)):
                lookback = _ceil_div(long_ns, step_ns)
                if lookback <= MAX_DEFAULT_LOOKBACK:
                    return lookback, _ceil_div(short_ns, step_ns)
            return MAX_DEFAULT_LOOKBACK, MAX_DEFAULT_LOOKBACK // 7
        days, base = step_ns / _DAY_NS, "D"  # e.g. "48h" is "2D"
    if base == "D":
        if 28 <= days <= 31:  # as `season_length` reads steps of whole days
            return _CALENDAR_WINDOWS[12]
        if 89 <= days <= 92:
            return _CALENDAR_WINDOWS[4]
        if 365 <= days <= 366:
            return _CALENDAR_WINDOWS[1]
        if days % 7 == 0:
            return _scaled_window(_CALENDAR_WINDOWS[52], days / 7)
        return _scaled_window(DAILY_WINDOW, days)
    if base in _CALENDAR_SEASONS:
        return _scaled_window(_CALENDAR_WINDOWS[_CALENDAR_SEASONS[base]], n)
    raise ValueError(f"`freq` {freq!r} has no default window; pass `lookback` and `horizon` (--lookback N --horizon N)")


def _scaled_window(window: tuple[int, int], multiple: float) -> tuple[int, int]:
    lookback, horizon = window
    return _ceil_div(lookback, multiple), _ceil_div(horizon, multiple)


EVAL_ORIGINS = 75  # test origins per series a default evaluation stride aims at
MAX_EVAL_ORIGINS = 100  # a test part with at most this many origins is scored at every one of them


def default_eval_stride(freq: str, test_length: int, horizon: int) -> int:
    """Steps between test (evaluation) origins when the run spec leaves the stride empty.

    A test part of `test_length` observations holds `test_length - horizon + 1` origins. Up to MAX_EVAL_ORIGINS
    (100) of them are all scored (stride 1). Beyond that the stride is the one whose origin count is nearest
    EVAL_ORIGINS (75) among the strides just below and above `origins / 75` that are coprime with the data's
    longest cycle (a week of steps for sub-daily data, else `season_length`). Coprime, so successive origins step
    through every clock time and weekday instead of landing at the same time each day, as a stride of one season
    does. Half-hourly data, horizon 1, 800 test points: 800 origins, ideal stride 10.7, 7 gives 115 origins and
    11 gives 73, so 11 (10, 9 and 8 share a factor with 336).
    """
    origins = max(test_length - horizon + 1, 1)
    if origins <= MAX_EVAL_ORIGINS:
        return 1
    try:
        cycle = weekly_season_length(freq) or season_length(freq)
    except ValueError:
        cycle = 1

    def coprime(stride: int) -> bool:
        return math.gcd(stride, cycle) == 1

    ideal = origins / EVAL_ORIGINS
    lower = max(math.floor(ideal), 1)
    while not coprime(lower):  # 1 is coprime with everything
        lower -= 1
    upper = max(math.ceil(ideal), 1)
    while not coprime(upper):
        upper += 1
    return min((lower, upper), key=lambda stride: (abs((origins - 1) // stride + 1 - EVAL_ORIGINS), stride))


# ---------------------------------------------------------------------------------------------------------------
# Trading calendars. "B-<MARKET>" (e.g. "B-NYSE", "B-XNYS", "B-XLON") is the business days of an exchange: its
# trading weekdays minus its holidays, from the `holidays` package's financial calendars. It is a plain string, so
# it round-trips through config.json and the database; `to_offset` turns it (and any pandas alias) into an offset.

MARKET_FREQ_PREFIX = "B-"
# the years whose holidays a "B-<MARKET>" offset knows; outside them a market's days are plain business days
CALENDAR_YEARS = range(1900, 2101)
# tried first when naming a series' market, so a calendar shared by several markets gets this name
PREFERRED_MARKETS: tuple[str, ...] = ("NYSE",)
_MARKET_FREQ = re.compile(r"\s*(\d*)\s*B-([A-Za-z0-9]+)\s*")
_WEEKDAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MON_TO_FRI = "Mon Tue Wed Thu Fri"


def to_offset(freq: str | BaseOffset) -> BaseOffset:
    """The pandas offset of a seqcast frequency: pandas' own for its aliases ("h", "B", "MS" ...), and a
    `CustomBusinessDay` over the market's trading days for "B-<MARKET>" ("2B-NYSE" is every second one).

    The one place frequencies become offsets, so target times, date ranges and gap checks agree. ValueError for
    an alias pandas cannot read or a market the `holidays` package has no calendar for.
    """
    if not isinstance(freq, str):
        return pd.tseries.frequencies.to_offset(freq)
    return _to_offset(freq)


@functools.lru_cache(maxsize=256)
def _to_offset(freq: str) -> BaseOffset:
    match = _MARKET_FREQ.fullmatch(freq)
    if match is None:
        return pd.tseries.frequencies.to_offset(freq)
    n = int(match.group(1)) if match.group(1) else 1
    if n < 1:
        raise ValueError(f"`freq` {freq!r} has a step of 0; use e.g. 'B-{match.group(2).upper()}'")
    market = _known_market(match.group(2), freq)
    weekmask, holidays = _market_calendar(market)
    return pd.offsets.CustomBusinessDay(n=n, weekmask=weekmask, holidays=list(holidays))


@functools.lru_cache(maxsize=1)
def supported_markets() -> tuple[str, ...]:
    """Market names a "B-<MARKET>" frequency or `--calendar` accepts: the `holidays` package's financial
    calendars, MIC codes ("XNYS") and their usual names ("NYSE") alike."""
    import holidays

    return tuple(sorted(str(m).upper() for m in holidays.list_supported_financial()))


def market_freq(market: str) -> str:
    """The frequency string of a market's trading days, "NYSE" -> "B-NYSE"; ValueError naming the known markets."""
    return f"{MARKET_FREQ_PREFIX}{_known_market(market, None)}"


def market_of(freq: str) -> str | None:
    """The market of a "B-<MARKET>" frequency ("B-NYSE" -> "NYSE"), None for any other frequency."""
    match = _MARKET_FREQ.fullmatch(freq)
    return match.group(2).upper() if match else None


@functools.lru_cache(maxsize=64)
def business_calendar(freq: str) -> np.busdaycalendar | None:
    """A numpy business-day calendar for "B" (Monday to Friday) and "B-<MARKET>" (its trading days), so gaps can
    be counted with `np.busday_count` without building date ranges; None for every other frequency."""
    if freq.strip() == "B":
        return np.busdaycalendar(weekmask=_MON_TO_FRI)
    match = _MARKET_FREQ.fullmatch(freq)
    if match is None or match.group(1) not in ("", "1"):
        return None
    weekmask, holidays = _market_calendar(_known_market(match.group(2), freq))
    return np.busdaycalendar(weekmask=weekmask, holidays=holidays)


def detect_market(ts: pd.DatetimeIndex) -> str | None:
    """The market whose holidays explain the missing weekdays of a weekday series, or None.

    A market fits when the series has no row on any of its holidays in the series' span, and those holidays are
    most of the missing weekdays (a few real missing trading days stay gaps); of those that fit, the one that
    explains the most wins, PREFERRED_MARKETS first on a tie. Holidays are computed only for the span's years.
    """
    days = _utc_days(ts)
    if days.size < 2:
        return None
    span = np.arange(days[0], days[-1] + np.timedelta64(1, "D"))
    weekdays = span[np.is_busday(span, weekmask=_MON_TO_FRI)]
    missing = np.setdiff1d(weekdays, days, assume_unique=True)
    if missing.size == 0:
        return None
    first_year, last_year = int(str(days[0])[:4]), int(str(days[-1])[:4])
    best, best_count, seen = None, 0, set()
    for market in _detection_markets():
        if _market_weekmask(market) != _MON_TO_FRI:
            continue
        found = _holidays_between(market, first_year, last_year)
        found = found[(found >= days[0]) & (found <= days[-1])]
        key = found.tobytes()
        if found.size == 0 or key in seen:
            continue
        seen.add(key)
        if 2 * found.size <= missing.size or found.size <= best_count:
            continue
        at = np.minimum(np.searchsorted(days, found), days.size - 1)  # days is sorted and unique
        if (days[at] == found).any():
            continue
        best, best_count = market, int(found.size)
        if best_count == missing.size:
            break
    return best


def _utc_days(ts: pd.DatetimeIndex) -> np.ndarray:
    """Sorted unique calendar days (UTC) of `ts` as datetime64[D]."""
    index = pd.DatetimeIndex(ts)
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    return np.unique(index.to_numpy().astype("datetime64[D]"))


def _known_market(name: str, freq: str | None) -> str:
    market = name.strip().upper()
    known = supported_markets()
    if market not in known:
        where = f"`freq` {freq!r} names market {market!r}" if freq is not None else f"market {name!r}"
        raise ValueError(
            f"{where}, which has no trading calendar; use one of {', '.join(known)} (the holidays package's "
            "financial calendars)"
        )
    return market


@functools.lru_cache(maxsize=1)
def _detection_markets() -> tuple[str, ...]:
    """Preferred markets, then MIC codes ("X..."), then the other names; duplicates are skipped by content."""
    known = supported_markets()
    rest = sorted(known, key=lambda m: (not m.startswith("X"), m))
    return tuple(dict.fromkeys([*PREFERRED_MARKETS, *rest]))


@functools.cache
def _market_weekmask(market: str) -> str:
    """The market's trading weekdays as a numpy weekmask, from its calendar's weekend (Mon..Fri for most)."""
    import holidays

    weekend = set(getattr(holidays.financial_holidays(market, years=[]), "weekend", {5, 6}))
    return " ".join(name for day, name in enumerate(_WEEKDAY_NAMES) if day not in weekend)


@functools.lru_cache(maxsize=32768)
def _year_holidays(market: str, year: int) -> np.ndarray:
    """A market's holidays in one year that fall on its trading weekdays, sorted datetime64[D]."""
    import holidays

    dates = np.array(sorted(holidays.financial_holidays(market, years=[year])), dtype="datetime64[D]")
    return dates[np.is_busday(dates, weekmask=_market_weekmask(market))] if dates.size else dates


def _holidays_between(market: str, first_year: int, last_year: int) -> np.ndarray:
    parts = [_year_holidays(market, year) for year in range(first_year, last_year + 1)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype="datetime64[D]")


@functools.lru_cache(maxsize=64)
def _market_calendar(market: str) -> tuple[str, np.ndarray]:
    """Weekmask and holidays (over CALENDAR_YEARS) of a market, computed once per process."""
    return _market_weekmask(market), _holidays_between(market, CALENDAR_YEARS[0], CALENDAR_YEARS[-1])
