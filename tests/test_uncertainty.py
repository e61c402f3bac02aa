"""Intervals on dependent rows and the backtest-overfitting statistic (models/uncertainty.py)."""

from __future__ import annotations

import numpy as np
import pytest

from models.uncertainty import (
    DAY,
    block_ids,
    block_seconds,
    bootstrap_mean,
    bootstrap_statistic,
    effective_labels,
    fold_values,
    probability_of_overfitting,
    wilson,
)


def test_blocks_are_calendar_stretches_shared_by_every_symbol():
    hours = np.arange(72) * 3600
    t = np.r_[hours, hours]  # two symbols, the same three days
    ids = block_ids(t, t.size, DAY)
    assert ids.max() == 2 and (ids[:72] == ids[72:]).all()
    assert block_seconds(12, 3600) == DAY and block_seconds(48, 3600) == 2 * DAY
    assert block_seconds(3, 86400) == 3 * DAY
    assert (block_ids(None, 10, rows_per_block=4) == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]).all()
    with pytest.raises(ValueError, match="shape"):
        block_ids(t[:5], 6)


def test_the_block_interval_covers_the_truth_as_often_as_it_says_on_overlapping_rows():
    """Rows are means of 12 overlapping shocks (as 12-bar labels are): an interval that treats
    them as independent is too narrow; the block interval covers ~95 %."""
    rng = np.random.default_rng(0)
    covered_block, covered_naive, reps = 0, 0, 150
    for _ in range(reps):
        e = rng.standard_normal(2400 + 12)
        x = np.convolve(e, np.ones(12) / np.sqrt(12), "valid")[:2400]  # mean 0, strongly overlapping
        block = bootstrap_mean(x, np.arange(x.size) // 48, draws=400, seed=1)
        naive = bootstrap_mean(x, np.arange(x.size), draws=400, seed=1)
        covered_block += block.covers(0.0)
        covered_naive += naive.covers(0.0)
    assert covered_block / reps >= 0.88
    assert covered_naive / reps <= 0.6  # the failure the blocks are there for
    assert block.blocks == 50 and block.low < block.estimate < block.high


def test_any_statistic_gets_an_interval_and_undefined_draws_are_left_out():
    rng = np.random.default_rng(1)
    y = (rng.random(3000) < 0.5).astype(float)
    iv = bootstrap_statistic(np.mean, (y,), np.arange(3000) // 30, draws=300)
    assert iv.low < 0.5 < iv.high and iv.blocks == 100
    assert effective_labels(3000, 12) == 250 and effective_labels(3000, 12, np.repeat([0, 1], 1500)) == 250


def test_the_ece_interval_brackets_the_ece_not_the_ece_plus_resampling_noise():
    """ECE adds up absolute per-bin gaps, so every bootstrap resample adds noise to it and the
    plain percentile interval sits too high: on a nearly calibrated model (true ECE 0.003) it
    rarely covers the truth, and it can lie wholly above its own estimate (train_targets, seed
    7: ECE 0.0038 [0.0040, 0.0225]). Shifted by the bootstrap's bias it holds the estimate
    and mostly covers the truth; far from zero (true ECE 0.04) both agree."""
    from models.metrics import ece

    n = 20_000
    blocks = np.arange(n) // 300  # 67 blocks, as a 30,000-row holdout over 66 days
    plain_covers = fixed_covers = 0
    reps = 12
    for r in range(reps):
        rng = np.random.default_rng(100 + r)
        p = np.clip(0.5 + 0.05 * rng.standard_normal(n), 0.01, 0.99)
        y = (rng.random(n) < p).astype(float)
        q = p + 0.003  # miscalibrated by 0.003 on every row
        plain = bootstrap_statistic(ece, (y, q), blocks, draws=200, seed=r)
        fixed = bootstrap_statistic(ece, (y, q), blocks, draws=200, seed=r, bias_corrected=True, floor=0.0)
        assert fixed.covers(fixed.estimate) and fixed.low >= 0.0
        plain_covers += plain.covers(0.003)
        fixed_covers += fixed.covers(0.003)
    assert plain_covers / reps <= 0.5 and fixed_covers / reps >= 0.75, (plain_covers, fixed_covers)

    shifted = bootstrap_statistic(ece, (y, p + 0.04), blocks, draws=200, bias_corrected=True, floor=0.0)
    assert shifted.low > 0.02 and shifted.covers(0.04)


def test_pbo_is_zero_when_the_best_is_best_everywhere_and_high_when_selection_picks_noise():
    rng = np.random.default_rng(2)
    noise = rng.standard_normal((8, 40))  # 8 partitions × 40 configurations of pure noise
    assert 0.25 <= probability_of_overfitting(noise, higher_is_better=True) <= 0.85
    skilled = noise.copy()
    skilled[:, 7] += 5.0  # one configuration better in every partition
    assert probability_of_overfitting(skilled, higher_is_better=True) == 0.0
    # lower is better (log losses): the same configuration, its losses lowest
    assert probability_of_overfitting(-skilled) == 0.0
    assert np.isnan(probability_of_overfitting(noise[:3]))  # odd partitions
    assert np.isnan(probability_of_overfitting(noise[:, :1]))


def test_fold_values_undo_the_running_means_a_trial_reported():
    losses = np.array([0.69, 0.68, 0.70, 0.67])
    running = {k: float(losses[: k + 1].mean()) for k in range(4)}
    np.testing.assert_allclose(fold_values(running, 4), losses)
    assert fold_values({0: 0.69, 1: 0.685}, 4) is None  # pruned after two folds


def test_the_wilson_band_holds_the_observed_frequency_even_at_zero_and_one():
    """At 0 and 1 the band's bound equals the frequency in exact arithmetic; rounding used to
    put it a few ulps outside, and the reliability diagram's error bars then refused to draw."""
    freq = np.tile([0.0, 1.0, 0.3], 200)
    n = np.arange(1, freq.size + 1) / 7.0
    low, high = wilson(freq, n)
    assert np.all(low <= freq) and np.all(freq <= high) and np.all((0 <= low) & (high <= 1))
    assert np.all(high[freq == 0] > 0) and np.all(low[freq == 1] < 1)  # never a zero-width band
