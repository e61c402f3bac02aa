"""Evaluate step: the trained predictors on the held-out final time segment.

Metrics for the registered predictor, the stack, the ensemble and each base learner: log
loss, Brier, ECE (15 bins), AUC, accuracy, base-rate log loss (training base rate); on
simulator data with direction labels also the Bayes-optimal log loss from the planted true
probabilities and the relative gap to it. A threshold-policy backtest (long when p > t,
short when p < 1 − t; the bar's spread and a commission charged, in pips) reports trades,
hit rate, PnL, Sharpe and max drawdown. Writes ``outputs/evaluate/``: ``metrics.json`` (the
registered predictor's headline, what ``dvc metrics show`` prints: `headline`), ``details.json`` (every
predictor, the backtest), the reliability diagram and probability histogram as CSV data
(``dvc plots show`` / ``dvc plots diff``) and as PNGs (MLflow, Prefect).

    python -m pipelines.evaluate [--params params.yaml] [--profile fast]
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from features.bars import pip_size
from models.metrics import reliability, summary
from models.policy import ThresholdPolicy
from pipelines.atomic_files import staged_dir, write_atomic, write_text_atomic
from pipelines.config import BacktestParams, Params
from pipelines.train import TrainingData, load_training_data, splits


def true_probabilities(data: TrainingData, rows: np.ndarray, params: Params) -> np.ndarray | None:
    """P(label = 1) from the simulator's planted model, for direction labels with a dead zone
    in pips or of zero (None for other labels or backends)."""
    d = params.labels.direction
    if params.data.backend != "simulator" or params.labels.kind != "direction":
        return None
    if d.dead_zone and d.unit != "pips":
        return None
    from pipelines.terminal import open_terminal

    sim = open_terminal(params.data)
    sim.initialize()
    clock = params.data.server_time.clock()
    out = np.full(rows.size, np.nan)
    for symbol in np.unique(data.symbol[rows]):
        pick = rows[data.symbol[rows] == symbol]
        order = np.argsort(data.bar_time[pick])
        pick = pick[order]
        dead = d.dead_zone * pip_size(float(data.point[pick][0]))
        truth = sim.true_direction_probability(  # type: ignore[attr-defined]
            symbol,
            data.manifest["base_timeframe"],
            clock.to_server(data.bar_time[pick]),
            params.labels.horizon,
            dead,
        )
        p = truth["p_up"] / (truth["p_up"] + truth["p_down"])
        out[np.searchsorted(rows, pick)] = p
    return out


def _policy(pnl: np.ndarray, day: np.ndarray) -> dict[str, float]:
    if pnl.size == 0:
        return {
            "trades": 0.0,
            "hit_rate": float("nan"),
            "pnl_pips": 0.0,
            "sharpe": float("nan"),
            "max_drawdown_pips": 0.0,
        }
    equity = np.cumsum(pnl)
    _, daily = np.unique(day, return_inverse=True)
    per_day = np.bincount(daily, weights=pnl)
    sharpe = float(per_day.mean() / per_day.std() * np.sqrt(252)) if per_day.std() > 0 else float("nan")
    return {
        "trades": float(pnl.size),
        "hit_rate": float(np.mean(pnl > 0)),
        "pnl_pips": float(pnl.sum()),
        "sharpe": sharpe,
        "max_drawdown_pips": float(np.max(np.maximum.accumulate(equity) - equity)),
    }


def backtest(
    p: np.ndarray, data: TrainingData, rows: np.ndarray, cfg: BacktestParams
) -> dict[str, dict[str, float]]:
    """Threshold policy on the holdout rows, per symbol (pips are per-symbol units).

    Long when p > threshold, short when p < 1 − threshold, each signal held to its label's end
    (positions may overlap); the bar's spread and the commission are charged in pips. Sharpe
    is annualised from daily PnL (√252), so overlapping positions do not inflate it.
    """
    side = ThresholdPolicy.symmetric(cfg.threshold).sides(p)
    pip = np.array([pip_size(x) for x in data.point[rows]])
    move = (np.exp(data.ret[rows]) - 1.0) * data.close[rows] / pip
    cost = data.spread[rows] * data.point[rows] / pip + cfg.commission_pips
    pnl = side * move - cost
    day = (data.t0[rows] // 86400).astype(np.int64)
    out = {}
    for symbol in np.unique(data.symbol[rows]):
        pick = (data.symbol[rows] == symbol) & (side != 0)
        out[str(symbol)] = _policy(pnl[pick], day[pick])
    return out


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def reliability_figure(y: np.ndarray, p: np.ndarray, p_true: np.ndarray | None) -> Any:
    """The reliability diagram (15 equal-width bins): every bin's point inside the axes —
    predicted means *and* observed frequencies, which can lie far outside the predictions on
    a thin bin — each labelled with its row count, so a wild point on ten rows reads as such."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean_p, freq, count = reliability(y, p)
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    used = count > 0
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect")
    ax.plot(mean_p[used], freq[used], marker="o", label="model")
    for x, f, n in zip(mean_p[used], freq[used], count[used], strict=True):
        ax.annotate(f"{int(n):,}", (x, f), textcoords="offset points", xytext=(4, 4), fontsize=7)
    shown = [mean_p[used], freq[used]]
    if p_true is not None:
        tp, tf, tc = reliability(y, p_true)
        ax.plot(tp[tc > 0], tf[tc > 0], marker=".", alpha=0.6, label="planted truth")
        shown += [tp[tc > 0], tf[tc > 0]]
    values = np.concatenate(shown)
    pad = 0.02 + 0.05 * float(np.ptp(values))
    lo, hi = max(0.0, float(values.min()) - pad), min(1.0, float(values.max()) + pad)
    ax.set(
        xlim=(lo, hi),
        ylim=(lo, hi),
        xlabel="predicted P(up)",
        ylabel="observed frequency",
        title="Reliability (holdout, 15 bins; labels: rows per bin)",
    )
    ax.legend(loc="upper left")
    return fig


def plot_data(y: np.ndarray, p: np.ndarray) -> dict[str, bytes]:
    """The plots as DVC-native data (CSV, one row per point), so ``dvc plots diff`` overlays
    experiments: ``reliability.csv`` (predicted, observed, rows per used bin of 15) and
    ``histogram.csv`` (p, rows per bin of 50 on [0, 1])."""
    mean_p, freq, count = reliability(y, p)
    used = count > 0
    lines = ["predicted,observed,rows"] + [
        f"{x:.6f},{f:.6f},{int(n)}" for x, f, n in zip(mean_p[used], freq[used], count[used], strict=True)
    ]
    counts, edges = np.histogram(p, bins=50, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    used = counts > 0
    hist = ["p,rows"] + [f"{c:.4f},{int(n)}" for c, n in zip(centres[used], counts[used], strict=True)]
    return {
        "reliability.csv": ("\n".join(lines) + "\n").encode(),
        "histogram.csv": ("\n".join(hist) + "\n").encode(),
    }


def plots(y: np.ndarray, p: np.ndarray, p_true: np.ndarray | None) -> dict[str, bytes]:
    """Reliability diagram and probability histogram as PNG bytes (for MLflow and Prefect
    artifacts, with the planted truth drawn in), plus their data as CSV (`plot_data`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = reliability_figure(y, p, p_true)
    out = {"reliability.png": _png(fig)}
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(p, bins=50, alpha=0.8, label="model")
    if p_true is not None:
        ax.hist(p_true, bins=50, alpha=0.5, label="planted truth")
    ax.set(xlabel="P(up)", ylabel="rows", title="Probability histogram (holdout)")
    ax.legend()
    out["histogram.png"] = _png(fig)
    plt.close(fig)
    return {**out, **plot_data(y, p)}


def headline(metrics: dict[str, Any]) -> dict[str, float | int]:
    """The registered predictor's headline, flat and narrow (what ``dvc metrics show``
    prints): holdout ``rows``, ``log_loss``, the training base rate's log loss ``base_rate``,
    their difference ``edge`` (> 0 is skill), ``ece``, ``auc`` and, on the simulator, the
    relative gap to the Bayes-optimal log loss ``bayes_gap``. The rest is in ``details.json``."""
    reg = metrics["registered"]
    out = {
        "rows": int(metrics["holdout_rows"]),
        "log_loss": float(reg["log_loss"]),
        "base_rate": float(reg["base_rate_log_loss"]),
        "edge": float(reg["base_rate_log_loss"] - reg["log_loss"]),
        "ece": float(reg["ece"]),
        "auc": float(reg["auc"]),
    }
    if "bayes_gap" in reg:
        out["bayes_gap"] = float(reg["bayes_gap"])
    return out


def write_evaluation(metrics: dict[str, Any], files: dict[str, bytes], out: Path) -> None:
    """Swap in `out` as one folder: ``metrics.json`` (`headline`), ``details.json`` (every
    predictor and the backtest per symbol) and the plot files."""
    with staged_dir(out) as stage:
        write_text_atomic(json.dumps(headline(metrics), indent=2) + "\n", stage / "metrics.json")
        write_text_atomic(json.dumps(metrics, indent=2, default=float) + "\n", stage / "details.json")
        for name, data in files.items():
            write_atomic(stage / name, lambda h, data=data: h.write(data))


def evaluate(
    bundle: dict[str, Any], data: TrainingData, params: Params
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """All holdout metrics (see module docstring) and the plot files (`plots`)."""
    holdout, _ = splits(data, params.models)
    rows = holdout.test
    X, y = data.X[rows], data.y[rows]
    p_true = true_probabilities(data, rows, params)
    rate = bundle["train_positive_rate"]
    stacked, ensemble = bundle["stacked"], bundle["ensemble"]
    preds = {"stacked": stacked.predict_proba(X), "ensemble": ensemble.predict_proba(X)}
    for name, model in zip(stacked.names, stacked.base, strict=True):
        preds[name] = model.predict_proba(X)
    metrics: dict[str, Any] = {name: summary(y, p, p_true, rate) for name, p in preds.items()}
    registered = preds[bundle["registered"]]
    metrics["registered"] = {**summary(y, registered, p_true, rate), "kind": bundle["registered"]}
    metrics["backtest"] = backtest(registered, data, rows, params.models.backtest)
    metrics["holdout_rows"] = int(rows.size)
    return metrics, plots(y, registered, p_true)


def run(params: Params) -> dict[str, Any]:
    """The whole step from params: evaluate ``outputs/train``, write ``outputs/evaluate``."""
    bundle = joblib.load(params.outputs / "train" / "model.pkl")
    data = load_training_data(params.outputs / "featurize", params.labels.kind)
    metrics, files = evaluate(bundle, data, params)
    write_evaluation(metrics, files, params.outputs / "evaluate")
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    from pipelines.config import params_from_cli

    params = params_from_cli("python -m pipelines.evaluate", __doc__, argv)
    metrics = run(params)
    r = metrics["registered"]
    gap = f", Bayes gap {r['bayes_gap']:.2%}" if "bayes_gap" in r else ""
    print(
        f"holdout {metrics['holdout_rows']} rows: log loss {r['log_loss']:.4f} (base rate "
        f"{r['base_rate_log_loss']:.4f}{gap}), ECE {r['ece']:.4f}, AUC {r['auc']:.3f}"
    )
    return 0


if __name__ == "__main__":
    from pipelines.config import run_cli

    raise SystemExit(run_cli(main))
