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


def test_lineage_names_the_data_read_also_after_new_bars(stored, tmp_path, contract):
    """The manifest records the bar store's DVC content hash when featurize read it: after live
    bars arrive, a retrain's manifest names the newer data (not data.dvc's older snapshot), and
    the hash is DVC's own (what `dvc commit data.dvc` would record)."""
    import os
    import subprocess
    import sys

    from pipelines.registry import lineage

    features = FeaturesParams(base_timeframe="H1", higher_timeframes=("H4", "D1"))
    out = tmp_path / "outputs"
    run(stored, features, LabelsParams(), out, contract)
    first = json.loads((out / "columns.json").read_text())["data_md5"]
    store = BarStore(stored.root)
    assert first == store.content_md5() and first.endswith(".dir")
    # DVC itself agrees: `dvc add` on a copy of the store records the same hash
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "-q"], cwd=repo, check=True)
    (repo / ".dvcignore").write_text("**/.lock\n**/.tmp-*\n")
    subprocess.run(["cp", "-r", stored.root, str(repo / "data")], check=True)
    subprocess.run(
        [*dvc, "add", "-q", "data"],
        cwd=repo,
        check=True,
        env={**os.environ, "DVC_NO_ANALYTICS": "1"},
    )
    recorded = next(
        line.split(":", 1)[1].strip()
        for line in (repo / "data.dvc").read_text().splitlines()
        if line.strip().startswith("- md5:")
    )
    assert recorded == first
    assert lineage(repo, {}, first)["data_dvc_committed"] == "true"
    # new live bars: a week more of the same series
    later = stored.model_copy(
        update={
            "simulator": stored.simulator.model_copy(
                update={"end": pd.Timestamp("2024-02-22", tz="UTC").to_pydatetime()}
            )
        }
    )
    client = open_terminal(later)
    connect(client)
    ingest_history(client, BarStore(later.root), contract, later)
    run(later, features, LabelsParams(), out, contract)
    second = json.loads((out / "columns.json").read_text())["data_md5"]
    assert second != first and second == BarStore(later.root).content_md5()
    tags = lineage(repo, {}, second)
    assert tags["data_dvc_md5"] == second and tags["data_dvc_committed"] == "false"
