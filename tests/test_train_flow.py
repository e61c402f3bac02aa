"""The Prefect `train` flow end to end on a small store (real Prefect server, real MLflow)."""

from __future__ import annotations

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
            "simulator": {"end": "2024-02-25T00:00:00", "signal_strength": 0.5},
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
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(config))
    data = load_params(path).data
    client = open_terminal(data)
    connect(client)
    ingest_history(client, BarStore(data.root), make_contract(data), data)
    result = train_flow(params_path=str(path), horizon=4, trials=3)
    assert result["registration"]["version"] == "1" and result["registration"]["promoted"]
    assert set(result["train"]["tuned"]) == {"logistic"}  # only learners with a search space
    assert result["registered"]["log_loss"] < result["registered"]["base_rate_log_loss"] + 0.01
    with get_client(sync_client=True) as prefect:
        keys = ["train-metrics", "reliability-diagram"]
        artifacts = prefect.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    assert {a.key for a in artifacts} == set(keys)
