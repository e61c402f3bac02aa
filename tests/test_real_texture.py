"""The whole loop on a market with real texture and no signal (issue 16): volatility
clustering, fat tails, news-sized jumps and holidays, nothing to predict. Every genuine bar is
kept (news bars flagged, none quarantined), the gate promotes nothing, and every interval the
evaluation prints covers "no skill"."""

from __future__ import annotations

import json

import joblib
import pytest

from pipelines.bar_store import BarStore, SeriesKey
from pipelines.config import Params
from pipelines.evaluate import evaluate, write_evaluation
from pipelines.featurize import run as featurize
from pipelines.ingest import connect, ingest_history
from pipelines.register import gate_summary, register
from pipelines.registry import Registry
from pipelines.terminal import open_terminal
from pipelines.train import load_training_data, save_bundle, train

SYMBOLS = ["EURUSD", "GBPUSD"]


@pytest.mark.slow
def test_no_signal_with_real_texture_promotes_nothing_and_keeps_every_bar(tmp_path, contract, capsys):
    p = Params.model_validate(
        {
            "data": {
                "root": str(tmp_path / "data"),
                "symbols": SYMBOLS,
                "timeframes": ["M5", "H1"],
                "simulator": {"end": "2024-02-24T00:00:00", "signal_strength": 0.0, "texture": "market"},
            },
            "features": {"base_timeframe": "M5", "higher_timeframes": ["H1"]},
            "labels": {"horizon": 12},
            "models": {"xgb": {"n_estimators": 150}, "cv": {"n_splits": 3}},
            "registry": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
            "outputs": str(tmp_path / "outputs"),
        }
    )
    client = open_terminal(p.data)
    connect(client)
    reports = ingest_history(client, BarStore(p.data.root), contract, p.data)
    store = BarStore(p.data.root)
    # no genuine bar quarantined; the news bars that break the spike rule are kept and flagged
    assert sum(r.quarantined for r in reports) == 0
    assert not (tmp_path / "data" / "quarantine").exists() or not any(
        (tmp_path / "data" / "quarantine").rglob("*.parquet")
    )
    flagged = {s: store.flags(SeriesKey("bars", s, "M5")) for s in SYMBOLS}
    print({s: f["rules"].value_counts().to_dict() for s, f in flagged.items()})
    assert sum(len(f) for f in flagged.values()) > 0
    for s, f in flagged.items():
        stored = set(store.read(SeriesKey("bars", s, "M5"))["time"])
        assert set(f["time"]) <= stored  # flagged bars are in the store, not dropped
    # holidays are closures, not holes: 1 January has no bars and breaks nothing
    m5 = store.read(SeriesKey("bars", "EURUSD", "M5"))
    assert not (m5["time"].dt.strftime("%m-%d") == "01-01").any()

    featurize(p.data, p.features, p.labels, p.outputs / "featurize", contract)
    data = load_training_data(p.outputs / "featurize", "direction")
    save_bundle(train(data, p.models, p.labels.horizon), p.outputs / "train")
    metrics, images = evaluate(joblib.load(p.outputs / "train" / "model.pkl"), data, p)
    write_evaluation(metrics, images, p.outputs / "evaluate")
    ci = metrics["intervals"]
    print(
        json.dumps(
            {
                "rows": metrics["holdout_rows"],
                "effective_labels": metrics["effective_labels"],
                "intervals": ci,
                "backtest": {s: b["intervals"] for s, b in metrics["backtest"].items()},
            },
            indent=1,
        )
    )
    # every interval covers "no skill": no edge over the base rate, AUC one half, no PnL,
    # no Sharpe, a hit rate of one half
    assert ci["edge"]["low"] <= 0 <= ci["edge"]["high"], ci["edge"]
    assert ci["auc"]["low"] <= 0.5 <= ci["auc"]["high"], ci["auc"]
    for symbol, b in metrics["backtest"].items():
        if not b["trades"]:  # a model with nothing to say rarely clears the threshold: no PnL at all
            assert b["pnl_pips"] == 0 and not b["intervals"], (symbol, b)
            continue
        iv = b["intervals"]
        assert iv["pnl_pips"]["low"] <= 0 <= iv["pnl_pips"]["high"], (symbol, iv)
        assert iv["sharpe"]["low"] <= 0 <= iv["sharpe"]["high"], (symbol, iv)
        assert iv["hit_rate"]["low"] <= 0.5 <= iv["hit_rate"]["high"], (symbol, iv)

    name, version, decision = register(p)
    summary = gate_summary(name, version, decision)
    print(summary)
    assert not decision.promoted and not decision.has_skill
    assert "NO SKILL" in summary and "has no champion" in summary
    registry = Registry(p.registry.tracking_uri)
    assert registry.alias_version(name, "champion") is None
    assert registry.client.get_model_version(name, version).tags["gate_skill"] == "none"
