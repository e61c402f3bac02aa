"""The featurize step: stored bars → contract-checked features and labels with a column manifest."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipelines.bar_store import BarStore
from pipelines.config import DataParams, FeaturesParams, LabelsParams
from pipelines.featurize import LABEL_COLUMNS, FeaturizeError, run
from pipelines.ingest import connect, ingest_history
from pipelines.terminal import open_terminal


@pytest.fixture
def stored(tmp_path, contract) -> DataParams:
    params = DataParams.model_validate(
        {
            "root": str(tmp_path / "data"),
            "symbols": ["EURUSD", "USDJPY"],
            "timeframes": ["M15", "H1", "H4", "D1"],
            "simulator": {"end": "2024-02-15T00:00:00"},
        }
    )
    client = open_terminal(params)
    connect(client)
    ingest_history(client, BarStore(params.root), contract, params)
    return params


def test_featurize_writes_features_labels_and_manifest(stored, tmp_path, contract):
    features = FeaturesParams(base_timeframe="M15", higher_timeframes=("H1", "H4", "D1"))
    labels = LabelsParams.model_validate({"horizon": 8, "direction": {"dead_zone": 0.25}})
    out = tmp_path / "outputs"
    rows = run(stored, features, labels, out, contract)
    assert set(rows) == {"EURUSD", "USDJPY"} and min(rows.values()) > 2000
    manifest = json.loads((out / "columns.json").read_text())
    frame = pd.read_parquet(out / "USDJPY.parquet")
    assert list(frame.columns) == ["time", *manifest["columns"], *LABEL_COLUMNS]
    assert manifest["label_kind"] == "direction" and manifest["direction"]["dead_zone"] == 0.25
    assert "D1_rsi_14" in manifest["columns"]
    assert str(frame["time"].dt.tz) == "UTC" and str(frame["tb_t1"].dt.tz) == "UTC"
    labelled = frame.dropna(subset=["tb_label"])
    assert (labelled["tb_t1"] > labelled["time"]).all()
    assert set(frame["dir_label"].dropna().unique()) <= {0.0, 1.0}
    assert frame["dir_label"].iloc[-8:].isna().all()  # horizon past the end: no label


def test_missing_timeframe_is_named(stored, tmp_path, contract):
    features = FeaturesParams(base_timeframe="M5", higher_timeframes=("H1",))
    with pytest.raises(FeaturizeError, match="no stored EURUSD M5 bars.*add M5 to data.timeframes"):
        run(stored, features, LabelsParams(), tmp_path / "outputs", contract)
    assert not (tmp_path / "outputs").exists()
