"""The scoring core's two pure steps before the model: check the bars, cut the trailing window.

Both the BentoML service (`/score_bars`, bars sent by a client) and live scoring (bars read
from the bar store) call them, so the same bars give the same feature rows, and so the same
probabilities, by construction.

* `check_bars` — the contract a timeframe's bars must meet before any feature is computed:
  equal-length fields, at least one and at most `max_bars` bars, strictly increasing open
  times on the timeframe's grid (UTC epoch seconds; H4 and longer are not checked, their opens
  shift with broker server time), finite positive prices with high ≥ low, finite tick volume
  and spread (points).
* `trailing_window` — for base bars `first..last` (inclusive indices), the shortest trailing
  slice of every timeframe whose features for those bars equal their full-history values
  (`features.matrix.history_bars`), the rows of those bars inside it, and how many bars each
  timeframe is short of that history.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from features.bars import BAR_COLUMNS, Bars
from features.matrix import feature_columns, history_bars, last_row_features
from features.spec import FeatureSpec

GRID_CHECKED_UP_TO = 3600  # seconds: H1 and shorter open on a UTC grid whatever the server time


class BarCheckError(ValueError):
    """Bars that break the contract; the message names the timeframe and the rule."""


def check_bars(
    timeframe: str, seconds: int, fields: Mapping[str, np.ndarray], max_bars: int | None = None
) -> None:
    """Raise `BarCheckError` unless `fields` (``time``, ``open``, ``high``, ``low``, ``close``,
    ``tick_volume``, ``spread``; time = bar open, UTC epoch seconds) are valid closed bars of
    `timeframe` (`seconds` long). Cost: a few vectorised passes, no Python loop over bars."""
    missing = [f for f in BAR_COLUMNS if f not in fields]
    if missing:
        raise BarCheckError(f"{timeframe}: fields missing {missing}")
    lengths = {f: len(fields[f]) for f in BAR_COLUMNS}
    if len(set(lengths.values())) != 1:
        raise BarCheckError(f"{timeframe}: fields have different lengths {lengths}")
    n = lengths["time"]
    if n == 0:
        raise BarCheckError(f"{timeframe}: no bars")
    if max_bars is not None and n > max_bars:
        raise BarCheckError(f"{timeframe}: {n} bars is over the limit of {max_bars}")
    time = np.asarray(fields["time"])
    if np.any(np.diff(time) <= 0):
        raise BarCheckError(f"{timeframe}: times must be strictly increasing (oldest first)")
    prices = np.stack([np.asarray(fields[f], dtype=np.float64) for f in ("open", "high", "low", "close")])
    if not np.isfinite(prices).all() or (prices <= 0).any():
        raise BarCheckError(f"{timeframe}: prices must be finite and positive")
    if (prices[1] < prices[2]).any():
        raise BarCheckError(f"{timeframe}: a bar has high below low")
    if not (
        np.isfinite(np.asarray(fields["tick_volume"], dtype=np.float64)).all()
        and np.isfinite(np.asarray(fields["spread"], dtype=np.float64)).all()
    ):
        raise BarCheckError(f"{timeframe}: tick_volume and spread must be finite")
    if seconds <= GRID_CHECKED_UP_TO and np.any(time % seconds != 0):
        raise BarCheckError(f"{timeframe}: times must be bar open times on the {timeframe} grid (UTC)")


def bar_fields(bars: Bars) -> dict[str, np.ndarray]:
    """A `Bars`' fields by name, for `check_bars`."""
    return {f: getattr(bars, f) for f in BAR_COLUMNS}


@dataclass(frozen=True)
class TrailingWindow:
    """Trailing bars per timeframe and the base rows to score inside them.

    ``short[tf] = (have, need)`` for every timeframe with less history than the features of
    the first scored bar need (their leading features are then NaN, as at the start of
    history in training)."""

    bars: dict[str, Bars]
    rows: np.ndarray
    short: dict[str, tuple[int, int]] = field(default_factory=dict)

    def features(
        self, spec: FeatureSpec, cache: dict[tuple[str, int], list[float]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(feature rows float32, their bar open times) of the scored bars.

        Each row is `features.matrix.last_row_features` of the bars up to it: every family on
        its own trailing slice, a higher timeframe's part once per closed bar of it (`cache`,
        kept by the caller across calls: live scoring keeps one per series and spec). The
        service (``/score_bars``) and live scoring both come here, so the same bars give the
        same rows bit for bit, whichever path scores them. A row equals the full-history row
        to floating tolerance (`features.matrix.history_bars`)."""
        base_tf = spec.base_timeframe
        base = self.bars[base_tf]
        X = np.empty((len(self.rows), len(feature_columns(spec))), dtype=np.float32)
        for i, row in enumerate(self.rows.tolist()):
            X[i] = last_row_features({**self.bars, base_tf: base.slice(0, row + 1)}, spec, cache)
        return X, base.time[self.rows]


def trailing_window(
    bars: Mapping[str, Bars], spec: FeatureSpec, first: int, last: int | None = None
) -> TrailingWindow:
    """The window for base bars `first`..`last` (inclusive; `last` defaults to `first`) of
    `bars` (every timeframe of `spec`, oldest first, as much history as the caller has).
    Higher-timeframe bars still forming at a scored bar's close are left out."""
    base_tf = spec.base_timeframe
    base = bars[base_tf]
    last = first if last is None else last
    if not 0 <= first <= last < len(base):
        raise IndexError(f"rows {first}..{last} are outside the {len(base)} {base_tf} bars")
    close_first = int(base.time[first]) + base.seconds
    close_last = int(base.time[last]) + base.seconds
    closed = {tf: int(np.searchsorted(bars[tf].time, close_first - bars[tf].seconds, side="right"))
              for tf in spec.higher_timeframes}
    upto = {base_tf: base.slice(0, first + 1), **{tf: bars[tf].slice(0, closed[tf]) for tf in closed}}
    need = history_bars(upto, spec)
    short = {tf: (len(upto[tf]), k) for tf, k in need.items() if len(upto[tf]) < k}
    lo = max(0, first + 1 - need[base_tf])
    out = {base_tf: base.slice(lo, last + 1)}
    for tf in spec.higher_timeframes:
        b = bars[tf]
        stop = int(np.searchsorted(b.time, close_last - b.seconds, side="right"))
        out[tf] = b.slice(max(0, closed[tf] - need[tf]), stop)
    return TrailingWindow(out, np.arange(first, last + 1) - lo, short)
