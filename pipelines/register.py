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
from typing import Any, NamedTuple

import joblib
import pandas as pd

from models.gate import GateDecision
from models.uncertainty import block_seconds
from pipelines.config import Params
from pipelines.mt5.constants import timeframe_seconds
from pipelines.registry import Registry, lineage, model_name
from pipelines.train import load_training_data, splits


def flat(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flat(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: value}


class Holdout(NamedTuple):
    """The holdout rows in time order: features, labels, each row's symbol and bar open time
    (UTC epoch seconds), and the base bar length in seconds."""

    X: pd.DataFrame
    y: Any
    symbols: Any
    times: Any
    bar_seconds: int


def holdout(params: Params, data: Any = None) -> Holdout:
    """The holdout rows of the featurized data (`data`, read when not given): what the gate
    compares on."""
    if data is None:
        data = load_training_data(params.outputs / "featurize", params.labels.kind)
    test, _ = splits(data, params.models)
    rows = test.test
    return Holdout(
        pd.DataFrame(data.X[rows], columns=data.columns),
        data.y[rows],
        data.symbol[rows],
        data.bar_time[rows],
        timeframe_seconds(data.manifest["base_timeframe"]),
    )


def _gate(registry: Registry, params: Params, name: str, held: Holdout | None = None) -> GateDecision:
    held = holdout(params) if held is None else held
    gate = params.registry.gate
    return registry.promotion_gate(
        name,
        held.X,
        held.y,
        gate.max_ece,
        params.labels.horizon,
        held.symbols,
        times=held.times,
        block_seconds=block_seconds(params.labels.horizon, held.bar_seconds),
        ece_ceiling=gate.ece_ceiling,
        level=gate.level,
    )


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
    X = held.X
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
        {
            **lineage(repo, sections, data.manifest.get("data_md5")),
            "symbols": ",".join(bundle["symbols"]),
            "kind": bundle["registered"],
        },
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
    elif kind == "up_flat_down":
        what = (
            f"P(down), P(flat), P(up) of the close {h} {tf} bars ahead against this bar's close, flat "
            "within a dead zone of ATR × √horizon (labels.up_flat_down.flat_within)"
        )
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
    print(gate_summary(name, version, decision))
    return 0


def gate_summary(name: str, version: str, decision: GateDecision) -> str:
    """What `register` and the train flow tell the user about a gated version: the decision,
    the skill over the base rate with its interval, and — when there is no champion — that
    the service will not serve this model as informative."""
    verdict = "promoted to champion" if decision.promoted else "kept as challenger"
    s = decision.skill
    skill = (
        f"skill over the base rate: {s.text(5)} nats/row ({s.level:.0%} interval, {s.blocks} independent "
        f"time blocks, {decision.rows:,} rows)"
    )
    lines = [f"{name} version {version}: {verdict} — {decision.reason}"]
    if decision.has_skill:
        lines.append(f"  {skill}")
    else:
        lines.append(f"  NO SKILL: {skill} — the interval does not exclude zero")
    if not decision.promoted and decision.champion is None:
        why = "no version has shown skill here" if not decision.has_skill else "the gate refused it (above)"
        lines.append(
            f"  {name} has no champion: {why}, and the scoring service answers requests for it with that "
            "status instead of probabilities"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    from pipelines.config import run_cli

    raise SystemExit(run_cli(main))
