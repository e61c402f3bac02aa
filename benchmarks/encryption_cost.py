"""Benchmark: what sealing tenant data at rest costs (issue 15 targets), both backends.

Setup (not timed): the live-score benchmark's world (10 symbols × M5/M15, four registered
xgboost models; benchmarks/live_score_cycle.py) and, per backend and per ``store.encryption``
(off, on), a fresh results store with 1,000 tenants each following 10 symbols × 2 timeframes ×
2 horizons (40,000 tenant-rows per bar close).

Measured, encryption off and on, on SQLite and PostgreSQL:

- the live path's commit: one live-scoring cycle as each new bar closes (features of 20 series,
  4 model versions scored once, every probability sealed and written with the watermarks in one
  transaction) — the off and on stores' cycles interleaved, median of ``--repeats`` each (run
  one after the other, the same cycle differed by ±30% between runs with no change at all);
  `benchmarks/live_latency.py` measures the same path end to end (bar close → committed → SSE
  client) with encryption on;
- ``POST /results/latest`` and ``POST /results/range`` answering 1,000 rows, through the real
  BentoML service (``--requests`` sequential calls after a warm-up; p50/p99 as the client sees
  them): with encryption on, every probability is opened and every signal derived per row;
- master-key rotation with ``--rows`` (10 million) stored scores on PostgreSQL: the data keys are
  re-wrapped, no row is touched (rows whose ``xmin`` moved are counted).

Targets: results endpoints p99 on ≤ 1.5× off; the live cycle on ≤ 250 ms (the live p99 target)
and within 1.25× of off; master-key rotation over 10 M rows ≤ 10 s touching 0 rows.

    python benchmarks/encryption_cost.py [--repeats 5] [--requests 300] [--rows 10000000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import sqlalchemy as sa
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _store(backend: str, encryption: bool, work: Path, pg: str, made: list):
    from benchmarks.live_score_cycle import _pg_database
    from pipelines.store import ResultsStore, app_url

    if backend == "sqlite":
        path = work / f"results-{int(encryption)}.db"
        return ResultsStore(f"sqlite:///{path}", encryption=encryption), f"sqlite:///{path}", None
    server, name, admin = _pg_database(pg)
    made.append((server, name))
    return ResultsStore(app_url(admin), admin, encryption=encryption), app_url(admin), admin


def _cycles(params, registry, stores: dict, repeats: int) -> dict:
    """Median cycle splits per store, the stores' cycles interleaved (off, on, off, on, …)."""
    from benchmarks.live_score_cycle import add_tenants
    from pipelines.live_score import LiveScorer, rewind

    live = params.live_score.model_copy(update={"max_bars_per_cycle": 1})
    scorers = {}
    for key, store in stores.items():
        add_tenants(store, 1000)
        scorers[key] = LiveScorer(params.model_copy(update={"live_score": live}), store, registry=registry)
        scorers[key].cycle()  # newest bars: models loaded, caches warm
        rewind(store, params, repeats + 2)
        scorers[key].cycle()
    splits: dict = {key: [] for key in stores}
    for _ in range(repeats):
        for key, scorer in scorers.items():
            report = scorer.cycle()  # 40,000 tenant-rows, fewer when a series has a gap there
            assert report.rows >= 30_000, (report.rows, report.skipped)
            splits[key].append(report.seconds)
    return {key: {k: float(np.median([s[k] for s in got])) for k in got[0]} for key, got in splits.items()}


def _results_latency(params, store, url: str, admin: str | None, encryption: bool, work: Path, n: int):
    """p50/p99 (ms) of /results/latest and /results/range (1,000 rows) through the service."""
    import httpx

    from pipelines.registry import model_name
    from pipelines.store import ScoreRow, Subscription
    from serving.devserver import running_service

    name = model_name("mt5prob", "fx", "M5", "direction", 12)
    _, key = store.add_tenant("reader", [Subscription("EURUSD", "M5", 12)])
    t0 = datetime(2023, 1, 2, tzinfo=UTC)  # before the live cycles' bars
    rows = [
        ScoreRow(
            "EURUSD", "M5", t0 + timedelta(minutes=5 * i), 12, "direction", name, "1",
            float(np.random.default_rng(i).uniform()), True, t0 + timedelta(minutes=5 * (i + 1)),
        )
        for i in range(1000)
    ]  # fmt: skip
    store.write_scores(rows)
    if store.dialect == "postgresql":
        # statistics of the freshly loaded tables, as autovacuum gathers them within a minute
        # of a bulk load on a default server (this machine's runs with autovacuum off): without
        # them the planner joins each score to every follower's subscription of its series and
        # filters the tenant out — 1,000 rows per score, 0.4-0.9 s per 1,000-row read instead
        # of ~60 ms (EXPLAIN ANALYZE), whatever the encryption
        with store.admin_engine.begin() as conn:
            conn.execute(sa.text("ANALYZE"))
    file = work / f"serve-{store.dialect}-{int(encryption)}.yaml"
    file.write_text(
        yaml.safe_dump(
            {
                "data": {"root": str(params.data.root)},
                "registry": {"tracking_uri": params.registry.tracking_uri},
                "store": {"url": url, "admin_url": admin, "encryption": encryption},
                "serving": {"models": [name], "limits": {"per_address_rps": 0, "per_tenant_rps": 0}},
            }
        )
    )
    out = {}
    body_range = {"start": t0.isoformat(), "end": (t0 + timedelta(days=30)).isoformat(), "limit": 1000}
    with running_service(file, log=work / f"serve-{store.dialect}-{int(encryption)}.log") as svc:
        with httpx.Client(base_url=svc.url, headers={"X-API-Key": key}, timeout=30) as client:
            for path, body, want in (("/results/range", body_range, 1000), ("/results/latest", {}, 1)):
                for _ in range(20):  # warm-up
                    r = client.post(path, json=body)
                    assert r.status_code == 200 and len(r.json()["rows"]) >= want, r.text[:300]
                took = []
                for _ in range(n):
                    started = time.perf_counter()
                    r = client.post(path, json=body)
                    took.append(time.perf_counter() - started)
                    assert r.status_code == 200
                out[path] = (np.percentile(took, 50) * 1e3, np.percentile(took, 99) * 1e3)
    return out


def _master_rotation(pg: str, rows: int, made: list) -> dict:
    """Fill `scores` with `rows` sealed rows, then re-wrap the data keys under a new master key."""
    from benchmarks.live_score_cycle import _pg_database
    from pipelines.store import ResultsStore, ScoreRow, app_url
    from pipelines.store.crypto import LocalMasterKey, new_master_key_text

    server, name, admin = _pg_database(pg)
    made.append((server, name))
    store = ResultsStore(app_url(admin), admin)
    store.migrate()
    t0 = datetime(2020, 1, 1, tzinfo=UTC)
    store.write_scores([ScoreRow("EURUSD", "M5", t0, 12, "direction", "m", "1", 0.5, True, t0)])
    started = time.perf_counter()
    with store.admin_engine.begin() as conn:  # copies of one sealed row, each its own bar
        conn.execute(
            sa.text(
                "INSERT INTO scores (symbol, timeframe, bar_time, horizon, label_kind, model_name, "
                "model_version, probability_sealed, followed, bar_closed_at, committed_at) "
                "SELECT s.symbol, s.timeframe, s.bar_time + g * interval '5 minutes', s.horizon, "
                "s.label_kind, s.model_name, s.model_version, s.probability_sealed, s.followed, "
                "s.bar_closed_at, s.committed_at FROM scores s, generate_series(1, :n) g"
            ),
            {"n": rows - 1},
        )
    filled = time.perf_counter() - started
    with store.admin_engine.connect() as conn:
        count = conn.execute(sa.text("SELECT count(*) FROM scores")).scalar_one()
        before = conn.execute(sa.text("SELECT txid_current()")).scalar_one()
    new = LocalMasterKey.from_text(new_master_key_text())
    started = time.perf_counter()
    rewrapped = store.vault.keys.rewrap(new)
    seconds = time.perf_counter() - started
    with store.admin_engine.connect() as conn:
        touched = conn.execute(
            sa.text("SELECT count(*) FROM scores WHERE xmin::text::bigint > :x"), {"x": before}
        ).scalar_one()
    verify = ResultsStore(app_url(admin), admin, masters=[new])
    verify.verify_keys()
    verify.close()
    store.close()
    return {"rows": count, "fill_seconds": filled, "seconds": seconds, "keys": rewrapped, "touched": touched}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--requests", type=int, default=150)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    from pipelines.store.crypto import new_master_key_text

    os.environ.setdefault("MT5PROB_MASTER_KEY", new_master_key_text())  # this run's own
    os.environ.setdefault("MT5PROB_ALLOW_PASSWORDLESS", "1")  # the local server trusts its clients
    from benchmarks.live_score_cycle import setup_world

    cycles: dict = {}
    reads: dict = {}
    made: list = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        params, registry = setup_world(work)
        print(f"setup: world in {time.perf_counter() - t0:.0f} s", flush=True)
        try:
            for backend in ("sqlite", "postgresql"):
                opened = {enc: _store(backend, enc, work, args.pg, made) for enc in (False, True)}
                try:
                    for store, _, _ in opened.values():
                        store.migrate()
                    got = _cycles(params, registry, {enc: o[0] for enc, o in opened.items()}, args.repeats)
                    for encryption, (store, url, admin) in opened.items():
                        cycles[(backend, encryption)] = got[encryption]
                        reads[(backend, encryption)] = _results_latency(
                            params, store, url, admin, encryption, work, args.requests
                        )
                finally:
                    for store, _, _ in opened.values():
                        store.close()
                print(f"  {backend}: measured", flush=True)
            rotation = _master_rotation(args.pg, args.rows, made)
        finally:
            for server, name in made:
                with server.connect() as conn:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}_keys" WITH (FORCE)'))
                server.dispose()

    print(f"\nencryption cost — 1,000 tenants × 40 series, {os.cpu_count()} cores")
    print(f"{'backend':11s} {'encryption':>10s} {'cycle':>8s} {'writes':>8s} "
          f"{'range p50':>10s} {'range p99':>10s} {'latest p50':>11s} {'latest p99':>11s}")  # fmt: skip
    for (backend, enc), c in cycles.items():
        r = reads[(backend, enc)]
        print(
            f"{backend:11s} {'on' if enc else 'off':>10s} "
            f"{c['total'] * 1e3:6.0f}ms {c['writes'] * 1e3:6.0f}ms "
            f"{r['/results/range'][0]:8.1f}ms {r['/results/range'][1]:8.1f}ms "
            f"{r['/results/latest'][0]:9.1f}ms {r['/results/latest'][1]:9.1f}ms"
        )
    print(
        f"master-key rotation: {rotation['rows']:,} scores stored "
        f"(filled in {rotation['fill_seconds']:.0f} s), {rotation['keys']} data keys re-wrapped "
        f"in {rotation['seconds']:.3f} s, {rotation['touched']} rows touched"
    )
    checks = {}
    for backend in ("sqlite", "postgresql"):
        off, on = cycles[(backend, False)], cycles[(backend, True)]
        ratio = on["total"] / off["total"]
        checks[
            f"{backend}: live cycle with encryption {on['total'] * 1e3:.0f} ms ≤ 250 ms and ≤ 1.25× off "
            f"({off['total'] * 1e3:.0f} ms; {ratio:.2f}×)"
        ] = on["total"] <= 0.25 and ratio <= 1.25
        for path in ("/results/range", "/results/latest"):
            p_off, p_on = reads[(backend, False)][path][1], reads[(backend, True)][path][1]
            label = f"{backend}: {path} p99 on {p_on:.1f} ms ≤ 1.5× off {p_off:.1f} ms ({p_on / p_off:.2f}×)"
            checks[label] = p_on <= 1.5 * p_off
    checks[
        f"master-key rotation over {rotation['rows']:,} rows ≤ 10 s ({rotation['seconds']:.3f} s), "
        f"0 rows touched ({rotation['touched']})"
    ] = rotation["seconds"] <= 10 and rotation["touched"] == 0 and rotation["rows"] >= args.rows
    for label, ok in checks.items():
        print(f"  [{'PASS' if ok else 'FAIL'}] {label}")


if __name__ == "__main__":
    main()
