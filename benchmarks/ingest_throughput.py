"""Benchmark: ingest and validate 1,000,000 M1 bars, from the simulator and from an export file.

Each scenario runs in its own process pinned to one core (so peak memory is its own):

* ``simulator`` — terminal fetch (the market model generating ticks and bars), then
  validation (great-expectations suite) and the atomic Parquet append;
* ``export``    — a 1M-row MT5 bar export (UTF-16, as the terminal writes it) parsed,
  validated and appended;
* ``naive``     — the same bar rules as a per-row Python loop over 100,000 rows, the baseline
  the vectorised contract is compared with; ``pandas`` — the same rules as plain vectorised
  pandas without great-expectations (the floor GX adds to).

Targets (issue 2): ≥ 500,000 validated rows/s on one core, peak memory ≤ 1.5 GB.

    python benchmarks/ingest_throughput.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _one_core() -> None:
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import pyarrow as pa

    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _end_for(rows: int) -> datetime:
    """Simulator end date giving about `rows` M1 bars of EURUSD from 2024-01-01."""
    weeks = rows / (5 * 1440)
    return datetime(2024, 1, 1, tzinfo=UTC) + timedelta(weeks=weeks + 1)


def _params(root: Path, rows: int, backend: str, export_dir: Path | None = None):
    from pipelines.config import DataParams

    return DataParams.model_validate(
        {
            "root": str(root),
            "backend": backend,
            "symbols": ["EURUSD"],
            "timeframes": ["M1"],
            "history_start": "2024-01-01T00:00:00",
            "simulator": {"end": _end_for(rows).isoformat()},
            "export": {"directory": str(export_dir or root)},
        }
    )


def _timed_ingest(params, rows: int) -> dict:
    """Fetch, validate, append — timed per phase, on the real pipeline functions."""
    from pipelines import ingest as step
    from pipelines.bar_store import BarStore, SeriesKey
    from pipelines.terminal import open_terminal

    contract = step.make_contract(params)
    contract.validate_bars(SeriesKey("bars", "EURUSD", "M1"), _warmup_frame(), params.server_time.clock())
    client = open_terminal(params)
    step.connect(client)
    store = BarStore(params.root)
    key = SeriesKey("bars", "EURUSD", "M1")
    t0 = time.perf_counter()
    frame, last = step._fetch_bars(
        client,
        key,
        params.server_time.clock(),
        int(params.history_start.timestamp()),
        int(client.now_utc().timestamp()),
    )
    frame = frame.iloc[:rows]
    last = int(frame["time"].iloc[-1].timestamp())
    t1 = time.perf_counter()
    result = contract.validate_bars(key, frame, params.server_time.clock(), store.tail(key, 15))
    result.check_ratio(contract.rules)
    t2 = time.perf_counter()
    written = store.append(key, result.good, last, result.quarantined)
    t3 = time.perf_counter()
    return {
        "rows": len(frame),
        "written": written,
        "quarantined": result.n_bad,
        "fetch_s": t1 - t0,
        "validate_s": t2 - t1,
        "write_s": t3 - t2,
    }


def _warmup_frame():
    from pipelines.bar_store import rates_to_frame
    from pipelines.mt5.constants import TIMEFRAME_M1
    from pipelines.mt5.simulator import MarketSimulator, SimulatorConfig

    sim = MarketSimulator(SimulatorConfig(end=datetime(2024, 1, 3, tzinfo=UTC)))
    sim.initialize()
    rates = sim.copy_rates_range("EURUSD", TIMEFRAME_M1, 0, 2**40)
    return rates_to_frame(rates, rates["time"])


def scenario_simulator(rows: int, work: Path) -> dict:
    return _timed_ingest(_params(work / "sim", rows, "simulator"), rows)


def scenario_export(rows: int, work: Path) -> dict:
    from pipelines.mt5.constants import TIMEFRAME_M1
    from pipelines.mt5.export_files import write_bar_export
    from pipelines.mt5.simulator import MarketSimulator, SimulatorConfig

    folder = work / "exports"
    folder.mkdir(exist_ok=True)
    path = folder / "EURUSD_M1_bench.csv"
    if not path.exists():
        sim = MarketSimulator(SimulatorConfig(end=_end_for(rows)))
        sim.initialize()
        rates = sim.copy_rates_range("EURUSD", TIMEFRAME_M1, 0, 2**40)[:rows]
        write_bar_export(path, rates, 5, encoding="utf-16")
    out = _timed_ingest(_params(work / "export-store", rows, "export", folder), rows)
    out["file_mb"] = path.stat().st_size / 1e6
    return out


def _bench_frame(rows: int):
    import numpy as np

    from pipelines.bar_store import rates_to_frame
    from pipelines.mt5.constants import TIMEFRAME_M1
    from pipelines.mt5.simulator import MarketSimulator, SimulatorConfig

    sim = MarketSimulator(SimulatorConfig(end=_end_for(rows)))
    sim.initialize()
    rates = sim.copy_rates_range("EURUSD", TIMEFRAME_M1, 0, 2**40)[:rows]
    return rates_to_frame(rates, rates["time"]), np


def scenario_naive(rows: int, work: Path) -> dict:
    """Per-row Python loop with the same bar rules (no ATR spike rule: it only gets slower)."""
    import math

    n = min(rows, 100_000)
    frame, _ = _bench_frame(n)
    records = frame.to_dict("records")
    t0 = time.perf_counter()
    bad = 0
    prev_time = None
    for r in records:
        ok = all(not math.isnan(r[c]) and 0 < r[c] < 1e12 for c in ("open", "high", "low", "close"))
        ok &= r["high"] >= max(r["open"], r["close"]) and r["low"] <= min(r["open"], r["close"])
        ok &= r["spread"] >= 0 and r["tick_volume"] >= 0 and r["real_volume"] >= 0
        t = r["time"].timestamp()
        ok &= (prev_time is None or t > prev_time) and t % 60 == 0
        prev_time = t if prev_time is None else max(prev_time, t)
        bad += not ok
    elapsed = time.perf_counter() - t0
    return {"rows": n, "validate_s": elapsed, "quarantined": bad}


def scenario_pandas(rows: int, work: Path) -> dict:
    frame, np = _bench_frame(rows)
    t0 = time.perf_counter()
    prices = frame[["open", "high", "low", "close"]].to_numpy()
    t = frame["time"].array.as_unit("s").asi8
    ok = np.isfinite(prices).all(1) & (prices > 0).all(1)
    ok &= (frame["high"] >= frame[["open", "close"]].max(axis=1)).to_numpy()
    ok &= (frame["low"] <= frame[["open", "close"]].min(axis=1)).to_numpy()
    ok &= (frame[["spread", "tick_volume", "real_volume"]].to_numpy() >= 0).all(1)
    ok &= np.r_[True, t[1:] > np.maximum.accumulate(t)[:-1]] & (t % 60 == 0)
    elapsed = time.perf_counter() - t0
    return {"rows": len(frame), "validate_s": elapsed, "quarantined": int((~ok).sum())}


SCENARIOS = {
    "simulator": scenario_simulator,
    "export": scenario_export,
    "naive": scenario_naive,
    "pandas": scenario_pandas,
}


def _child(name: str, rows: int, work: Path) -> None:
    _one_core()
    result = SCENARIOS[name](rows, work)
    result["peak_mb"] = _peak_mb()
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scenario:
        _child(args.scenario, args.rows, Path(args.work))
        return
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "GX_ANALYTICS_ENABLED": "False",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("simulator", "export", "pandas", "naive"):
            proc = subprocess.run(
                [sys.executable, __file__, "--scenario", name, "--rows", str(args.rows), "--work", tmp],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"ingest + validate benchmark — {args.rows:,} M1 bars, one core "
        f"({os.cpu_count()} cores on the machine)\n"
    )
    header = (
        f"{'scenario':<10} {'rows':>9} {'fetch/parse':>12} {'validate':>9} {'write':>7} "
        f"{'validated rows/s':>17} {'end-to-end rows/s':>18} {'peak MB':>8}"
    )
    print(header)
    print("-" * len(header))
    for name in ("simulator", "export"):
        r = results[name]
        checked = r["rows"] / (r["validate_s"] + r["write_s"])
        total = r["rows"] / (r["fetch_s"] + r["validate_s"] + r["write_s"])
        print(
            f"{name:<10} {r['rows']:>9,} {r['fetch_s']:>11.2f}s {r['validate_s']:>8.2f}s "
            f"{r['write_s']:>6.2f}s {checked:>17,.0f} {total:>18,.0f} {r['peak_mb']:>8.0f}"
        )
    for name in ("pandas", "naive"):
        r = results[name]
        print(
            f"{name:<10} {r['rows']:>9,} {'':>12} {r['validate_s']:>8.2f}s {'':>7} "
            f"{r['rows'] / r['validate_s']:>17,.0f} {'':>18} {r['peak_mb']:>8.0f}"
        )
    gx_rate = results["export"]["rows"] / results["export"]["validate_s"]
    naive_rate = results["naive"]["rows"] / results["naive"]["validate_s"]
    pandas_rate = results["pandas"]["rows"] / results["pandas"]["validate_s"]
    print(
        f"\nGX contract validation vs naive per-row loop: {gx_rate / naive_rate:.1f}x faster; "
        f"vs bare vectorised pandas rules: {gx_rate / pandas_rate:.2f}x (the cost of GX)"
    )
    ok_rate = min(
        results[n]["rows"] / (results[n]["validate_s"] + results[n]["write_s"])
        for n in ("simulator", "export")
    )
    ok_export = results["export"]["rows"] / sum(
        results["export"][k] for k in ("fetch_s", "validate_s", "write_s")
    )
    peak = max(results[n]["peak_mb"] for n in ("simulator", "export"))
    print(
        f"targets: >= 500,000 validated rows/s -> {ok_rate:,.0f} (validate+write), export end-to-end "
        f"{ok_export:,.0f}; peak <= 1,536 MB -> {peak:,.0f} MB"
    )


if __name__ == "__main__":
    main()
