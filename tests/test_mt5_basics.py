"""MT5 constants, server time, and tick → bar aggregation against hand-computed bars."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from pipelines.mt5 import constants as C
from pipelines.mt5.bars import aggregate_rates, bar_open_times, ticks_to_m1
from pipelines.mt5.server_time import ServerClock


def ts(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp())


def test_constants_have_mt5_values():
    assert (C.TIMEFRAME_M1, C.TIMEFRAME_M30) == (1, 30)
    assert (C.TIMEFRAME_H1, C.TIMEFRAME_H4, C.TIMEFRAME_D1) == (0x4001, 0x4004, 0x4018)
    assert (C.TIMEFRAME_W1, C.TIMEFRAME_MN1) == (0x8001, 0xC001)
    assert (C.COPY_TICKS_ALL, C.COPY_TICKS_INFO, C.COPY_TICKS_TRADE) == (-1, 1, 2)
    assert C.RATES_DTYPE.names == (
        "time",
        "open",
        "high",
        "low",
        "close",
        "tick_volume",
        "spread",
        "real_volume",
    )
    assert C.RATES_DTYPE["tick_volume"] == np.dtype("<u8") and C.RATES_DTYPE["spread"] == np.dtype("<i4")
    assert C.TICKS_DTYPE.names == ("time", "bid", "ask", "last", "volume", "time_msc", "flags", "volume_real")
    assert C.timeframe_seconds("H4") == 14400 and C.timeframe_name(0x4018) == "D1"
    with pytest.raises(ValueError, match="unknown timeframe"):
        C.timeframe_value("H5")


@pytest.mark.parametrize(
    ("rule", "before", "after"),
    [
        # US DST 2024 starts Sunday 10 March 07:00 UTC (02:00 New York)
        ("us", ts(2024, 3, 8, 12), ts(2024, 3, 11, 12)),
        # EU DST 2024 starts Sunday 31 March 01:00 UTC
        ("eu", ts(2024, 3, 29, 12), ts(2024, 4, 1, 12)),
    ],
)
def test_server_time_across_dst_change(rule, before, after):
    clock = ServerClock(offset_hours=2, dst=rule)
    assert clock.to_server(before) - before == 2 * 3600
    assert clock.to_server(after) - after == 3 * 3600
    # terminal times of a broker at UTC+2/+3 come back to the right UTC instants
    assert clock.to_utc(before + 2 * 3600) == before
    assert clock.to_utc(after + 3 * 3600) == after
    # every minute of the year round-trips (the repeated autumn hour maps to its first occurrence)
    utc = np.arange(ts(2024, 1, 1), ts(2025, 1, 1), 60, dtype=np.int64)
    server = clock.to_server(utc)
    assert np.array_equal(clock.to_utc(server), utc) or _only_ambiguous_hour(clock, utc, server)


def _only_ambiguous_hour(clock: ServerClock, utc: np.ndarray, server: np.ndarray) -> bool:
    wrong = clock.to_utc(server) != utc
    offsets = np.diff(clock.offset_seconds(utc))
    end_of_dst = utc[1:][offsets < 0]
    return bool(np.all((utc[wrong] >= end_of_dst[0]) & (utc[wrong] < end_of_dst[0] + 3600)))


def test_us_dst_end_in_november():
    clock = ServerClock(2, "us")
    # 2024-11-03 06:00 UTC is 02:00 EDT → DST ends
    assert clock.offset_seconds(ts(2024, 11, 3, 5, 59)) == 3 * 3600
    assert clock.offset_seconds(ts(2024, 11, 3, 6, 0)) == 2 * 3600


def test_bad_clock_settings_are_rejected():
    with pytest.raises(ValueError, match="DST rule"):
        ServerClock(2, "asia")
    with pytest.raises(ValueError, match="outside"):
        ServerClock(20)


def _ticks(rows: list[tuple[int, float, float]]) -> np.ndarray:
    out = np.zeros(len(rows), dtype=C.TICKS_DTYPE)
    for i, (msc, bid, ask) in enumerate(rows):
        out[i] = (msc // 1000, bid, ask, 0.0, 0, msc, 6, 0.0)
    return out


def test_ticks_aggregate_to_hand_computed_bars():
    t0 = ts(2024, 3, 1, 10, 0) * 1000
    ticks = _ticks(
        [
            (t0 + 100, 1.10000, 1.10010),  # minute 10:00
            (t0 + 20_000, 1.10030, 1.10036),
            (t0 + 40_000, 1.09990, 1.10002),
            (t0 + 59_999, 1.10010, 1.10018),
            (t0 + 60_000, 1.10012, 1.10020),  # minute 10:01
            (t0 + 61_000, 1.10005, 1.10020),
            (t0 + 5 * 60_000 + 1, 1.10100, 1.10107),  # minute 10:05 (10:02-10:04 had no ticks)
        ]
    )
    m1 = ticks_to_m1(ticks, point=1e-5)
    expected = np.array(
        [
            (ts(2024, 3, 1, 10, 0), 1.10000, 1.10030, 1.09990, 1.10010, 4, 6, 0),
            (ts(2024, 3, 1, 10, 1), 1.10012, 1.10012, 1.10005, 1.10005, 2, 8, 0),
            (ts(2024, 3, 1, 10, 5), 1.10100, 1.10100, 1.10100, 1.10100, 1, 7, 0),
        ],
        dtype=C.RATES_DTYPE,
    )
    assert np.array_equal(m1, expected)
    m5 = aggregate_rates(m1, C.TIMEFRAME_M5)
    assert np.array_equal(
        m5,
        np.array(
            [
                (ts(2024, 3, 1, 10, 0), 1.10000, 1.10030, 1.09990, 1.10005, 6, 6, 0),
                (ts(2024, 3, 1, 10, 5), 1.10100, 1.10100, 1.10100, 1.10100, 1, 7, 0),
            ],
            dtype=C.RATES_DTYPE,
        ),
    )


def test_bar_grid_for_week_and_month():
    wednesday = ts(2024, 3, 6, 13, 7)
    assert bar_open_times(np.array([wednesday]), "W1")[0] == ts(2024, 3, 3)  # Sunday
    assert bar_open_times(np.array([wednesday]), "MN1")[0] == ts(2024, 3, 1)
    assert bar_open_times(np.array([wednesday]), "H4")[0] == ts(2024, 3, 6, 12)
