"""Three-class (down / flat / up) models: labels, the nested dichotomy, multiclass metrics,
the gate and the policy — and train → evaluate on a small simulated store."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import featurized_pair

from features.bars import Bars
from features.labels import up_flat_down_labels
from models.gate import decide
from models.metrics import base_rate_log_loss, ece, ece_noise_floor, log_loss, row_log_loss
from models.policy import ThresholdPolicy
from models.three_way import ThreeWayModel, compose, restrict_folds
from models.validation import Fold
from pipelines.config import Params
from pipelines.evaluate import evaluate
from pipelines.train import load_training_data, problems, train


def _planted(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated three-class probabilities with real spread and labels drawn from them."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 0.6, (n, 3)) + np.array([0.0, 0.3, 0.0])
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1).astype(float)
    return y, p


def test_compose_gives_three_probabilities_summing_to_one():
    p = compose(np.array([0.0, 0.5, 1.0, 0.8]), np.array([0.3, 0.5, 0.9, 0.25]))
    assert p.shape == (4, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[0], [0.0, 1.0, 0.0])  # never moves: flat for sure
    np.testing.assert_allclose(p[2], [0.1, 0.0, 0.9])
    np.testing.assert_allclose(p[3], [0.6, 0.2, 0.2])


def test_restricted_folds_keep_the_time_splits_on_the_moving_rows():
    mask = np.array([True, False, True, True, False, True, True, False])
    folds = [
        Fold(train=np.array([0, 1, 2]), test=np.array([4, 5])),
        Fold(train=np.arange(6), test=np.array([6, 7])),
    ]
    out = restrict_folds(folds, mask)
    kept = np.flatnonzero(mask)  # position in the restricted rows → original row
    np.testing.assert_array_equal(kept[out[0].train], [0, 2])
    np.testing.assert_array_equal(kept[out[0].test], [5])
    np.testing.assert_array_equal(kept[out[1].train], [0, 2, 3, 5])
    np.testing.assert_array_equal(kept[out[1].test], [6])


def test_up_flat_down_labels_widen_the_flat_zone_with_the_horizon():
    rng = np.random.default_rng(3)
    n = 3000
    close = 1.1 + np.cumsum(rng.normal(0, 1e-4, n))
    t = 1_704_067_200 + 300 * np.arange(n)  # Mon 2024-01-01 00:00 UTC, M5 bars
    b = Bars(
        time=t,
        open=close,
        high=close + 5e-5,
        low=close - 5e-5,
        close=close,
        tick_volume=np.ones(n),
        spread=np.ones(n),
        seconds=300,
        point=1e-5,
    )
    hours_off = None
    shares = {}
    for h in (4, 16):
        lab = up_flat_down_labels(b, h, 0.4, hours=hours_off)["label"]
        ok = ~np.isnan(lab)
        assert set(np.unique(lab[ok])) == {0.0, 1.0, 2.0}
        shares[h] = float(np.mean(lab[ok] == 1.0))
    # the dead zone scales with √h like the move does: the flat share hardly changes with h
    assert abs(shares[4] - shares[16]) < 0.08, shares
    with pytest.raises(ValueError, match="flat_within"):
        up_flat_down_labels(b, 4, 0.0)


def test_multiclass_metrics_read_the_probability_of_the_observed_class():
    y = np.array([0.0, 1.0, 2.0, 2.0])
    p = np.array([[0.5, 0.3, 0.2], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
    np.testing.assert_allclose(row_log_loss(y, p), -np.log([0.5, 0.6, 0.8, 0.4]))
    assert log_loss(y, p) == pytest.approx(-np.mean(np.log([0.5, 0.6, 0.8, 0.4])))
    rates = np.array([0.25, 0.25, 0.5])
    assert base_rate_log_loss(y, classes=3) == pytest.approx(-np.mean(np.log(rates[y.astype(int)])))
    # classwise ECE: the mean of each class's one-vs-rest ECE
    assert ece(y, p) == pytest.approx(np.mean([ece(y == k, p[:, k]) for k in range(3)]))


def test_multiclass_noise_floor_covers_a_calibrated_model_and_not_a_miscalibrated_one():
    y, p = _planted(6000)
    floor = ece_noise_floor(p, horizon=1, draws=100)
    assert 0 < ece(y, p) < floor < 0.05
    skewed = np.column_stack([p[:, 0] * 0.7, p[:, 1] * 0.7, p[:, 2] * 0.7 + 0.3])
    assert ece(y, skewed) > 2 * floor


def test_gate_decides_three_class_models_against_the_class_rates():
    y, p = _planted(20_000, seed=1)
    rates = np.array([np.mean(y == k) for k in range(3)])
    skilled = decide(y, p, max_ece=0.02, draws=300)
    assert skilled.promoted and skilled.has_skill, skilled.reason
    assert isinstance(skilled.base_rate, tuple) and len(skilled.base_rate) == 3
    assert skilled.tags()["gate_base_rate"].count(",") == 2
    flat = decide(y, np.tile(rates, (y.size, 1)), max_ece=0.02, draws=300)
    assert not flat.promoted and "no skill" in flat.reason
    # a champion as good as the challenger is not beaten
    again = decide(y, p, p, max_ece=0.02, draws=300)
    assert not again.promoted and "does not beat champion" in again.reason
    with pytest.raises(ValueError, match="differ in shape"):
        decide(y, p, p[:, :2], max_ece=0.02)


def test_policy_sides_by_label_kind():
    three = np.array([[0.6, 0.2, 0.2], [0.1, 0.2, 0.7], [0.3, 0.4, 0.3]])
    policy = ThresholdPolicy.for_label_kind("up_flat_down", 0.55, 0.45)
    np.testing.assert_array_equal(policy.sides(three), [-1.0, 1.0, 0.0])
    assert [policy.signal(row) for row in three] == ["short", "long", "flat"]
    # the net probability of up over down against 2·0.55 − 1 = 0.10: classes near 1/3 signal,
    # P(up) = 0.38 with P(down) = 0.30 does not
    near_third = np.array(
        [[0.25, 0.36, 0.39], [0.40, 0.32, 0.28], [0.30, 0.32, 0.38], [0.05, 0.90, 0.05], [0.26, 0.34, 0.40]]
    )
    np.testing.assert_array_equal(policy.sides(near_third), [1.0, -1.0, 0.0, 0.0, 1.0])
    # a binary probability p and the three classes [1 − p, 0, p] get the same side, any thresholds
    p = (np.arange(200) + 0.5) / 200  # no p on a threshold, where rounding may differ
    for long_above, short_below in ((0.55, 0.45), (0.6, 0.3), (0.5, 0.5)):
        binary = ThresholdPolicy.for_label_kind("direction", long_above, short_below)
        classes = ThresholdPolicy.for_label_kind("up_flat_down", long_above, short_below)
        as_three = np.column_stack([1.0 - p, np.zeros_like(p), p])
        np.testing.assert_array_equal(classes.sides(as_three), binary.sides(p))
    # direction: P(up) low is a short
    direction = ThresholdPolicy.for_label_kind("direction", 0.55, 0.45)
    np.testing.assert_array_equal(direction.sides(np.array([0.3, 0.5, 0.7])), [-1.0, 0.0, 1.0])
    assert direction.signal(0.3) == "short"
    # triple barrier: P(take-profit first) low is no reason to short
    tb = ThresholdPolicy.for_label_kind("triple_barrier", 0.55, 0.45)
    np.testing.assert_array_equal(tb.sides(np.array([0.05, 0.5, 0.7])), [0.0, 0.0, 1.0])
    assert tb.signal(0.05) == "flat"


@pytest.fixture(scope="module")
def three_class(tmp_path_factory, contract) -> Params:
    models = {"learners": ["logistic", "xgboost"], "xgb": {"n_estimators": 120}, "cv": {"n_splits": 3}}
    root = tmp_path_factory.mktemp("three")
    return featurized_pair(root, contract, 0.6, {"horizon": 12, "kind": "up_flat_down"}, models)


def test_three_class_training_never_sees_the_holdout_and_evaluates_calibrated(three_class):
    p = three_class
    data = load_training_data(p.outputs / "featurize", "up_flat_down")
    assert set(np.unique(data.y)) == {0.0, 1.0, 2.0}
    shares = np.bincount(data.y.astype(int)) / data.y.size
    assert shares.min() > 0.2, shares  # the default flat_within keeps every class well represented
    holdout, asked = problems(data, p.models)
    assert [q.name for q in asked] == ["move", "side"]
    move, side = asked
    assert move.y.size == holdout.train.size
    # the side model's rows are the training segment's moving rows, nothing of the holdout
    assert side.y.size == int(np.sum(data.y[holdout.train] != 1))
    assert data.t1[holdout.train].max() < data.t0[holdout.test].min()
    for fm, fs in zip(move.folds, side.folds, strict=True):
        assert fs.test.size == int(np.sum(data.y[holdout.train][fm.test] != 1))

    bundle = train(data, p.models, p.labels.horizon)
    assert isinstance(bundle["stacked"], ThreeWayModel) and isinstance(bundle["ensemble"], ThreeWayModel)
    assert {"move:stacked", "side:stacked", "move:logistic", "side:xgboost"} <= set(bundle["oof_scores"])
    X = data.X[holdout.test]
    for model in (bundle["stacked"], bundle["ensemble"], *bundle["stacked"].base):
        q = model.predict_proba(X)
        assert q.shape == (X.shape[0], 3)
        np.testing.assert_allclose(q.sum(axis=1), 1.0, atol=1e-9)

    metrics, files = evaluate(bundle, data, p)
    reg = metrics["registered"]
    assert metrics["classes"] == ["down", "flat", "up"]
    assert {"class_rate_0", "class_rate_1", "class_rate_2"} <= set(reg)
    # a planted signal: the three-class model beats the class rates and is calibrated
    assert metrics["intervals"]["edge"]["low"] > 0, metrics["intervals"]["edge"]
    assert reg["ece"] < 0.05
    assert {"logistic", "xgboost", "stacked", "ensemble"} <= set(metrics)
    assert b"class" in files["reliability.csv"].splitlines()[0]
    import io

    import pandas as pd

    table = pd.read_parquet(io.BytesIO(files["predictions.parquet"]))
    assert {"p_stacked_down", "p_stacked_flat", "p_stacked_up"} <= set(table.columns)


def test_live_skill_check_reads_three_class_probabilities():
    from models.checks import skill_check

    y, p = _planted(5000, seed=2)
    times = 1_704_067_200 + 300 * np.arange(y.size)
    finding, edge = skill_check("model m 1", y, p, times, 3600, min_rows=100)
    assert not finding.breached and edge is not None and edge.low > 0, finding.message
    rates = np.array([np.mean(y == k) for k in range(3)])
    finding, edge = skill_check("model m 1", y, np.tile(rates, (y.size, 1)), times, 3600, min_rows=100)
    assert finding.breached and abs(edge.estimate) < 1e-9
