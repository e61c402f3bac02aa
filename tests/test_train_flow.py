"""The Prefect `train` flow end to end on a small store (real Prefect server, real MLflow); a
run that fails part-way leaves the outputs of the last good run whole."""

from __future__ import annotations

import hashlib

import pytest
import yaml

from pipelines.bar_store import BarStore
from pipelines.config import load_params
from pipelines.ingest import connect, ingest_history, make_contract
from pipelines.terminal import open_terminal


@pytest.mark.slow
def test_train_flow_registers_and_publishes(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.train import train_flow

    config = {
        "data": {
            "root": str(tmp_path / "data"),
            "symbols": ["EURUSD"],
            "timeframes": ["M15", "H1"],
            "simulator": {"end": "2024-02-25T00:00:00", "signal_strength": 2.0},
        },
        "features": {"base_timeframe": "M15", "higher_timeframes": ["H1"]},
        "labels": {"horizon": 4},
        "models": {"learners": ["logistic", "xgboost"], "xgb": {"n_estimators": 80}, "cv": {"n_splits": 3}},
        "tune": {
            "storage": f"sqlite:///{tmp_path / 'optuna.db'}",
            "spaces": {"logistic": {"C": {"low": 0.0001, "high": 0.1, "log": True}}},
        },
        "registry": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "gate": {"max_ece": 0.2}},
        "outputs": str(tmp_path / "outputs"),
        "profiles": {  # the README trap: same outputs, but a simulator "now" before the data ends,
            "clash": {  # so evaluate (the planted truth) fails after featurize and train succeeded
                "outputs": str(tmp_path / "outputs"),
                "data": {"simulator": {"end": "2024-02-10T00:00:00"}},
                "tune": {"enabled": False},
            }
        },
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(config))
    data = load_params(path).data
    client = open_terminal(data)
    connect(client)
    ingest_history(client, BarStore(data.root), make_contract(data), data)
    result = train_flow(params_path=str(path), horizon=4, trials=3)
    assert result["registration"]["version"] == "1" and result["registration"]["promoted"]
    assert result["registration"]["skill"] == "demonstrated" and result["registration"]["edge"]["low"] > 0
    assert set(result["train"]["tuned"]) == {"logistic"}  # only learners with a search space
    # how much picking the best of the study's trials overfits, over its walk-forward folds
    pbo = result["train"]["overfitting"]["logistic"]
    assert 0.0 <= pbo["pbo"] <= 1.0 and pbo["trials"] >= 2 and pbo["partitions"] == 2
    assert result["registered"]["log_loss"] < result["registered"]["base_rate_log_loss"] + 0.01
    with get_client(sync_client=True) as prefect:
        keys = ["train-metrics", "reliability-diagram", "evaluation"]
        artifacts = prefect.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    assert {a.key for a in artifacts} == set(keys)

    def snapshot() -> dict[str, str]:
        root = tmp_path / "outputs"
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    before = snapshot()
    assert {"featurize/columns.json", "train/model.pkl", "evaluate/metrics.json"} <= set(before)
    with pytest.raises(Exception, match="closed bar"):
        train_flow(params_path=str(path), profile="clash", horizon=4)
    assert snapshot() == before  # nothing replaced, no staging folder left behind
