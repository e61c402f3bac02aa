"""Broker server time ↔ UTC.

MT5 stamps bars and ticks in the broker's *server time* written as if it were UTC (seconds
since 1970 in the server's wall clock). Many brokers run at UTC+2 in winter and UTC+3 in
summer, switching with the US (New York close alignment) or EU daylight-saving rules.

`ServerClock` converts both ways, vectorised over int64 epoch seconds:

* ``to_utc(server_seconds)``  — terminal time → UTC, applied on the way *in*.
* ``to_server(utc_seconds)``  — UTC → terminal time, for the `date_from`/`date_to` of requests.

DST rules (the hour is *added* to ``offset_hours`` while DST is active):

* ``none`` — fixed offset.
* ``us``   — second Sunday of March 07:00 UTC to first Sunday of November 06:00 UTC
  (02:00 New York local time at both ends).
* ``eu``   — last Sunday of March 01:00 UTC to last Sunday of October 01:00 UTC.

In the repeated hour after DST ends, server times map to their *first* occurrence. Both US
and EU switches happen on a Sunday while FX markets are closed, so real bars never fall there.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

import numpy as np

DST_RULES = ("none", "us", "eu")


def _nth_sunday(year: int, month: int, n: int) -> int:
    """Day of month of the n-th Sunday (n=-1: last Sunday)."""
    days = [
        d
        for d in range(1, calendar.monthrange(year, month)[1] + 1)
        if calendar.weekday(year, month, d) == calendar.SUNDAY
    ]
    return days[n - 1] if n > 0 else days[n]


@lru_cache(maxsize=512)
def _dst_interval(rule: str, year: int) -> tuple[int, int]:
    """UTC epoch seconds [start, end) of DST in `year` under `rule`."""
    if rule == "us":
        start = datetime(year, 3, _nth_sunday(year, 3, 2), 7, tzinfo=UTC)
        end = datetime(year, 11, _nth_sunday(year, 11, 1), 6, tzinfo=UTC)
    elif rule == "eu":
        start = datetime(year, 3, _nth_sunday(year, 3, -1), 1, tzinfo=UTC)
        end = datetime(year, 10, _nth_sunday(year, 10, -1), 1, tzinfo=UTC)
    else:
        raise ValueError(f"unknown DST rule {rule!r}; expected one of {DST_RULES}")
    return int(start.timestamp()), int(end.timestamp())


@dataclass(frozen=True)
class ServerClock:
    """A broker's server-time convention: a base offset from UTC plus an optional DST rule."""

    offset_hours: float = 0.0
    dst: str = "none"

    def __post_init__(self) -> None:
        if self.dst not in DST_RULES:
            raise ValueError(f"unknown DST rule {self.dst!r}; expected one of {DST_RULES}")
        if not -12 <= self.offset_hours <= 14:
            raise ValueError(f"server offset {self.offset_hours}h is outside UTC-12..UTC+14")

    @property
    def is_utc(self) -> bool:
        return self.offset_hours == 0 and self.dst == "none"

    def _dst_active(self, utc: np.ndarray) -> np.ndarray:
        if self.dst == "none" or utc.size == 0:
            return np.zeros(utc.shape, dtype=bool)
        years = np.arange(
            datetime.fromtimestamp(int(utc.min()), UTC).year - 1,
            datetime.fromtimestamp(int(utc.max()), UTC).year + 2,
        )
        bounds = np.array([_dst_interval(self.dst, int(y)) for y in years]).ravel()
        # bounds alternate start, end, start, end…: inside DST iff an odd number are <= t
        return (np.searchsorted(bounds, utc, side="right") % 2) == 1

    def offset_seconds(self, utc_seconds: np.ndarray | int) -> np.ndarray:
        """Server-minus-UTC offset in seconds at the given UTC instants."""
        utc = np.asarray(utc_seconds, dtype=np.int64)
        base = np.int64(round(self.offset_hours * 3600))
        return base + 3600 * self._dst_active(utc).astype(np.int64)

    def to_server(self, utc_seconds: np.ndarray | int) -> np.ndarray:
        """UTC epoch seconds → server epoch seconds."""
        utc = np.asarray(utc_seconds, dtype=np.int64)
        return utc + self.offset_seconds(utc)

    def to_utc(self, server_seconds: np.ndarray | int) -> np.ndarray:
        """Server epoch seconds → UTC epoch seconds (first occurrence in a repeated hour)."""
        server = np.asarray(server_seconds, dtype=np.int64)
        base = np.int64(round(self.offset_hours * 3600))
        if self.dst == "none":
            return server - base
        guess = server - base - 3600  # assume DST is active
        return np.where(self._dst_active(guess), guess, server - base)

    def dt_to_server(self, when: datetime) -> datetime:
        """A UTC datetime → the naive-UTC datetime MT5 expects for a request in server time."""
        secs = int(self.to_server(int(as_utc(when).timestamp())))
        return datetime.fromtimestamp(secs, UTC)


def as_utc(when: datetime) -> datetime:
    """Treat naive datetimes as UTC (as the MetaTrader5 module does); normalise aware ones."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def to_epoch_seconds(when: datetime | int | float) -> int:
    """Epoch seconds of a datetime (naive = UTC, as in MT5) or a number of seconds."""
    if isinstance(when, datetime):
        return int(as_utc(when).timestamp())
    return int(when)
