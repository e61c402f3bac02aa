"""The live worker against the simulator in live mode, accelerated (an M5 bar closes every
half second of wall time): each bar close is ingested and scored by itself (no timer), every
bar reaches the tenant exactly once across a worker restart and a terminal outage, the lag
from bar close to commit is recorded per score and small, and events reach a Redis subscriber."""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from conftest import small_features

from features.labels import direction_labels
from features.matrix import build_features
from features.spec import DirectionLabelSpec
from models.base_learners import LogisticLearner
from pipelines import ingest
from pipelines.bar_store import BarStore, SeriesKey
from pipelines.config import load_params
from pipelines.events import RedisBus
from pipelines.featurize import load_bars
from pipelines.live import LiveWorker
from pipelines.registry import Registry, model_name
from pipelines.store import ResultsStore, Subscription

pytestmark = pytest.mark.slow

SYMBOLS = ["EURUSD", "XAUUSD"]
HISTORY_END = "2024-01-24T00:00:00"  # a Wednesday: the live run is inside trading hours
SPEED = 600.0  # simulated seconds per wall second: an M5 bar every 0.5 s


@pytest.fixture(scope="module")
def world(tmp_path_factory, contract):
    root = tmp_path_factory.mktemp("worker")
    overrides = {
        "data": {
            "root": str(root / "data"),
            "symbols": SYMBOLS,
            "timeframes": ["M5", "H1"],
            "simulator": {"end": HISTORY_END},
            "live": {"backoff_initial_seconds": 0.2, "backoff_max_seconds": 0.5},
        },
        "features": small_features("calendar"),
        "registry": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"},
        "store": {"url": f"sqlite:///{root / 'results.db'}"},
    }
    params = load_params("params.yaml", None, overrides)
    ingest.history(params.data)
    spec = params.features.spec()
    bars = load_bars(BarStore(params.data.root), "EURUSD", ["M5", "H1"])
    m = build_features(bars, spec)
    y = direction_labels(bars["M5"], DirectionLabelSpec(horizon=12))["label"]
    ok = np.isfinite(y)
    name = model_name("mt5prob", "fx", "M5", "direction", 12)
    registry = Registry(params.registry.tracking_uri)
    example = pd.DataFrame(np.nan_to_num(m.values[:3]), columns=m.columns)
    learner = LogisticLearner(C=1e-2).fit(m.values[ok], y[ok])
    meta = {"feature_spec": dataclasses.asdict(spec)}
    registry.log_and_register(name, learner, m.columns, example, {}, {}, {}, [], meta=meta)
    registry.set_champion(name, "1", reason="test", actor="test")
    anchor = datetime.now(UTC)  # the live clock reads HISTORY_END now, for every worker
    simulator = {"end": None, "live": True, "live_start": HISTORY_END, "speed": SPEED}
    live_overrides = overrides | {
        "data": overrides["data"] | {"simulator": simulator | {"live_anchor": anchor.isoformat()}}
    }
    live = load_params("params.yaml", None, live_overrides)
    store = ResultsStore(live.store.url)
    store.migrate()
    tenant, _ = store.add_tenant("a", [Subscription(s, "M5", 12) for s in SYMBOLS])
    # scored up to the history's end: every bar after it must reach the tenant (a worker
    # starting on a series never scored would begin at its newest bar)
    last = datetime.fromisoformat(HISTORY_END).replace(tzinfo=UTC) - timedelta(minutes=5)
    store.move_watermarks({(s, "M5"): last for s in SYMBOLS})
    yield {
        "params": live,
        "registry": registry,
        "store": store,
        "tenant": tenant,
        "overrides": live_overrides,
        "root": root,
    }
    store.close()


def _results(world) -> pd.DataFrame:
    with world["store"].tenant(world["tenant"].tenant_id, "test") as s:
        return s.events(after=0, limit=100_000)


def test_each_bar_close_is_scored_once_across_restart_and_outage(world):
    params, store = world["params"], world["store"]
    redis_url = params.events.url
    events: list[dict] = []
    listener = RedisBus(redis_url)
    listener.subscribe(events.append)
    time.sleep(0.3)  # subscribed before anything is published

    steps = []
    first = LiveWorker(
        params, store, registry=world["registry"], bus=RedisBus(redis_url), on_step=steps.append
    )
    first.run(seconds=3.0)  # the backfill from the history's end, then bar closes as they come
    first.close()
    time.sleep(1.5)  # the worker is gone (a kill): ~3 bars close with nobody listening
    second = LiveWorker(
        params, store, registry=world["registry"], bus=RedisBus(redis_url), on_step=steps.append
    )

    def outage() -> None:
        time.sleep(1.0)
        second.client.simulate_outage(1.2)

    threading.Thread(target=outage, daemon=True).start()
    stats = second.run(seconds=5.0)
    second.close()
    time.sleep(0.3)
    listener.close()

    assert stats.reconnects >= 1 and stats.errors >= 1  # the outage was felt and survived
    got = _results(world)
    stored = BarStore(params.data.root)
    for symbol in SYMBOLS:
        mine = got[got.symbol == symbol]
        times = stored.read(SeriesKey("bars", symbol, "M5")).time
        live_bars = times[times >= pd.Timestamp(HISTORY_END, tz="UTC")]
        assert len(live_bars) >= 12  # ~7 s of wall time at 600×: well over 12 M5 closes
        # every bar that closed since the history's end, exactly once, in commit order
        assert mine.bar_time.tolist() == list(live_bars), symbol
    # bar close → committed: recorded per score, never before the close; every step of the
    # worker scored only bars that had closed
    lag = (got.scored_at - got.bar_closed_at).dt.total_seconds()
    assert (lag >= 0).all() and len(stats.lag) > 0
    assert all(st.new_scores == 0 or st.cycles[-1].lag for st in steps)
    # a bar close the worker was awake for (one new bar per symbol) reaches the store fast:
    # ~50–70 ms measured here for 2 symbols (a GX run per batch alone took ~270 ms per series)
    on_time = [x for st in steps if len(st.lag) == len(SYMBOLS) for x in st.lag]
    assert len(on_time) >= 10 and np.median(on_time) < 0.25, sorted(on_time)
    assert events and sum(e["scores"] for e in events) == len(got)
    assert got.event_id.is_monotonic_increasing and got.event_id.is_unique
    assert (got.bar_closed_at - got.bar_time >= timedelta(0)).all()


def test_a_crash_between_the_commit_and_storing_the_bars_loses_nothing(world):
    """The worker scores a bar close before it stores the bars (``live_score.quiet_seconds``
    later, off the path to the tenant): killed after its commit and before the bar store has
    the bars, it leaves scores ahead of the bar store; the next worker fetches those bars
    again, stores them and scores nothing twice."""
    params, store = world["params"], world["store"]
    root = params.data.root
    crashed = []

    def crash(stage: str) -> None:
        if stage == "tmp_written" and not crashed:
            crashed.append(stage)
            raise RuntimeError("killed before the bars were stored")

    before = {s: BarStore(root).watermark(SeriesKey("bars", s, "M5")) for s in SYMBOLS}
    time.sleep(0.6)  # at least one M5 bar closes (600×: one per 0.5 s)
    first = LiveWorker(params, store, bars=BarStore(root, fault_hook=crash), registry=world["registry"])
    assert first.step().new_scores > 0  # committed; the bars are stored once the close is quiet
    with pytest.raises(RuntimeError, match="killed before"):
        first.store_bars()
    first.close(release=False)  # killed: nothing more is stored
    first.store.release_symbols(first.holder)  # its leases expire (the takeover test); not waited for here
    got = _results(world)
    mark = {s: BarStore(root).watermark(SeriesKey("bars", s, "M5")) for s in SYMBOLS}
    ahead = [s for s in SYMBOLS if got[got.symbol == s].bar_time.max().timestamp() > mark[s]]
    assert ahead and all(mark[s] == before[s] for s in ahead)  # scored, not stored

    second = LiveWorker(params, store, registry=world["registry"])
    second.step()
    second.close()
    got = _results(world)
    stored = BarStore(root)
    for symbol in SYMBOLS:
        mine = got[got.symbol == symbol]
        times = stored.read(SeriesKey("bars", symbol, "M5")).time
        live_bars = times[times >= pd.Timestamp(HISTORY_END, tz="UTC")]
        assert mine.bar_time.tolist() == list(live_bars), symbol  # stored again, scored once


def test_leases_are_kept_through_a_terminal_outage_longer_than_they_last(world):
    """A terminal outage longer than a lease: the worker backs off (longer than a lease here)
    but keeps renewing its leases meanwhile — they talk to the results store, not the terminal
    — so its symbols do not pass to another worker and back, with a gap at each move."""
    import sqlalchemy as sa

    from pipelines.store.schema import series_leases

    params = world["params"]
    live = params.live_score.model_copy(update={"lease_seconds": 0.6})
    backoff = params.data.live.model_copy(update={"backoff_initial_seconds": 1.5, "backoff_max_seconds": 1.5})
    params = params.model_copy(
        update={"live_score": live, "data": params.data.model_copy(update={"live": backoff})}
    )
    store = world["store"]
    worker = LiveWorker(params, store, registry=world["registry"])
    runner = threading.Thread(target=lambda: worker.run(seconds=4.5), daemon=True)
    runner.start()
    time.sleep(1.0)
    worker.client.simulate_outage(2.5)
    expiries = []
    while runner.is_alive():
        with store.engine.connect() as conn:
            rows = conn.execute(sa.select(series_leases.c.expires_at)).scalars().all()
        expiries.append((datetime.now(UTC), [t if t.tzinfo else t.replace(tzinfo=UTC) for t in rows]))
        time.sleep(0.1)
    worker.close()
    assert worker.stats.reconnects >= 1  # the outage was felt
    assert all(len(ts) == len(SYMBOLS) and min(ts) > now for now, ts in expiries[3:]), expiries


def test_two_workers_share_the_symbols_and_one_takes_over_when_the_other_dies(world):
    """Leases: two workers split the symbols; one is killed (it never gives its leases back)
    and the other takes its symbol over once the lease expires; no bar is missed or scored
    twice throughout."""
    params = world["params"]
    live = params.live_score.model_copy(update={"lease_seconds": 1.0, "directory_seconds": 0.2})
    params = params.model_copy(update={"live_score": live})
    store = world["store"]
    held: dict[str, list[tuple[float, tuple[str, ...]]]] = {"a": [], "b": []}

    def recorder(name):
        return lambda st: held[name].append(
            (time.monotonic(), tuple(sorted({k[0] for c in st.cycles for k in c.scored})))
        )

    a = LiveWorker(params, store, registry=world["registry"], on_step=recorder("a"))
    b = LiveWorker(params, store, registry=world["registry"], on_step=recorder("b"))
    threads = [threading.Thread(target=w.run, kwargs={"seconds": 7.0}, daemon=True) for w in (a, b)]
    started = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(3.0)
    assert sorted(a.symbols() + b.symbols()) == SYMBOLS and len(a.symbols()) == 1  # one each
    a.stop()  # killed: its lease is left to expire
    threads[0].join(timeout=5)
    a.close(release=False)
    killed = time.monotonic()
    threads[1].join(timeout=10)
    b.close()
    both = [t for t, symbols in held["b"] if t > killed and len(symbols) == 2]
    assert both and both[0] - killed < 3.0  # taken over within seconds (lease 1 s)
    assert all(len(symbols) <= 1 for t, symbols in held["a"] if t > started + 2.0)
    got = _results(world)
    stored = BarStore(params.data.root)
    for symbol in SYMBOLS:
        mine = got[got.symbol == symbol]
        times = stored.read(SeriesKey("bars", symbol, "M5")).time
        live_bars = times[times >= pd.Timestamp(HISTORY_END, tz="UTC")]
        assert mine.bar_time.tolist() == list(live_bars), symbol  # none missed, none twice


@pytest.mark.postgres
def test_a_results_store_outage_is_waited_out_and_loses_nothing(world, pg_server, pg_database):
    """PostgreSQL stops accepting connections (and drops the worker's) for two seconds: the
    worker backs off and retries instead of dying, and every bar that closed meanwhile
    reaches the tenant exactly once when the store is back."""
    import sqlalchemy as sa

    from pipelines.store import app_url

    admin = pg_database("outage")
    name = sa.make_url(admin).database
    store = ResultsStore(app_url(admin), admin)
    store.migrate()
    tenant, _ = store.add_tenant("a", [Subscription(s, "M5", 12) for s in SYMBOLS])
    bars = BarStore(world["params"].data.root)
    start = {s: bars.watermark(SeriesKey("bars", s, "M5")) for s in SYMBOLS}
    store.move_watermarks({(s, "M5"): datetime.fromtimestamp(t, UTC) for s, t in start.items()})
    worker = LiveWorker(world["params"], store, registry=world["registry"])
    runner = threading.Thread(target=lambda: worker.run(seconds=6.0), daemon=True)
    runner.start()
    time.sleep(1.5)
    with pg_server.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
        conn.execute(
            sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"), {"d": name}
        )
    time.sleep(2.0)
    with pg_server.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
    runner.join(timeout=20)
    assert not runner.is_alive()
    worker.close()
    stats = worker.stats
    assert stats.store_outages >= 1 and stats.errors == stats.store_outages, stats
    with store.tenant(tenant.tenant_id, "test") as s:
        got = s.events(after=0, limit=100_000)
    store.close()
    for symbol in SYMBOLS:
        times = bars.read(SeriesKey("bars", symbol, "M5")).time
        new = times[times > pd.Timestamp(start[symbol], unit="s", tz="UTC")]
        assert len(new) >= 8  # ~6 s at 600×: bars closed before, during and after the outage
        assert got[got.symbol == symbol].bar_time.tolist() == list(new), symbol  # each once


def test_live_worker_flow_runs_and_reports_heartbeats(world, prefect_harness):
    """The Prefect flow the live-worker deployment runs: it follows the terminal for its
    `seconds`, publishes heartbeats as a ``live-worker`` artifact and, with webhooks enabled,
    POSTs the tenant's new results to its webhook (a real HTTP endpoint here), signed."""
    import asyncio
    import json

    import yaml
    from prefect.client.orchestration import get_client
    from test_webhooks import Receiver

    from flows.live import live_worker_flow
    from pipelines.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

    receiver = Receiver()
    secret = world["store"].set_webhook("a", receiver.url + "/ok")
    params_file = world["root"] / "live-params.yaml"
    hooks = {"enabled": True, "poll_seconds": 0.1}
    params_file.write_text(yaml.safe_dump(world["overrides"] | {"events": {"url": None}, "webhooks": hooks}))
    try:
        out = live_worker_flow(params_path=str(params_file), seconds=3.0, report_every=2)
    finally:
        world["store"].remove_webhook("a")
        receiver.close()
    assert out["steps"] >= 3 and out["new_scores"] > 0 and out["errors"] == 0
    assert out["committed_p50_ms"] is not None and out["committed_p50_ms"] >= 0
    posts = [(h, b) for p, h, b, _ in receiver.got if p == "/ok"]
    assert posts and out["webhook_events_delivered"] == sum(len(json.loads(b)["events"]) for _, b in posts)
    assert all(verify(secret, h[TIMESTAMP_HEADER], b, h[SIGNATURE_HEADER]) for h, b in posts)

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts()

    beats = [a for a in asyncio.run(artifacts()) if a.key == "live-worker"]
    assert beats and "committed_p50_ms" in str(beats[-1].data)
