"""Per-symbol fan-out on a real Dask LocalCluster (two worker processes): ingest and featurize
produce exactly what the sequential steps produce."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from conftest import small_features

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
    "features": small_features(),
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


@pytest.mark.postgres
def test_dask_train_fanout_tunes_each_learner_then_trains_with_the_best(
    prefect_harness, tmp_path, pg_database
):
    import optuna

    from flows.fanout import train_fanout_flow
    from pipelines import ingest

    storage = pg_database("optuna_fanout")
    optuna.storages.RDBStorage(storage)
    raw = {
        **SMALL,
        "data": {**SMALL["data"], "root": str(tmp_path / "data")},
        "outputs": str(tmp_path / "out"),
        "models": {"learners": ["logistic", "xgboost"], "cv": {"n_splits": 2}},
        "tune": {
            "n_trials": 2,
            "storage": storage,
            "log_to_mlflow": False,
            "timeout_seconds": None,
            "spaces": {
                "logistic": {"C": {"low": 0.0001, "high": 1.0, "log": True}},
                "xgboost": {"max_depth": {"low": 2, "high": 4, "int": True}},
            },
        },
        "registry": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    params = load_params(params_file)
    ingest.history(params.data)
    featurize.run(params.data, params.features, params.labels, params.outputs / "featurize")

    out = train_fanout_flow(params_path=str(params_file), runner="dask", workers=2)
    studies = {s.study_name.split("-")[0]: s for s in optuna.get_all_study_summaries(storage)}
    assert set(studies) == {"logistic", "xgboost"} and all(s.n_trials >= 2 for s in studies.values())
    for name in ("logistic", "xgboost"):
        study = optuna.load_study(study_name=studies[name].study_name, storage=storage)
        assert out["tuned"][name] == study.best_params
        workers = {t.user_attrs["worker"] for t in study.trials}
        assert len(workers) == 1  # one task ran each study
    assert (tmp_path / "out" / "train" / "model.pkl").is_file()
