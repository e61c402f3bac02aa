"""Ticks → M1 bars → higher-timeframe bars, the way an MT5 terminal builds them.

All times are epoch seconds on the *same clock as the input* (server time for data straight
from a terminal). A bar is stamped with its open time. OHLC come from the bid; ``tick_volume``
counts ticks; ``spread`` is the smallest spread (in points) seen in the bar; ``real_volume``
sums exchange volume (0 for FX).
"""

from __future__ import annotations

import numpy as np

from pipelines.mt5.constants import (
    RATES_DTYPE,
    TIMEFRAME_MN1,
    TIMEFRAME_W1,
    timeframe_seconds,
    timeframe_value,
)

_SUNDAY_EPOCH = 3 * 86400  # 1970-01-04 00:00, the first Sunday: MT5 W1 bars open on Sundays


def bar_open_times(times: np.ndarray, timeframe: str | int) -> np.ndarray:
    """Open time (epoch seconds) of the bar of `timeframe` that contains each instant."""
    t = np.asarray(times, dtype=np.int64)
    tf = timeframe_value(timeframe)
    if tf == TIMEFRAME_MN1:
        months = t.astype("datetime64[s]").astype("datetime64[M]")
        return months.astype("datetime64[s]").astype(np.int64)
    if tf == TIMEFRAME_W1:
        return (t - _SUNDAY_EPOCH) // (7 * 86400) * (7 * 86400) + _SUNDAY_EPOCH
    sec = timeframe_seconds(tf)
    return t // sec * sec


def bar_close_times(open_times: np.ndarray, timeframe: str | int) -> np.ndarray:
    """End (exclusive) of the bars opening at `open_times`: when each bar is complete."""
    t = np.asarray(open_times, dtype=np.int64)
    if timeframe_value(timeframe) == TIMEFRAME_MN1:
        months = t.astype("datetime64[s]").astype("datetime64[M]") + 1
        return months.astype("datetime64[s]").astype(np.int64)
    return t + timeframe_seconds(timeframe)


def _group_starts(keys: np.ndarray) -> np.ndarray:
    if keys.size == 0:
        return np.zeros(0, dtype=np.intp)
    return np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])


def ticks_to_m1(ticks: np.ndarray, point: float) -> np.ndarray:
    """Aggregate ticks (TICKS_DTYPE, sorted by time_msc) into M1 rates (RATES_DTYPE).

    Only ticks that carry a bid price (bid > 0) form bars, as in MT5 for FX and CFDs.
    """
    ticks = ticks[ticks["bid"] > 0]
    minute = ticks["time_msc"] // 60_000
    starts = _group_starts(minute)
    out = np.zeros(starts.size, dtype=RATES_DTYPE)
    if starts.size == 0:
        return out
    bid = ticks["bid"]
    ends = np.r_[starts[1:], ticks.size] - 1
    spread_pts = np.rint((ticks["ask"] - bid) / point).astype(np.int64)
    out["time"] = minute[starts] * 60
    out["open"] = bid[starts]
    out["high"] = np.maximum.reduceat(bid, starts)
    out["low"] = np.minimum.reduceat(bid, starts)
    out["close"] = bid[ends]
    out["tick_volume"] = np.diff(np.r_[starts, ticks.size])
    out["spread"] = np.minimum.reduceat(spread_pts, starts)
    out["real_volume"] = np.add.reduceat(ticks["volume"], starts)
    return out


def aggregate_rates(rates: np.ndarray, timeframe: str | int) -> np.ndarray:
    """Aggregate lower-timeframe rates (sorted by time) into `timeframe` bars."""
    keys = bar_open_times(rates["time"], timeframe)
    starts = _group_starts(keys)
    out = np.zeros(starts.size, dtype=RATES_DTYPE)
    if starts.size == 0:
        return out
    ends = np.r_[starts[1:], rates.size] - 1
    out["time"] = keys[starts]
    out["open"] = rates["open"][starts]
    out["high"] = np.maximum.reduceat(rates["high"], starts)
    out["low"] = np.minimum.reduceat(rates["low"], starts)
    out["close"] = rates["close"][ends]
    out["tick_volume"] = np.add.reduceat(rates["tick_volume"], starts)
    out["spread"] = np.minimum.reduceat(rates["spread"], starts)
    out["real_volume"] = np.add.reduceat(rates["real_volume"], starts)
    return out
