"""Benchmark: the issue-4 model targets on simulator data, each figure printed beside its target.

For a planted signal and for a pure random walk (signal strength 0), in a temporary
workspace: ingest ~200,000 M5 bars (fast profile symbols) from the simulator, featurize,
then time the fast-profile training — every base learner tuned with Optuna (``--trials``
each), stacking, calibration, evaluation and registration in a fresh MLflow store.

Targets (issue 4): planted signal — registered model's holdout log loss within 2% of the
Bayes-optimal log loss, ECE ≤ 0.01, stacked ≤ best single base learner; random walk — log
loss ≤ base-rate log loss + 0.001 and ECE ≤ 0.02; training ≤ 5 minutes on 2 cores.

    python benchmarks/train_targets.py [--bars 200000] [--trials 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import evaluate, featurize, register, train  # noqa: E402
from pipelines.bar_store import BarStore  # noqa: E402
from pipelines.config import load_params  # noqa: E402
from pipelines.ingest import connect, ingest_history, make_contract  # noqa: E402
from pipelines.terminal import open_terminal  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def run(strength: float, bars: int, trials: int, work: Path) -> dict:
    base = load_params(REPO / "params.yaml", "fast")
    symbols = list(base.data.symbols)
    weeks = bars / len(symbols) / (5 * 288) + 1
    end = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(weeks=weeks)
    params = load_params(
        REPO / "params.yaml",
        "fast",
        {
            "data": {
                "root": str(work / "data"),
                "simulator": {"end": end.isoformat(), "signal_strength": strength},
            },
            "tune": {
                "enabled": trials > 0,
                "n_trials": max(trials, 1),
                "storage": f"sqlite:///{work / 'optuna.db'}",
            },
            "registry": {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}"},
            "outputs": str(work / "outputs"),
        },
    )
    t0 = time.perf_counter()
    client = open_terminal(params.data)
    connect(client)
    ingest_history(client, BarStore(params.data.root), make_contract(params.data), params.data)
    rows = featurize.run(params.data, params.features, params.labels, params.outputs / "featurize")
    t_prep = time.perf_counter() - t0
    t1 = time.perf_counter()
    bundle = train.run(params)
    metrics = evaluate.run(params)
    name, version, decision = register.register(params)
    t_train = time.perf_counter() - t1
    return {
        "rows": sum(rows.values()),
        "prep_s": t_prep,
        "train_s": t_train,
        "metrics": metrics,
        "decision": decision,
        "oof": bundle["oof_scores"],
        "tuned": bundle["tuned"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bars", type=int, default=200_000)
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    results = {}
    for label, strength in (("planted", 0.3), ("random walk", 0.0)):
        with tempfile.TemporaryDirectory() as tmp:
            results[label] = run(strength, args.bars, args.trials, Path(tmp))
    print(
        f"model targets — fast profile, {args.trials} Optuna trials per base learner, "
        f"{os.cpu_count()} cores\n"
    )
    for label, r in results.items():
        m = r["metrics"]
        reg = m["registered"]
        bases = {
            k: v["log_loss"]
            for k, v in m.items()
            if isinstance(v, dict) and k not in ("registered", "stacked", "ensemble", "backtest")
        }
        print(
            f"[{label}] {r['rows']:,} M5 bars; ingest+featurize {r['prep_s']:.0f} s; train+tune+evaluate+"
            f"register {r['train_s']:.0f} s; holdout {m['holdout_rows']:,} rows"
        )
        print(
            f"  registered ({reg['kind']}): log loss {reg['log_loss']:.5f}, base rate "
            f"{reg['base_rate_log_loss']:.5f}, Bayes {reg.get('bayes_log_loss', float('nan')):.5f}, "
            f"ECE {reg['ece']:.4f} (truth's ECE on the same rows {reg.get('bayes_ece', float('nan')):.4f}), "
            f"AUC {reg['auc']:.3f}"
        )
        print(
            "  base learners: "
            + ", ".join(f"{k} {v:.5f}" for k, v in bases.items())
            + f"; stacked {m['stacked']['log_loss']:.5f}; ensemble {m['ensemble']['log_loss']:.5f}"
        )
        print(f"  gate: {'promoted' if r['decision'].promoted else 'rejected'} — {r['decision'].reason}")
    p, w = results["planted"]["metrics"], results["random walk"]["metrics"]
    best_base = min(
        v["log_loss"]
        for k, v in p.items()
        if isinstance(v, dict) and k not in ("registered", "stacked", "ensemble", "backtest")
    )
    checks = [
        (
            "planted: Bayes gap <= 2%",
            f"{p['registered']['bayes_gap']:.2%}",
            p["registered"]["bayes_gap"] <= 0.02,
        ),
        ("planted: ECE <= 0.01", f"{p['registered']['ece']:.4f}", p["registered"]["ece"] <= 0.01),
        (
            "planted: stacked <= best base learner",
            f"{p['stacked']['log_loss']:.5f} vs {best_base:.5f}",
            p["stacked"]["log_loss"] <= best_base,
        ),
        (
            "random walk: log loss <= base rate + 0.001",
            f"{w['registered']['log_loss']:.5f} vs {w['registered']['base_rate_log_loss'] + 0.001:.5f}",
            w["registered"]["log_loss"] <= w["registered"]["base_rate_log_loss"] + 0.001,
        ),
        ("random walk: ECE <= 0.02", f"{w['registered']['ece']:.4f}", w["registered"]["ece"] <= 0.02),
        (
            "training <= 300 s (planted)",
            f"{results['planted']['train_s']:.0f} s",
            results["planted"]["train_s"] <= 300,
        ),
    ]
    print("\ntarget                                       figure                      met")
    for name, figure, ok in checks:
        print(f"{name:<44} {figure:<27} {'yes' if ok else 'NO'}")


if __name__ == "__main__":
    main()
