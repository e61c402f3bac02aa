"""Register step: the trained predictor into MLflow (challenger), then the promotion gate.

Logs params, holdout metrics, the reliability diagram and histogram, lineage tags (git
commit, data.dvc hash, params hash) and the whole predictor as one pyfunc model; registers
it under the (symbol group, timeframe, label kind, horizon) name with alias ``challenger``;
then the gate compares it with the current ``champion`` on the holdout rows.

    python -m pipelines.register [--params params.yaml] [--profile fast]
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import pandas as pd

from models.gate import GateDecision
from pipelines.config import Params
from pipelines.registry import Registry, lineage, model_name
from pipelines.train import load_training_data, splits


def flat(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flat(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: value}


def holdout(params: Params, data: Any = None) -> tuple[pd.DataFrame, Any, Any]:
    """The holdout rows of the featurized data (`data`, read when not given), in time order —
    features, labels and each row's symbol: what the gate compares on."""
    if data is None:
        data = load_training_data(params.outputs / "featurize", params.labels.kind)
    test, _ = splits(data, params.models)
    rows = test.test
    return pd.DataFrame(data.X[rows], columns=data.columns), data.y[rows], data.symbol[rows]


def _gate(registry: Registry, params: Params, name: str, held: Any = None) -> GateDecision:
    X, y, symbols = holdout(params) if held is None else held
    max_ece = params.registry.gate.max_ece
    return registry.promotion_gate(name, X, y, max_ece, params.labels.horizon, symbols)


def gate(params: Params, name: str) -> GateDecision:
    """Run the promotion gate again for `name`'s current challenger on today's holdout rows
    (the `promote` flow): champion moves only if the challenger wins out of sample."""
    return _gate(Registry(params.registry.tracking_uri), params, name)


def register(params: Params, repo: Path = Path(".")) -> tuple[str, str, GateDecision]:
    """Log, register and gate the model in ``outputs/train``; returns (name, version, decision)."""
    out = params.outputs
    bundle = joblib.load(out / "train" / "model.pkl")
    metrics = json.loads((out / "evaluate" / "details.json").read_text())
    data = load_training_data(out / "featurize", params.labels.kind)
    held = holdout(params, data)
    X = held[0]
    name = model_name(
        params.registry.name_prefix,
        params.registry.symbol_group,
        bundle["base_timeframe"],
        bundle["label_kind"],
        params.labels.horizon,
    )
    sections = {k: params.model_dump(mode="json")[k] for k in ("features", "labels", "models")}
    meta = {
        "feature_spec": dataclasses.asdict(params.features.spec()),
        "base_timeframe": bundle["base_timeframe"],
        "label_kind": bundle["label_kind"],
        "horizon": params.labels.horizon,
        "symbols": list(bundle["symbols"]),
    }
    registry = Registry(params.registry.tracking_uri)
    predictor = bundle[bundle["registered"]]
    scalar = {k: v for k, v in flat("", {"holdout": metrics["registered"]}).items() if isinstance(v, float)}
    version = registry.log_and_register(
        name,
        predictor,
        list(X.columns),
        X.head(5),
        flat("", sections),
        scalar,
        {**lineage(repo, sections), "symbols": ",".join(bundle["symbols"]), "kind": bundle["registered"]},
        [
            p
            for p in (
                out / "evaluate" / "metrics.json",
                out / "evaluate" / "details.json",
                out / "evaluate" / "reliability.png",
                out / "evaluate" / "histogram.png",
                out / "evaluate" / "reliability.csv",
                out / "evaluate" / "histogram.csv",
                out / "featurize" / "columns.json",
            )
            if p.exists()
        ],
        meta=meta,
    )
    window = (int(data.bar_time.min()), int(data.bar_time.max()))
    text = model_description(meta, len(X.columns), window, params.models.holdout_fraction)
    registry.describe(name, version, text)
    return name, version, _gate(registry, params, name, held)


def model_description(
    meta: dict[str, Any], n_columns: int, window: tuple[int, int], holdout_fraction: float
) -> str:
    """What a registered model predicts, over which horizon and label kind, from which
    features and which bars (`window`: first and last bar open time, UTC epoch seconds) —
    the description shown in the MLflow UI."""
    spec, h, tf, kind = meta["feature_spec"], meta["horizon"], meta["base_timeframe"], meta["label_kind"]
    if kind == "direction":
        what = f"P(the close {h} {tf} bars ahead is above this bar's close)"
    else:
        what = f"P(the take-profit barrier is touched before the stop-loss within {h} {tf} bars)"
    features = f"{', '.join(spec['families'])} on {tf}"
    if spec["higher_timeframes"]:
        features += (
            f"; {', '.join(spec['htf_families'])} on {', '.join(spec['higher_timeframes'])}"
            " (each from its last closed bar)"
        )
    start, end = (datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M") for t in window)
    return (
        f"{what}, for {', '.join(meta['symbols'])}. Label kind: {kind}; horizon: {h} bars of {tf}. "
        f"Features ({n_columns} columns): {features}. Trained on {tf} bars from {start} to {end} UTC; "
        f"the last {holdout_fraction:.0%} of that time is the holdout that evaluation and the "
        "promotion gate score on."
    )


def main(argv: Sequence[str] | None = None) -> int:
    from pipelines.config import params_from_cli

    params = params_from_cli("python -m pipelines.register", __doc__, argv)
    name, version, decision = register(params)
    verdict = "promoted to champion" if decision.promoted else "kept as challenger"
    print(f"{name} version {version}: {verdict} — {decision.reason}")
    return 0


if __name__ == "__main__":
    from pipelines.config import run_cli

    raise SystemExit(run_cli(main))
