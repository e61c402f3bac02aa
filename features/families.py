"""Feature families: each maps `Bars` to named columns, causally (row i uses bars ≤ i).

A family declares how many leading rows may be NaN (`warmup`) and how many trailing bars are
enough to reproduce its last row exactly (`history`, for live scoring). The registry
`FAMILIES` is what the leakage test iterates over, so a family added here is covered by it.
Prices enter as log ratios or ATR/close multiples, so features are scale-free across symbols.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from features.bars import Bars
from features.rolling import (
    ema,
    ema_memory,
    lag,
    rolling_max,
    rolling_mean,
    rolling_min,
    rolling_std,
)
from features.spec import Windows

Columns = dict[str, np.ndarray]
_LN2 = np.log(2.0)
_SUNDAY = 3 * 86400


@dataclass(frozen=True)
class Family:
    """A named feature family and its warm-up and live-history needs (in bars)."""

    name: str
    compute: Callable[[Bars, Windows], Columns]
    warmup: Callable[[Bars, Windows], int]
    history: Callable[[Bars, Windows], int]
    bounds: Callable[[Windows], dict[str, tuple[float, float]]] = lambda w: {}


def _true_range(b: Bars) -> np.ndarray:
    prev = lag(b.close, 1)
    tr = np.fmax(b.high, prev) - np.fmin(b.low, prev)
    return tr


def _wilder_atr(b: Bars, n: int) -> np.ndarray:
    """ATR in price units: Wilder's smoothing of the true range; NaN for the first n−1 bars."""
    atr = ema(_true_range(b), 1.0 / n)
    atr[: n - 1] = np.nan
    return atr


def _safe_div(num: np.ndarray, den: np.ndarray, fill: float) -> np.ndarray:
    out = np.full(num.shape, np.nan)
    ok = ~(np.isnan(num) | np.isnan(den))
    nz = ok & (den != 0)
    out[nz] = num[nz] / den[nz]
    out[ok & (den == 0)] = fill
    return out


def returns(b: Bars, w: Windows) -> Columns:
    lc = b.log_close
    return {f"ret_{k}": lc - lag(lc, k) for k in w.return_lags}


def volatility(b: Bars, w: Windows) -> Columns:
    r = b.log_return
    hl2 = np.log(b.high / b.low) ** 2
    co2 = np.log(b.close / b.open) ** 2
    out: Columns = {}
    for n in w.volatility:
        out[f"vol_cc_{n}"] = rolling_std(r, n)
        out[f"vol_pk_{n}"] = np.sqrt(rolling_mean(hl2, n) / (4 * _LN2))
        out[f"vol_gk_{n}"] = np.sqrt(np.maximum(rolling_mean(0.5 * hl2 - (2 * _LN2 - 1) * co2, n), 0.0))
    return out


def atr(b: Bars, w: Windows) -> Columns:
    return {f"atr_{w.atr}": _wilder_atr(b, w.atr) / b.close}


def range_position(b: Bars, w: Windows) -> Columns:
    out: Columns = {}
    for n in w.range:
        lo, hi = rolling_min(b.low, n), rolling_max(b.high, n)
        out[f"range_pos_{n}"] = _safe_div(b.close - lo, hi - lo, 0.5)
    return out


def rsi(b: Bars, w: Windows) -> Columns:
    d = b.close - lag(b.close, 1)
    gain = ema(np.where(np.isnan(d), np.nan, np.maximum(d, 0.0)), 1.0 / w.rsi)
    loss = ema(np.where(np.isnan(d), np.nan, np.maximum(-d, 0.0)), 1.0 / w.rsi)
    out = _safe_div(100.0 * gain, gain + loss, 50.0)
    out[: w.rsi] = np.nan
    return {f"rsi_{w.rsi}": out}


def macd(b: Bars, w: Windows) -> Columns:
    fast, slow, signal = w.macd
    line = (ema(b.close, 2.0 / (fast + 1)) - ema(b.close, 2.0 / (slow + 1))) / b.close
    line[: slow - 1] = np.nan
    sig = ema(line, 2.0 / (signal + 1))
    sig[: slow + signal - 2] = np.nan
    return {"macd": line, "macd_signal": sig, "macd_hist": line - sig}


def bollinger(b: Bars, w: Windows) -> Columns:
    n = w.bollinger
    mean, sd = rolling_mean(b.close, n), rolling_std(b.close, n)
    return {f"boll_z_{n}": _safe_div(b.close - mean, sd, 0.0)}


def moving_average(b: Bars, w: Windows) -> Columns:
    out: Columns = {}
    lc = b.log_close
    for n in w.moving_average:
        log_ma = np.log(rolling_mean(b.close, n))
        out[f"ma_dist_{n}"] = lc - log_ma
        out[f"ma_slope_{n}"] = log_ma - lag(log_ma, _slope_lag(n))
    return out


def _slope_lag(n: int) -> int:
    return max(1, n // 4)


def tick_volume(b: Bars, w: Windows) -> Columns:
    n = w.tick_volume
    lv = np.log1p(b.tick_volume)
    return {f"tickvol_z_{n}": _safe_div(lv - rolling_mean(lv, n), rolling_std(lv, n), 0.0)}


def spread(b: Bars, w: Windows) -> Columns:
    return {"spread_atr": _safe_div(b.spread * b.point, _wilder_atr(b, w.atr), 0.0)}


def calendar(b: Bars, w: Windows) -> Columns:
    day = (b.time % 86400) / 86400.0 * 2 * np.pi
    week = ((b.time - _SUNDAY) % (7 * 86400)) / (7 * 86400.0) * 2 * np.pi
    return {"tod_sin": np.sin(day), "tod_cos": np.cos(day), "dow_sin": np.sin(week), "dow_cos": np.cos(week)}


SESSIONS = {  # UTC hours [start, end) of the bar's open
    "asia": ((22, 24), (0, 9)),
    "london": ((7, 16),),
    "newyork": ((12, 21),),
    "asia_london": ((7, 9),),
    "london_newyork": ((12, 16),),
}


def session(b: Bars, w: Windows) -> Columns:
    hour = (b.time % 86400) // 3600
    out: Columns = {}
    for name, spans in SESSIONS.items():
        flag = np.zeros(b.time.size)
        for lo, hi in spans:
            flag[(hour >= lo) & (hour < hi)] = 1.0
        out[f"sess_{name}"] = flag
    return out


def return_sequence(b: Bars, w: Windows) -> Columns:
    """The last `sequence` one-bar log returns, ``seq_k`` = r[t−k] / σ_64[t] (σ: the rolling
    standard deviation of one-bar returns over 64 bars at t), newest first: the input of
    sequence models."""
    r = b.log_return
    scale = rolling_std(r, 64)
    scale = np.where(scale > 0, scale, np.nan)
    return {f"seq_{k}": lag(r, k) / scale for k in range(w.sequence)}


def _day_starts(b: Bars) -> tuple[np.ndarray, np.ndarray]:
    day = b.time // 86400
    starts = np.flatnonzero(np.r_[True, day[1:] != day[:-1]]) if day.size else np.zeros(0, int)
    return day, starts


def previous_day(b: Bars, w: Windows) -> Columns:
    """Log distance of the close to the previous UTC trading day's high and low."""
    n = b.time.size
    _, starts = _day_starts(b)
    out = {"pdh_dist": np.full(n, np.nan), "pdl_dist": np.full(n, np.nan)}
    if starts.size < 2:
        return out
    day_high = np.maximum.reduceat(b.high, starts)
    day_low = np.minimum.reduceat(b.low, starts)
    group = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, n]))
    later = group >= 1
    prev = group[later] - 1
    lc = b.log_close[later]
    out["pdh_dist"][later] = lc - np.log(day_high[prev])
    out["pdl_dist"][later] = lc - np.log(day_low[prev])
    return out


def _previous_day_warmup(b: Bars, w: Windows) -> int:
    _, starts = _day_starts(b)
    return int(starts[1]) if starts.size > 1 else len(b)


def _previous_day_history(b: Bars, w: Windows) -> int:
    """Rows from the start of the previous UTC trading day (binary searches: O(log n))."""
    if len(b) == 0:
        return 0
    last_day_start = int(np.searchsorted(b.time, b.time[-1] // 86400 * 86400))
    if last_day_start == 0:
        return len(b)
    prev_day = b.time[last_day_start - 1] // 86400
    return len(b) - int(np.searchsorted(b.time, prev_day * 86400))


def _const(f: Callable[[Windows], int]) -> Callable[[Bars, Windows], int]:
    return lambda b, w: f(w)


def _ema_history(
    alpha_of: Callable[[Windows], float], extra: Callable[[Windows], int]
) -> Callable[[Bars, Windows], int]:
    return lambda b, w: ema_memory(alpha_of(w)) + extra(w) + 1


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "returns", returns, _const(lambda w: max(w.return_lags)), _const(lambda w: max(w.return_lags) + 1)
        ),
        Family(
            "volatility",
            volatility,
            _const(lambda w: max(w.volatility)),
            _const(lambda w: max(w.volatility) + 1),
        ),
        Family("atr", atr, _const(lambda w: w.atr), _ema_history(lambda w: 1.0 / w.atr, lambda w: w.atr)),
        Family(
            "range_position",
            range_position,
            _const(lambda w: max(w.range)),
            _const(lambda w: max(w.range)),
            lambda w: {f"range_pos_{n}": (0.0, 1.0) for n in w.range},
        ),
        Family(
            "rsi",
            rsi,
            _const(lambda w: w.rsi),
            _ema_history(lambda w: 1.0 / w.rsi, lambda w: w.rsi),
            lambda w: {f"rsi_{w.rsi}": (0.0, 100.0)},
        ),
        Family(
            "macd",
            macd,
            _const(lambda w: w.macd[1] + w.macd[2]),
            lambda b, w: ema_memory(2.0 / (w.macd[1] + 1)) + ema_memory(2.0 / (w.macd[2] + 1)) + 1,
        ),
        Family("bollinger", bollinger, _const(lambda w: w.bollinger), _const(lambda w: w.bollinger)),
        Family(
            "moving_average",
            moving_average,
            _const(lambda w: max(n + _slope_lag(n) for n in w.moving_average)),
            _const(lambda w: max(n + _slope_lag(n) for n in w.moving_average)),
        ),
        Family("tick_volume", tick_volume, _const(lambda w: w.tick_volume), _const(lambda w: w.tick_volume)),
        Family(
            "spread", spread, _const(lambda w: w.atr), _ema_history(lambda w: 1.0 / w.atr, lambda w: w.atr)
        ),
        Family(
            "calendar",
            calendar,
            _const(lambda w: 0),
            _const(lambda w: 1),
            lambda w: {c: (-1.0, 1.0) for c in ("tod_sin", "tod_cos", "dow_sin", "dow_cos")},
        ),
        Family(
            "session",
            session,
            _const(lambda w: 0),
            _const(lambda w: 1),
            lambda w: {f"sess_{s}": (0.0, 1.0) for s in SESSIONS},
        ),
        Family("previous_day", previous_day, _previous_day_warmup, _previous_day_history),
        Family(
            "return_sequence",
            return_sequence,
            _const(lambda w: max(65, w.sequence)),
            _const(lambda w: max(65, w.sequence + 1)),
        ),
    )
}
