"""Time-ordered validation without leakage: purged walk-forward splits with an embargo.

Samples are events: decided at ``t0`` (the close of the bar the features describe) and
resolved at ``t1`` (when the label is known). A training sample whose label window
``[t0, t1]`` overlaps a test window is *purged*; training samples that start within
`embargo` seconds after a test window are dropped as well (serial correlation leaks
forward). Times are UTC epoch seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Fold:
    """Row indices of one split (both sorted ascending)."""

    train: np.ndarray
    test: np.ndarray


def _check(t0: np.ndarray, t1: np.ndarray) -> None:
    if t0.shape != t1.shape:
        raise ValueError("t0 and t1 must have the same length")
    if np.any(np.diff(t0) < 0):
        raise ValueError("samples must be sorted by t0 (event start)")
    if np.any(np.isnan(t1)) or np.any(t1 < t0):
        raise ValueError("every sample needs t1 >= t0 (drop unlabelled rows first)")


def purge(
    train: np.ndarray, t0: np.ndarray, t1: np.ndarray, test: np.ndarray, embargo: float = 0.0
) -> np.ndarray:
    """`train` without samples overlapping the test window or inside the embargo after it."""
    if test.size == 0:
        return train
    start, end = t0[test].min(), t1[test].max()
    overlaps = (t0[train] <= end) & (t1[train] >= start)
    embargoed = (t0[train] > end) & (t0[train] <= end + embargo)
    return train[~(overlaps | embargoed)]


def purged_walk_forward_splits(
    t0: np.ndarray, t1: np.ndarray, n_splits: int, test_fraction: float = 0.5, embargo: float = 0.0
) -> list[Fold]:
    """Walk forward over the last `test_fraction` of the samples in `n_splits` test blocks.

    Fold k tests on block k and trains on every earlier sample (an expanding window), purged
    of label windows reaching into block k. `embargo` (seconds) also drops training samples
    that start right after a test block (relevant when callers reuse later data).
    """
    t0 = np.asarray(t0, dtype=float)
    t1 = np.asarray(t1, dtype=float)
    _check(t0, t1)
    n = t0.size
    if n_splits < 1 or not 0 < test_fraction < 1:
        raise ValueError("need n_splits >= 1 and 0 < test_fraction < 1")
    first_test = int(n * (1 - test_fraction))
    edges = np.linspace(first_test, n, n_splits + 1).astype(int)
    folds = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        test = np.arange(lo, hi)
        train = purge(np.arange(lo), t0, t1, test, embargo)
        if train.size == 0 or test.size == 0:
            raise ValueError(f"fold [{lo}, {hi}) has no training samples left after purging")
        folds.append(Fold(train, test))
    return folds


def holdout_split(t0: np.ndarray, t1: np.ndarray, fraction: float, embargo: float = 0.0) -> Fold:
    """The final `fraction` of samples as a held-out segment; the rest, purged, for training."""
    t0 = np.asarray(t0, dtype=float)
    t1 = np.asarray(t1, dtype=float)
    _check(t0, t1)
    cut = int(t0.size * (1 - fraction))
    test = np.arange(cut, t0.size)
    return Fold(purge(np.arange(cut), t0, t1, test, embargo), test)
