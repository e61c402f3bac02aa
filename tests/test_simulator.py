"""The simulator is a market model: sessions, gaps, exact aggregation, determinism, known truth."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime

import numpy as np
import pytest

from pipelines.mt5 import constants as C
from pipelines.mt5.bars import aggregate_rates, ticks_to_m1
from pipelines.mt5.server_time import ServerClock
from pipelines.mt5.simulator import DEFAULT_SYMBOLS, MarketSimulator, SimulatorConfig


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_symbols_have_realistic_levels_digits_and_spreads(sim):
    infos = {s.name: s for s in sim.symbols_get()}
    assert {"EURUSD", "GBPUSD", "USDJPY", "AUDUSD", "XAUUSD"} <= set(infos)
    assert infos["EURUSD"].digits == 5 and 0.9 < infos["EURUSD"].bid < 1.3
    assert infos["USDJPY"].digits == 3 and 120 < infos["USDJPY"].bid < 180
    assert infos["XAUUSD"].digits == 2 and 1500 < infos["XAUUSD"].bid < 2600
    assert all(i.ask > i.bid for i in infos.values())
    assert [s.name for s in sim.symbols_get(group="*USD*,!XAU*,!AUD*,!*CAD,!*CHF,!NZD*")] == [
        "EURUSD",
        "GBPUSD",
        "USDJPY",
    ]
    assert {s.name for s in sim.symbols_get(group="*JPY")} == {"USDJPY", "EURJPY", "GBPJPY"}


def test_ticks_aggregate_exactly_into_every_timeframe(sim):
    spec = DEFAULT_SYMBOLS["EURUSD"]
    ticks = sim.copy_ticks_range("EURUSD", utc(2024, 1, 2), utc(2024, 1, 4), C.COPY_TICKS_ALL)
    m1 = sim.copy_rates_range("EURUSD", C.TIMEFRAME_M1, utc(2024, 1, 2), utc(2024, 1, 3, 23, 59))
    assert np.array_equal(ticks_to_m1(ticks, spec.point), m1)
    for tf in (C.TIMEFRAME_M5, C.TIMEFRAME_M15, C.TIMEFRAME_H1, C.TIMEFRAME_H4, C.TIMEFRAME_D1):
        bars = sim.copy_rates_range("EURUSD", tf, utc(2024, 1, 2), utc(2024, 1, 3, 23, 59))
        assert np.array_equal(aggregate_rates(m1, tf), bars), C.timeframe_name(tf)
    # prices sit on the symbol's tick grid and bars are internally consistent
    assert np.allclose(np.round(m1["close"], 5), m1["close"], atol=0, rtol=0)
    assert np.all(m1["high"] >= np.maximum(m1["open"], m1["close"]))
    assert np.all(m1["low"] <= np.minimum(m1["open"], m1["close"]))
    assert np.all(m1["spread"] > 0) and np.all(m1["tick_volume"] >= 1)


def test_sessions_weekend_gap_and_metal_break(sim):
    m1 = sim.copy_rates_range("EURUSD", C.TIMEFRAME_M1, utc(2024, 1, 5), utc(2024, 1, 8, 23, 59))
    t = m1["time"].astype("datetime64[s]").astype(datetime)
    assert not any(x.weekday() == 5 for x in t)  # nothing on Saturday
    friday_last, sunday_first = max(x for x in t if x.weekday() == 4), min(x for x in t if x.weekday() == 6)
    assert (friday_last.hour, friday_last.minute) == (21, 59)
    assert (sunday_first.hour, sunday_first.minute) == (22, 0)
    # London/New York overlap is busier and more volatile than Asia
    hours = np.array([x.hour for x in t])
    rng = m1["high"] - m1["low"]
    assert rng[(hours >= 12) & (hours < 16)].mean() > 1.5 * rng[(hours >= 0) & (hours < 7)].mean()
    vol = m1["tick_volume"]
    assert vol[(hours >= 12) & (hours < 16)].mean() > 1.5 * vol[(hours >= 0) & (hours < 7)].mean()
    gold = sim.copy_rates_range("XAUUSD", C.TIMEFRAME_M1, utc(2024, 1, 8), utc(2024, 1, 9))
    gold_hours = gold["time"] // 3600 % 24
    assert not np.any(gold_hours == 21) and np.any(gold_hours == 20) and np.any(gold_hours == 22)


def test_deterministic_from_seed_whatever_the_query():
    a = MarketSimulator(SimulatorConfig(end=utc(2024, 1, 20)))
    b = MarketSimulator(SimulatorConfig(end=utc(2024, 1, 20)))
    c = MarketSimulator(SimulatorConfig(end=utc(2024, 1, 20), seed=8))
    for s in (a, b, c):
        s.initialize()
    whole = a.copy_rates_range("GBPUSD", C.TIMEFRAME_M5, utc(2024, 1, 1), utc(2024, 1, 19))
    # b asks a late window first, then pieces: same bars
    late = b.copy_rates_range("GBPUSD", C.TIMEFRAME_M5, utc(2024, 1, 15), utc(2024, 1, 19))
    early = b.copy_rates_range("GBPUSD", C.TIMEFRAME_M5, utc(2024, 1, 1), utc(2024, 1, 14, 23, 59))
    assert np.array_equal(np.concatenate([early, late]), whole)
    other = c.copy_rates_range("GBPUSD", C.TIMEFRAME_M5, utc(2024, 1, 1), utc(2024, 1, 19))
    assert not np.array_equal(other["close"], whole["close"])


def test_mt5_request_semantics(sim):
    last3 = sim.copy_rates_from_pos("EURUSD", C.TIMEFRAME_H1, 0, 3)
    assert last3.dtype == C.RATES_DTYPE and len(last3) == 3
    assert last3["time"][-1] == int(utc(2024, 1, 14, 23).timestamp())  # newest bar
    skip = sim.copy_rates_from_pos("EURUSD", C.TIMEFRAME_H1, 1, 2)
    assert np.array_equal(skip, last3[:2])
    upto = sim.copy_rates_from("EURUSD", C.TIMEFRAME_H1, utc(2024, 1, 10, 12), 5)
    assert upto["time"][-1] == int(utc(2024, 1, 10, 12).timestamp()) and len(upto) == 5
    ticks = sim.copy_ticks_from("EURUSD", utc(2024, 1, 10, 12), 50, C.COPY_TICKS_ALL)
    assert len(ticks) == 50 and ticks["time"][0] >= int(utc(2024, 1, 10, 12).timestamp())
    assert sim.copy_ticks_from("EURUSD", utc(2024, 1, 10, 12), 50, C.COPY_TICKS_TRADE).size == 0
    tick = sim.symbol_info_tick("EURUSD")
    assert tick.time_msc // 1000 == tick.time and tick.ask > tick.bid
    assert sim.copy_rates_range("EURUSD", C.TIMEFRAME_H1, utc(2024, 1, 3), utc(2024, 1, 2)).size == 0


def test_failures_are_none_plus_last_error(sim):
    assert sim.copy_rates_range("NOPE", C.TIMEFRAME_H1, utc(2024, 1, 2), utc(2024, 1, 3)) is None
    assert sim.last_error()[0] == C.RES_E_NOT_FOUND and "NOPE" in sim.last_error()[1]
    assert sim.copy_rates_range("EURUSD", 7, utc(2024, 1, 2), utc(2024, 1, 3)) is None
    assert sim.last_error()[0] == C.RES_E_INVALID_PARAMS
    assert sim.copy_rates_from_pos("EURUSD", C.TIMEFRAME_H1, 0, 0) is None
    sim.shutdown()
    assert sim.symbol_info("EURUSD") is None and sim.last_error()[0] == C.RES_E_INTERNAL_FAIL_CONNECT
    sim.initialize()
    sim.simulate_outage(0.3)
    assert sim.copy_rates_range("EURUSD", C.TIMEFRAME_H1, utc(2024, 1, 2), utc(2024, 1, 3)) is None
    assert not sim.initialize() and sim.last_error()[0] == C.RES_E_INTERNAL_FAIL_INIT
    time.sleep(0.35)
    assert sim.initialize() and sim.symbol_info("EURUSD") is not None


def test_server_time_stamping_matches_a_broker():
    base = MarketSimulator(SimulatorConfig(end=utc(2024, 3, 20)))
    broker = MarketSimulator(SimulatorConfig(end=utc(2024, 3, 20), clock=ServerClock(2, "us")))
    base.initialize(), broker.initialize()
    a = base.copy_rates_range("EURUSD", C.TIMEFRAME_M1, utc(2024, 3, 4), utc(2024, 3, 15))
    b = broker.copy_rates_range("EURUSD", C.TIMEFRAME_M1, utc(2024, 3, 4, 2), utc(2024, 3, 15, 3))
    assert np.array_equal(ServerClock(2, "us").to_utc(b["time"]), a["time"])
    assert np.array_equal(a["close"], b["close"])
    # the broker's D1 bars open at server midnight: 22:00 or 21:00 UTC
    d1 = broker.copy_rates_range("EURUSD", C.TIMEFRAME_D1, utc(2024, 3, 4), utc(2024, 3, 15))
    assert np.all(d1["time"] % 86400 == 0)
    assert set(ServerClock(2, "us").to_utc(d1["time"]) % 86400 // 3600) == {21, 22}


def test_live_mode_clock_advances_with_wall_time():
    live = MarketSimulator(SimulatorConfig(live=True, speed=600.0, end=None, live_start=utc(2024, 1, 3, 10)))
    live.initialize()
    first = live.now_utc()
    bars = live.copy_rates_from_pos("EURUSD", C.TIMEFRAME_M1, 0, 5)
    time.sleep(0.25)
    assert (live.now_utc() - first).total_seconds() >= 0.25 * 600 * 0.9
    later = live.copy_rates_from_pos("EURUSD", C.TIMEFRAME_M1, 0, 5)
    assert later["time"][-1] > bars["time"][-1]
    # the forming bar only holds ticks up to now
    forming = later[-1]
    assert forming["time"] <= live.now_utc().timestamp() < forming["time"] + 60


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


@pytest.mark.slow
def test_true_probability_is_calibrated_and_informative():
    """Frequencies of realised labels match the planted truth within sampling error."""
    sim = MarketSimulator(SimulatorConfig(end=utc(2024, 5, 1), signal_strength=0.5))
    sim.initialize()
    bars = sim.copy_rates_range("EURUSD", C.TIMEFRAME_M5, utc(2024, 1, 1), utc(2024, 4, 30, 23, 55))
    h = 3
    p = sim.true_direction_probability("EURUSD", "M5", bars["time"], h)
    close = bars["close"]
    future = np.r_[close[h:], np.full(h, np.nan)]
    valid = ~np.isnan(p["p_up"])
    assert valid.sum() == len(bars) - h
    up = (future > close)[valid].astype(float)
    flat = (future == close)[valid].astype(float)
    pu = p["p_up"][valid]
    # the probabilities of up/down/flat sum to one and flat matches rounding ties
    assert abs(p["p_flat"][valid].mean() - flat.mean()) < 0.003
    edges = np.quantile(pu, np.linspace(0, 1, 11))
    idx = np.clip(np.digitize(pu, edges[1:-1]), 0, 9)
    for b in range(10):
        sel = idx == b
        se = np.sqrt(pu[sel].mean() * (1 - pu[sel].mean()) / sel.sum())
        assert abs(up[sel].mean() - pu[sel].mean()) < 4 * se + 0.005, b
    base = np.full_like(pu, up.mean())
    assert _log_loss(pu, up) < _log_loss(base, up) - 0.003


def test_zero_strength_is_a_random_walk():
    sim = MarketSimulator(SimulatorConfig(end=utc(2024, 1, 20), signal_strength=0.0))
    sim.initialize()
    bars = sim.copy_rates_range("EURUSD", C.TIMEFRAME_H1, utc(2024, 1, 2), utc(2024, 1, 20))
    p = sim.true_direction_probability("EURUSD", "H1", bars["time"], 2)
    valid = ~np.isnan(p["p_up"])
    # no skill possible: up and down equally likely but for where the unrounded price sits
    # inside its rounding step (worth < 1% here), and on average exactly balanced
    gap = p["p_up"][valid] - p["p_down"][valid]
    assert np.abs(gap).max() < 0.01 and abs(gap.mean()) < 0.002
    assert np.all(np.isnan(p["p_up"][-2:]))


def test_scheduled_outages_follow_the_shared_live_clock():
    """`outages` (wall seconds after the live anchor, duration): every process attached to the
    same anchor loses the terminal at the same moment, and it comes back by itself."""
    anchor = datetime.now(UTC)
    cfg = SimulatorConfig(end=None, live=True, live_start=utc(2024, 1, 24), speed=60.0, live_anchor=anchor)
    a = MarketSimulator(dataclasses.replace(cfg, outages=((0.2, 0.3),)))
    b = MarketSimulator(dataclasses.replace(cfg, outages=((0.2, 0.3),)))
    assert a.initialize() and b.initialize()
    time.sleep(max(0.0, anchor.timestamp() + 0.25 - time.time()))
    for sim in (a, b):
        assert sim.symbol_info_tick("EURUSD") is None
        assert sim.last_error()[0] == C.RES_E_INTERNAL_FAIL_CONNECT
        assert not sim.initialize()
    time.sleep(max(0.0, anchor.timestamp() + 0.55 - time.time()))
    assert a.initialize() and a.symbol_info_tick("EURUSD") is not None


def test_market_texture_has_clustering_fat_tails_news_and_holidays():
    """texture="market": the stylised facts of real FX returns, with no signal to find."""
    plain, market = (
        MarketSimulator(
            SimulatorConfig(end=utc(2024, 4, 1), signal_strength=0.0, texture=t, symbols=("EURUSD",))
        )
        for t in ("plain", "market")
    )
    out = {}
    for name, s in (("plain", plain), ("market", market)):
        s.initialize()
        h1 = s.copy_rates_range("EURUSD", C.TIMEFRAME_H1, utc(2024, 1, 1), utc(2024, 3, 31))
        r = np.diff(np.log(h1["close"]))
        z = (r - r.mean()) / r.std()
        a = np.abs(r)
        # day-to-day persistence of realised volatility (clustering), net of the intraday pattern
        days = h1["time"][1:] // 86400
        daily = np.array([np.sqrt((r[days == d] ** 2).sum()) for d in np.unique(days)])
        out[name] = {
            "kurtosis": float((z**4).mean()),
            "vol_acf": float(np.corrcoef(daily[:-1], daily[1:])[0, 1]),
            "max_range_pips": float(((h1["high"] - h1["low"]) / 1e-4).max()),
            "jan1": int(((h1["time"] // 86400) == utc(2024, 1, 1).timestamp() // 86400).sum()),
            "abs_mean": float(a.mean()),
        }
    p, m = out["plain"], out["market"]
    assert m["kurtosis"] > 3 * p["kurtosis"] and m["kurtosis"] > 10, out
    assert m["vol_acf"] > p["vol_acf"] + 0.2, out
    assert m["max_range_pips"] > 100 > p["max_range_pips"], out  # a news hour
    assert p["jan1"] > 0 and m["jan1"] == 0, out  # New Year's Day closed
    again = MarketSimulator(SimulatorConfig(end=utc(2024, 4, 1), signal_strength=0.0, texture="market"))
    again.initialize()
    assert np.array_equal(
        again.copy_rates_range("EURUSD", C.TIMEFRAME_H1, utc(2024, 2, 1), utc(2024, 2, 3)),
        market.copy_rates_range("EURUSD", C.TIMEFRAME_H1, utc(2024, 2, 1), utc(2024, 2, 3)),
    )  # deterministic, whatever else was asked first
    with pytest.raises(ValueError, match="texture"):
        SimulatorConfig(texture="rough")
