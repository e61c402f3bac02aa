"""Bars as plain float64 arrays: the input every feature and label function takes."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

BAR_COLUMNS = ("time", "open", "high", "low", "close", "tick_volume", "spread")


@dataclass(frozen=True)
class Bars:
    """Closed bars of one symbol and timeframe, oldest first.

    ``time`` is the bar *open* time in UTC epoch seconds; a bar's values are known at its close,
    ``time + seconds``. ``spread`` is in points and ``point`` is the price of one point.
    """

    time: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    tick_volume: np.ndarray
    spread: np.ndarray
    seconds: int
    point: float

    def __len__(self) -> int:
        return int(self.time.size)

    @property
    def close_time(self) -> np.ndarray:
        """UTC epoch seconds at which each bar closed (when its features become known)."""
        return self.time + self.seconds

    @cached_property
    def log_close(self) -> np.ndarray:
        """log(close), computed once per `Bars` and shared by the families that need it."""
        return np.log(self.close)

    @cached_property
    def log_return(self) -> np.ndarray:
        """One-bar log return of the close; NaN for the first bar."""
        out = np.empty(self.close.size)
        out[:1] = np.nan
        np.subtract(self.log_close[1:], self.log_close[:-1], out=out[1:])
        return out

    def slice(self, start: int, stop: int | None = None) -> Bars:
        """Rows [start, stop) as a new `Bars` (views, no copies)."""
        s = slice(start, stop)
        return Bars(
            self.time[s],
            self.open[s],
            self.high[s],
            self.low[s],
            self.close[s],
            self.tick_volume[s],
            self.spread[s],
            self.seconds,
            self.point,
        )

    def append(self, newer: Bars) -> Bars:
        """These bars followed by `newer` (same timeframe; this point size), as a new `Bars`."""
        return Bars(
            *(np.concatenate([getattr(self, c), getattr(newer, c)]) for c in BAR_COLUMNS),
            seconds=self.seconds,
            point=self.point,
        )

    @classmethod
    def from_rates(
        cls, rates: np.ndarray | dict[str, np.ndarray], seconds: int, point: float | None = None
    ) -> Bars:
        """From an MT5 rates array, or a mapping of its columns (time = bar open, UTC epoch
        seconds); `point` is inferred from the closes when omitted."""
        close = rates["close"].astype(np.float64)
        return cls(
            rates["time"].astype(np.int64),
            rates["open"].astype(np.float64),
            rates["high"].astype(np.float64),
            rates["low"].astype(np.float64),
            close,
            rates["tick_volume"].astype(np.float64),
            rates["spread"].astype(np.float64),
            int(seconds),
            float(point if point is not None else infer_point(close)),
        )

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, seconds: int, point: float | None = None) -> Bars:
        """From a stored-bars frame (tz-aware UTC ``time``); `point` inferred when omitted."""
        times = frame["time"]
        if isinstance(times.dtype, pd.DatetimeTZDtype):
            t = times.array.as_unit("s").asi8
        else:
            t = np.asarray(times, dtype=np.int64)
        columns = {c: frame[c].to_numpy() for c in BAR_COLUMNS[1:]}
        return cls.from_rates({"time": np.ascontiguousarray(t, dtype=np.int64), **columns}, seconds, point)


def infer_point(prices: np.ndarray) -> float:
    """The price step of a symbol (1e-5 for EURUSD, 1e-3 for USDJPY, 0.01 for XAUUSD),
    inferred as the coarsest grid all prices sit on."""
    sample = prices[np.isfinite(prices)][:20_000]
    for digits in range(0, 9):
        scaled = sample * 10.0**digits
        if np.all(np.abs(scaled - np.rint(scaled)) < 1e-6):
            return 10.0**-digits
    return 1e-8


def pip_size(point: float) -> float:
    """One pip: ten points on 5- and 3-digit quotes (EURUSD 0.0001, USDJPY 0.01), else a point
    (gold quoted with 2 digits: 0.01)."""
    digits = round(-np.log10(point))
    return point * 10 if digits in (3, 5) else point
