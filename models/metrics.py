"""Probability metrics for binary labels (y ∈ {0, 1}, p = P(y = 1)), natural-log units."""

from __future__ import annotations

import numpy as np

EPS = 1e-12


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)
    y = np.asarray(y, dtype=float)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((np.asarray(p, dtype=float) - np.asarray(y, dtype=float)) ** 2))


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of p: mean predicted probability, observed frequency, count."""
    p = np.asarray(p, dtype=float)
    y = np.asarray(y, dtype=float)
    idx = np.clip((p * bins).astype(int), 0, bins - 1)
    count = np.bincount(idx, minlength=bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(idx, weights=p, minlength=bins) / count
        freq = np.bincount(idx, weights=y, minlength=bins) / count
    return mean_p, freq, count


def ece(y: np.ndarray, p: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error: count-weighted |frequency − mean p| over equal-width bins."""
    mean_p, freq, count = reliability(y, p, bins)
    used = count > 0
    return float(np.sum(count[used] * np.abs(freq[used] - mean_p[used])) / count.sum())


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney, ties counted half)."""
    y = np.asarray(y).astype(bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p))
    sorted_p = np.asarray(p)[order]
    # average ranks for ties
    starts = np.flatnonzero(np.r_[True, sorted_p[1:] != sorted_p[:-1]])
    ends = np.r_[starts[1:], len(p)]
    avg = (starts + ends - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def accuracy(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> float:
    return float(np.mean((np.asarray(p) > threshold) == np.asarray(y).astype(bool)))


def base_rate_log_loss(y: np.ndarray, rate: float | None = None) -> float:
    """Log loss of always predicting `rate` (default: the frequency of y itself)."""
    y = np.asarray(y, dtype=float)
    return log_loss(y, np.full(y.size, y.mean() if rate is None else rate))


def summary(
    y: np.ndarray, p: np.ndarray, p_true: np.ndarray | None = None, train_rate: float | None = None
) -> dict[str, float]:
    """All headline metrics; with `p_true` (simulator) also the Bayes-optimal log loss and the
    relative gap ``(log_loss − bayes) / bayes``."""
    out = {
        "log_loss": log_loss(y, p),
        "brier": brier(y, p),
        "ece": ece(y, p),
        "auc": auc(y, p),
        "accuracy": accuracy(y, p),
        "base_rate_log_loss": base_rate_log_loss(y, train_rate),
        "n": float(len(y)),
        "positive_rate": float(np.mean(y)),
    }
    if p_true is not None:
        bayes = log_loss(y, p_true)
        out["bayes_log_loss"] = bayes
        out["bayes_gap"] = (out["log_loss"] - bayes) / bayes
        out["bayes_ece"] = ece(y, p_true)  # the sampling-noise floor of ECE on these rows
    return out


def ece_noise_floor(
    p: np.ndarray,
    horizon: int = 1,
    groups: np.ndarray | None = None,
    quantile: float = 0.95,
    draws: int = 200,
    seed: int = 0,
) -> float:
    """The ECE (15 bins) that a *perfectly calibrated* predictor with probabilities `p` would
    still show on these rows, at `quantile` of its sampling distribution.

    Labels are redrawn with P(y = 1) = p exactly, and with the dependence of overlapping
    `horizon`-bar labels: within a group (one symbol's rows, consecutive bars in time order)
    row i is 1 when a sum of `horizon` shared standard-normal shocks e[i..i+horizon−1] falls
    below Φ⁻¹(p_i)·√horizon, so rows k apart share (horizon − k)/horizon of their noise, as
    the returns behind neighbouring labels do. An ECE below this floor is indistinguishable
    from sampling noise on these rows.
    """
    from scipy.special import ndtri

    p = np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)
    groups = np.zeros(p.size) if groups is None else np.asarray(groups)
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    rng = np.random.default_rng(seed)
    h = max(int(horizon), 1)
    threshold = ndtri(p) * np.sqrt(h)
    chunk = max(1, min(draws, 4_000_000 // max(p.size, 1)))  # bounded memory on big holdouts
    eces: list[float] = []
    while len(eces) < draws:
        k = min(chunk, draws - len(eces))
        y = np.empty((k, p.size))
        for rows in members:
            walk = np.cumsum(rng.standard_normal((k, rows.size + h)), axis=1)
            y[:, rows] = (walk[:, h : h + rows.size] - walk[:, : rows.size]) < threshold[rows]
        eces += [ece(row, p) for row in y]
    return float(np.quantile(eces, quantile))


def psi(reference: np.ndarray, live: np.ndarray, bins: int = 10, floor: float = 1e-4) -> float:
    """Population stability index of `live` against `reference` (one feature).

    Bins are the reference's deciles (`bins` quantiles); missing values (NaN) are a bin of
    their own, so a feature that starts or stops being missing counts as a shift. Shares are
    floored at `floor` so an empty bin gives a large but finite term. Rule of thumb: < 0.1
    stable, 0.1–0.25 moderate, > 0.25 a real shift.
    """
    reference = np.asarray(reference, dtype=float)
    live = np.asarray(live, dtype=float)
    if reference.size == 0 or live.size == 0:
        return float("nan")
    finite = reference[np.isfinite(reference)]
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1])) if finite.size else np.array([])

    def shares(x: np.ndarray) -> np.ndarray:
        ok = np.isfinite(x)
        counts = np.bincount(np.searchsorted(edges, x[ok], side="right"), minlength=edges.size + 1)
        return np.append(counts, (~ok).sum()) / x.size

    ref, cur = np.maximum(shares(reference), floor), np.maximum(shares(live), floor)
    return float(np.sum((cur - ref) * np.log(cur / ref)))
