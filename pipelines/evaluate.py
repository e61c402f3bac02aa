"""Evaluate step: the trained predictors on the held-out final time segment.

Metrics for the registered predictor, the stack, the ensemble and each base learner: log
loss, Brier, ECE (15 bins), AUC, accuracy, base-rate log loss (always predicting the
holdout's own frequency: the strictest constant, as the promotion gate); on simulator data
with direction labels also the Bayes-optimal log loss from the planted true probabilities and
the relative gap to it. Three-class (up/flat/down) models: the same figures for the three
probabilities (multiclass log loss against the class frequencies, classwise ECE, mean
one-vs-rest AUC), the reliability of each class. A threshold-policy backtest
(`models.policy`: long when P(up) > t, short when P(up) < 1 − t — three-class: on the net
P(up) − P(down), the same rule; triple barrier long only; the
bar's spread — or `assumed_spread_pips` where the data's spread is
zero or missing — and a commission charged, in pips) reports trades, hit rate, PnL, Sharpe
and max drawdown.

Every figure a user reads comes with its uncertainty: for the registered predictor, 95 %
block-bootstrap intervals (`models.uncertainty`: blocks of whole UTC days, longer when a label
spans more, every symbol of a day in one block) for log loss, its improvement over the base
rate, ECE and AUC, and per symbol for the backtest's PnL, Sharpe and hit rate; the number of
independent labels behind them; the reliability diagram's per-bin counts and confidence bands;
and, for each Optuna study, the probability that choosing its best trial overfits
(`pipelines.train.tuning_overfitting`).

Writes ``outputs/evaluate/``: ``metrics.json`` (the registered predictor's headline, what
``dvc metrics show`` prints: `headline`), ``details.json`` (every predictor, the intervals,
the backtest), ``predictions.parquet`` (every holdout row: symbol, bar open time UTC, label,
each predictor's probability, the registered one named), the reliability diagram and
probability histogram as CSV data (``dvc plots show`` / ``dvc plots diff``) and as PNGs
(MLflow, Prefect).

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
from models.metrics import auc, base_rate, constant, ece, is_multiclass, reliability, row_log_loss, summary
from models.policy import ThresholdPolicy
from models.three_way import CLASSES
from models.uncertainty import (
    Interval,
    block_ids,
    block_seconds,
    bootstrap_mean,
    bootstrap_statistic,
    effective_labels,
)
from pipelines.atomic_files import staged_dir, write_atomic, write_text_atomic
from pipelines.config import BacktestParams, Params
from pipelines.mt5.constants import timeframe_seconds
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


def _sharpe(per_day: np.ndarray) -> float:
    """Annualised (√252) Sharpe ratio of daily PnL; NaN when it has no spread."""
    sd = per_day.std()
    return float(per_day.mean() / sd * np.sqrt(252)) if per_day.size > 1 and sd > 0 else float("nan")


def _policy(pnl: np.ndarray, day: np.ndarray, block_days: int, level: float = 0.95) -> dict[str, Any]:
    """Trades, hit rate, PnL, Sharpe and max drawdown of one symbol's trades (`pnl` in pips,
    `day` each trade's UTC day), with block-bootstrap intervals (`block_days`-day blocks) for
    PnL, Sharpe and hit rate."""
    if pnl.size == 0:
        return {
            "trades": 0.0,
            "hit_rate": float("nan"),
            "pnl_pips": 0.0,
            "sharpe": float("nan"),
            "max_drawdown_pips": 0.0,
            "intervals": {},
        }
    equity = np.cumsum(pnl)
    days, daily = np.unique(day, return_inverse=True)
    per_day = np.bincount(daily, weights=pnl)
    day_blocks = days // max(int(block_days), 1)
    trade_blocks = day // max(int(block_days), 1)
    intervals = {
        "pnl_pips": bootstrap_statistic(np.sum, (pnl,), trade_blocks, level, draws=400).as_dict(),
        "sharpe": bootstrap_statistic(_sharpe, (per_day,), day_blocks, level, draws=400).as_dict(),
        "hit_rate": bootstrap_mean((pnl > 0).astype(float), trade_blocks, level, draws=400).as_dict(),
    }
    return {
        "trades": float(pnl.size),
        "hit_rate": float(np.mean(pnl > 0)),
        "pnl_pips": float(pnl.sum()),
        "sharpe": _sharpe(per_day),
        "max_drawdown_pips": float(np.max(np.maximum.accumulate(equity) - equity)),
        "intervals": intervals,
    }


def backtest(
    p: np.ndarray,
    data: TrainingData,
    rows: np.ndarray,
    cfg: BacktestParams,
    block_days: int = 1,
    label_kind: str = "direction",
) -> dict[str, dict[str, Any]]:
    """Threshold policy on the holdout rows, per symbol (pips are per-symbol units).

    Long when P(up) > threshold, short when P(up) < 1 − threshold (`models.policy`, by the label
    kind: three-class on the net probability (1 + P(up) − P(down)) / 2, triple-barrier
    probabilities long or flat), each signal held to its label's end
    (positions may overlap); the bar's spread and the commission are charged in pips — where
    the data's spread is zero or missing (many exports), `cfg.assumed_spread_pips` instead, and
    the symbol's ``spread_assumed_rows`` says on how many rows. Sharpe is annualised from
    daily PnL (√252), so overlapping positions do not inflate it; intervals resample blocks of
    `block_days` days.
    """
    sym = ThresholdPolicy.symmetric(cfg.threshold)
    side = ThresholdPolicy.for_label_kind(label_kind, sym.long_above, sym.short_below).sides(p)
    pip = np.array([pip_size(x) for x in data.point[rows]])
    move = (np.exp(data.ret[rows]) - 1.0) * data.close[rows] / pip
    spread = data.spread[rows] * data.point[rows] / pip
    missing = ~(np.isfinite(spread) & (spread > 0))
    spread = np.where(missing, cfg.assumed_spread_pips, spread)
    cost = spread + cfg.commission_pips
    pnl = side * move - cost
    day = (data.t0[rows] // 86400).astype(np.int64)
    out = {}
    for symbol in np.unique(data.symbol[rows]):
        mine = data.symbol[rows] == symbol
        pick = mine & (side != 0)
        out[str(symbol)] = {
            **_policy(pnl[pick], day[pick], block_days),
            "spread_assumed_rows": int(np.sum(missing & mine)),
        }
    return out


def spread_report(result: dict[str, dict[str, Any]], assumed: float) -> list[str]:
    """One line per symbol whose data carried no spread on some rows (reported once)."""
    return [
        f"{symbol}: spread zero or missing on {r['spread_assumed_rows']:,} holdout rows; the backtest "
        f"charged the assumed {assumed} pips there (models.backtest.assumed_spread_pips)"
        for symbol, r in result.items()
        if r.get("spread_assumed_rows")
    ]


def intervals(
    y: np.ndarray, p: np.ndarray, rate: float | np.ndarray, blocks: np.ndarray, level: float = 0.95
) -> dict[str, dict[str, float]]:
    """Block-bootstrap intervals of the registered predictor's headline figures: log loss, its
    improvement over always predicting `rate` (``edge``, nats per row; a vector of class
    rates for three-class models), ECE (bias-corrected: see `bootstrap_statistic`) and AUC."""
    rows = row_log_loss(y, p)
    return {
        "log_loss": bootstrap_mean(rows, blocks, level).as_dict(),
        "edge": bootstrap_mean(row_log_loss(y, constant(y, rate)) - rows, blocks, level).as_dict(),
        "ece": bootstrap_statistic(
            ece, (y, p), blocks, level, draws=300, bias_corrected=True, floor=0.0
        ).as_dict(),
        "auc": bootstrap_statistic(auc, (y, p), blocks, level, draws=300).as_dict(),
    }


def predictions_table(
    data: TrainingData, rows: np.ndarray, preds: dict[str, np.ndarray], registered: str, p_true: Any
) -> bytes:
    """Every holdout row as Parquet: symbol, bar_time (bar open, UTC), decision_time (its
    close, UTC), label, ``p_<predictor>`` for each predictor (three-class:
    ``p_<predictor>_down``, ``_flat``, ``_up``; and ``p_true`` on the simulator),
    ``registered`` naming the registered predictor's column (its prefix, three-class)."""
    import pandas as pd

    columns: dict[str, np.ndarray] = {}
    for name, p in preds.items():
        p = np.asarray(p, dtype=float)
        if p.ndim == 2:
            columns.update({f"p_{name}_{c}": p[:, k] for k, c in enumerate(CLASSES)})
        else:
            columns[f"p_{name}"] = p

    frame = pd.DataFrame(
        {
            "symbol": data.symbol[rows].astype(str),
            "bar_time": pd.to_datetime(data.bar_time[rows], unit="s", utc=True),
            "decision_time": pd.to_datetime(data.t0[rows], unit="s", utc=True),
            "label": data.y[rows].astype(float),
            **columns,
            **({"p_true": p_true} if p_true is not None else {}),
            "registered": f"p_{registered}",
        }
    )
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def reliability_bands(
    freq: np.ndarray, count: np.ndarray, design_effect: float = 1.0, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Wilson confidence band of each bin's observed frequency, on the bin's effective count
    (rows / `design_effect`: overlapping labels carry less than one outcome each)."""
    from models.uncertainty import wilson

    return wilson(freq, count / max(design_effect, 1.0), level)


def per_class(y: np.ndarray, p: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, 0/1 outcome, probability) of each class a reliability diagram shows: one,
    ``up``, for binary probabilities; ``down``, ``flat``, ``up`` for three-class ones."""
    if not is_multiclass(p):
        return [("up", np.asarray(y, dtype=float), np.asarray(p, dtype=float))]
    y = np.asarray(y)
    return [(c, (y == k).astype(float), np.asarray(p, dtype=float)[:, k]) for k, c in enumerate(CLASSES)]


def reliability_figure(
    y: np.ndarray, p: np.ndarray, p_true: np.ndarray | None, design_effect: float = 1.0
) -> Any:
    """The reliability diagram (15 equal-width bins; one curve per class for three-class
    probabilities): every bin's point inside the axes — predicted means *and* observed
    frequencies, which can lie far outside the predictions on a thin bin — each labelled with
    its row count and drawn with its 95 % band (`reliability_bands`), so a wild point on ten
    rows reads as such."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect")
    classes = per_class(y, p)
    shown = []
    for i, (name, yk, pk) in enumerate(classes):
        mean_p, freq, count = reliability(yk, pk)
        used = count > 0
        low, high = reliability_bands(freq, count, design_effect)
        label = "model" if len(classes) == 1 else f"P({name})"
        ax.plot(mean_p[used], freq[used], marker="o", color=f"C{i}", label=label)
        ax.errorbar(
            mean_p[used],
            freq[used],
            yerr=[freq[used] - low[used], high[used] - freq[used]],
            fmt="none",
            capsize=2,
            color=f"C{i}",
            alpha=0.6,
            label="95% band" if i == 0 else None,
        )
        for x, f, n in zip(mean_p[used], freq[used], count[used], strict=True):
            ax.annotate(f"{int(n):,}", (x, f), textcoords="offset points", xytext=(4, 4), fontsize=7)
        shown += [mean_p[used], freq[used], low[used], high[used]]
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
        xlabel="predicted P(up)" if len(classes) == 1 else "predicted P(class)",
        ylabel="observed frequency",
        title="Reliability (holdout, 15 bins; labels: rows per bin)",
    )
    ax.legend(loc="upper left")
    return fig


def plot_data(y: np.ndarray, p: np.ndarray, design_effect: float = 1.0) -> dict[str, bytes]:
    """The plots as DVC-native data (CSV, one row per point), so ``dvc plots diff`` overlays
    experiments: ``reliability.csv`` (predicted, observed, its 95 % band observed_low and
    observed_high, rows per used bin of 15) and ``histogram.csv`` (p, rows per bin of 50 on
    [0, 1]); three-class probabilities add a ``class`` column (down, flat, up)."""
    classes = per_class(y, p)
    multi = len(classes) > 1
    tag = ",class" if multi else ""
    lines = [f"predicted,observed,observed_low,observed_high,rows{tag}"]
    hist = [f"p,rows{tag}"]
    for name, yk, pk in classes:
        mean_p, freq, count = reliability(yk, pk)
        low, high = reliability_bands(freq, count, design_effect)
        used = count > 0
        suffix = f",{name}" if multi else ""
        lines += [
            f"{x:.6f},{f:.6f},{lo:.6f},{hi:.6f},{int(n)}{suffix}"
            for x, f, lo, hi, n in zip(
                mean_p[used], freq[used], low[used], high[used], count[used], strict=True
            )
        ]
        counts, edges = np.histogram(pk, bins=50, range=(0.0, 1.0))
        centres = (edges[:-1] + edges[1:]) / 2
        used = counts > 0
        hist += [f"{c:.4f},{int(n)}{suffix}" for c, n in zip(centres[used], counts[used], strict=True)]
    return {
        "reliability.csv": ("\n".join(lines) + "\n").encode(),
        "histogram.csv": ("\n".join(hist) + "\n").encode(),
    }


def plots(
    y: np.ndarray, p: np.ndarray, p_true: np.ndarray | None, design_effect: float = 1.0
) -> dict[str, bytes]:
    """Reliability diagram and probability histogram as PNG bytes (for MLflow and Prefect
    artifacts, with the planted truth drawn in), plus their data as CSV (`plot_data`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = reliability_figure(y, p, p_true, design_effect)
    out = {"reliability.png": _png(fig)}
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    classes = per_class(y, p)
    for name, _, pk in classes:
        ax.hist(
            pk,
            bins=50,
            alpha=0.8 if len(classes) == 1 else 0.5,
            label="model" if len(classes) == 1 else f"P({name})",
        )
    if p_true is not None:
        ax.hist(p_true, bins=50, alpha=0.5, label="planted truth")
    ax.set(
        xlabel="P(up)" if len(classes) == 1 else "P(class)",
        ylabel="rows",
        title="Probability histogram (holdout)",
    )
    ax.legend()
    out["histogram.png"] = _png(fig)
    plt.close(fig)
    return {**out, **plot_data(y, p, design_effect)}


def headline(metrics: dict[str, Any]) -> dict[str, float | int]:
    """The registered predictor's headline, flat and narrow (what ``dvc metrics show``
    prints, one line of at most ~120 characters): holdout ``rows``, ``log_loss``, its
    improvement over the base rate ``edge`` (> 0 is skill) with its 95 % interval
    ``edge_low``/``edge_high`` (skill only when ``edge_low`` > 0), ``ece``, ``auc`` and, on the
    simulator, the relative gap to the Bayes-optimal log loss ``bayes_gap``. The rest — the
    base rate's log loss, the independent labels, every interval — is in ``details.json``."""
    reg = metrics["registered"]
    edge = metrics["intervals"]["edge"]
    out = {
        "rows": int(metrics["holdout_rows"]),
        "log_loss": float(reg["log_loss"]),
        "edge": float(reg["base_rate_log_loss"] - reg["log_loss"]),
        "edge_low": float(edge["low"]),
        "edge_high": float(edge["high"]),
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
    # the base rate is the holdout's own frequency — the strictest constant, and the one the
    # promotion gate measures skill against — so the edge printed here is the gate's edge
    stacked, ensemble = bundle["stacked"], bundle["ensemble"]
    preds = {"stacked": stacked.predict_proba(X), "ensemble": ensemble.predict_proba(X)}
    for name, model in zip(stacked.names, stacked.base, strict=True):
        preds[name] = model.predict_proba(X)
    multi = is_multiclass(preds["stacked"])
    rate = base_rate(y, preds["stacked"].shape[1] if multi else None)
    metrics: dict[str, Any] = {name: summary(y, p, p_true, rate) for name, p in preds.items()}
    registered = preds[bundle["registered"]]
    metrics["registered"] = {**summary(y, registered, p_true, rate), "kind": bundle["registered"]}
    span = block_seconds(params.labels.horizon, timeframe_seconds(data.manifest["base_timeframe"]))
    blocks = block_ids(data.bar_time[rows], rows.size, span)
    metrics["intervals"] = intervals(y, registered, rate, blocks)
    metrics["effective_labels"] = effective_labels(rows.size, params.labels.horizon, data.symbol[rows])
    metrics["bootstrap_blocks"] = int(np.unique(blocks).size)
    metrics["bootstrap_block_days"] = span // 86_400
    metrics["backtest"] = backtest(
        registered, data, rows, params.models.backtest, span // 86_400, bundle["label_kind"]
    )
    if multi:
        metrics["classes"] = list(CLASSES)
    metrics["holdout_rows"] = int(rows.size)
    metrics["overfitting"] = bundle.get("overfitting", {})  # PBO of each Optuna study's choice
    design = rows.size / max(metrics["effective_labels"], 1.0)
    files = plots(y, registered, p_true, design)
    files["predictions.parquet"] = predictions_table(data, rows, preds, bundle["registered"], p_true)
    return metrics, files


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
    print(report(metrics, params.models.backtest.assumed_spread_pips))
    return 0


def report(metrics: dict[str, Any], assumed_spread_pips: float) -> str:
    """The evaluation as a user reads it: every figure with its 95 % interval."""
    r, ci = metrics["registered"], metrics["intervals"]

    def iv(key: str, digits: int = 4, within: dict = ci) -> str:
        return Interval.from_dict(within[key]).text(digits)

    gap = f", Bayes gap {r['bayes_gap']:.2%}" if "bayes_gap" in r else ""
    lines = [
        f"holdout {metrics['holdout_rows']:,} rows ≈ {metrics['effective_labels']:,.0f} independent labels, "
        f"{metrics['bootstrap_blocks']} blocks of {metrics['bootstrap_block_days']} day(s); 95% intervals:",
        f"  log loss {iv('log_loss')} (base rate {r['base_rate_log_loss']:.4f}{gap})",
        f"  edge over the base rate {iv('edge', 5)} nats/row"
        + ("" if ci["edge"]["low"] > 0 else " — covers zero: no demonstrated skill"),
        f"  ECE {iv('ece')}, AUC {iv('auc', 3)}",
    ]
    for symbol, b in metrics["backtest"].items():
        if not b["trades"]:
            lines.append(f"  backtest {symbol}: no trades")
            continue
        bi = b["intervals"]
        lines.append(
            f"  backtest {symbol}: {b['trades']:.0f} trades, PnL {iv('pnl_pips', 1, bi)} pips, "
            f"Sharpe {iv('sharpe', 2, bi)}, hit rate {iv('hit_rate', 3, bi)}"
        )
    lines += [f"  {line}" for line in spread_report(metrics["backtest"], assumed_spread_pips)]
    pbo = metrics.get("overfitting") or {}
    if pbo:
        lines.append(
            "  tuning, probability of backtest overfitting (CSCV over the trials' fold log losses): "
            + ", ".join(
                f"{name} {v['pbo']:.2f} ({v['trials']:.0f} trials × {v['partitions']:.0f} folds)"
                for name, v in pbo.items()
            )
        )
    return "\n".join(lines)


if __name__ == "__main__":
    from pipelines.config import run_cli

    raise SystemExit(run_cli(main))
