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


def _walk_labels(truth: np.ndarray, h: int, seed: int) -> np.ndarray:
    """Overlapping h-bar outcomes with P(1) = truth, as labels are (one symbol, hourly rows)."""
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.standard_normal(truth.size + h))
    return ((walk[h : h + truth.size] - walk[: truth.size]) < ndtri(truth) * np.sqrt(h)).astype(float)


HOURS = np.arange(4000) * 3600  # bar open times of hourly rows (UTC s): 24 rows per day block


def test_first_model_is_promoted_only_with_skill():
    truth, y = _calibrated()
    d = decide(y, truth, max_ece=0.05, times=HOURS)
    assert d.promoted and d.reason.startswith("no champion yet") and d.champion_log_loss is None
    assert d.has_skill and d.skill.low > 0 and d.skill.blocks == 4000 // 24 + 1
    assert d.tags()["gate_skill"] == "demonstrated" and float(d.tags()["gate_edge_low"]) > 0
    # a constant 0.5 is perfectly honest and knows nothing: not promoted, even first
    flat = decide(y, np.full(y.size, 0.5), max_ece=0.05, times=HOURS)
    assert not flat.promoted and "no skill" in flat.reason and not flat.has_skill
    assert flat.tags()["gate_skill"] == "none" and flat.tags()["gate_decision"] == "rejected"


def test_random_walk_with_a_tiny_holdout_is_refused_with_its_interval_named():
    rng = np.random.default_rng(3)
    n, h = 240, 12  # ten days of hourly rows, 12-hour labels: ~20 independent outcomes
    y = _walk_labels(np.full(n, 0.5), h, seed=4)
    # a model that learned noise: mildly confident, unrelated to the outcome
    p = np.clip(0.5 + 0.04 * rng.standard_normal(n), 0.01, 0.99)
    d = decide(y, p, max_ece=0.5, horizon=h, times=HOURS[:n])
    assert not d.promoted and "no skill" in d.reason
    assert d.skill.low <= 0 and d.skill.blocks == 10
    assert f"[{d.skill.low:.5f}, {d.skill.high:.5f}]" in d.reason and "10 independent time blocks" in d.reason


def test_a_model_worse_than_the_base_rate_is_never_promoted_first_or_not():
    truth, y = _calibrated(seed=7)
    rng = np.random.default_rng(8)
    worse = np.clip(0.5 + 0.1 * rng.standard_normal(y.size), 0.05, 0.95)  # confident noise
    assert log_loss(y, worse) > log_loss(y, np.full(y.size, y.mean()))
    first = decide(y, worse, max_ece=1.0, times=HOURS)
    assert not first.promoted and "no skill" in first.reason and first.skill.high < 0
    # with an even worse champion the challenger still has no skill of its own
    worst = np.clip(0.5 + 0.2 * rng.standard_normal(y.size), 0.05, 0.95)
    later = decide(y, worse, worst, max_ece=1.0, times=HOURS)
    assert not later.promoted and "no skill" in later.reason and later.vs_champion.low > 0


def test_better_challenger_beats_the_champion_on_the_same_rows():
    truth, y = _calibrated()
    d = decide(y, truth, np.full(y.size, 0.5), max_ece=0.05, times=HOURS)
    assert d.promoted and d.reason.startswith("beats champion")
    assert d.challenger_log_loss < d.champion_log_loss == pytest.approx(log_loss(y, np.full(y.size, 0.5)))
    assert d.vs_champion is not None and d.vs_champion.low > 0


def test_worse_equal_or_not_significantly_better_challenger_is_refused():
    truth, y = _calibrated()
    same = decide(y, truth, truth, max_ece=0.05, times=HOURS)
    assert not same.promoted and "does not beat champion" in same.reason
    worse = decide(y, np.full(y.size, 0.5), truth, max_ece=0.05, times=HOURS)
    assert not worse.promoted
    # the truth against a champion a sliver less sure of itself: better on these rows, but by
    # less than chance gives — refused, the paired interval named
    shrunk = 0.5 + 0.85 * (truth - 0.5)
    slight = decide(y, truth, shrunk, max_ece=0.05, times=HOURS)
    assert slight.challenger_log_loss < slight.champion_log_loss
    assert not slight.promoted and slight.vs_champion.low <= 0 < slight.vs_champion.high
    assert f"{slight.vs_champion.text(5)} (95% paired interval)" in slight.reason


def test_miscalibrated_challenger_is_refused_on_ece_with_the_floor_named():
    truth, y = _calibrated()
    d = decide(y, np.clip(truth + 0.1, 0, 1), max_ece=0.05, times=HOURS)
    assert not d.promoted and "ECE" in d.reason and "noise floor" in d.reason
    assert d.challenger_ece > d.ece_limit >= 0.05
    assert d.tags()["gate_decision"] == "rejected"


def test_the_ece_ceiling_bounds_what_a_small_overlapping_holdout_lets_through():
    rng = np.random.default_rng(11)
    n, h = 300, 48  # a few independent outcomes: the noise floor is huge
    truth = np.clip(0.5 + 0.15 * rng.standard_normal(n), 0.05, 0.95)
    y = _walk_labels(truth, h, seed=12)
    loose = decide(y, truth, max_ece=0.01, ece_ceiling=1.0, horizon=h, times=HOURS[:n])
    assert loose.ece_noise_floor > 0.06 and loose.ece_limit == loose.ece_noise_floor
    capped = decide(y, truth, max_ece=0.01, ece_ceiling=0.05, horizon=h, times=HOURS[:n])
    assert capped.ece_limit == 0.05 and capped.tags()["gate_ece_ceiling"] == "0.050000"
    assert capped.challenger_ece > 0.05  # the truth's own ECE on ~6 independent outcomes
    assert not capped.promoted and "too few independent rows" in capped.reason


def test_gate_allows_sampling_noise_in_ece_but_not_a_shift():
    rng = np.random.default_rng(5)
    n, h = 3000, 12
    truth = np.clip(0.5 + 0.05 * rng.standard_normal(n), 0.05, 0.95)
    walk = np.cumsum(rng.standard_normal(n + h))  # overlapping h-bar outcomes, as labels are
    y = ((walk[h : h + n] - walk[:n]) < ndtri(truth) * np.sqrt(h)).astype(float)
    honest = decide(y, truth, max_ece=0.005, ece_ceiling=1.0, horizon=h, times=HOURS[:n])
    assert ece(y, truth) > 0.005 and "ECE" not in honest.reason, honest.reason
    assert honest.ece_noise_floor > honest.challenger_ece
    shifted = decide(
        y, np.clip(truth + 0.12, 0, 1), max_ece=0.005, ece_ceiling=1.0, horizon=h, times=HOURS[:n]
    )
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
