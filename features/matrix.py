"""The multi-timeframe feature matrix, in full (training) or for the newest bar (live scoring).

Base-timeframe families are computed on the base bars. Each higher timeframe's families are
computed on its own bars and joined onto a base bar using only the last higher-timeframe bar
that had *closed* by the base bar's close (``htf.time + htf.seconds <= base.time +
base.seconds``), so an hourly bar still forming never leaks into a five-minute row.

A family's values at a row whose warm-up window spans a hole (bars missing while the market
was open, `features.gaps`) are NaN: never computed as if the bars either side were consecutive.

Columns come in a fixed order, recorded with every output (`feature_columns`), so training and
serving use the same columns in the same order. Higher-timeframe columns are prefixed with the
timeframe (``H1_rsi_14``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd

from features.bars import Bars
from features.families import FAMILIES
from features.gaps import hole_at_end, holes, spans_hole_back
from features.spec import FeatureSpec


@dataclass
class FeatureMatrix:
    """Features of the base bars: ``values[i]`` belongs to the bar opening at ``time[i]``.

    ``warmup[col]`` is how many leading rows of a column may be NaN (not enough history);
    ``bounds[col]`` the closed range a bounded column must stay in; ``masked[col]`` the rows
    left NaN because the column's window spans a hole (`features.gaps`).
    """

    time: np.ndarray
    values: np.ndarray
    columns: list[str]
    warmup: dict[str, int]
    bounds: dict[str, tuple[float, float]]
    masked: dict[str, np.ndarray] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.values, columns=self.columns, copy=False)
        frame.insert(0, "time", pd.to_datetime(self.time.astype("datetime64[s]")).tz_localize("UTC"))
        return frame


# families that describe the bar itself or whole UTC days, not a window of consecutive bars
_NOT_WINDOWED = frozenset({"calendar", "session", "previous_day"})


def _hole_window(name: str, bars: Bars, spec: FeatureSpec) -> int:
    """The one-bar steps a family's value looks back over (0: not a window of bars)."""
    return 0 if name in _NOT_WINDOWED else FAMILIES[name].warmup(bars, spec.windows)


_DUMMY = Bars(*(np.array([1.0, 1.0, 1.0]) for _ in range(7)), seconds=60, point=1e-5)


def family_columns(name: str, spec: FeatureSpec) -> list[str]:
    """The columns one base-timeframe family contributes (in matrix order)."""
    return _family_columns(name, spec)


def _family_columns(name: str, spec: FeatureSpec) -> list[str]:
    dummy = Bars(np.array([0, 60, 120]), *(_DUMMY.close for _ in range(6)), seconds=60, point=1e-5)
    return list(FAMILIES[name].compute(dummy, spec.windows))


def _check(spec: FeatureSpec, bars: dict[str, Bars]) -> None:
    unknown = [f for f in (*spec.families, *spec.htf_families) if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown feature families {unknown}; available: {sorted(FAMILIES)}")
    missing = [tf for tf in (spec.base_timeframe, *spec.higher_timeframes) if tf not in bars]
    if missing:
        raise ValueError(f"bars missing for timeframe(s) {missing} (have {sorted(bars)})")
    base = bars[spec.base_timeframe].seconds
    shorter = [tf for tf in spec.higher_timeframes if bars[tf].seconds <= base]
    if shorter:
        raise ValueError(f"higher timeframes {shorter} are not longer than the base {spec.base_timeframe}")


def feature_columns(spec: FeatureSpec) -> list[str]:
    """The ordered column list `build_features` produces for `spec`."""
    return list(_feature_columns(spec))


@lru_cache(maxsize=64)
def _feature_columns(spec: FeatureSpec) -> tuple[str, ...]:
    cols = [c for f in spec.families for c in _family_columns(f, spec)]
    for tf in spec.higher_timeframes:
        cols += [f"{tf}_{c}" for f in spec.htf_families for c in _family_columns(f, spec)]
    return tuple(cols)


def _htf_index(base: Bars, htf: Bars) -> np.ndarray:
    """For each base bar, the last higher-timeframe bar closed by the base bar's close (−1: none)."""
    # htf.time + htf.seconds <= base close  ⟺  htf.time <= base close − htf.seconds
    return np.searchsorted(htf.time, base.close_time - htf.seconds, side="right") - 1


def build_features(
    bars: dict[str, Bars], spec: FeatureSpec, dtype: type[np.floating] = np.float32
) -> FeatureMatrix:
    """The full feature matrix of the base timeframe (see module docstring).

    Families compute in float64; the matrix is stored as `dtype` (float32 by default: what the
    models consume, and half the memory of float64 for a million-row, 170-column matrix).
    """
    _check(spec, bars)
    base = bars[spec.base_timeframe]
    columns = feature_columns(spec)
    values = np.empty((len(base), len(columns)), dtype=dtype, order="F")  # contiguous columns
    warmup: dict[str, int] = {}
    bounds: dict[str, tuple[float, float]] = {}
    masked: dict[str, np.ndarray] = {}
    col = 0
    base_holes = holes(base.time, base.seconds, spec.market_hours)
    for name in spec.families:
        family = FAMILIES[name]
        rows = family.warmup(base, spec.windows)
        across = spans_hole_back(base_holes, _hole_window(name, base, spec))
        for data in family.compute(base, spec.windows).values():
            values[:, col] = data
            if across.any():
                values[across, col] = np.nan
                masked[columns[col]] = np.flatnonzero(across)
            warmup[columns[col]] = rows
            col += 1
        bounds.update(family.bounds(spec.windows))
    for tf in spec.higher_timeframes:
        htf = bars[tf]
        idx = _htf_index(base, htf)
        missing = idx < 0
        safe = np.maximum(idx, 0)
        htf_holes = holes(htf.time, htf.seconds, spec.market_hours)
        for name in spec.htf_families:
            family = FAMILIES[name]
            rows = int(np.searchsorted(idx, family.warmup(htf, spec.windows), side="left"))
            across = spans_hole_back(htf_holes, _hole_window(name, htf, spec))
            for data in family.compute(htf, spec.windows).values():
                if across.any():
                    data = np.where(across, np.nan, data)
                    masked[columns[col]] = np.flatnonzero(across[safe] & ~missing)
                target = values[:, col]
                if len(htf):
                    np.take(data.astype(dtype), safe, out=target, mode="clip")  # unbuffered; idx valid
                    target[missing] = np.nan
                else:
                    target[:] = np.nan
                warmup[columns[col]] = rows
                col += 1
            bounds.update({f"{tf}_{k}": v for k, v in family.bounds(spec.windows).items()})
    return FeatureMatrix(base.time.copy(), values, columns, warmup, bounds, masked)


def history_bars(bars: dict[str, Bars], spec: FeatureSpec) -> dict[str, int]:
    """Trailing bars per timeframe that reproduce the newest row exactly (for live reads; one
    more than the longest window, so a hole just before it is seen)."""
    base = bars[spec.base_timeframe]
    need = {spec.base_timeframe: max(FAMILIES[f].history(base, spec.windows) for f in spec.families) + 1}
    for tf in spec.higher_timeframes:
        need[tf] = max(FAMILIES[f].history(bars[tf], spec.windows) for f in spec.htf_families) + 1
    return need


def last_row_features(
    bars: dict[str, Bars], spec: FeatureSpec, cache: dict[tuple[str, int], list[float]] | None = None
) -> np.ndarray:
    """Features of the newest base bar from trailing windows only (live scoring).

    Equals the last row of `build_features` on the full history to floating tolerance
    (EMA-based families use enough bars for their memory to fall below 1e-12). A higher
    timeframe's part only changes when one of its bars closes: pass the same `cache` dict on
    every call to reuse it until then (keyed by timeframe and the closed bar's open time).
    """
    _check(spec, bars)
    base = bars[spec.base_timeframe]
    out: list[float] = []
    n = len(base)
    for name in spec.families:
        family = FAMILIES[name]
        window = base.slice(max(0, n - family.history(base, spec.windows)))
        values = [v[-1] for v in family.compute(window, spec.windows).values()]
        if hole_at_end(base.time, base.seconds, spec.market_hours, _hole_window(name, base, spec)):
            values = [np.nan] * len(values)
        out += values
    last_close = int(base.time[-1]) + base.seconds
    for tf in spec.higher_timeframes:
        htf = bars[tf]
        j = int(np.searchsorted(htf.time, last_close - htf.seconds, side="right")) - 1
        key = (tf, int(htf.time[j]) if j >= 0 else -1)
        if cache is not None and key in cache:
            out += cache[key]
            continue
        part: list[float] = []
        for name in spec.htf_families:
            family = FAMILIES[name]
            if j < 0:
                part += [np.nan] * len(_family_columns(name, spec))
                continue
            window = htf.slice(max(0, j + 1 - family.history(htf, spec.windows)), j + 1)
            values = [v[-1] for v in family.compute(window, spec.windows).values()]
            if hole_at_end(htf.time[: j + 1], htf.seconds, spec.market_hours, _hole_window(name, htf, spec)):
                values = [np.nan] * len(values)
            part += values
        if cache is not None:
            cache[key] = part
        out += part
    return np.array(out)
