"""Operational checks (issue 18) as pure decisions: each from healthy to breached to resolved,
notified once each way, silences respected."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from features.gaps import MarketHours
from models.checks import (
    Finding,
    api_check,
    lag_check,
    left_the_window,
    skill_check,
    stale_series,
    transitions,
)
from pipelines.monitor import prometheus_summary

HOURS = MarketHours()
M5 = 300


def _ts(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp())


def test_stale_counts_bars_of_open_market_only():
    tue = _ts(2024, 1, 16, 10, 0)
    key = {"EURUSD M5": tue}
    sec = {"EURUSD M5": M5}
    # two bars after the newest one's close have closed: fine with a limit of 3
    (ok,) = stale_series(key, sec, tue + 3 * M5, HOURS, 3)
    assert not ok.breached and ok.value == 2 and ok.check == "stale:EURUSD:M5"
    (late,) = stale_series(key, sec, tue + 10 * M5, HOURS, 3)
    assert late.breached and late.value == 9 and "9 bar(s) of open market missing" in late.message
    # the newest bar of the week, judged on Sunday afternoon: the market is closed, nothing missing
    fri = _ts(2024, 1, 19, 20, 55)
    (weekend,) = stale_series({"EURUSD M5": fri}, sec, _ts(2024, 1, 21, 15, 0), HOURS, 3)
    assert not weekend.breached and weekend.value == 0
    # Monday morning without Sunday night's and Monday's bars: stale
    (monday,) = stale_series({"EURUSD M5": fri}, sec, _ts(2024, 1, 22, 8, 0), HOURS, 3)
    assert monday.breached
    # Christmas Day is closed
    eve = _ts(2024, 12, 24, 23, 55)
    (xmas,) = stale_series({"EURUSD M5": eve}, sec, _ts(2024, 12, 25, 18, 0), HOURS, 3)
    assert not xmas.breached


def test_lag_p99_against_its_limit():
    rng = np.random.default_rng(0)
    fast = rng.gamma(4.0, 20.0, 1000)  # ~80 ms typical
    f = lag_check(fast, 250.0, 20)
    assert not f.breached and 100 < f.value < 250 and "p50" in f.message
    slow = np.r_[fast, np.full(30, 2000.0)]  # 3 % of results two seconds late
    assert lag_check(slow, 250.0, 20).breached
    too_few = lag_check(fast[:5], 250.0, 20)
    assert not too_few.breached and np.isnan(too_few.value)


def test_live_skill_needs_an_interval_above_zero():
    rng = np.random.default_rng(1)
    n = 4000
    times = np.arange(n) * 3600  # hourly rows: 166 day-blocks
    truth = rng.uniform(0.3, 0.7, n)
    y = (rng.random(n) < truth).astype(float)
    useless, edge = skill_check("model m 3", y, np.full(n, y.mean()), times, 86400, 500)
    assert useless.breached and "no demonstrated skill" in useless.message
    assert edge is not None and edge.low <= 0 <= edge.high
    good, edge = skill_check("model m 4", y, truth, times, 86400, 500)
    assert not good.breached and edge.low > 0, edge
    worse, _ = skill_check("tenant t m", y, 1 - truth, times, 86400, 500)
    assert worse.breached and worse.check == "skill:tenant:t:m"
    few, none = skill_check("model m 5", y[:100], truth[:100], times[:100], 86400, 500)
    assert not few.breached and none is None


METRICS = """# HELP mt5prob_requests_total Scoring requests
# TYPE mt5prob_requests_total counter
mt5prob_requests_total{{endpoint="/score",model="m",version="1",status="200"}} {ok}
mt5prob_requests_total{{endpoint="/score",model="m",version="1",status="503"}} {bad}
mt5prob_requests_total{{endpoint="/score",model="m",version="1",status="400"}} 7.0
# HELP mt5prob_request_seconds Scoring latency
# TYPE mt5prob_request_seconds histogram
mt5prob_request_seconds_bucket{{endpoint="/score",model="m",version="1",le="0.01"}} {fast}
mt5prob_request_seconds_bucket{{endpoint="/score",model="m",version="1",le="0.1"}} {mid}
mt5prob_request_seconds_bucket{{endpoint="/score",model="m",version="1",le="1.0"}} {all}
mt5prob_request_seconds_bucket{{endpoint="/score",model="m",version="1",le="+Inf"}} {all}
mt5prob_request_seconds_count{{endpoint="/score",model="m",version="1"}} {all}
mt5prob_request_seconds_sum{{endpoint="/score",model="m",version="1"}} 1.0
"""


def _scrape(ok: float, bad: float, fast: float, mid: float, total: float) -> dict:
    return prometheus_summary(METRICS.format(ok=ok, bad=bad, fast=fast, mid=mid, all=total))


def test_api_error_rate_and_p99_between_scrapes():
    before = _scrape(1000, 0, 990, 1000, 1000)
    assert before["requests"] == 1007 and before["errors"] == 0 and before["buckets"][-1] == float("inf")
    healthy = api_check(before, _scrape(2000, 2, 1995, 2002, 2002), 0.01, 250.0, 20)
    assert [f.breached for f in healthy] == [False, False], healthy
    assert healthy[1].value == 10.0  # 99 % of the new requests within 10 ms
    failing = api_check(before, _scrape(1100, 100, 1090, 1200, 1200), 0.01, 250.0, 20)
    assert failing[0].breached and "100 server errors" in failing[0].message
    slow = api_check(before, _scrape(1500, 0, 1000, 1010, 1500), 0.01, 250.0, 20)
    assert slow[1].breached and slow[1].value == 1000.0  # the new requests took up to a second
    quiet = api_check(before, _scrape(1005, 0, 995, 1005, 1005), 0.01, 250.0, 20)
    assert not any(f.breached for f in quiet) and "too few" in quiet[0].message
    assert not any(f.judged for f in quiet)  # not judged: an open alert is not resolved by silence


def test_a_check_too_thin_to_judge_neither_opens_nor_resolves_an_alert():
    thin = Finding("api:p99", False, float("nan"), 250.0, "3 requests, too few", judged=False)
    state, due = transitions({"api:p99": "slow"}, [thin], {}, 0)
    assert state == {"api:p99": "slow"} and due == []  # still open, nobody told it resolved
    state, due = transitions(state, [_f("api:p99", False)], {}, 1)
    assert [(n.check, n.kind) for n in due] == [("api:p99", "resolved")] and state == {}
    assert transitions({}, [thin], {}, 2) == ({}, [])
    assert not lag_check(np.array([5.0]), 250.0, 20).judged
    assert not skill_check("model m 1", np.ones(3), np.ones(3) / 2, np.arange(3), 60, 100)[0].judged


def test_live_alerts_with_nothing_in_the_window_close_and_others_keep_their_state():
    open_alerts = {"skill:model:m:1": "no skill", "skill:model:m:2": "no skill", "stale:EURUSD:M5": "old"}
    judged = [_f("skill:model:m:2", True)]  # version 2 still scored (and still skill-less)
    closing = left_the_window(open_alerts, judged, "2024-01-01 00:00")
    assert [f.check for f in closing] == ["skill:model:m:1"]
    assert "no live rows since 2024-01-01 00:00" in closing[0].message and not closing[0].breached
    state, due = transitions(open_alerts, judged + closing, {}, 0)
    assert [(n.check, n.kind) for n in due] == [("skill:model:m:1", "resolved")]
    assert set(state) == {"skill:model:m:2", "stale:EURUSD:M5"}  # a stale series is no live-window check


def _f(check: str, breached: bool) -> Finding:
    return Finding(check, breached, 1.0, 0.0, f"{check} {'bad' if breached else 'fine'}")


def test_notified_once_when_breached_and_once_when_resolved():
    state, due = transitions({}, [_f("stale:EURUSD:M5", False)], {}, 0)
    assert state == {} and due == []
    state, due = transitions(state, [_f("stale:EURUSD:M5", True)], {}, 1)
    assert [(n.check, n.kind) for n in due] == [("stale:EURUSD:M5", "breached")]
    state, due = transitions(state, [_f("stale:EURUSD:M5", True)], {}, 2)
    assert due == [] and "stale:EURUSD:M5" in state  # still breached: no repeat
    state, due = transitions(state, [_f("lag:live", True)], {}, 3)  # other checks keep their state
    assert [n.check for n in due] == ["lag:live"] and "stale:EURUSD:M5" in state
    state, due = transitions(state, [_f("stale:EURUSD:M5", False)], {}, 4)
    assert [(n.check, n.kind) for n in due] == [("stale:EURUSD:M5", "resolved")]
    assert "stale:EURUSD:M5" not in state


def test_a_silenced_check_opens_and_closes_but_notifies_nobody():
    silenced = {"stale:*": 100.0}
    state, due = transitions({}, [_f("stale:XAUUSD:M5", True), _f("lag:live", True)], silenced, 50)
    assert [n.check for n in due] == ["lag:live"] and "stale:XAUUSD:M5" in state
    state, due = transitions(state, [_f("stale:XAUUSD:M5", False)], silenced, 60)
    assert due == [] and "stale:XAUUSD:M5" not in state
    # the silence has run out: notified again
    _, due = transitions(state, [_f("stale:XAUUSD:M5", True)], silenced, 150)
    assert [n.kind for n in due] == ["breached"]
