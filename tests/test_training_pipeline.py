"""train → evaluate → register on a small simulated store, with a real MLflow SQLite store."""

from __future__ import annotations

import io
import json

import joblib
import numpy as np
import pandas as pd
import pytest
from conftest import featurized_pair
from scipy.special import ndtri

from models.metrics import ece, ece_noise_floor, log_loss
from pipelines.bar_store import BarStore
from pipelines.config import Params
from pipelines.evaluate import evaluate, write_evaluation
from pipelines.register import register
from pipelines.registry import Registry
from pipelines.train import load_training_data, save_bundle, train


@pytest.fixture(scope="module")
def params(tmp_path_factory, contract) -> Params:
    root = tmp_path_factory.mktemp("pipeline")
    registry = {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "gate": {"max_ece": 0.12}}
    models = {"xgb": {"n_estimators": 150}, "cv": {"n_splits": 3}}
    return featurized_pair(root, contract, 0.5, {"horizon": 12}, models, registry=registry)


def test_train_reuses_out_of_fold_predictions_it_is_given(params):
    """The tuning study's best-trial OOF column replaces refitting that learner per fold."""
    from models.stacking import out_of_fold
    from pipelines.train import learner_factories, splits

    data = load_training_data(params.outputs / "featurize", "direction")
    models = params.models.model_copy(update={"learners": ["logistic", "xgboost"]})
    holdout, folds = splits(data, models)
    X, y = data.X[holdout.train], data.y[holdout.train]
    make = learner_factories(models, 12 * 2, columns=data.columns)["logistic"]
    known = out_of_fold({"logistic": make}, X, y, folds)[:, 0]
    fresh = train(data, models, params.labels.horizon)
    reused = train(data, models, params.labels.horizon, oof={"logistic": known})
    assert reused["oof_scores"] == fresh["oof_scores"]
    # and it is really used, not recomputed: a constant column scores exactly log 2
    half = np.where(np.isnan(known), np.nan, 0.5)
    assert train(data, models, params.labels.horizon, oof={"logistic": half})["oof_scores"][
        "logistic"
    ] == pytest.approx(np.log(2))
    with pytest.raises(ValueError, match="expected"):
        train(data, models, params.labels.horizon, oof={"logistic": known[:-1]})
    stack = models.stack.model_copy(update={"regime_features": ("vol",)})
    unknown = models.model_copy(update={"stack": stack})
    with pytest.raises(ValueError, match=r"\['vol'\] are not feature columns"):
        train(data, unknown, params.labels.horizon)


@pytest.mark.slow
def test_training_is_byte_reproducible(params, tmp_path):
    """Same data, params and seed → the same model.pkl, byte for byte (so `dvc repro` on a fresh
    clone reproduces the committed dvc.lock on the same machine kind): every learner, the stack
    and the ensemble, written twice."""
    import hashlib

    data = load_training_data(params.outputs / "featurize", "direction")
    models = params.models.model_copy(
        update={
            "xgb": params.models.xgb.model_copy(update={"n_estimators": 40}),
            "mlp": params.models.mlp.model_copy(update={"max_epochs": 2}),
            "cv": params.models.cv.model_copy(update={"n_splits": 2}),
        }
    )
    digests = []
    for run in ("a", "b"):
        save_bundle(train(data, models, params.labels.horizon), tmp_path / run)
        digests.append(hashlib.sha256((tmp_path / run / "model.pkl").read_bytes()).hexdigest())
    assert digests[0] == digests[1]


@pytest.mark.slow
def test_train_evaluate_register(params, tmp_path):
    data = load_training_data(params.outputs / "featurize", "direction")
    assert np.all(np.diff(data.t0) >= 0) and set(np.unique(data.y)) == {0.0, 1.0}
    bundle = train(data, params.models, params.labels.horizon)
    save_bundle(bundle, params.outputs / "train")
    report = json.loads((params.outputs / "train" / "train.json").read_text())
    assert {"logistic", "xgboost", "stacked"} <= set(report["oof_scores"])
    metrics, images = evaluate(joblib.load(params.outputs / "train" / "model.pkl"), data, params)
    reg = metrics["registered"]
    assert reg["kind"] == "stacked" and 0 < reg["log_loss"] < 0.75
    assert reg["log_loss"] < reg["base_rate_log_loss"]  # strength 0.5: real skill
    assert reg["bayes_gap"] < 0.03 and reg["bayes_log_loss"] < reg["base_rate_log_loss"]
    assert set(metrics["backtest"]) == {"EURUSD", "GBPUSD"}
    assert images["reliability.png"].startswith(b"\x89PNG")
    assert images["reliability.csv"].startswith(b"predicted,observed,observed_low,observed_high,rows\n")
    # every figure with its interval: the planted signal's edge excludes zero, the truth's
    # Bayes-optimal log loss lies in the log-loss interval's neighbourhood
    ci = metrics["intervals"]
    assert 0 < ci["edge"]["low"] < ci["edge"]["estimate"] < ci["edge"]["high"]
    assert ci["log_loss"]["low"] <= reg["log_loss"] <= ci["log_loss"]["high"]
    assert ci["ece"]["low"] <= ci["ece"]["high"] and ci["auc"]["low"] > 0.5
    assert metrics["effective_labels"] == pytest.approx(metrics["holdout_rows"] / params.labels.horizon)
    for b in metrics["backtest"].values():
        assert set(b["intervals"]) == {"pnl_pips", "sharpe", "hit_rate"}
        assert b["intervals"]["pnl_pips"]["low"] <= b["pnl_pips"] <= b["intervals"]["pnl_pips"]["high"]
    held = pd.read_parquet(io.BytesIO(images["predictions.parquet"]))
    assert len(held) == metrics["holdout_rows"] and str(held["bar_time"].dt.tz) == "UTC"
    assert {"symbol", "label", "p_stacked", "p_ensemble", "p_logistic", "p_true"} <= set(held.columns)
    assert (held["registered"] == "p_stacked").all()
    assert log_loss(held["label"], held["p_stacked"]) == pytest.approx(reg["log_loss"])
    write_evaluation(metrics, images, params.outputs / "evaluate")
    narrow = json.loads((params.outputs / "evaluate" / "metrics.json").read_text())
    assert narrow["edge"] == pytest.approx(reg["base_rate_log_loss"] - reg["log_loss"]) and len(narrow) <= 8
    assert narrow["edge_low"] == pytest.approx(ci["edge"]["low"]) and narrow["edge_low"] > 0
    name, version, decision = register(params)
    assert name == "mt5prob-fx-M5-direction-h12" and version == "1"
    assert decision.promoted and decision.reason.startswith("no champion yet"), decision.reason
    assert decision.has_skill and decision.skill.blocks >= 10
    registry = Registry(params.registry.tracking_uri)
    mv = registry.client.get_model_version(name, "1")
    assert {"git_commit", "data_dvc_md5", "params_sha256", "gate_decision", "run_id"} <= set(mv.tags)
    assert mv.tags["data_dvc_md5"] == BarStore(params.data.root).content_md5()  # the data it read
    assert mv.tags["data_dvc_committed"] == "false"  # not the repository's data.dvc snapshot
    described = registry.client.get_registered_model(name).description
    assert mv.description == described and f"horizon: {params.labels.horizon} bars of M5" in described
    assert "Trained on M5 bars from " in described and "Features (" in described
    champion = registry.load(name, "champion")
    frame = pd.DataFrame(data.X[-50:], columns=data.columns)
    p = champion.predict(frame)["p_up"].to_numpy()
    assert p.shape == (50,) and np.all((p > 0) & (p < 1))
    np.testing.assert_allclose(p, bundle["stacked"].predict_proba(data.X[-50:]), rtol=1e-6)
    with pytest.raises(Exception, match="missing inputs"):  # the signature guards the columns
        champion.predict(frame.drop(columns=[data.columns[3]]))
    _, again, second = register(params)  # the same model again cannot beat itself
    assert again == "2" and not second.promoted and "does not beat" in second.reason
    assert registry.alias_version(name, "champion") == "1"
    assert registry.alias_version(name, "challenger") == "2"


class Constant:
    def __init__(self, p: float) -> None:
        self.p = p

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return np.full(len(X), self.p)


class FirstColumn:
    """A 'model' that reads the answer from column 0 (for gate tests)."""

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return np.clip(X[:, 0].astype(float), 0.02, 0.98)


class Coarse:
    """Column 0 (uniform on [0.2, 0.8]) known only as below or above 0.5: calibrated, with
    skill, less than the truth's."""

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return np.where(X[:, 0].astype(float) < 0.5, 0.35, 0.65)


def test_promotion_gate_and_previous_champion(tmp_path):
    registry = Registry(f"sqlite:///{tmp_path / 'mlflow.db'}")
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.2, 0.8, 4000)
    y = (rng.random(4000) < truth).astype(float)
    X = pd.DataFrame({"f0": truth, "f1": rng.normal(size=4000)})
    name, cols = "gate-test", ["f0", "f1"]

    def publish(model) -> str:
        return registry.log_and_register(
            name, model, cols, X.head(3), {"kind": type(model).__name__}, {}, {"git_commit": "test"}, []
        )

    hours = np.arange(4000) * 3600
    assert publish(Constant(0.5)) == "1"  # honest and knows nothing: not promoted, even first
    first = registry.promotion_gate(name, X, y, max_ece=0.05, times=hours)
    assert not first.promoted and "no skill" in first.reason
    assert registry.alias_version(name, "champion") is None
    tags = registry.client.get_model_version(name, "1").tags
    assert tags["gate_skill"] == "none" and float(tags["gate_edge_low"]) <= 0 <= float(tags["gate_edge_high"])
    publish(Coarse())
    second = registry.promotion_gate(name, X, y, max_ece=0.05, times=hours)
    assert second.promoted and second.champion is None and second.has_skill
    assert registry.alias_version(name, "champion") == "2"
    publish(FirstColumn())
    better = registry.promotion_gate(name, X, y, max_ece=0.05, times=hours)
    assert better.promoted and better.champion == "2" and better.vs_champion.low > 0
    assert better.challenger_log_loss < better.champion_log_loss
    assert registry.alias_version(name, "champion") == "3"
    assert registry.alias_version(name, "previous_champion") == "2"
    publish(Constant(0.9))  # badly calibrated and no skill: refused on both
    refused = registry.promotion_gate(name, X, y, max_ece=0.05, times=hours)
    assert not refused.promoted and "ECE" in refused.reason and "noise floor" in refused.reason
    assert "no skill" in refused.reason and "does not beat champion" in refused.reason
    tags = registry.client.get_model_version(name, "4").tags
    assert tags["gate_decision"] == "rejected" and tags["gate_champion_version"] == "3"
    assert registry.alias_version(name, "champion") == "3"


def test_gate_allows_for_sampling_noise_in_ece_but_not_for_miscalibration(tmp_path):
    """On a few thousand overlapping labels even the true probabilities have an ECE above a
    tight fixed limit; the gate must pass them and still refuse a shifted model."""
    registry = Registry(f"sqlite:///{tmp_path / 'mlflow.db'}")
    rng = np.random.default_rng(5)
    n, h = 3000, 12
    truth = np.clip(0.5 + 0.05 * rng.standard_normal(n), 0.05, 0.95)
    walk = np.cumsum(rng.standard_normal(n + h))  # overlapping h-bar outcomes, as labels are
    y = ((walk[h : h + n] - walk[:n]) < ndtri(truth) * np.sqrt(h)).astype(float)
    X = pd.DataFrame({"f0": truth, "f1": np.zeros(n)})
    name, cols = "noise-gate", ["f0", "f1"]
    registry.log_and_register(name, FirstColumn(), cols, X.head(3), {}, {}, {"git_commit": "t"}, [])
    honest = registry.promotion_gate(name, X, y, max_ece=0.005, horizon=h)
    assert ece(y, truth) > 0.005 and "ECE" not in honest.reason, honest.reason
    tags = registry.client.get_model_version(name, "1").tags
    assert float(tags["gate_ece_noise_floor"]) > float(tags["gate_challenger_ece"])
    shifted = X.assign(f0=np.clip(truth + 0.12, 0, 1))
    registry.log_and_register(name, FirstColumn(), cols, shifted.head(3), {}, {}, {"git_commit": "t"}, [])
    refused = registry.promotion_gate(name, shifted, y, max_ece=0.005, horizon=h)
    assert not refused.promoted and "noise floor" in refused.reason


def test_ece_noise_floor_covers_the_truth_and_grows_with_label_overlap():
    rng = np.random.default_rng(11)
    n, h = 3000, 12
    p = np.clip(0.5 + 0.05 * rng.standard_normal(n), 0.05, 0.95)
    floor = ece_noise_floor(p, h)
    above = 0
    for _ in range(100):  # the truth's own ECE on fresh overlapping labels: above the 95% floor ~5%
        walk = np.cumsum(rng.standard_normal(n + h))
        y = ((walk[h : h + n] - walk[:n]) < ndtri(p) * np.sqrt(h)).astype(float)
        above += ece(y, p) > floor
    assert above <= 12
    assert ece_noise_floor(p, 1) < floor  # independent labels: less noise
    assert ece_noise_floor(np.tile(p, 4), h) < floor  # more rows: less noise


def test_rollback_walks_champion_history_and_records_why(tmp_path):
    registry = Registry(f"sqlite:///{tmp_path / 'mlflow.db'}")
    name, cols = "rollback-test", ["f0", "f1"]
    X = pd.DataFrame({"f0": [0.3, 0.6, 0.7], "f1": [0.0, 1.0, 2.0]})
    for p in (0.4, 0.5, 0.6):
        v = registry.log_and_register(name, Constant(p), cols, X, {}, {}, {}, [])
        registry.set_champion(name, v, reason=f"test {p}", actor="test")
    assert registry.champion_history(name) == ["1", "2", "3"]
    assert registry.aliases(name)["previous_champion"] == "2"
    assert registry.rollback(name, None, "bad live calibration") == ("3", "2")
    assert registry.alias_version(name, "champion") == "2"
    assert registry.alias_version(name, "previous_champion") == "1"
    tags = registry.client.get_model_version(name, "3").tags
    assert "bad live calibration" in tags["demoted_reason"]
    assert registry.client.get_model_version(name, "2").tags["champion_set_by"] == "rollback"
    assert registry.rollback(name, None, "again") == ("2", "1")
    with pytest.raises(ValueError, match="no previous champion"):
        registry.rollback(name, None, "nothing left")
    assert registry.rollback(name, "3", "forward again") == ("1", "3")
    assert registry.champion_history(name) == ["1", "3"]
    back = registry.client.get_model_version(name, "3").tags  # champion again: no stale demotion
    assert "demoted_reason" not in back and "demoted_at" not in back
    assert "forward again" in back["champion_reason"]
    with pytest.raises(ValueError, match=r"no version '9' \(versions: \[1, 2, 3\]\)"):
        registry.rollback(name, "9", "typo")
    with pytest.raises(ValueError, match="already the champion"):
        registry.rollback(name, "3", "noop")
    model = registry.load(name, "champion").unwrap_python_model()
    assert model.predict_proba(X[cols].to_numpy()).tolist() == [0.6] * 3


def test_training_progress_counts_every_base_learner_fit():
    import io

    from pipelines.train import _progress, _ticking

    made, screen = [], io.StringIO()
    with _progress(3, "train: base-learner fits", disable=False, file=screen) as bar:
        make = _ticking(lambda: made.append(1) or "learner", "logistic", bar)
        assert [make() for _ in range(3)] == ["learner"] * 3
        assert bar.n == 3 and bar.total == 3
    assert len(made) == 3 and "3/3" in screen.getvalue() and "logistic" in screen.getvalue()


def test_reliability_figure_shows_every_bin_and_its_count():
    """Observed frequencies can lie far from the predictions on a thin bin: the axes must still
    hold every point, and each carries its row count."""
    from pipelines.evaluate import reliability_figure

    rng = np.random.default_rng(2)
    p = np.clip(0.5 + 0.03 * rng.standard_normal(5000), 0.0, 1.0)
    y = (rng.random(5000) < p).astype(float)
    y[p > 0.58] = 0.0  # a thin top bin whose outcomes are all down: frequency 0
    fig = reliability_figure(y, p, None)
    ax = fig.axes[0]
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    model = next(line for line in ax.get_lines() if line.get_label() == "model")
    xs, ys = model.get_xdata(), model.get_ydata()
    assert x0 <= xs.min() and xs.max() <= x1 and y0 <= ys.min() and ys.max() <= y1
    assert ys.min() == 0.0
    counts = [int(t.get_text().replace(",", "")) for t in ax.texts]
    assert len(counts) == len(xs) and sum(counts) == 5000
    (band,) = [c for c in ax.containers if c.get_label() == "95% band"]  # one per bin, thin bins wider
    widths = [abs(seg[1][1] - seg[0][1]) for seg in band.lines[2][0].get_segments()]
    assert len(widths) == len(xs) and widths[int(np.argmin(counts))] > widths[int(np.argmax(counts))]
