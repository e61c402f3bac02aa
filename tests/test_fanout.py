"""Per-symbol fan-out on a real Dask LocalCluster (two worker processes): ingest and featurize
produce exactly what the sequential steps produce."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from pipelines import featurize
from pipelines.bar_store import BarStore, SeriesKey
from pipelines.config import load_params

pytestmark = pytest.mark.slow

SMALL = {
    "data": {
        "symbols": ["EURUSD", "XAUUSD", "GBPUSD"],
        "timeframes": ["M5", "H1"],
        "simulator": {"end": "2024-01-20T00:00:00"},
    },
    "features": {
        "base_timeframe": "M5",
        "higher_timeframes": ["H1"],
        "families": ["returns", "volatility", "atr", "rsi"],
        "htf_families": ["returns", "atr"],
        "windows": {"return_lags": [1, 4], "volatility": [16], "atr": 14, "rsi": 14},
    },
}


def test_dask_fanout_matches_the_sequential_steps(prefect_harness, tmp_path):
    from flows.fanout import featurize_fanout_flow, ingest_fanout_flow

    raw = {
        **SMALL,
        "data": {**SMALL["data"], "root": str(tmp_path / "data")},
        "outputs": str(tmp_path / "out"),
    }
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    reports = ingest_fanout_flow(params_path=str(params_file), runner="dask", workers=2)
    assert {r.series for r in reports} == {
        f"{s} {tf}" for s in SMALL["data"]["symbols"] for tf in ("M5", "H1")
    }
    assert all(r.written > 0 for r in reports)
    rows = featurize_fanout_flow(params_path=str(params_file), runner="dask", workers=2)
    assert set(rows) == set(SMALL["data"]["symbols"])

    params = load_params(params_file)
    store = BarStore(params.data.root)
    assert len(store.read(SeriesKey("bars", "EURUSD", "M5"))) == next(
        r.written for r in reports if r.series == "EURUSD M5"
    )
    sequential = tmp_path / "sequential"
    assert featurize.run(params.data, params.features, params.labels, sequential) == rows
    for symbol in rows:
        pd.testing.assert_frame_equal(
            pd.read_parquet(tmp_path / "out" / "featurize" / f"{symbol}.parquet"),
            pd.read_parquet(sequential / f"{symbol}.parquet"),
        )
    manifest = json.loads((tmp_path / "out" / "featurize" / "columns.json").read_text())
    assert manifest == json.loads((sequential / "columns.json").read_text())
