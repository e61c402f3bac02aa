"""Benchmark: the scoring service under load on loopback (issue 5 targets).

In a temporary workspace: ingest the fast profile from the simulator, featurize, train the
registered stacked model (logistic + xgboost + MLP, calibrated), register it twice (v1
champion, v2 challenger), add a tenant, start ``bentoml serve`` (one worker), then drive it
with client *processes* on the same 2 cores:

1. in-process floors, measured in this run: the model's own ``predict_proba`` on one row,
   and the naive path (MLflow ``pyfunc.predict`` on a one-row DataFrame);
2. single-row calls, one client, sequential → p50 / p99 latency;
3. single-row calls, 8 concurrent clients → p50 / p99 and throughput (adaptive batching);
4. batched calls (1,000 rows each), 2 clients → rows/s;
5. 4 clients of single-row calls while the champion is promoted (v1 → v2) and then rolled
   back with ``python -m serving.rollback`` → failed requests, time for the service to follow.

Peak memory is the service's whole process tree (RSS), sampled every 50 ms.
Targets (2 cores): single-row p50 ≤ 5 ms, p99 ≤ 20 ms; batched ≥ 20,000 rows/s; zero failed
requests across rollback and promotion.

    python benchmarks/serving_load.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]


def _client(port: int, key: str, body: bytes, seconds: float, count: int, out: mp.Queue) -> None:
    """One keep-alive connection; sends `body` until `seconds` pass or `count` calls are done."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json", "X-API-Key": key}
    lat, versions, failures = [], [], []
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end and n < count:
        t = time.perf_counter()
        try:
            conn.request("POST", "/score", body, headers)
            r = conn.getresponse()
            data = r.read()
            dt = time.perf_counter() - t
            if r.status != 200:
                failures.append(f"{r.status} {data[:120]!r}")
            else:
                lat.append(dt)
                versions.append((time.time(), json.loads(data)["version"]))
        except Exception as exc:  # noqa: BLE001 - counted as a failure
            failures.append(repr(exc))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        n += 1
    out.put((lat, versions, failures))


def load(port: int, key: str, body: bytes, clients: int, seconds: float, count: int = 10**9) -> dict:
    q: mp.Queue = mp.Queue()
    procs = [mp.Process(target=_client, args=(port, key, body, seconds, count, q)) for _ in range(clients)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
    wall = time.perf_counter() - t0
    lat = np.sort(np.concatenate([np.asarray(r[0]) for r in results])) if results else np.array([])
    return {
        "calls": len(lat),
        "wall": wall,
        "p50": float(np.percentile(lat, 50)) * 1e3 if len(lat) else float("nan"),
        "p99": float(np.percentile(lat, 99)) * 1e3 if len(lat) else float("nan"),
        "versions": sorted(v for r in results for v in r[1]),
        "failures": [f for r in results for f in r[2]],
    }


class MemorySampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, threading.Event()

    def run(self) -> None:
        import psutil

        root = psutil.Process(self.pid)
        while not self.stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass
            time.sleep(0.05)


def prepare(work: Path) -> tuple[Path, str, str, np.ndarray, list[str]]:
    """Train and register the fast-profile model twice; returns (params file, model name,
    tenant key, feature rows, columns)."""
    from pipelines import evaluate, featurize, ingest, register, train
    from pipelines.config import _deep_merge, load_params
    from pipelines.registry import Registry
    from pipelines.store import ResultsStore, Subscription

    overrides = {
        "data": {"root": str(work / "data")},
        "registry": {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}"},
        "store": {"url": f"sqlite:///{work / 'results.db'}"},
        "outputs": str(work / "outputs"),
        # capacity of one tenant from one address: the per-caller limits (serving.limits) off
        "serving": {
            "reload_interval_seconds": 1.0,
            "limits": {"per_address_rps": 0, "per_tenant_rps": 0, "tenant_concurrency": 0},
        },
    }
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    params_file = work / "params.yaml"
    params_file.write_text(yaml.safe_dump(_deep_merge(raw, overrides)))
    params = load_params(params_file, "fast")
    ingest.history(params.data)
    featurize.run(params.data, params.features, params.labels, params.outputs / "featurize")
    train.run(params)
    evaluate.run(params)
    name, v1, _ = register.register(params)
    _, v2, _ = register.register(params)  # same model again: the gate keeps it as challenger
    registry = Registry(params.registry.tracking_uri)
    assert registry.alias_version(name, "champion") == v1 and v2 != v1
    data = train.load_training_data(params.outputs / "featurize", params.labels.kind)
    X = data.X
    store = ResultsStore(params.store.url)
    store.migrate()
    _, key = store.add_tenant(
        "bench", [Subscription("EURUSD", params.features.base_timeframe, params.labels.horizon)]
    )
    store.close()
    return params_file, name, key, X, list(data.columns)


def _batch_stats(url: str) -> tuple[float, float]:
    """(model calls, requests) so far, from the service's mt5prob_batch_requests histogram."""
    import urllib.request

    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    lines = text.splitlines()

    def total(prefix: str) -> float:
        return sum(float(line.split()[-1]) for line in lines if line.startswith(prefix))

    return total("mt5prob_batch_requests_count"), total("mt5prob_batch_requests_sum")


def _nulls(X: np.ndarray) -> list[list[float | None]]:
    """JSON rows with null for the features still in warm-up (NaN), as clients send them."""
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in X.astype(np.float64)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each load phase")
    args = parser.parse_args()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    # tenant data is sealed (issue 15): a master key of this run's own unless one is given
    from pipelines.store.crypto import new_master_key_text

    os.environ.setdefault("MT5PROB_MASTER_KEY", new_master_key_text())
    os.environ.setdefault("MT5PROB_ALLOW_PASSWORDLESS", "1")  # the local server trusts its clients
    from pipelines.registry import Registry
    from serving.devserver import free_port, running_service

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        params_file, name, key, X, columns = prepare(work)
        print(
            f"setup (ingest, featurize, train, register twice): {time.perf_counter() - t0:.0f} s; "
            f"model {name}, {len(columns)} features"
        )
        registry = Registry(f"sqlite:///{work / 'mlflow.db'}")

        # 1. in-process floors
        pyfunc = registry.load(name, "champion")
        inner = pyfunc.unwrap_python_model()
        one = X[-1:].astype(np.float32)
        import pandas as pd

        frame = pd.DataFrame(one, columns=columns)
        for _ in range(50):
            inner.predict_proba(one)
            pyfunc.predict(frame)
        direct, naive = [], []
        for _ in range(500):
            t = time.perf_counter()
            inner.predict_proba(one)
            direct.append(time.perf_counter() - t)
            t = time.perf_counter()
            pyfunc.predict(frame)
            naive.append(time.perf_counter() - t)
        direct_p50, naive_p50 = np.median(direct) * 1e3, np.median(naive) * 1e3

        port = free_port()
        single = json.dumps({"rows": _nulls(one)}).encode()
        batch = json.dumps({"rows": _nulls(X[-1000:])}).encode()
        with running_service(params_file, "fast", port=port, log=work / "serve.log") as service:
            sampler = MemorySampler(service.pid)
            sampler.start()
            load(port, key, single, 1, 2.0)  # warm-up
            seq = load(port, key, single, 1, args.seconds, count=3000)
            before = _batch_stats(service.url)
            conc = load(port, key, single, 8, args.seconds)
            after = _batch_stats(service.url)
            per_call = (after[1] - before[1]) / max(1.0, after[0] - before[0])
            load(port, key, batch, 2, 2.0)  # warm-up
            bat = load(port, key, batch, 2, args.seconds)

            # 5. promotion then rollback under load
            v1 = registry.alias_version(name, "champion")
            v2 = registry.alias_version(name, "challenger")
            result: dict = {}
            runner = threading.Thread(target=lambda: result.update(load(port, key, single, 4, 20.0)))
            runner.start()
            time.sleep(2.0)
            t_promote = time.time()
            registry.set_champion(name, v2, reason="benchmark promotion", actor="benchmark")
            time.sleep(5.0)
            t_rollback = time.time()
            rb = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "serving.rollback",
                    name,
                    "--reason",
                    "benchmark rollback",
                    "--params",
                    str(params_file),
                    "--profile",
                    "fast",
                ],
                cwd=REPO,
                capture_output=True,
                text=True,
            )
            t_rolled = time.time()  # the alias moved just before the CLI exited
            runner.join()
            sampler.stop.set()
            peak_mb = sampler.peak / 2**20
        versions = result["versions"]
        first_v2 = next((t for t, v in versions if v == v2 and t >= t_promote), None)
        back_v1 = next((t for t, v in versions if v == v1 and t >= t_rollback), None)

    print(
        f"\nscoring service — 1 BentoML worker, {os.cpu_count()} cores, loopback, "
        "clients in separate processes"
    )
    print(
        f"in-process floor: model predict_proba 1 row p50 {direct_p50:.2f} ms; "
        f"naive MLflow pyfunc.predict(DataFrame) p50 {naive_p50:.2f} ms"
    )
    print(f"{'phase':34s} {'calls':>7s} {'p50 ms':>8s} {'p99 ms':>8s} {'rows/s':>9s} {'failed':>6s}")
    for label, r, rows in (
        ("single row, 1 client", seq, 1),
        ("single row, 8 clients (batching)", conc, 1),
        ("1,000-row batches, 2 clients", bat, 1000),
        ("single row, 4 clients, promote+rb", result, 1),
    ):
        print(
            f"{label:34s} {r['calls']:7,d} {r['p50']:8.2f} {r['p99']:8.2f} "
            f"{r['calls'] * rows / r['wall']:9,.0f} {len(r['failures']):6d}"
        )
    print(f"peak service memory (process tree RSS): {peak_mb:,.0f} MB")
    print(f"adaptive batching with 8 single-row clients: {per_call:.2f} requests per model call on average")
    print(
        f"service overhead over the in-process model call at p50: {seq['p50'] - direct_p50:.2f} ms; "
        f"batched rows/s ÷ sequential single-row rows/s: "
        f"{(bat['calls'] * 1000 / bat['wall']) / (seq['calls'] / seq['wall']):.0f}×"
    )
    follow_rb = None if back_v1 is None else max(0.0, back_v1 - t_rolled)
    print(
        f"promotion v{v1}→v{v2}: served {'never' if first_v2 is None else f'{first_v2 - t_promote:.2f} s'} "
        f"after the alias moved; rollback CLI ({rb.stdout.strip() or rb.stderr.strip()}) ran "
        f"{t_rolled - t_rollback:.1f} s, v{v1} served "
        f"{'never' if follow_rb is None else f'{follow_rb:.2f} s'} after it exited"
    )
    fails = seq["failures"] + conc["failures"] + bat["failures"] + result["failures"]
    if fails:
        print("failures:", fails[:5])
    checks = {
        "single-row p50 ≤ 5 ms": seq["p50"] <= 5,
        "single-row p99 ≤ 20 ms": seq["p99"] <= 20,
        "batched ≥ 20,000 rows/s": bat["calls"] * 1000 / bat["wall"] >= 20_000,
        "zero failed requests across promotion and rollback": not result["failures"],
        "service followed both alias moves within 5 s": first_v2 is not None
        and follow_rb is not None
        and first_v2 - t_promote <= 5
        and follow_rb <= 5,
    }
    for label, ok in checks.items():
        print(f"  [{'PASS' if ok else 'FAIL'}] {label}")


if __name__ == "__main__":
    main()
