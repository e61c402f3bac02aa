"""Holes in a bar series: bars missing while the market was open (issue 16).

A series skips bars for two reasons. The market was closed (a weekend, a metal's daily break,
a holiday): the bars on either side *are* consecutive trading bars, and features and labels
treat them so, as every market participant does. Or bars are missing while the market traded
(a feed outage, a bar quarantined for breaking an invariant, an export with a hole): then the
bars on either side are **not** consecutive, and a return, a rolling window or a label across
that hole would silently describe a different interval than it claims.

`MarketHours` says when the market is closed (UTC, a union over the instruments of a model and
over daylight-saving shifts, so it errs on the side of *not* calling a missing bar a hole);
`holes` marks, per bar, whether a hole lies just before it. Feature windows and labels that
span a hole are left NaN (`features.matrix`, `features.labels`): the models impute missing
feature values and training drops rows without a label.

A bar slot counts as open when its *open* instant is inside trading hours, so a slot that only
partly overlaps the session (an H4 bar from 20:00 on a Sunday) is not expected to exist.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MINUTES_PER_WEEK = 7 * 1440
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)


@dataclass(frozen=True)
class MarketHours:
    """When the market is closed, in UTC.

    ``weekly_close``/``weekly_open``: minute of the week (Monday 00:00 UTC = 0) at which the
    weekly closure starts and ends (default Friday 21:00 → Sunday 22:00: FX brokers close at
    21:00 or 22:00 and open at 21:00 or 22:00 depending on US daylight saving, so the union).
    ``daily_breaks``: (start, end) minutes of the UTC day closed every day (default 21:00-23:00:
    metals' daily pause, an hour later in northern winter). ``holidays``: ``"MM-DD"`` UTC days
    closed all day. ``enabled`` False treats every missing bar as a closure (the behaviour
    before holes were handled: bars either side are consecutive)."""

    weekly_close: int = 4 * 1440 + 21 * 60
    weekly_open: int = 6 * 1440 + 22 * 60
    daily_breaks: tuple[tuple[int, int], ...] = ((21 * 60, 23 * 60),)
    holidays: tuple[str, ...] = ("12-25", "01-01")
    enabled: bool = True


def is_open(times: np.ndarray, hours: MarketHours) -> np.ndarray:
    """Whether the market is open at each instant (UTC epoch seconds)."""
    t = np.asarray(times, dtype=np.int64)
    minutes = t // 60
    of_day = minutes % 1440
    of_week = ((minutes // 1440 + _EPOCH_WEEKDAY) % 7) * 1440 + of_day
    lo, hi = hours.weekly_close, hours.weekly_open
    closed = (of_week >= lo) & (of_week < hi) if lo < hi else (of_week >= lo) | (of_week < hi)
    for start, end in hours.daily_breaks:
        closed |= (of_day >= start) & (of_day < end)
    if hours.holidays and t.size:
        days = (t // 86400).astype("datetime64[D]")
        months = days.astype("datetime64[M]")
        code = (months - days.astype("datetime64[Y]")).astype(np.int64) * 100 + (days - months).astype(
            np.int64
        )
        wanted = [(int(h[:2]) - 1) * 100 + int(h[3:]) - 1 for h in hours.holidays]  # "MM-DD" → same code
        closed |= np.isin(code, wanted)
    return ~closed


def holes(time: np.ndarray, seconds: int, hours: MarketHours) -> np.ndarray:
    """``out[i]``: bars are missing between bar ``i-1`` and bar ``i`` while the market was open
    (a slot on the bar grid between them opens inside trading hours). ``out[0]`` is False.

    `time`: bar open times, UTC epoch seconds, increasing, on a grid of `seconds`."""
    t = np.asarray(time, dtype=np.int64)
    out = np.zeros(t.size, dtype=bool)
    if not hours.enabled or t.size < 2:
        return out
    for i in np.flatnonzero(np.diff(t) > seconds):
        slots = np.arange(t[i] + seconds, t[i + 1], seconds)
        out[i + 1] = bool(is_open(slots, hours).any())
    return out


def spans_hole_back(hole: np.ndarray, back: int) -> np.ndarray:
    """Per row i: a hole lies in ``(i - back, i]`` — a window of `back` one-bar steps ending
    at bar i (a `back`-bar rolling statistic of returns, a lag-`back` return) crosses it."""
    if back <= 0 or not hole.any():
        return np.zeros(hole.size, dtype=bool)
    c = np.concatenate([[0], np.cumsum(hole)])  # c[k]: holes at rows < k
    i = np.arange(hole.size)
    return (c[i + 1] - c[np.maximum(i - back + 1, 0)]) > 0


def spans_hole_ahead(hole: np.ndarray, ahead: int) -> np.ndarray:
    """Per row i: a hole lies in ``(i, i + ahead]`` — a label decided by bars i+1 … i+ahead
    crosses it (rows whose horizon runs past the end: False; their label is NaN anyway)."""
    out = np.zeros(hole.size, dtype=bool)
    if ahead <= 0 or not hole.any():
        return out
    c = np.concatenate([[0], np.cumsum(hole)])
    m = max(hole.size - ahead, 0)
    i = np.arange(m)
    out[:m] = (c[i + ahead + 1] - c[i + 1]) > 0
    return out


def hole_at_end(time: np.ndarray, seconds: int, hours: MarketHours, back: int) -> bool:
    """Whether a hole lies among the last `back` one-bar steps of `time` (the newest row of
    `spans_hole_back`, computed from the trailing ``back + 1`` bars only: live scoring)."""
    if back <= 0:
        return False
    return bool(holes(np.asarray(time)[-(back + 1) :], seconds, hours).any())
