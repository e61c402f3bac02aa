"""The MT5 client interface: the `MetaTrader5` module's functions, as an object.

Every backend (simulator, export files, the real `MetaTrader5` package, the `mt5linux` bridge)
implements `Mt5Client`. Semantics follow MetaTrader 5:

* times in requests and results are epoch seconds in the broker's *server time*; a naive
  ``datetime`` is read as UTC wall-clock numbers (as the MetaTrader5 module does);
* ``copy_rates_*`` return `RATES_DTYPE` arrays, ``copy_ticks_*`` return `TICKS_DTYPE` arrays,
  oldest first; bars are stamped with their *open* time and the newest bar may still be forming;
* failure returns ``None`` and ``last_error()`` tells why as ``(code, message)``.

`now_utc()` is this project's only addition: the terminal's notion of "now" (wall clock for real
terminals, the simulated clock for the simulator), needed to tell closed bars from forming ones.
"""

from __future__ import annotations

import fnmatch
import time
from abc import ABC, abstractmethod
from datetime import UTC, datetime
from typing import Any, NamedTuple

import numpy as np

from pipelines.mt5.constants import (
    COPY_TICKS_ALL,
    COPY_TICKS_INFO,
    COPY_TICKS_TRADE,
    RATES_DTYPE,
    RES_E_INTERNAL_FAIL_CONNECT,
    RES_E_INVALID_PARAMS,
    RES_E_NOT_FOUND,
    RES_S_OK,
    TICK_FLAG_ASK,
    TICK_FLAG_BID,
    TICK_FLAG_LAST,
    TICK_FLAG_VOLUME,
    TICKS_DTYPE,
    TIMEFRAME_NAMES,
    timeframe_seconds,
    timeframe_value,
)
from pipelines.mt5.server_time import to_epoch_seconds


class SymbolInfo(NamedTuple):
    """The fields of MT5's ``SymbolInfo`` this platform uses (same names as MT5)."""

    name: str
    description: str
    path: str
    currency_base: str
    currency_profit: str
    digits: int
    point: float
    spread: int
    spread_float: bool
    trade_tick_size: float
    trade_contract_size: float
    visible: bool
    time: int
    bid: float
    ask: float


class Tick(NamedTuple):
    """MT5's ``Tick`` as returned by ``symbol_info_tick`` (times in server time)."""

    time: int
    bid: float
    ask: float
    last: float
    volume: int
    time_msc: int
    flags: int
    volume_real: float


class Mt5Client(ABC):
    """The `MetaTrader5` module's API as an object. See the module docstring for semantics."""

    @abstractmethod
    def initialize(self, path: str | None = None, **kwargs: Any) -> bool: ...

    @abstractmethod
    def shutdown(self) -> None: ...

    @abstractmethod
    def last_error(self) -> tuple[int, str]: ...

    @abstractmethod
    def symbols_get(self, group: str | None = None) -> tuple[SymbolInfo, ...] | None: ...

    @abstractmethod
    def symbol_info(self, symbol: str) -> SymbolInfo | None: ...

    @abstractmethod
    def symbol_info_tick(self, symbol: str) -> Tick | None: ...

    @abstractmethod
    def copy_rates_from(
        self, symbol: str, timeframe: int, date_from: datetime | int, count: int
    ) -> np.ndarray | None: ...

    @abstractmethod
    def copy_rates_from_pos(
        self, symbol: str, timeframe: int, start_pos: int, count: int
    ) -> np.ndarray | None: ...

    @abstractmethod
    def copy_rates_range(
        self, symbol: str, timeframe: int, date_from: datetime | int, date_to: datetime | int
    ) -> np.ndarray | None: ...

    @abstractmethod
    def copy_ticks_from(
        self, symbol: str, date_from: datetime | int, count: int, flags: int
    ) -> np.ndarray | None: ...

    @abstractmethod
    def copy_ticks_range(
        self, symbol: str, date_from: datetime | int, date_to: datetime | int, flags: int
    ) -> np.ndarray | None: ...

    def now_utc(self) -> datetime:
        """The terminal's current time in UTC (wall clock unless the backend simulates time)."""
        return datetime.now(UTC)

    def wall_time_of(self, utc_seconds: float) -> float:
        """The wall-clock moment (epoch seconds) at which the terminal's clock reads
        `utc_seconds`: the same instant unless the backend simulates time."""
        return float(utc_seconds)


def match_symbol_group(names: list[str], group: str | None) -> list[str]:
    """MT5 ``group`` filter: comma-separated wildcard patterns, ``!pattern`` excludes."""
    if not group:
        return list(names)
    selected: list[str] = []
    for name in names:
        keep = False
        for pattern in (p.strip() for p in group.split(",") if p.strip()):
            if pattern.startswith("!"):
                if fnmatch.fnmatchcase(name, pattern[1:]):
                    keep = False
            elif fnmatch.fnmatchcase(name, pattern):
                keep = True
        if keep:
            selected.append(name)
    return selected


def filter_ticks(ticks: np.ndarray, flags: int) -> np.ndarray:
    """MT5 ``COPY_TICKS_*`` selection: INFO = bid/ask changes, TRADE = last/volume changes."""
    if flags == COPY_TICKS_ALL:
        return ticks
    mask = np.zeros(ticks.size, dtype=bool)
    if flags & COPY_TICKS_INFO:
        mask |= (ticks["flags"] & (TICK_FLAG_BID | TICK_FLAG_ASK)) != 0
    if flags & COPY_TICKS_TRADE:
        mask |= (ticks["flags"] & (TICK_FLAG_LAST | TICK_FLAG_VOLUME)) != 0
    return ticks[mask]


class LocalTerminal(Mt5Client):
    """Base of backends that hold data locally (simulator, export files).

    Subclasses provide `_symbol_names`, `_symbol_info`, `_rates` and `_ticks` over server-time
    ranges; this class implements MT5's request semantics and error reporting once.
    """

    def __init__(self) -> None:
        self._initialized = False
        self._error: tuple[int, str] = (RES_S_OK, "Success")

    # --- to implement -------------------------------------------------------------------------
    @abstractmethod
    def _symbol_names(self) -> list[str]: ...

    @abstractmethod
    def _symbol_info(self, symbol: str) -> SymbolInfo: ...

    @abstractmethod
    def _rates(self, symbol: str, timeframe: int, start: int, end: int) -> np.ndarray:
        """Bars with server open time in [start, end], oldest first, up to the terminal's now."""

    @abstractmethod
    def _ticks(self, symbol: str, start_msc: int, end_msc: int) -> np.ndarray:
        """Ticks with server time_msc in [start_msc, end_msc], up to the terminal's now."""

    @abstractmethod
    def _first_time(self, symbol: str) -> int:
        """Server epoch seconds of the first data the terminal holds for `symbol`."""

    def _connect(self, path: str | None, **kwargs: Any) -> tuple[int, str] | None:
        """Open the backend; return an error tuple to refuse initialization."""
        return None

    # --- MT5 API ----------------------------------------------------------------------------------
    def _fail(self, code: int, message: str) -> None:
        self._error = (code, message)
        return None

    def _ok(self) -> None:
        self._error = (RES_S_OK, "Success")

    def _check(self, symbol: str | None = None, timeframe: int | None = None) -> bool:
        if not self._initialized:
            self._fail(RES_E_INTERNAL_FAIL_CONNECT, "No IPC connection")
            return False
        if symbol is not None and symbol not in self._symbol_names():
            self._fail(RES_E_NOT_FOUND, f"Terminal: symbol {symbol!r} not found")
            return False
        if timeframe is not None and timeframe not in TIMEFRAME_NAMES:
            self._fail(RES_E_INVALID_PARAMS, f"Invalid timeframe {timeframe!r}")
            return False
        return True

    def initialize(self, path: str | None = None, **kwargs: Any) -> bool:
        error = self._connect(path, **kwargs)
        if error is not None:
            self._initialized = False
            self._fail(*error)
            return False
        self._initialized = True
        self._ok()
        return True

    def shutdown(self) -> None:
        self._initialized = False

    def last_error(self) -> tuple[int, str]:
        return self._error

    def symbols_get(self, group: str | None = None) -> tuple[SymbolInfo, ...] | None:
        if not self._check():
            return None
        self._ok()
        return tuple(self._symbol_info(s) for s in match_symbol_group(self._symbol_names(), group))

    def symbol_info(self, symbol: str) -> SymbolInfo | None:
        if not self._check(symbol):
            return None
        self._ok()
        return self._symbol_info(symbol)

    def symbol_info_tick(self, symbol: str) -> Tick | None:
        if not self._check(symbol):
            return None
        now_ms = self._server_now_msc()
        ticks = self._ticks(symbol, now_ms - 7 * 86_400_000, now_ms)
        if ticks.size == 0:
            return self._fail(RES_E_NOT_FOUND, f"Terminal: no ticks for {symbol}")
        self._ok()
        last = ticks[-1]
        return Tick(*(x.item() for x in last))

    def _server_now_msc(self) -> int:
        return int(self._server_now() * 1000)

    def _server_now(self) -> int:
        """Terminal now in server epoch seconds. Subclasses with a clock override."""
        return int(time.time())

    def copy_rates_range(
        self, symbol: str, timeframe: int, date_from: datetime | int, date_to: datetime | int
    ) -> np.ndarray | None:
        if not self._check(symbol, timeframe):
            return None
        start, end = to_epoch_seconds(date_from), to_epoch_seconds(date_to)
        self._ok()
        if start > end:
            return np.zeros(0, dtype=RATES_DTYPE)
        return self._rates(symbol, timeframe, start, end)

    def copy_rates_from(
        self, symbol: str, timeframe: int, date_from: datetime | int, count: int
    ) -> np.ndarray | None:
        if not self._check(symbol, timeframe):
            return None
        if count <= 0:
            return self._fail(RES_E_INVALID_PARAMS, f"Invalid count {count}")
        self._ok()
        return self._last_bars(symbol, timeframe, to_epoch_seconds(date_from), count, skip=0)

    def copy_rates_from_pos(
        self, symbol: str, timeframe: int, start_pos: int, count: int
    ) -> np.ndarray | None:
        if not self._check(symbol, timeframe):
            return None
        if count <= 0 or start_pos < 0:
            return self._fail(RES_E_INVALID_PARAMS, f"Invalid start_pos {start_pos} / count {count}")
        self._ok()
        return self._last_bars(symbol, timeframe, self._server_now(), count, skip=start_pos)

    def _last_bars(self, symbol: str, timeframe: int, until: int, count: int, skip: int) -> np.ndarray:
        """The `count` bars before the newest `skip` bars with open time <= `until`."""
        value = timeframe_value(timeframe)
        bar = timeframe_seconds(value) if value in TIMEFRAME_NAMES and value < 0xC000 else 31 * 86400
        first = self._first_time(symbol)
        span = (count + skip) * bar * 2 + 4 * 86400
        while True:
            start = max(first, until - span)
            rates = self._rates(symbol, value, start, until)
            if rates.size >= count + skip or start <= first:
                break
            span *= 2
        stop = rates.size - skip
        return rates[max(0, stop - count) : max(0, stop)]

    def copy_ticks_range(
        self, symbol: str, date_from: datetime | int, date_to: datetime | int, flags: int
    ) -> np.ndarray | None:
        if not self._check(symbol):
            return None
        start, end = to_epoch_seconds(date_from), to_epoch_seconds(date_to)
        self._ok()
        if start > end:
            return np.zeros(0, dtype=TICKS_DTYPE)
        return filter_ticks(self._ticks(symbol, start * 1000, end * 1000 + 999), flags)

    def copy_ticks_from(
        self, symbol: str, date_from: datetime | int, count: int, flags: int
    ) -> np.ndarray | None:
        if not self._check(symbol):
            return None
        if count <= 0:
            return self._fail(RES_E_INVALID_PARAMS, f"Invalid count {count}")
        self._ok()
        start = to_epoch_seconds(date_from)
        now = self._server_now()
        span = 3600
        while True:
            end = min(now, start + span)
            ticks = filter_ticks(self._ticks(symbol, start * 1000, end * 1000 + 999), flags)
            if ticks.size >= count or end >= now:
                return ticks[:count]
            span *= 4
