"""Every data-contract rule, each with a bad-row fixture; schema errors; the bad-ratio gate —
on both engines (great-expectations, and the vectorised reading of the same suite the live
worker uses), plus a test that the two engines give identical verdicts row by row."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from pipelines.bar_store import SeriesKey, rates_to_frame, ticks_to_frame
from pipelines.mt5 import constants as C
from pipelines.mt5.server_time import ServerClock
from pipelines.validate import SOFT_RULES, ContractError, DataContract, ValidationRules

KEY = SeriesKey("bars", "EURUSD", "M5")
TICKS = SeriesKey("ticks", "EURUSD")
UTC_CLOCK = ServerClock()


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture(params=["gx", "numpy"])
def contract(request, contract):
    """The session's GX contract, or the same suite on the numpy engine."""
    return contract if request.param == "gx" else DataContract(contract.rules, engine="numpy")


@pytest.fixture
def bars(sim) -> pd.DataFrame:
    rates = sim.copy_rates_range("EURUSD", C.TIMEFRAME_M5, utc(2024, 1, 2), utc(2024, 1, 5))
    return rates_to_frame(rates, rates["time"])


@pytest.fixture
def ticks(sim) -> pd.DataFrame:
    raw = sim.copy_ticks_range("EURUSD", utc(2024, 1, 2, 9), utc(2024, 1, 2, 10), C.COPY_TICKS_ALL)
    return ticks_to_frame(raw, raw["time_msc"])


def test_clean_simulator_bars_pass(contract, bars):
    result = contract.validate_bars(KEY, bars, UTC_CLOCK)
    assert result.n_bad == 0 and len(result.good) == len(bars)


def _set(frame: pd.DataFrame, row: int, column: str, value) -> None:
    frame.loc[row, column] = value


BAR_CASES = {
    "not_null:close": lambda f, i: _set(f, i, "close", np.nan),
    "positive_finite:open": lambda f, i: _set(f, i, "open", -1.0),
    "positive_finite:low": lambda f, i: _set(f, i, "low", 0.0),
    "positive_finite:high": lambda f, i: _set(f, i, "high", np.inf),
    "high>=open": lambda f, i: _set(f, i, "open", f.loc[i, "high"] + 0.0001),
    "high>=close": lambda f, i: _set(f, i, "high", f.loc[i, "close"] - 0.00001),
    "low<=open": lambda f, i: _set(f, i, "low", f.loc[i, "open"] + 0.00001),
    "low<=close": lambda f, i: _set(f, i, "close", f.loc[i, "low"] - 0.00001),
    "non_negative:spread": lambda f, i: _set(f, i, "spread", -3),
    "non_negative:tick_volume": lambda f, i: _set(f, i, "tick_volume", -1),
    "non_negative:real_volume": lambda f, i: _set(f, i, "real_volume", -5),
    "time_increasing_unique": lambda f, i: _set(f, i, "time", f.loc[i - 1, "time"]),
    "time_on_grid": lambda f, i: _set(f, i, "time", f.loc[i, "time"] + pd.Timedelta(seconds=90)),
    "spike_range": lambda f, i: _set(f, i, "high", f.loc[i, "high"] + 0.02),
    "spike_gap": lambda f, i: (
        _set(f, i, "open", f.loc[i, "open"] + 0.02),
        _set(f, i, "high", f.loc[i, "high"] + 0.02),
    ),
}


HARD_CASES = sorted(r for r in BAR_CASES if r not in SOFT_RULES)


@pytest.mark.parametrize("rule", HARD_CASES)
def test_each_bar_rule_quarantines_its_bad_row(contract, bars, rule):
    row = 200
    BAR_CASES[rule](bars, row)
    result = contract.validate_bars(KEY, bars, UTC_CLOCK)
    bad_times = set(result.quarantined["time"])
    assert bars.loc[row, "time"] in bad_times
    quarantined_row = result.quarantined[result.quarantined["time"] == bars.loc[row, "time"]]
    assert rule in quarantined_row["rules"].iloc[0].split(";")
    # one bad row, and at most a neighbour it disturbs
    assert result.n_bad <= 2 and len(result.good) == len(bars) - result.n_bad
    assert result.rule_counts[rule] >= 1


@pytest.mark.parametrize("rule", sorted(SOFT_RULES))
def test_a_spike_is_kept_and_flagged_not_quarantined(contract, bars, rule):
    """A genuine news bar (an FOMC hour of 170 pips) breaks only the spike rules: it is stored
    with a flag, never dropped."""
    row = 200
    BAR_CASES[rule](bars, row)
    result = contract.validate_bars(KEY, bars, UTC_CLOCK)
    assert result.n_bad == 0 and len(result.good) == len(bars)
    assert bars.loc[row, "time"] in set(result.good["time"])
    flagged = result.flagged.set_index("time")["rules"]
    assert rule in flagged[bars.loc[row, "time"]].split(";")
    assert result.n_flagged <= 2 and result.rule_counts[rule] >= 1
    assert "kept" in result.describe_flagged() and "EURUSD M5" in result.describe_flagged()


def test_a_spike_with_a_hard_violation_is_quarantined(contract, bars):
    BAR_CASES["spike_range"](bars, 200)
    BAR_CASES["low<=close"](bars, 200)
    result = contract.validate_bars(KEY, bars, UTC_CLOCK)
    row = result.quarantined[result.quarantined["time"] == bars.loc[200, "time"]]
    assert row["rules"].iloc[0].split(";") == ["low<=close", "spike_range"]
    assert bars.loc[200, "time"] not in set(result.flagged["time"])


def test_grid_is_checked_in_server_time(contract, sim):
    broker = ServerClock(2, "us")
    d1 = sim.copy_rates_range("EURUSD", C.TIMEFRAME_D1, utc(2024, 1, 1), utc(2024, 1, 14))
    # bars stamped at server midnight of a UTC+2 broker are on grid once converted to UTC
    frame = rates_to_frame(d1, d1["time"] - 7200)
    assert contract.validate_bars(SeriesKey("bars", "EURUSD", "D1"), frame, broker).n_bad == 0
    assert contract.validate_bars(SeriesKey("bars", "EURUSD", "D1"), frame, UTC_CLOCK).n_bad == len(frame)


def test_context_makes_checks_causal_across_batches(contract, bars):
    head, tail = bars.iloc[:100], bars.iloc[100:].reset_index(drop=True).copy()
    tail.loc[0, "time"] = head["time"].iloc[-1]  # duplicate of the last committed bar
    result = contract.validate_bars(KEY, tail, UTC_CLOCK, context=head)
    assert result.quarantined["rules"].tolist() == ["time_increasing_unique"]


def test_schema_errors_reject_the_batch(contract, bars):
    with pytest.raises(ContractError, match="lacks column"):
        contract.validate_bars(KEY, bars.drop(columns=["spread"]), UTC_CLOCK)
    with pytest.raises(ContractError, match="dtype:tick_volume"):
        contract.validate_bars(KEY, bars.astype({"tick_volume": "float64"}), UTC_CLOCK)
    with pytest.raises(ContractError, match="UTC datetimes"):
        contract.validate_bars(KEY, bars.assign(time=bars["time"].dt.tz_localize(None)), UTC_CLOCK)


def test_bad_ratio_gate_names_symbol_count_time_and_rule(contract, bars):
    for i in (50, 60, 70):
        bars.loc[i, "low"] = bars.loc[i, "high"] + 0.001
    result = contract.validate_bars(KEY, bars, UTC_CLOCK)
    with pytest.raises(ContractError) as err:
        result.check_ratio(ValidationRules(max_bad_ratio=0.001))
    message = str(err.value)
    first = bars.loc[50, "time"]
    assert "EURUSD M5" in message and "3 bad rows" in message
    assert f"{first:%Y-%m-%d %H:%M:%S} UTC" in message and "low<=open" in message
    result.check_ratio(ValidationRules(max_bad_ratio=0.01))  # 3 of ~860 is allowed at 1%
    result.check_ratio(ValidationRules(max_bad_ratio=0.0, ratio_min_rows=10_000))  # small batch


def test_clean_ticks_pass(contract, ticks):
    assert contract.validate_ticks(TICKS, ticks).n_bad == 0


TICK_CASES = {
    "not_null:bid": lambda f, i: _set(f, i, "bid", np.nan),
    "positive_finite:ask": lambda f, i: _set(f, i, "ask", 0.0),
    "positive_finite:bid": lambda f, i: _set(f, i, "bid", -np.inf),
    "ask>=bid": lambda f, i: _set(f, i, "ask", f.loc[i, "bid"] - 0.0001),
    "non_negative:volume": lambda f, i: _set(f, i, "volume", -1),
    "non_negative:volume_real": lambda f, i: _set(f, i, "volume_real", -1.0),
    "time_non_decreasing": lambda f, i: _set(f, i, "time", f.loc[i - 1, "time"] - pd.Timedelta(seconds=1)),
}


@pytest.mark.parametrize("rule", sorted(TICK_CASES))
def test_each_tick_rule_quarantines_its_bad_row(contract, ticks, rule):
    row = 40
    TICK_CASES[rule](ticks, row)
    result = contract.validate_ticks(TICKS, ticks)
    assert result.quarantined["rules"].tolist() == [rule] or rule in ";".join(result.quarantined["rules"])
    assert result.n_bad == 1


def test_numpy_engine_gives_gx_verdicts_row_by_row(bars, ticks):
    """Many bad rows of every kind at once (and the ones a rule would not judge: a null in a
    range rule, a pair with one value missing): same good rows, same quarantined rows with the
    same rules in the same order, same counts."""
    gx_engine = DataContract(ValidationRules(), engine="gx")
    np_engine = DataContract(ValidationRules(), engine="numpy")
    rng = np.random.default_rng(3)
    spoiled = bars.copy()
    rows = rng.choice(np.arange(20, len(spoiled) - 1), size=len(BAR_CASES) * 3, replace=False)
    for k, row in enumerate(sorted(rows)):
        BAR_CASES[sorted(BAR_CASES)[k % len(BAR_CASES)]](spoiled, int(row))
    _set(spoiled, 5, "high", np.nan)  # one value of the high/low pairs missing
    _set(spoiled, 6, "open", np.nan)
    _set(spoiled, 6, "high", np.nan)
    for frame, validate in (
        (spoiled, lambda c, f: c.validate_bars(KEY, f, UTC_CLOCK, context=bars.iloc[:0])),
        (spoiled, lambda c, f: c.validate_bars(KEY, f.iloc[100:], UTC_CLOCK, context=f.iloc[:100])),
    ):
        a, b = validate(gx_engine, frame), validate(np_engine, frame)
        assert a.n_bad > 20 and a.rule_counts == b.rule_counts
        pd.testing.assert_frame_equal(a.good, b.good)
        pd.testing.assert_frame_equal(a.quarantined, b.quarantined)
        pd.testing.assert_frame_equal(a.flagged, b.flagged)
        assert a.n_flagged > 0
    bad_ticks = ticks.copy()
    for row, (column, value) in enumerate([("bid", np.nan), ("ask", -1.0), ("volume", -1), ("bid", np.inf)]):
        _set(bad_ticks, 10 + row, column, value)
    _set(bad_ticks, 20, "ask", bad_ticks.loc[20, "bid"] - 0.001)
    _set(bad_ticks, 30, "time", bad_ticks.loc[29, "time"] - pd.Timedelta(seconds=5))
    a, b = gx_engine.validate_ticks(TICKS, bad_ticks), np_engine.validate_ticks(TICKS, bad_ticks)
    assert a.n_bad >= 5 and a.rule_counts == b.rule_counts
    pd.testing.assert_frame_equal(a.quarantined, b.quarantined)
    with pytest.raises(ContractError, match="dtype:tick_volume"):
        np_engine.validate_bars(KEY, bars.astype({"tick_volume": "float64"}), UTC_CLOCK)
