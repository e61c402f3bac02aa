"""Benchmark: the probability matrix (issue 17). Prints [PASS]/[FAIL] per target.

Part ``api`` (this file so far): ``/matrix`` for a tenant following 40 cells, through a real
``bentoml serve`` on loopback, against a results store holding ``--days`` of scores of every
followed cell (one score per closed bar of the cell's timeframe) and ``--tenants`` other
tenants following parts of the matrix. Measured in the same run: ``/matrix`` p50/p99 from one
client, and the naive way to the same grid — one ``/results/range`` call per cell for its
newest row, what a tenant had to do without ``/matrix``. Target: ``/matrix`` p99 ≤ 20 ms.

Part ``train``: the default matrix (14 cells) trained by the ``train-matrix`` Prefect flow on
the fast profile's data, one cell at a time and then ``--workers`` at a time, each run from
scratch: wall time per cell and in total, the speed-up, and the gate's decision per cell.

Part ``live``: live scoring of the whole matrix — `live_latency.py --world matrix` (this file
is that world: `setup_world`, `add_tenants`): 1,000 tenants spread over all 56 (symbol, cell)
subscriptions of the default matrix (4 fx symbols × 14 cells, one model per cell fitted on the
cell's own features and labels by the pipeline's code), two live workers on the accelerated
simulator clock with the worker kill, terminal outage and service restart of that benchmark,
judged by its targets (the live path's: bar close → committed p50 ≤ 100 ms, p99 ≤ 250 ms, SSE
p99 ≤ 300 ms, nothing missed or repeated, memory flat).

    python benchmarks/matrix.py [--part all|api|train|live] [--days 30] [--tenants 200] [--requests 400]
                                [--store sqlite|postgresql] [--workers 2] [--live-seconds 150]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.config import load_params  # noqa: E402
from pipelines.mt5.constants import timeframe_seconds  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SYMBOLS = ("EURUSD", "GBPUSD", "USDJPY", "XAUUSD")
TIMEFRAMES = ("M5", "M15", "H1")  # the default matrix's base timeframes (the live world's series)
FOLLOWS_PER_TENANT = 24  # of the 56 (symbol, cell) subscriptions


def _world_params(work: Path):
    return load_params(
        REPO / "params.yaml",
        None,
        {
            "data": {
                "root": str(work / "data"),
                "symbols": list(SYMBOLS),
                "timeframes": ["M5", "M15", "H1", "H4", "D1"],
                # two months to a Tuesday: ~18 min of wall time at 300× before the weekend
                "simulator": {"end": "2024-02-27T00:00:00"},
            },
            "registry": {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}"},
        },
    )


def setup_world(work: Path):
    """Live world of `live_latency.py --world matrix`: the 4 symbols ingested (two months) and
    one champion per cell of the default matrix — an xgboost fitted on EURUSD's features and
    labels of that cell, made by the pipeline's own featurize and training-data code (the
    benchmark measures the live path, not model quality)."""
    import dataclasses

    import pandas as pd

    from models.base_learners import XGBoostLearner
    from pipelines import featurize, ingest
    from pipelines.config import cell_params
    from pipelines.registry import Registry, model_name
    from pipelines.train import load_training_data

    params = _world_params(work)
    ingest.history(params.data)
    registry = Registry(params.registry.tracking_uri)
    for cell in params.matrix.all():
        cp = cell_params(params, cell.id)
        out = work / "cells" / cell.id
        featurize.run(cp.data.model_copy(update={"symbols": ("EURUSD",)}), cp.features, cp.labels, out)
        data = load_training_data(out, cell.label_kind)
        columns = json.loads((out / "columns.json").read_text())["columns"]

        def fit(X: np.ndarray, y: np.ndarray) -> XGBoostLearner:
            return XGBoostLearner(n_estimators=100, params={"max_depth": 3}).fit(X, y)

        if cell.label_kind == "up_flat_down":  # three classes: the move, then the side of a move
            from models.three_way import ThreeWayModel, move_target, side_rows, side_target

            moved = side_rows(data.y)
            learner = ThreeWayModel(
                fit(data.X, move_target(data.y)), fit(data.X[moved], side_target(data.y[moved]))
            )
        else:
            learner = fit(data.X, data.y)
        name = model_name("mt5prob", cell.group, cell.timeframe, cell.label_kind, cell.horizon)
        example = pd.DataFrame(np.nan_to_num(data.X[-3:]), columns=columns)
        spec = dataclasses.asdict(cp.features.spec())
        version = registry.log_and_register(
            name,
            learner,
            columns,
            example,
            {},
            {},
            {},
            [],
            meta={"feature_spec": spec, "label_kind": cell.label_kind},
        )
        registry.set_champion(name, version, reason="benchmark", actor="benchmark")
    return params, registry


def subscriptions() -> list:
    """Every (symbol, cell) of the default matrix over the 4 symbols: 56 subscriptions."""
    from pipelines.registry import served_subscriptions

    return served_subscriptions(load_params(REPO / "params.yaml", None, {"data": {"symbols": list(SYMBOLS)}}))


def model_names() -> list[str]:
    """One model per cell of the default matrix."""
    from pipelines.registry import model_name

    params = load_params(REPO / "params.yaml")
    return [model_name("mt5prob", c.group, c.timeframe, c.label_kind, c.horizon) for c in params.matrix.all()]


def add_tenants(store, n: int) -> None:
    """`n` tenants, each following FOLLOWS_PER_TENANT of the 56 subscriptions (seeded draws;
    tenant i < 56 always includes subscription i, so that every subscription is followed)."""
    subs = subscriptions()
    rng = np.random.default_rng(17)
    for i in range(n):
        picked = rng.choice(len(subs), FOLLOWS_PER_TENANT, replace=False)
        if i < len(subs) and i not in picked:
            picked[0] = i  # the first 56 tenants make sure every subscription is followed
        store.add_tenant(f"tenant-{i:04d}", [subs[j] for j in sorted(picked)])


def _probability(rng: np.random.Generator, label_kind: str) -> float | tuple[float, float, float]:
    """A stand-in score: P(label 1) in [0.3, 0.7], or three-class (down, flat, up) near 1/3 each."""
    if label_kind == "up_flat_down":
        w = rng.uniform(0.8, 1.2, 3)
        return tuple(float(v) for v in w / w.sum())
    return float(rng.uniform(0.3, 0.7))


def fill(store, subs, days: int, now: datetime) -> int:
    """`days` of scores, one per closed bar of each subscription's timeframe (model per cell)."""
    from pipelines.store import ScoreRow

    rng = np.random.default_rng(0)
    total = 0
    for sub in subs:
        step = timeframe_seconds(sub.timeframe)
        start = int((now - timedelta(days=days)).timestamp()) // step * step
        times = range(start, int(now.timestamp()) - step, step)
        rows = [
            ScoreRow(
                sub.symbol,
                sub.timeframe,
                datetime.fromtimestamp(t, UTC),
                sub.horizon,
                sub.label_kind,
                f"mt5prob-fx-{sub.timeframe}-{sub.label_kind}-h{sub.horizon}",
                "1",
                _probability(rng, sub.label_kind),
                True,
                datetime.fromtimestamp(t + step, UTC),
            )
            for t in times
        ]
        for i in range(0, len(rows), 5000):
            total += store.write_scores(rows[i : i + 5000])
    return total


def timed(conn: http.client.HTTPConnection, path: str, body: dict, key: str) -> tuple[float, dict]:
    t = time.perf_counter()
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json", "X-API-Key": key})
    r = conn.getresponse()
    data = r.read()
    dt = time.perf_counter() - t
    if r.status != 200:
        raise RuntimeError(f"{path}: {r.status} {data[:300]!r}")
    return dt, json.loads(data)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--part", choices=["all", "api", "train", "live"], default="all")
    parser.add_argument("--workers", type=int, default=2, help="train: cells at a time when fanned out")
    parser.add_argument("--live-seconds", type=float, default=150.0, help="live: the live workers' run")
    args = parser.parse_args()
    os.environ.setdefault(
        "MT5PROB_MASTER_KEY", os.popen(f"{sys.executable} -m pipelines.tenants keygen").read().strip()
    )
    if args.part in ("all", "train"):
        train(args)
    if args.part in ("all", "api"):
        api(args)
    if args.part in ("all", "live"):
        live(args)


def live(args: argparse.Namespace) -> None:
    """`live_latency.py --world matrix` with 1,000 tenants (its output is this part's)."""
    print("\n== live scoring of the whole matrix (benchmarks/live_latency.py --world matrix)", flush=True)
    subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "live_latency.py"),
            "--world",
            "matrix",
            "--tenants",
            "1000",
            "--seconds",
            f"{args.live_seconds:.0f}",
        ],
        check=True,
    )


def train(args: argparse.Namespace) -> None:
    """The default matrix (14 cells) on the fast profile's data, built by the ``train-matrix``
    flow one cell at a time and then `args.workers` at a time (threads), each from scratch
    (own Optuna studies, MLflow store and outputs): wall time per cell and in total."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.matrix import train_matrix
    from pipelines import ingest
    from pipelines.config import _deep_merge

    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness():
        work = Path(tmp)
        raw = yaml.safe_load((REPO / "params.yaml").read_text())
        runs = {}
        for mode, workers in (("sequential", 1), (f"fanned out ({args.workers} threads)", args.workers)):
            folder = work / str(workers)
            overrides = {
                "data": {"root": str(work / "data")},
                "registry": {"tracking_uri": f"sqlite:///{folder / 'mlflow.db'}"},
                "tune": {"storage": f"sqlite:///{folder / 'optuna.db'}"},
                "outputs": str(folder / "outputs"),
            }
            folder.mkdir()
            params_file = folder / "params.yaml"
            params_file.write_text(yaml.safe_dump(_deep_merge(raw, overrides)))
            if workers == 1:
                started = time.perf_counter()
                ingest.history(load_params(params_file, "fast").data)
                print(f"train: fast profile ingested in {time.perf_counter() - started:.0f} s")
            started = time.perf_counter()
            done = train_matrix(params_path=str(params_file), profile="fast", workers=workers)
            runs[mode] = (time.perf_counter() - started, {r["cell"]: r for r in done["cells"]})
        (seq_s, seq), (fan_s, fan) = runs.values()
        fan_mode = list(runs)[1]
        print(f"\n{'cell':<28} {'sequential s':>12} {'fanned out s':>12}  gate (sequential run)")
        for cell in seq:
            r = seq[cell]
            gate = "promoted" if r["promoted"] else f"not promoted ({r['skill']} skill)"
            print(f"{cell:<28} {r['seconds']:>12.0f} {fan[cell]['seconds']:>12.0f}  {gate}")
        print(f"total: sequential {seq_s:.0f} s, {fan_mode} {fan_s:.0f} s — speed-up {seq_s / fan_s:.2f}×")
        print(
            f"[{'PASS' if fan_s <= 600 else 'FAIL'}] the default matrix (fast profile) trains in ≤ 10 min "
            f"on 2 cores: {fan_s:.0f} s"
        )


def api(args: argparse.Namespace) -> None:
    """/matrix for a tenant following 40 cells (see the module's doc)."""
    from models.base_learners import LogisticLearner
    from pipelines.registry import Registry
    from pipelines.store import ResultsStore
    from serving.devserver import running_service

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        url = f"sqlite:///{work / 'results.db'}"
        admin = None
        if args.store == "postgresql":
            import sqlalchemy as sa

            db = f"mt5prob_bench_{os.getpid()}"
            with sa.create_engine(
                "postgresql+psycopg://postgres@127.0.0.1:5432/test", isolation_level="AUTOCOMMIT"
            ).connect() as c:
                c.execute(sa.text(f"CREATE DATABASE {db}"))
            url = admin = f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
        raw = {
            "registry": {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}"},
            "store": {"url": url, "admin_url": admin},
            "serving": {
                "limits": {"per_address_rps": 0, "per_tenant_rps": 0, "tenant_concurrency": 0},
                "access_log": False,
            },
            "events": {"url": None},
        }
        params_file = work / "params.yaml"
        params_file.write_text(yaml.safe_dump(raw))
        params = load_params(params_file)
        # one registered champion, so that the service is ready (the grid is read from the store)
        registry = Registry(params.registry.tracking_uri)
        rng = np.random.default_rng(1)
        X = rng.normal(size=(200, 2))
        learner = LogisticLearner(C=1.0).fit(X, (X[:, 0] > 0).astype(float))
        import pandas as pd

        name = "mt5prob-fx-M5-direction-h12"
        v = registry.log_and_register(
            name,
            learner,
            ["a", "b"],
            pd.DataFrame(X[:2], columns=["a", "b"]),
            {},
            {},
            {"git_commit": "b"},
            [],
        )
        registry.set_champion(name, v, reason="benchmark", actor="benchmark")

        store = ResultsStore(url)
        store.migrate()
        subs = subscriptions()[:40]  # a tenant following 40 cells
        now = datetime(2024, 7, 1, tzinfo=UTC)
        # tenants first: a tenant sees the scores committed after it subscribed
        _, key = store.add_tenant("wide", subs)
        for i in range(args.tenants):  # others following parts of the matrix
            store.add_tenant(f"other{i}", subs[i % len(subs) :: 7])
        started = time.perf_counter()
        written = fill(store, subs, args.days, now)
        print(
            f"store ({args.store}): {written:,} scores of {len(subs)} cells over {args.days} days "
            f"written in {time.perf_counter() - started:.0f} s"
        )
        if args.store == "postgresql":
            with store.engine.begin() as c:
                c.exec_driver_sql("ANALYZE")
        store.close()

        with running_service(params_file) as service:
            port = int(service.url.rsplit(":", 1)[1])
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            _, grid = timed(conn, "/matrix", {}, key)
            assert grid["follows"] == 40 and not grid["missing"], grid["missing"]
            for _ in range(20):
                timed(conn, "/matrix", {}, key)
            lat = np.array([timed(conn, "/matrix", {}, key)[0] for _ in range(args.requests)]) * 1000
            flat = np.array([timed(conn, "/results/latest", {}, key)[0] for _ in range(args.requests)]) * 1000
            naive = []
            for _ in range(max(10, args.requests // 40)):
                t = time.perf_counter()
                for sub in subs:
                    step = timeframe_seconds(sub.timeframe)
                    body = {
                        "symbol": sub.symbol,
                        "timeframe": sub.timeframe,
                        "start": (now - timedelta(seconds=3 * step)).isoformat(),
                        "end": now.isoformat(),
                        "limit": 4,
                    }
                    timed(conn, "/results/range", body, key)
                naive.append((time.perf_counter() - t) * 1000)
            conn.close()
        p50, p99 = np.percentile(lat, [50, 99])
        n50 = float(np.percentile(naive, 50))
        f50, f99 = np.percentile(flat, [50, 99])
        print(f"peer: /results/latest (the same 40 rows, flat): p50 {f50:.1f} ms, p99 {f99:.1f} ms")
        print(
            f"/matrix, 40 cells, {args.requests} sequential calls: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
            f"max {lat.max():.1f} ms"
        )
        print(
            f"naive grid (40 × /results/range): p50 {n50:.0f} ms per grid — /matrix is "
            f"{n50 / p50:.0f}× faster at p50"
        )
        ok = p99 <= 20
        print(
            f"[{'PASS' if ok else 'FAIL'}] /matrix p99 ≤ 20 ms for a tenant following 40 cells: {p99:.1f} ms"
        )
        if args.store == "postgresql":
            import sqlalchemy as sa

            with sa.create_engine(
                "postgresql+psycopg://postgres@127.0.0.1:5432/test", isolation_level="AUTOCOMMIT"
            ).connect() as c:
                c.execute(sa.text(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"))


if __name__ == "__main__":
    main()
