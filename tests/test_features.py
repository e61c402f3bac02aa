"""Features and labels: causal by test (every registered family), incremental = full, labels by hand."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest

from features.bars import Bars, infer_point, pip_size
from features.families import FAMILIES
from features.labels import direction_labels, meta_labels, triple_barrier_labels
from features.matrix import build_features, feature_columns, last_row_features
from features.spec import DirectionLabelSpec, FeatureSpec, TripleBarrierSpec
from pipelines.mt5 import constants as C
from pipelines.mt5.bars import aggregate_rates
from pipelines.mt5.simulator import MarketSimulator, SimulatorConfig

TIMEFRAMES = ("M5", "M15", "H1", "H4", "D1")
TIME_ONLY = {"calendar", "session"}  # functions of the bar's time alone: nothing to perturb


def _bars(rates: np.ndarray, tf: str, point: float = 1e-5) -> Bars:
    return Bars.from_rates(rates, C.timeframe_seconds(tf), point)


@pytest.fixture(scope="module")
def m1() -> np.ndarray:
    sim = MarketSimulator(SimulatorConfig(end=datetime(2024, 2, 3, tzinfo=UTC)))
    sim.initialize()
    return sim.copy_rates_range("EURUSD", C.TIMEFRAME_M1, 0, 2**40)


@pytest.fixture(scope="module")
def bars(m1) -> dict[str, Bars]:
    return {tf: _bars(aggregate_rates(m1, tf), tf) for tf in TIMEFRAMES}


def _perturbed(m1: np.ndarray, cut: int, seed: int) -> dict[str, Bars]:
    """Every M1 bar opening at or after `cut` (epoch s) changed at random, then re-aggregated:
    bars still forming at the cut (including higher-timeframe bars) change too."""
    rng = np.random.default_rng(seed)
    out = m1.copy()
    later = out["time"] >= cut
    k = int(later.sum())
    scale = np.exp(rng.normal(0, 0.01, k))
    for name in ("open", "high", "low", "close"):
        out[name][later] = np.round(out[name][later] * scale, 5)
    out["high"][later] += 0.0003
    out["tick_volume"][later] = rng.integers(1, 500, k)
    out["spread"][later] = rng.integers(0, 80, k)
    return {tf: _bars(aggregate_rates(out, tf), tf) for tf in TIMEFRAMES}


CUTS = [datetime(2024, 1, 17, 13, 35, tzinfo=UTC), datetime(2024, 1, 26, 21, 0, tzinfo=UTC)]


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("where", ["base", "higher"])
def test_every_family_is_causal(m1, bars, family, where):
    """Perturb everything after a cut; every feature row at or before the cut is bit-identical."""
    if where == "higher" and family not in FeatureSpec().htf_families:
        spec = FeatureSpec(families=(family,), higher_timeframes=("H1", "D1"), htf_families=(family,))
    elif where == "higher":
        spec = FeatureSpec(families=(), higher_timeframes=("M15", "H1", "H4", "D1"), htf_families=(family,))
    else:
        spec = FeatureSpec(families=(family,), higher_timeframes=(), htf_families=())
    full = build_features(bars, spec)
    for i, cut in enumerate(CUTS):
        cut_s = int(cut.timestamp())
        changed = build_features(_perturbed(m1, cut_s, seed=i), spec)
        base = bars["M5"]
        known = base.close_time <= cut_s  # rows whose bar had closed by the cut
        assert known.sum() > 1000 and (~known).sum() > 100
        assert np.array_equal(full.values[known], changed.values[known], equal_nan=True), family
        if family not in TIME_ONLY:  # the perturbation does reach the family after the cut
            assert not np.array_equal(full.values[~known], changed.values[~known], equal_nan=True)


def _label_functions():
    side = np.where(np.arange(10_000) % 3 == 0, -1.0, 1.0)
    return {
        "direction_atr": lambda b: direction_labels(b, DirectionLabelSpec(horizon=6, dead_zone=0.5)),
        "direction_pips": lambda b: direction_labels(
            b, DirectionLabelSpec(horizon=12, dead_zone=1.5, unit="pips", neutral="class")
        ),
        "triple_barrier": lambda b: triple_barrier_labels(b, TripleBarrierSpec(horizon=24)),
        "triple_barrier_sign": lambda b: triple_barrier_labels(
            b, TripleBarrierSpec(horizon=8, take_profit_atr=1.0, stop_loss_atr=0.5, vertical="sign")
        ),
        "meta": lambda b: meta_labels(b, TripleBarrierSpec(horizon=12), side[: len(b)]),
    }


@pytest.mark.parametrize("name", sorted(_label_functions()))
def test_labels_depend_only_on_bars_up_to_t1(m1, bars, name):
    fn = _label_functions()[name]
    full = fn(bars["M5"])
    assert np.isnan(full["label"]).sum() < 0.5 * len(bars["M5"])
    for i, cut in enumerate(CUTS):
        cut_s = int(cut.timestamp())
        changed = fn(_perturbed(m1, cut_s, seed=10 + i)["M5"])
        decided = full["t1"] <= cut_s
        assert decided.sum() > 1000
        for key in ("label", "t1", "ret"):
            assert np.array_equal(full[key][decided], changed[key][decided], equal_nan=True), key
        pending = ~np.isnan(full["t1"]) & ~decided
        assert not np.array_equal(full["label"][pending], changed["label"][pending], equal_nan=True)


def test_labels_past_the_end_are_nan(bars):
    b = bars["M5"]
    d = direction_labels(b, DirectionLabelSpec(horizon=12))
    tb = triple_barrier_labels(b, TripleBarrierSpec(horizon=12))
    assert np.isnan(d["label"][-12:]).all() and np.isnan(tb["label"][-12:]).all()
    assert not np.isnan(tb["label"][-13])


def _hand_bars(high, low, close, point=1e-5) -> Bars:
    n = len(close)
    return Bars(
        np.arange(n, dtype=np.int64) * 300,
        np.array(close, float),
        np.array(high, float),
        np.array(low, float),
        np.array(close, float),
        np.ones(n),
        np.ones(n),
        300,
        point,
    )


def test_triple_barrier_by_hand():
    # ATR window 1: ATR = true range of the bar itself; bar 0: range 0.2 → barriers at ±0.2
    b = _hand_bars(
        high=[1.1, 1.05, 1.21, 1.0, 1.0, 1.0],
        low=[0.9, 0.95, 0.98, 0.79, 1.0, 1.0],
        close=[1.0, 1.0, 1.2, 0.8, 1.0, 1.0],
    )
    spec = TripleBarrierSpec(horizon=3, take_profit_atr=1.0, stop_loss_atr=1.0, atr_window=1)
    tb = triple_barrier_labels(b, spec)
    assert tb["label"][0] == 1.0 and tb["t1"][0] == 2 * 300 + 300  # high 1.21 ≥ 1.2 at bar 2
    assert np.isnan(tb["label"][3:]).all()  # horizon runs past the end
    # a bar touching both barriers: the stop wins by default, the take-profit if asked
    both = _hand_bars(high=[1.1, 1.3, 1.0, 1.0], low=[0.9, 0.7, 1.0, 1.0], close=[1.0, 1.0, 1.0, 1.0])
    one = TripleBarrierSpec(horizon=2, take_profit_atr=1.0, stop_loss_atr=1.0, atr_window=1)
    assert triple_barrier_labels(both, one)["label"][0] == -1.0
    assert triple_barrier_labels(both, replace(one, both_touched="take"))["label"][0] == 1.0
    # the short side flips the barriers: the same upward touch is its stop
    short = triple_barrier_labels(b, spec, side=np.full(6, -1.0))
    assert short["label"][0] == -1.0
    assert meta_labels(b, spec, np.full(6, -1.0))["label"][0] == 0.0
    assert meta_labels(b, spec, np.ones(6))["label"][0] == 1.0
    # nothing touched: vertical barrier → 0, or the sign of the return
    flat = _hand_bars(
        high=[1.1, 1.01, 1.02, 1.03, 1.0], low=[0.9, 0.99, 0.99, 0.99, 1.0], close=[1.0, 1.0, 1.01, 1.02, 1.0]
    )
    assert triple_barrier_labels(flat, spec)["label"][0] == 0.0
    assert triple_barrier_labels(flat, replace(spec, vertical="sign"))["label"][0] == 1.0


def test_direction_dead_zone_and_ties_by_hand():
    close = [1.00000, 1.00010, 1.00030, 0.99985, 1.00000, 1.00000]
    b = _hand_bars(close, close, close)
    assert pip_size(1e-5) == 1e-4 and pip_size(1e-3) == 1e-2 and pip_size(0.01) == 0.01
    drop = direction_labels(b, DirectionLabelSpec(horizon=1, dead_zone=1.0, unit="pips"))
    # moves: +1.0 pip (tie with the dead zone → flat), +2.0, −4.5, +1.5, 0
    np.testing.assert_array_equal(drop["label"][:5], [np.nan, 1.0, 0.0, 1.0, np.nan])
    cls = direction_labels(b, DirectionLabelSpec(horizon=1, dead_zone=1.0, unit="pips", neutral="class"))
    np.testing.assert_array_equal(cls["label"], [1.0, 2.0, 0.0, 2.0, 1.0, np.nan])
    zero = direction_labels(b, DirectionLabelSpec(horizon=2))
    np.testing.assert_array_equal(zero["label"], [1.0, 0.0, 0.0, 1.0, np.nan, np.nan])
    assert zero["t1"][0] == 2 * 300 + 300


def test_incremental_last_row_equals_full_history(bars):
    spec = FeatureSpec()
    full = build_features(bars, spec, dtype=np.float64)
    stored = build_features(bars, spec)  # float32, as the models consume it
    np.testing.assert_array_equal(stored.values, full.values.astype(np.float32))
    cache: dict = {}
    n = len(bars["M5"])
    for i in (n - 1, n - 2, n - 300, n // 2):
        sub = {tf: (b.slice(0, i + 1) if tf == "M5" else b) for tf, b in bars.items()}
        for c in (None, cache):
            last = last_row_features(sub, spec, c)
            np.testing.assert_allclose(last, full.values[i], rtol=1e-9, atol=1e-12, equal_nan=True)


def test_columns_are_recorded_in_order(bars):
    spec = FeatureSpec(higher_timeframes=("H1",))
    matrix = build_features(bars, spec)
    assert matrix.columns == feature_columns(spec)
    assert matrix.columns[0] == "ret_1" and "H1_rsi_14" in matrix.columns
    assert not any(c.startswith("H1_sess") for c in matrix.columns)
    frame = matrix.to_frame()
    assert list(frame.columns) == ["time", *matrix.columns] and str(frame["time"].dt.tz) == "UTC"


def test_bad_specs_are_named(bars):
    with pytest.raises(ValueError, match="unknown feature families"):
        build_features(bars, FeatureSpec(families=("astrology",)))
    with pytest.raises(ValueError, match="not longer than the base"):
        build_features(bars, FeatureSpec(base_timeframe="H1", higher_timeframes=("M15",)))
    with pytest.raises(ValueError, match="bars missing"):
        build_features({"M5": bars["M5"]}, FeatureSpec())


def test_point_inference():
    assert infer_point(np.array([1.08512, 1.0851])) == 1e-5
    assert infer_point(np.array([148.512, 148.5])) == 1e-3
    assert infer_point(np.array([2050.25, 2050.2])) == 1e-2


def test_feature_contract(contract, bars):
    spec = FeatureSpec()
    matrix = build_features(bars, spec)
    frame = matrix.to_frame()
    contract.validate_features("EURUSD M5", frame, matrix.columns, matrix.warmup, matrix.bounds)
    for column, value, rule in [
        ("rsi_14", 101.0, "bounds:rsi_14"),
        ("tod_cos", 1.5, "bounds:tod_cos"),
        ("ret_4", np.inf, "finite_after_warmup:ret_4"),
        ("H1_macd", np.nan, "finite_after_warmup:H1_macd"),
    ]:
        broken = frame.copy()
        broken.loc[len(frame) - 10, column] = value
        with pytest.raises(Exception, match=rule.replace("(", r"\(")):
            contract.validate_features("EURUSD M5", broken, matrix.columns, matrix.warmup, matrix.bounds)


def test_bars_append_keeps_order_point_and_timeframe():
    from features.bars import Bars

    def bars(times: list[int], price: float) -> Bars:
        n = len(times)
        return Bars.from_rates(
            {
                "time": np.array(times),
                **{c: np.full(n, price) for c in ("open", "high", "low", "close")},
                "tick_volume": np.ones(n),
                "spread": np.ones(n),
            },
            300,
            1e-5,
        )

    both = bars([0, 300], 1.1).append(bars([600], 1.2))
    assert both.time.tolist() == [0, 300, 600] and both.close.tolist() == [1.1, 1.1, 1.2]
    assert both.seconds == 300 and both.point == 1e-5
