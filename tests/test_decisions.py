"""Pure decisions, in-process, on arrays: the promotion gate and the threshold policy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import ndtri

from models.gate import decide
from models.metrics import ece, log_loss
from models.policy import ThresholdPolicy


def _calibrated(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0.2, 0.8, n)
    return truth, (rng.random(n) < truth).astype(float)


def test_first_model_is_promoted_when_calibrated():
    truth, y = _calibrated()
    d = decide(y, np.full(y.size, 0.5), max_ece=0.05)
    assert d.promoted and d.reason == "no champion yet" and d.champion_log_loss is None
    assert d.rows == y.size and d.challenger_log_loss == pytest.approx(np.log(2), abs=0.01)


def test_better_challenger_beats_the_champion_on_the_same_rows():
    truth, y = _calibrated()
    d = decide(y, truth, np.full(y.size, 0.5), max_ece=0.05)
    assert d.promoted and "beats champion" in d.reason
    assert d.challenger_log_loss < d.champion_log_loss == pytest.approx(log_loss(y, np.full(y.size, 0.5)))


def test_worse_or_equal_challenger_is_refused():
    truth, y = _calibrated()
    same = decide(y, truth, truth, max_ece=0.05)
    assert not same.promoted and "does not beat" in same.reason
    worse = decide(y, np.full(y.size, 0.5), truth, max_ece=0.05)
    assert not worse.promoted


def test_miscalibrated_challenger_is_refused_on_ece_with_the_floor_named():
    truth, y = _calibrated()
    d = decide(y, np.full(y.size, 0.9), max_ece=0.05)
    assert not d.promoted and "ECE" in d.reason and "noise floor" in d.reason
    assert d.challenger_ece > d.ece_limit >= 0.05
    assert d.tags()["gate_decision"] == "rejected"


def test_gate_allows_sampling_noise_in_ece_but_not_a_shift():
    rng = np.random.default_rng(5)
    n, h = 3000, 12
    truth = np.clip(0.5 + 0.05 * rng.standard_normal(n), 0.05, 0.95)
    walk = np.cumsum(rng.standard_normal(n + h))  # overlapping h-bar outcomes, as labels are
    y = ((walk[h : h + n] - walk[:n]) < ndtri(truth) * np.sqrt(h)).astype(float)
    honest = decide(y, truth, max_ece=0.005, horizon=h)
    assert ece(y, truth) > 0.005 and honest.promoted, honest.reason
    assert honest.ece_noise_floor > honest.challenger_ece
    shifted = decide(y, np.clip(truth + 0.12, 0, 1), max_ece=0.005, horizon=h)
    assert not shifted.promoted and "noise floor" in shifted.reason


def test_gate_rejects_mismatched_or_empty_inputs():
    with pytest.raises(ValueError, match="shape"):
        decide(np.zeros(3), np.zeros(4), max_ece=0.05)
    with pytest.raises(ValueError, match="no holdout rows"):
        decide(np.zeros(0), np.zeros(0), max_ece=0.05)


def test_threshold_policy_signals_and_sides_agree():
    policy = ThresholdPolicy(long_above=0.6, short_below=0.3)
    p = np.array([0.0, 0.29, 0.3, 0.45, 0.6, 0.61, 1.0])
    assert [policy.signal(x) for x in p] == ["short", "short", "flat", "flat", "flat", "long", "long"]
    assert policy.sides(p).tolist() == [-1, -1, 0, 0, 0, 1, 1]


def test_symmetric_policy_is_the_backtest_rule():
    policy = ThresholdPolicy.symmetric(0.55)
    p = np.linspace(0, 1, 101)
    expected = np.where(p > 0.55, 1.0, np.where(p < 1 - 0.55, -1.0, 0.0))
    assert np.array_equal(policy.sides(p), expected)


@pytest.mark.parametrize("long_above, short_below", [(0.4, 0.6), (1.2, 0.5), (0.5, -0.1)])
def test_threshold_policy_rejects_impossible_thresholds(long_above, short_below):
    with pytest.raises(ValueError, match="short_below"):
        ThresholdPolicy(long_above, short_below)
    with pytest.raises(ValueError, match="symmetric"):
        ThresholdPolicy.symmetric(0.4)
