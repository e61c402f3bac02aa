"""Probability metrics, natural-log units.

Binary: y ∈ {0, 1}, p = P(y = 1), shape (n,). Multiclass: y ∈ {0, …, K−1}, p of shape (n, K)
(each row the class probabilities, e.g. [down, flat, up], `models.three_way`); every function
here takes either, telling them apart by the shape of p.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-12


def is_multiclass(p: np.ndarray) -> bool:
    return np.ndim(p) == 2


def one_hot(y: np.ndarray, k: int) -> np.ndarray:
    """(n, k) indicators of integer-valued labels `y`."""
    return (np.asarray(y, dtype=float)[:, None] == np.arange(k)[None, :]).astype(float)


def row_log_loss(y: np.ndarray, p: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Per-row log loss (nats): −log of the probability given to the observed label."""
    y = np.asarray(y, dtype=float)
    if is_multiclass(p):
        q = np.asarray(p, dtype=float)[np.arange(y.size), y.astype(int)]
        return -np.log(np.clip(q, eps, 1.0))
    p = np.clip(np.asarray(p, dtype=float), eps, 1 - eps)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(row_log_loss(y, p)))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared error of the probabilities; multiclass: summed over the classes per row
    (so a binary model read as two classes scores twice its binary Brier)."""
    if is_multiclass(p):
        p = np.asarray(p, dtype=float)
        return float(np.mean(np.sum((p - one_hot(y, p.shape[1])) ** 2, axis=1)))
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
    """Expected calibration error: count-weighted |frequency − mean p| over equal-width bins.
    Multiclass: the classwise ECE, the mean over classes of each class's one-vs-rest ECE (every
    class's probability calibrated, not only the top one's)."""
    if is_multiclass(p):
        p = np.asarray(p, dtype=float)
        y = np.asarray(y)
        return float(np.mean([ece(y == k, p[:, k], bins) for k in range(p.shape[1])]))
    mean_p, freq, count = reliability(y, p, bins)
    used = count > 0
    return float(np.sum(count[used] * np.abs(freq[used] - mean_p[used])) / count.sum())


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney, ties counted half); multiclass: the mean of the
    one-vs-rest AUCs of the classes present."""
    if is_multiclass(p):
        p = np.asarray(p, dtype=float)
        y = np.asarray(y)
        values = [auc(y == k, p[:, k]) for k in range(p.shape[1])]
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
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
    """Share of rows whose most probable label is the observed one (binary: p > threshold)."""
    if is_multiclass(p):
        return float(np.mean(np.argmax(np.asarray(p), axis=1) == np.asarray(y).astype(int)))
    return float(np.mean((np.asarray(p) > threshold) == np.asarray(y).astype(bool)))


def class_rates(y: np.ndarray, k: int) -> np.ndarray:
    """Frequency of each of `k` classes in `y`."""
    return one_hot(y, k).mean(axis=0) if np.size(y) else np.full(k, 1.0 / k)


def constant(y: np.ndarray, rate: float | np.ndarray) -> np.ndarray:
    """Always predicting `rate` on the rows of `y`: (n,) for a binary rate, (n, K) for a vector
    of class rates."""
    rate = np.asarray(rate, dtype=float)
    return np.broadcast_to(rate, (np.size(y), *rate.shape)).copy()


def base_rate(y: np.ndarray, classes: int | None = None) -> float | np.ndarray:
    """The frequency of label 1 (binary, `classes` None) or of each of `classes` classes."""
    if classes is None:
        return float(np.mean(np.asarray(y, dtype=float)))
    return class_rates(y, classes)


def base_rate_log_loss(
    y: np.ndarray, rate: float | np.ndarray | None = None, classes: int | None = None
) -> float:
    """Log loss of always predicting `rate` (default: the frequency of y itself; with
    `classes`, of each class)."""
    y = np.asarray(y, dtype=float)
    return log_loss(y, constant(y, base_rate(y, classes) if rate is None else rate))


def summary(
    y: np.ndarray,
    p: np.ndarray,
    p_true: np.ndarray | None = None,
    train_rate: float | np.ndarray | None = None,
) -> dict[str, float]:
    """All headline metrics; with `p_true` (simulator) also the Bayes-optimal log loss and the
    relative gap ``(log_loss − bayes) / bayes``. Multiclass: ``class_rate_<k>`` per class
    instead of ``positive_rate``."""
    classes = np.shape(p)[1] if is_multiclass(p) else None
    out = {
        "log_loss": log_loss(y, p),
        "brier": brier(y, p),
        "ece": ece(y, p),
        "auc": auc(y, p),
        "accuracy": accuracy(y, p),
        "base_rate_log_loss": base_rate_log_loss(y, train_rate, classes),
        "n": float(len(y)),
    }
    if classes is None:
        out["positive_rate"] = float(np.mean(y))
    else:
        out.update({f"class_rate_{k}": float(r) for k, r in enumerate(class_rates(y, classes))})
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
    """The ECE (15 bins; classwise for (n, K) `p`) that a *perfectly calibrated* predictor
    with probabilities `p` would still show on these rows, at `quantile` of its sampling
    distribution.

    Labels are redrawn with P(y = 1) = p exactly (multiclass: P(y = k) = p[:, k]), and with
    the dependence of overlapping `horizon`-bar labels: within a group (one symbol's rows,
    consecutive bars in time order) a sum of `horizon` shared standard-normal shocks
    e[i..i+horizon−1], divided by √horizon, is cut at the normal quantiles of the cumulative
    class probabilities (binary: row i is 1 when it falls below Φ⁻¹(p_i)), so rows k apart
    share (horizon − k)/horizon of their noise, as the returns behind neighbouring labels do.
    An ECE below this floor is indistinguishable from sampling noise on these rows.
    """
    from scipy.special import ndtri

    multi = is_multiclass(p)
    p = np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)
    n = p.shape[0]
    groups = np.zeros(n) if groups is None else np.asarray(groups)
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    rng = np.random.default_rng(seed)
    h = max(int(horizon), 1)
    # cut points on the standardised shock sum: label = number of cuts it lies above (binary:
    # one cut, label 1 below it)
    cuts = ndtri(np.clip(np.cumsum(p[:, :-1], axis=1), EPS, 1 - EPS)) if multi else ndtri(p)[:, None]
    chunk = max(1, min(draws, 4_000_000 // max(n, 1)))  # bounded memory on big holdouts
    eces: list[float] = []
    while len(eces) < draws:
        k = min(chunk, draws - len(eces))
        y = np.empty((k, n))
        for rows in members:
            walk = np.cumsum(rng.standard_normal((k, rows.size + h)), axis=1)
            z = (walk[:, h : h + rows.size] - walk[:, : rows.size]) / np.sqrt(h)
            above = (z[:, :, None] >= cuts[rows][None, :, :]).sum(axis=2)
            y[:, rows] = above if multi else (above == 0)
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
