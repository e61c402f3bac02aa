"""Holes in the bars (issue 16): bars missing while the market was open are never treated as
if the bars either side were consecutive — feature windows and labels across them are NaN,
closures (weekends, daily breaks, holidays) are not holes, and live scoring agrees."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest

from features.bars import Bars
from features.gaps import MarketHours, holes, is_open, spans_hole_ahead, spans_hole_back
from features.labels import direction_labels, triple_barrier_labels
from features.matrix import _hole_window, build_features, family_columns, last_row_features
from features.spec import DirectionLabelSpec, FeatureSpec, TripleBarrierSpec
from pipelines.config import MarketHoursParams
from pipelines.mt5 import constants as C
from pipelines.mt5.bars import aggregate_rates
from pipelines.mt5.simulator import MarketSimulator, SimulatorConfig

TIMEFRAMES = ("M5", "M15", "H1", "H4", "D1")
HOURS = MarketHours()


def _ts(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp())


@pytest.fixture(scope="module")
def bars() -> dict[str, Bars]:
    sim = MarketSimulator(SimulatorConfig(end=datetime(2024, 2, 3, tzinfo=UTC), symbols=("EURUSD", "XAUUSD")))
    sim.initialize()
    out = {}
    for symbol in ("EURUSD", "XAUUSD"):
        m1 = sim.copy_rates_range(symbol, C.TIMEFRAME_M1, 0, 2**40)
        out[symbol] = {
            tf: Bars.from_rates(aggregate_rates(m1, tf), C.timeframe_seconds(tf), 1e-5) for tf in TIMEFRAMES
        }
    return out


def _without(b: Bars, drop: np.ndarray) -> Bars:
    keep = ~np.isin(b.time, drop)
    fields = ("time", "open", "high", "low", "close", "tick_volume", "spread")
    return Bars(*(getattr(b, f)[keep] for f in fields), seconds=b.seconds, point=b.point)


def test_closures_are_not_holes_and_missing_trading_bars_are():
    m5 = 300
    tue = _ts(2024, 1, 16, 10, 0)
    assert holes(np.array([tue, tue + m5, tue + 3 * m5]), m5, HOURS).tolist() == [False, False, True]
    fri, sun = _ts(2024, 1, 19, 20, 55), _ts(2024, 1, 21, 22, 0)  # the weekend
    assert not holes(np.array([fri, sun]), m5, HOURS).any()
    assert holes(np.array([fri, _ts(2024, 1, 22, 9, 0)]), m5, HOURS)[1]  # and Monday morning missing too
    brk = _ts(2024, 1, 16, 20, 55)  # a metal's daily pause
    assert not holes(np.array([brk, _ts(2024, 1, 16, 22, 0)]), m5, HOURS).any()
    xmas = _ts(2023, 12, 24, 23, 55)  # Sunday night → Tuesday: Christmas Day closed
    assert not holes(np.array([xmas, _ts(2023, 12, 26, 0, 0)]), m5, HOURS).any()
    assert not holes(np.array([tue, tue + 3 * m5]), m5, replace(HOURS, enabled=False)).any()
    assert is_open(np.array([tue]), HOURS).all()
    assert not is_open(np.array([_ts(2024, 1, 20, 12)]), HOURS).any()


def test_window_and_horizon_spans():
    hole = np.array([0, 0, 1, 0, 0, 0, 1, 0], dtype=bool)
    assert spans_hole_back(hole, 2).astype(int).tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    assert spans_hole_ahead(hole, 2).astype(int).tolist() == [1, 1, 0, 0, 1, 1, 0, 0]
    assert not spans_hole_back(hole, 0).any() and not spans_hole_ahead(hole, 0).any()


def test_simulated_markets_have_no_holes(bars):
    """Weekends, the metals' daily break and Sunday opens are closures, not holes."""
    for symbol, by_tf in bars.items():
        for tf, b in by_tf.items():
            assert not holes(b.time, b.seconds, HOURS).any(), (symbol, tf)


def test_features_across_a_hole_are_nan_never_consecutive(bars):
    full = bars["EURUSD"]
    m5 = full["M5"]
    gone = _ts(2024, 1, 16, 10, 0)  # a Tuesday-morning bar, quarantined or never delivered
    k = int(np.searchsorted(m5.time, gone))
    holed = dict(full, M5=_without(m5, np.array([gone])))
    spec = FeatureSpec()
    a = build_features(full, spec, dtype=np.float64)
    b = build_features(holed, spec, dtype=np.float64)
    # rows before the hole are untouched
    np.testing.assert_array_equal(a.values[:k], b.values[:k])
    col = {c: i for i, c in enumerate(b.columns)}
    # the bar after the hole: its one-bar return would span two bars; it is NaN, not a 10-minute move
    assert np.isnan(b.values[k, col["ret_1"]])
    start = 0
    for name in spec.families:
        n_cols = len(family_columns(name, spec))
        family_cols, start = b.columns[start : start + n_cols], start + n_cols
        window = _hole_window(name, holed["M5"], spec)
        if not window:
            assert not any(c in b.masked for c in family_cols), name
            continue
        for c in family_cols:
            assert b.masked[c].tolist() == list(range(k, k + window)), (name, c)
            assert np.isnan(b.values[k : k + window, col[c]]).all()
            assert np.isfinite(b.values[k + window, col[c]]), (name, c)  # past the window: computed again
    # time-of-bar families are still computed at the hole
    assert np.isfinite(b.values[k, col["tod_sin"]])
    # higher timeframes have no hole of their own: unchanged at the rows both have
    h1 = [c for c in b.columns if c.startswith("H1_")]
    same = np.isin(m5.time, holed["M5"].time)
    np.testing.assert_array_equal(a.values[same][:, [col[c] for c in h1]], b.values[:, [col[c] for c in h1]])


def test_a_hole_in_a_higher_timeframe_masks_its_columns(bars):
    full = bars["EURUSD"]
    gone = _ts(2024, 1, 17, 14, 0)
    holed = dict(full, H1=_without(full["H1"], np.array([gone])))
    m = build_features(holed, FeatureSpec())
    col = {c: i for i, c in enumerate(m.columns)}
    base = full["M5"]
    after = int(np.searchsorted(base.close_time, gone + 2 * 3600))  # first M5 row joined to the H1 bar after
    assert np.isnan(m.values[after, col["H1_ret_1"]]) and "H1_ret_1" in m.masked
    assert np.isfinite(m.values[after - 1, col["H1_ret_1"]])


def test_live_last_row_agrees_across_a_hole(bars):
    """Live scoring computes the newest row from trailing bars only: around a hole it gives the
    same NaNs and values as the full matrix (so a live probability never reads a hole as
    consecutive bars either)."""
    full = bars["EURUSD"]
    gone = _ts(2024, 1, 16, 10, 0)
    holed = dict(full, M5=_without(full["M5"], np.array([gone])))
    spec = FeatureSpec()
    matrix = build_features(holed, spec, dtype=np.float64)
    k = int(np.searchsorted(holed["M5"].time, gone))
    for i in (k - 1, k, k + 1, k + 13, k + 40, k + 260):
        sub = dict(holed, M5=holed["M5"].slice(0, i + 1))
        last = last_row_features(sub, spec)
        np.testing.assert_allclose(last, matrix.values[i], rtol=1e-9, atol=1e-12, equal_nan=True)


def test_labels_across_a_hole_are_nan(bars):
    full = bars["EURUSD"]
    gone = _ts(2024, 1, 16, 10, 0)
    holed = _without(full["M5"], np.array([gone]))
    k = int(np.searchsorted(holed.time, gone))  # the first bar after the hole
    h = 12
    d = direction_labels(holed, DirectionLabelSpec(horizon=h), HOURS)
    tb = triple_barrier_labels(holed, TripleBarrierSpec(horizon=h), hours=HOURS)
    for labels in (d, tb):
        spans = np.arange(k - h, k)  # rows whose next h bars include the bar after the hole
        assert np.isnan(labels["label"][spans]).all() and np.isnan(labels["t1"][spans]).all()
        assert not np.isnan(labels["label"][k - h - 1]) and not np.isnan(labels["label"][k])
    # without holes handled the same rows would have been labelled as if consecutive
    off = direction_labels(holed, DirectionLabelSpec(horizon=h), replace(HOURS, enabled=False))
    assert not np.isnan(off["label"][k - h : k]).any()


def test_featurize_contract_accepts_hole_nans_and_drops_their_labels(bars, tmp_path):
    """The whole featurize step on a series with a hole: the feature contract allows exactly
    the NaNs the hole explains, and the labels across it are dropped."""
    from pipelines.config import FeaturesParams, LabelsParams
    from pipelines.featurize import featurize_symbol
    from pipelines.validate import DataContract

    full = bars["XAUUSD"]
    gone = _ts(2024, 1, 24, 15, 30)
    holed = dict(full, M5=_without(full["M5"], np.array([gone])))
    frame, columns = featurize_symbol(holed, FeaturesParams(), LabelsParams(), DataContract(), "XAUUSD M5")
    k = int(np.searchsorted(holed["M5"].time, gone))
    assert np.isnan(frame["ret_1"].iloc[k]) and frame["dir_label"].iloc[k - 12 : k].isna().all()


def test_market_hours_settings_are_checked():
    hours = MarketHoursParams().hours()
    assert hours == MarketHours()
    assert MarketHoursParams(weekly_close="Sat 00:00", daily_breaks=()).hours().weekly_close == 5 * 1440
    for bad, match in [
        ({"weekly_close": "Funday 21:00"}, "weekday and time"),
        ({"weekly_open": "Sun 25:00"}, "time of day"),
        ({"daily_breaks": ["23:00-21:00"]}, "end after it starts"),
        ({"holidays": ["25-12"]}, "MM-DD"),
    ]:
        with pytest.raises(ValueError, match=match):
            MarketHoursParams(**bad)
