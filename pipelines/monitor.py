"""Monitoring: is the world still the one the champion was trained on, and are its live
probabilities still calibrated?

* Feature drift — population stability index (`models.metrics.psi`) of each market feature
  (calendar and session columns, functions of the clock, are left out) over the
  newest ``monitor.live_bars`` base bars of every trained symbol (from the bar store, computed
  with features/) against the training window (featurize outputs before the holdout).
* Live calibration — for every probability in the results store whose label has matured
  (its horizon has passed in the stored bars), the realised direction label; ECE and log loss
  per model version and per tenant, from ``monitor.min_rows`` rows up.

Past ``monitor.psi_max`` / ``monitor.ece_max`` a check is a breach (the ``monitor`` flow then
publishes it, logs a WARNING and fails; optionally starts retraining). Times UTC.

    python -m pipelines.monitor [--params params.yaml] [--profile fast]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from features.bars import Bars
from features.labels import direction_labels
from features.matrix import build_features, family_columns
from models.metrics import ece, log_loss, psi
from pipelines.bar_store import BarStore, SeriesKey
from pipelines.config import Params
from pipelines.featurize import load_bars
from pipelines.mt5.constants import timeframe_seconds
from pipelines.store import ResultsStore
from pipelines.train import load_training_data, splits


@dataclass
class MonitorReport:
    drift: list[dict[str, Any]] = field(default_factory=list)  # per symbol: max/mean PSI, worst features
    calibration: list[dict[str, Any]] = field(default_factory=list)  # per model version and per tenant
    breaches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.breaches


def feature_drift(params: Params) -> list[dict[str, Any]]:
    """PSI of every feature, newest `live_bars` bars vs the training window, per symbol."""
    cfg = params.monitor
    data = load_training_data(params.outputs / "featurize", params.labels.kind)
    holdout, _ = splits(data, params.models)
    spec = params.features.spec()
    store = BarStore(params.data.root)
    # calendar and session columns are functions of the clock: a one-day window "drifts" in
    # day-of-week by construction, which says nothing about the market — they are left out
    clock = {c for f in ("calendar", "session") if f in spec.families for c in family_columns(f, spec)}
    rows = []
    for symbol in data.manifest["symbols"]:
        train_rows = holdout.train[data.symbol[holdout.train] == symbol]
        reference = data.X[train_rows]
        bars = load_bars(store, symbol, [spec.base_timeframe, *spec.higher_timeframes])
        live = build_features(bars, spec).values[-cfg.live_bars :]
        values = {c: psi(reference[:, j], live[:, j]) for j, c in enumerate(data.columns) if c not in clock}
        worst = sorted(values.items(), key=lambda kv: -kv[1])[:5]
        rows.append(
            {
                "symbol": symbol,
                "live_bars": len(live),
                "train_rows": len(reference),
                "max_psi": max(values.values()),
                "mean_psi": float(np.mean(list(values.values()))),
                "worst": ", ".join(f"{c} {v:.2f}" for c, v in worst),
            }
        )
    return rows


def _realised(store: BarStore, symbol: str, timeframe: str, horizon: int, params: Params) -> pd.Series:
    """Realised direction label (1 up, 0 down, NaN flat or not matured) by bar open time (s)."""
    frame = store.read(SeriesKey("bars", symbol, timeframe))
    bars = Bars.from_frame(frame, timeframe_seconds(timeframe))
    spec = dataclasses.replace(params.labels.direction_spec(), horizon=horizon, neutral="drop")
    labels = direction_labels(bars, spec)
    return pd.Series(labels["label"], index=bars.time)


def live_calibration(
    params: Params, results: ResultsStore, since: datetime | None = None
) -> list[dict[str, Any]]:
    """ECE and log loss of matured live probabilities, per model version and per tenant
    (direction labels; read through each tenant's own session)."""
    bar_store = BarStore(params.data.root)
    frames = []
    for tenant in results.directory():
        with results.tenant(tenant.tenant_id, actor="monitor") as session:
            f = session.probabilities(start=since)
        if len(f):
            f["tenant"] = tenant.tenant_id  # ids only: names are the tenants' own (sealed)
            frames.append(f[f.label_kind == "direction"])
    if not frames:
        return []
    rows = pd.concat(frames, ignore_index=True)
    realised = {}
    for (symbol, tf, h), _ in rows.groupby(["symbol", "timeframe", "horizon"]):
        realised[(symbol, tf, h)] = _realised(bar_store, symbol, tf, int(h), params)
    t = rows.bar_time.map(lambda x: int(x.timestamp()))
    rows["y"] = [
        realised[(s, tf, h)].get(ts, np.nan)
        for s, tf, h, ts in zip(rows.symbol, rows.timeframe, rows.horizon, t, strict=True)
    ]
    matured = rows[rows.y.notna()]
    out = []
    for key, label in ((["model_name", "model_version"], "model"), (["tenant", "model_name"], "tenant")):
        for k, g in matured.groupby(key):
            out.append(
                {
                    "by": label,
                    "key": " ".join(map(str, k)),
                    "rows": len(g),
                    "ece": ece(g.y.to_numpy(), g.probability.to_numpy()),
                    "log_loss": log_loss(g.y.to_numpy(), g.probability.to_numpy()),
                }
            )
    return out


def check(
    params: Params, results: ResultsStore | None = None, since: datetime | None = None
) -> MonitorReport:
    """Both checks with the ``monitor:`` thresholds; breaches named in the report."""
    cfg = params.monitor
    report = MonitorReport()
    report.drift = feature_drift(params)
    for row in report.drift:
        if row["max_psi"] > cfg.psi_max:
            report.breaches.append(
                f"feature drift on {row['symbol']}: max PSI {row['max_psi']:.2f} > "
                f"{cfg.psi_max} ({row['worst']})"
            )
    if results is not None:
        report.calibration = live_calibration(params, results, since)
        for row in report.calibration:
            if row["rows"] >= cfg.min_rows and row["ece"] > cfg.ece_max:
                report.breaches.append(
                    f"live calibration of {row['by']} {row['key']}: ECE {row['ece']:.3f} > "
                    f"{cfg.ece_max} on {row['rows']} matured rows"
                )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    from pipelines.config import params_from_cli

    params = params_from_cli("python -m pipelines.monitor", __doc__, argv)
    results = ResultsStore.from_params(params.store)
    report = check(params, results)
    for row in report.drift:
        print(
            f"drift {row['symbol']}: max PSI {row['max_psi']:.3f}, mean {row['mean_psi']:.3f} "
            f"({row['worst']})"
        )
    for row in report.calibration:
        print(
            f"calibration {row['by']} {row['key']}: {row['rows']} rows, ECE {row['ece']:.4f}, "
            f"log loss {row['log_loss']:.4f}"
        )
    for b in report.breaches:
        print(f"BREACH: {b}")
    results.close()
    return 0 if report.ok else 1


if __name__ == "__main__":
    from pipelines.config import run_cli

    raise SystemExit(run_cli(main))
