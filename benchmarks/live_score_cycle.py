"""Benchmark: one live-scoring cycle for 1,000 tenants vs 10 tenants, on SQLite and PostgreSQL
(issue 6 targets).

Setup (not timed): simulator bars for 10 symbols × M5, M15, H1, H4, D1 (two months), four
registered models (M5 and M15 base × horizons 12 and 24, default feature families, xgboost),
and N tenants each following 10 symbols × 2 timeframes × 2 horizons — 40 result rows per
tenant per cycle, 40,000 for 1,000 tenants. Before each measured cycle the scoring watermarks
are moved back one bar, exactly as when a new bar closes; each cycle then computes the features
of the newest bar of 20 series incrementally, scores 4 model versions once each, fans out and
writes every tenant's rows plus the watermarks in one transaction.

Targets (2 cores): ≤ 1 s per cycle on both backends; scoring time the same for 10 and 1,000
tenants (only the write grows).

    python benchmarks/live_score_cycle.py [--repeats 3] [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
SYMBOLS = ["EURUSD", "GBPUSD", "USDJPY", "AUDUSD", "XAUUSD", "USDCHF", "USDCAD", "NZDUSD", "EURJPY", "GBPJPY"]
TIMEFRAMES = ["M5", "M15"]
HORIZONS = [12, 24]
HTF = {"M5": ["M15", "H1", "H4", "D1"], "M15": ["H1", "H4", "D1"]}


def setup_world(work: Path):
    from features.labels import direction_labels
    from features.matrix import build_features
    from features.spec import DirectionLabelSpec
    from models.base_learners import XGBoostLearner
    from pipelines import ingest
    from pipelines.bar_store import BarStore
    from pipelines.config import load_params
    from pipelines.featurize import load_bars
    from pipelines.registry import Registry, model_name

    params = load_params(
        REPO / "params.yaml",
        None,
        {
            "data": {
                "root": str(work / "data"),
                "symbols": SYMBOLS,
                "timeframes": ["M5", "M15", "H1", "H4", "D1"],
                # a Tuesday: a live run from here at 300× has ~18 min of wall time before
                # the weekend closes the market (from a Friday it had ~4)
                "simulator": {"end": "2024-02-27T00:00:00"},
            },
            "registry": {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}"},
        },
    )
    ingest.history(params.data)
    registry = Registry(params.registry.tracking_uri)
    for tf in TIMEFRAMES:
        features = params.features.model_copy(
            update={"base_timeframe": tf, "higher_timeframes": tuple(HTF[tf])}
        )
        spec = features.spec()
        bars = load_bars(BarStore(params.data.root), "EURUSD", [tf, *HTF[tf]])
        m = build_features(bars, spec)
        for h in HORIZONS:
            y = direction_labels(bars[tf], DirectionLabelSpec(horizon=h))["label"]
            ok = np.isfinite(y)
            learner = XGBoostLearner(n_estimators=200, params={"max_depth": 3}).fit(m.values[ok], y[ok])
            name = model_name("mt5prob", "fx", tf, "direction", h)
            example = pd.DataFrame(np.nan_to_num(m.values[-3:]), columns=m.columns)
            v = registry.log_and_register(
                name,
                learner,
                m.columns,
                example,
                {},
                {},
                {},
                [],
                meta={"feature_spec": dataclasses.asdict(spec)},
            )
            registry.set_champion(name, v, reason="benchmark", actor="benchmark")
    return params, registry


def subscriptions() -> list:
    """What every tenant of this world follows (10 symbols × 2 timeframes × 2 horizons)."""
    from pipelines.store import Subscription

    return [Subscription(s, tf, h) for s in SYMBOLS for tf in TIMEFRAMES for h in HORIZONS]


def model_names() -> list[str]:
    """The models this world registers (`setup_world`)."""
    from pipelines.registry import model_name

    return [model_name("mt5prob", "fx", tf, "direction", h) for tf in TIMEFRAMES for h in HORIZONS]


def add_tenants(store, n: int) -> None:
    follows = subscriptions()
    for i in range(n):
        store.add_tenant(f"tenant-{i:04d}", follows)


def measure(params, registry, store, tenants: int, repeats: int) -> dict:
    from pipelines.live_score import LiveScorer, rewind

    add_tenants(store, tenants)
    live = params.live_score.model_copy(update={"max_bars_per_cycle": 1})
    scorer = LiveScorer(params.model_copy(update={"live_score": live}), store, registry=registry)
    scorer.cycle()  # newest bar of every series: models loaded, caches warm
    # replay the last bars one per cycle, as if each had just closed: every measured cycle
    # scores bars never scored before (inserts, as live)
    rewind(store, params, repeats + 2)
    scorer.cycle()
    splits, scored = [], []
    for _ in range(repeats):
        report = scorer.cycle()
        assert report.rows == 40 * tenants, (report.rows, report.skipped)
        splits.append(report.seconds)
        scored.append((report.model_calls, sum(report.scored.values())))
    assert len(set(scored)) == 1
    return {k: statistics.median(s[k] for s in splits) for k in splits[0]} | {
        "rows": 40 * tenants,
        "model_calls": scored[0][0],
        "scored_rows": scored[0][1],
    }


def _pg_database(server_url: str):
    name = f"mt5prob_bench_{uuid.uuid4().hex[:8]}"
    server = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    return server, name, sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    # tenant data is sealed (issue 15): a master key of this run's own unless one is given
    from pipelines.store.crypto import new_master_key_text

    os.environ.setdefault("MT5PROB_MASTER_KEY", new_master_key_text())
    os.environ.setdefault("MT5PROB_ALLOW_PASSWORDLESS", "1")  # the local server trusts its clients
    from pipelines.store import ResultsStore, app_url

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        params, registry = setup_world(work)
        print(
            f"setup: {len(SYMBOLS)} symbols ingested, 4 models registered in {time.perf_counter() - t0:.0f} s"
        )
        for backend in ("sqlite", "postgresql"):
            for n in (10, 1000):
                if backend == "sqlite":
                    store = ResultsStore(f"sqlite:///{work / f'results-{n}.db'}")
                    server = None
                else:
                    server, dbname, admin = _pg_database(args.pg)
                    store = ResultsStore(app_url(admin), admin)
                store.migrate()
                try:
                    results[(backend, n)] = measure(params, registry, store, n, args.repeats)
                finally:
                    store.close()
                    if server is not None:
                        with server.connect() as conn:
                            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))
                            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{dbname}_keys" WITH (FORCE)'))
                        server.dispose()

    print(
        f"\nlive-score cycle — {len(SYMBOLS)} symbols × {len(TIMEFRAMES)} timeframes × "
        f"{len(HORIZONS)} horizons per tenant, median of {args.repeats} cycles, {os.cpu_count()} cores"
    )
    print(
        f"{'backend':11s} {'tenants':>7s} {'rows':>7s} {'features':>9s} {'scoring':>8s} {'writes':>8s} "
        f"{'total':>8s} {'rows/s':>9s}"
    )
    for (backend, n), r in results.items():
        print(
            f"{backend:11s} {n:7,d} {r['rows']:7,d} {r['features'] * 1e3:7.0f}ms {r['scoring'] * 1e3:6.1f}ms "
            f"{r['writes'] * 1e3:6.0f}ms {r['total'] * 1e3:6.0f}ms {r['rows'] / r['total']:9,.0f}"
        )
    checks = {}
    for backend in ("sqlite", "postgresql"):
        small, big = results[(backend, 10)], results[(backend, 1000)]
        checks[f"{backend}: 1,000-tenant cycle ≤ 1 s ({big['total']:.2f} s)"] = big["total"] <= 1.0
        ratio = big["scoring"] / small["scoring"]
        grow = big["writes"] / small["writes"]
        same_work = (big["model_calls"], big["scored_rows"]) == (small["model_calls"], small["scored_rows"])
        label = (
            f"{backend}: scoring the same for 10 and 1,000 tenants — {big['model_calls']} model calls on "
            f"{big['scored_rows']} rows both; time {ratio:.2f}× (writes {grow:.0f}×)"
        )
        checks[label] = same_work and (0.5 <= ratio <= 1.5 or abs(big["scoring"] - small["scoring"]) < 0.002)
    for label, ok in checks.items():
        print(f"  [{'PASS' if ok else 'FAIL'}] {label}")


if __name__ == "__main__":
    main()
