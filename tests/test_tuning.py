"""Optuna tuning: purged-CV objective, pruning, resumable studies, nested MLflow trial runs."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from models.base_learners import LogisticLearner
from models.stacking import out_of_fold
from models.tuning import cv_log_loss, suggest, tune
from models.validation import purged_walk_forward_splits
from pipelines.registry import TrialLogger


def _data(n: int = 3000):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 5))
    p = 1 / (1 + np.exp(-(0.8 * X[:, 0] - 0.5 * X[:, 1])))
    y = (rng.random(n) < p).astype(float)
    t0 = np.arange(n) * 300.0
    return X, y, t0, t0 + 1200


SPACE = {"C": {"low": 1e-4, "high": 10.0, "log": True}}


def test_suggest_reads_every_kind_of_space():
    study = optuna.create_study()
    trial = study.ask()
    got = suggest(
        trial,
        {"a": {"low": 1, "high": 5, "int": True}, "b": {"choices": [8, 16]}, "c": {"low": 0.1, "high": 0.2}},
    )
    assert isinstance(got["a"], int) and got["b"] in (8, 16) and 0.1 <= got["c"] <= 0.2


def test_study_resumes_and_records_trials_in_mlflow(tmp_path):
    X, y, t0, t1 = _data()
    folds = purged_walk_forward_splits(t0, t1, 3)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"

    def build(params):
        return LogisticLearner(C=params["C"])

    with TrialLogger(f"sqlite:///{tmp_path / 'mlflow.db'}", "logistic-test") as logger:
        first = tune("logistic-test", build, SPACE, X, y, folds, 4, None, storage, 0, logger.on_trial)
    assert len(first.study.trials) == 4
    # the best trial's out-of-fold predictions are kept: exactly what refitting would give
    assert first.oof is not None
    refit = out_of_fold({"l": lambda: build(first.params)}, X, y, folds)[:, 0]
    assert np.array_equal(first.oof, refit, equal_nan=True)
    # interrupted after 4 of 6: a second call runs only the missing 2
    resumed = tune("logistic-test", build, SPACE, X, y, folds, 6, None, storage, 0)
    best, study = resumed.params, resumed.study
    assert len(study.trials) == 6
    # a best trial from the earlier call has no predictions here (not in this process's memory)
    assert (resumed.oof is not None) == (study.best_trial.number >= 4)
    assert cv_log_loss(lambda: build(best), X, y, folds) <= cv_log_loss(
        lambda: build({"C": 1e-4}), X, y, folds
    )
    import mlflow

    runs = mlflow.search_runs(experiment_names=["tuning"])
    assert (runs["tags.mlflow.runName"].str.startswith("trial-")).sum() == 4
    assert runs["tags.mlflow.parentRunId"].dropna().nunique() == 1


def test_pruning_stops_hopeless_trials(tmp_path):
    X, y, t0, t1 = _data()
    folds = purged_walk_forward_splits(t0, t1, 4)

    class Hopeless(LogisticLearner):
        def predict_proba(self, X):
            return np.full(len(X), 0.999 if self.C > 1 else 0.5)

    study = tune(
        "prune-test",
        lambda p: Hopeless(C=p["C"]),
        {"C": {"low": 0.01, "high": 100.0, "log": True}},
        X,
        y,
        folds,
        16,
        None,
        None,
        1,
    ).study
    states = {t.state for t in study.trials}
    assert optuna.trial.TrialState.PRUNED in states


def test_tuned_parameters_reach_every_learner():
    from pipelines.config import ModelsParams
    from pipelines.train import learner_factories

    tuned = {
        "xgboost": {"max_depth": 5},
        "logistic": {"C": 0.5},
        "mlp": {"hidden": 32},
        "sequence": {"hidden": 16},
    }
    models = ModelsParams(learners=("logistic", "xgboost", "mlp", "sequence"))
    made = {k: f() for k, f in learner_factories(models, 12, tuned, ["ret_1", "seq_0", "seq_1"]).items()}
    assert made["xgboost"].params["max_depth"] == 5 and made["logistic"].C == 0.5
    assert made["mlp"].hidden == 32 and made["sequence"].hidden == 16
    assert made["sequence"].seq_index == (1, 2)


@pytest.mark.postgres
@pytest.mark.slow
def test_two_workers_share_one_study_on_postgresql(pg_database, tmp_path):
    """Two processes, one PostgreSQL storage: together they run the study's trials once."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    storage = pg_database("optuna")
    worker = Path(__file__).with_name("tune_worker.py")
    optuna.storages.RDBStorage(storage)  # create the schema once, before the workers race for it
    procs = [
        subprocess.Popen(
            [sys.executable, str(worker), storage, "shared", "12", str(seed), str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    deadline = time.monotonic() + 120  # both workers imported and waiting: start them together
    while not all((tmp_path / f"ready-{seed}").exists() for seed in (1, 2)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "workers did not start"
        time.sleep(0.05)
    (tmp_path / "go").touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    study = optuna.load_study(study_name="shared", storage=storage)
    finished = [
        t
        for t in study.trials
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ]
    assert 12 <= len(finished) <= 13  # at most one in-flight trial beyond the target
    workers = {t.user_attrs["worker"] for t in finished}
    assert len(workers) == 2, workers


def test_the_storage_schema_is_created_once_before_studies_run_side_by_side(tmp_path):
    """Cells (train-matrix) and learners (train-fanout) start their studies together; on an
    empty storage their first connections raced to create its schema (``UNIQUE constraint
    failed: alembic_version.version_num``, seen in benchmarks/matrix.py). The flows create it
    first (`ensure_storage`, idempotent); studies then open side by side."""
    import sqlite3
    import threading

    import optuna

    from pipelines.tune import ensure_storage

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    ensure_storage(url)
    ensure_storage(url)  # a second time is harmless
    with sqlite3.connect(tmp_path / "optuna.db") as db:
        assert db.execute("SELECT count(*) FROM alembic_version").fetchone()[0] == 1
    errors: list[Exception] = []

    def study(i: int) -> None:
        try:
            optuna.create_study(study_name=f"s{i}", storage=url, load_if_exists=True)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=study, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(optuna.get_all_study_names(url)) == 6
    ensure_storage(None)  # no storage configured: nothing to do
