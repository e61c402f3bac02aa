"""The probability matrix trained as Prefect fans it out (real Prefect server, real MLflow):
every cell is its own registered model with its own gate, one artifact shows them all, and a
cell that fails is named without stopping the others."""

from __future__ import annotations

import json

import pytest
import yaml

from pipelines.config import load_params
from pipelines.ingest import history

pytestmark = pytest.mark.slow


def test_every_cell_is_trained_gated_and_registered_on_its_own(prefect_harness, tmp_path):
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.matrix import MatrixFailed, train_matrix

    config = {
        "data": {
            "root": str(tmp_path / "data"),
            "symbols": ["EURUSD", "XAUUSD"],
            "timeframes": ["M15", "H1"],
            "simulator": {"end": "2024-02-25T00:00:00", "signal_strength": 2.0},
        },
        "features": {"higher_timeframes": ["H1"]},
        "models": {"learners": ["logistic", "xgboost"], "xgb": {"n_estimators": 80}, "cv": {"n_splits": 3}},
        "tune": {"enabled": False},
        "registry": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "gate": {"max_ece": 0.2}},
        "outputs": str(tmp_path / "outputs"),
        "matrix": {
            "groups": {"fx": ["EURUSD", "XAUUSD"], "metals": ["XAUUSD"]},
            "cells": {
                "fx-M15-direction-h4": {},
                "metals-H1-triple_barrier-h4": {"models": {"xgb": {"max_depth": 3}}},
                "fx-M5-direction-h12": {},  # M5 is not ingested: this cell fails, the others do not
            },
        },
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(config))
    history(load_params(path).data)

    with pytest.raises(
        MatrixFailed, match=r"fx-M5-direction-h12: ParamsError: .*timeframe M5 is not in data"
    ):
        train_matrix(params_path=str(path), workers=2)
    with get_client(sync_client=True) as prefect:
        (artifact,) = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["matrix"]))
        )
    table = artifact.data
    assert "2 cell(s) built, 1 failed" in table
    assert "| fx-M15-direction-h4 | mt5prob-fx-M15-direction-h4 v1 |" in table
    assert "| metals-H1-triple_barrier-h4 | mt5prob-metals-H1-triple_barrier-h4 v1 |" in table
    assert "| fx-M5-direction-h12 | — |" in table and "FAILED: ParamsError" in table

    mlflow = MlflowClient(config["registry"]["tracking_uri"])
    names = {m.name for m in mlflow.search_registered_models()}
    assert names == {"mt5prob-fx-M15-direction-h4", "mt5prob-metals-H1-triple_barrier-h4"}
    for cell, symbols in (("fx-M15-direction-h4", 2), ("metals-H1-triple_barrier-h4", 1)):
        manifest = json.loads(
            (tmp_path / "outputs" / "cells" / cell / "featurize" / "columns.json").read_text()
        )
        assert len(manifest["symbols"]) == symbols  # each cell trains on its group's symbols
        assert (tmp_path / "outputs" / "cells" / cell / "evaluate" / "metrics.json").is_file()

    # the good cells alone, one at a time: each registers its second version and decides on its own
    done = train_matrix(
        params_path=str(path), cells=["fx-M15-direction-h4", "metals-H1-triple_barrier-h4"], workers=1
    )
    by_cell = {r["cell"]: r for r in done["cells"]}
    assert {r["version"] for r in by_cell.values()} == {"2"}
    for r in by_cell.values():  # its own gate: promoted versions are their model's champion
        assert r["reason"] and r["skill"] in ("demonstrated", "none")
        if r["promoted"]:
            assert mlflow.get_registered_model(r["name"]).aliases["champion"] == "2"
    assert by_cell["fx-M15-direction-h4"]["skill"] == "demonstrated"  # a strong planted signal
    with pytest.raises(Exception, match=r"no cell 'fx-H1-direction-h5'.*nearest"):
        train_matrix(params_path=str(path), cells=["fx-H1-direction-h5"])


def test_the_matrix_grid_reads_in_order_and_names_what_is_missing():
    """/matrix's grid: timeframes shortest first and horizons by number (not as strings: 4
    before 16), a followed cell with no result null and listed, a result no longer followed left out."""
    from datetime import UTC, datetime

    import pandas as pd

    from pipelines.store import Subscription
    from serving.inputs import matrix_grid

    follows = [
        Subscription.parse(f) for f in ("EURUSD:H1:4", "EURUSD:M5:48", "EURUSD:M15:16", "EURUSD:M15:4")
    ]
    t = datetime(2024, 6, 28, tzinfo=UTC)
    rows = [
        ("EURUSD", tf, h, "direction", 0.6, None, "long", t, f"m-{tf}-{h}", "1", t)
        for tf, h in (("M15", 4), ("M5", 48), ("H1", 4), ("H4", 1))
    ]
    frame = pd.DataFrame(
        rows,
        columns=[
            "symbol", "timeframe", "horizon", "label_kind", "probability", "probabilities", "signal",
            "bar_time", "model_name", "model_version", "scored_at",
        ],
    )  # fmt: skip
    grid, missing = matrix_grid(follows, frame)
    assert list(grid["EURUSD"]) == ["M5", "M15", "H1"]  # H4: no longer followed
    assert list(grid["EURUSD"]["M15"]["direction"]) == ["4", "16"]
    assert grid["EURUSD"]["M15"]["direction"]["16"] is None and missing == ["EURUSD:M15:16:direction"]
    assert grid["EURUSD"]["M5"]["direction"]["48"].model == "m-M5-48"
