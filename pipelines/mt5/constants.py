"""MetaTrader 5 constants, dtypes and error codes, with the values of the `MetaTrader5` module.

Everything downstream of an MT5 client relies on these exact values: a backend must return
structured arrays with `RATES_DTYPE` / `TICKS_DTYPE` and report failures with these codes.
"""

from __future__ import annotations

import numpy as np

# --- timeframes (MetaTrader5.TIMEFRAME_*) -------------------------------------------------
TIMEFRAME_M1 = 1
TIMEFRAME_M2 = 2
TIMEFRAME_M3 = 3
TIMEFRAME_M4 = 4
TIMEFRAME_M5 = 5
TIMEFRAME_M6 = 6
TIMEFRAME_M10 = 10
TIMEFRAME_M12 = 12
TIMEFRAME_M15 = 15
TIMEFRAME_M20 = 20
TIMEFRAME_M30 = 30
TIMEFRAME_H1 = 0x4000 | 1
TIMEFRAME_H2 = 0x4000 | 2
TIMEFRAME_H3 = 0x4000 | 3
TIMEFRAME_H4 = 0x4000 | 4
TIMEFRAME_H6 = 0x4000 | 6
TIMEFRAME_H8 = 0x4000 | 8
TIMEFRAME_H12 = 0x4000 | 12
TIMEFRAME_D1 = 0x4000 | 24
TIMEFRAME_W1 = 0x8000 | 1
TIMEFRAME_MN1 = 0xC000 | 1

TIMEFRAMES: dict[str, int] = {
    name.removeprefix("TIMEFRAME_"): value
    for name, value in globals().items()
    if name.startswith("TIMEFRAME_")
}
TIMEFRAME_NAMES: dict[int, str] = {v: k for k, v in TIMEFRAMES.items()}

# --- copy_ticks flags ----------------------------------------------------------------------
COPY_TICKS_ALL = -1
COPY_TICKS_INFO = 1
COPY_TICKS_TRADE = 2

TICK_FLAG_BID = 2
TICK_FLAG_ASK = 4
TICK_FLAG_LAST = 8
TICK_FLAG_VOLUME = 16
TICK_FLAG_BUY = 32
TICK_FLAG_SELL = 64

# --- last_error() codes ----------------------------------------------------------------------
RES_S_OK = 1
RES_E_FAIL = -1
RES_E_INVALID_PARAMS = -2
RES_E_NO_MEMORY = -3
RES_E_NOT_FOUND = -4
RES_E_INVALID_VERSION = -5
RES_E_AUTH_FAILED = -6
RES_E_UNSUPPORTED = -7
RES_E_AUTO_TRADING_DISABLED = -8
RES_E_INTERNAL_FAIL = -10000
RES_E_INTERNAL_FAIL_SEND = -10001
RES_E_INTERNAL_FAIL_RECEIVE = -10002
RES_E_INTERNAL_FAIL_INIT = -10003
RES_E_INTERNAL_FAIL_CONNECT = -10004
RES_E_INTERNAL_FAIL_TIMEOUT = -10005

# --- structured array dtypes returned by copy_rates_* / copy_ticks_* --------------------------
RATES_DTYPE = np.dtype(
    [
        ("time", "<i8"),
        ("open", "<f8"),
        ("high", "<f8"),
        ("low", "<f8"),
        ("close", "<f8"),
        ("tick_volume", "<u8"),
        ("spread", "<i4"),
        ("real_volume", "<u8"),
    ]
)
TICKS_DTYPE = np.dtype(
    [
        ("time", "<i8"),
        ("bid", "<f8"),
        ("ask", "<f8"),
        ("last", "<f8"),
        ("volume", "<u8"),
        ("time_msc", "<i8"),
        ("flags", "<u4"),
        ("volume_real", "<f8"),
    ]
)


def timeframe_value(tf: str | int) -> int:
    """MT5 timeframe constant for a name like ``"M5"`` / ``"TIMEFRAME_H1"`` or a constant."""
    if isinstance(tf, int | np.integer):
        if int(tf) not in TIMEFRAME_NAMES:
            raise ValueError(f"unknown MT5 timeframe constant {tf!r}")
        return int(tf)
    key = str(tf).upper().removeprefix("TIMEFRAME_")
    if key not in TIMEFRAMES:
        raise ValueError(f"unknown timeframe {tf!r}; expected one of {', '.join(TIMEFRAMES)}")
    return TIMEFRAMES[key]


def timeframe_name(tf: str | int) -> str:
    """Canonical short name (``"M1"``, ``"H4"``, ``"D1"``…) of a timeframe name or constant."""
    return TIMEFRAME_NAMES[timeframe_value(tf)]


def timeframe_seconds(tf: str | int) -> int:
    """Nominal bar length in seconds. W1 = 7 days; MN1 has no fixed length and raises."""
    value = timeframe_value(tf)
    kind, n = value & 0xC000, value & 0x3FFF
    if kind == 0:
        return 60 * n
    if kind == 0x4000:
        return 3600 * n
    if value == TIMEFRAME_W1:
        return 7 * 86400
    raise ValueError("MN1 bars have no fixed length in seconds")
