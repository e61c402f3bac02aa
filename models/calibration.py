"""Probability calibration fitted on out-of-fold predictions only.

Three calibrators with one interface (`fit(p, y)`, `transform(p)`): Platt scaling (logistic
regression on the logit), temperature scaling (one divisor of the logit) and isotonic
regression. `choose_calibrator` compares them by the log loss of a time-ordered split of the
out-of-fold predictions (fit on the earlier part, score on the later), then refits the winner
on all of them — so the calibrator never sees the data it will be judged on.

With the effective sample size in view (rows / label horizon: overlapping labels share their
outcome): a method with more freedom (none < temperature < platt < isotonic) is chosen only
when it beats every simpler one by more than one standard error of the paired held-out
difference (blocks of overlapping rows), isotonic only on at least `ISOTONIC_MIN_EFFECTIVE`
effective labels; and the chosen calibrator's output is kept within the range the
calibration data supports (`Supported`): no probability beyond the confidence bound of the
observed frequency among its most extreme `min_support` effective labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from sklearn.isotonic import IsotonicRegression

from models.metrics import EPS, log_loss
from models.uncertainty import wilson


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=float)))


@dataclass
class Identity:
    name: str = "none"

    def fit(self, p: np.ndarray, y: np.ndarray) -> Identity:
        return self

    def transform(self, p: np.ndarray) -> np.ndarray:
        return np.asarray(p, dtype=float)


@dataclass
class Platt:
    """p' = σ(a·logit(p) + b), (a, b) by maximum likelihood."""

    name: str = "platt"
    a: float = 1.0
    b: float = 0.0

    def fit(self, p: np.ndarray, y: np.ndarray) -> Platt:
        z, y = logit(p), np.asarray(y, dtype=float)

        def nll(w: np.ndarray) -> float:
            return log_loss(y, sigmoid(w[0] * z + w[1]))

        self.a, self.b = minimize(
            nll, x0=[1.0, 0.0], method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-9}
        ).x
        return self

    def transform(self, p: np.ndarray) -> np.ndarray:
        return sigmoid(self.a * logit(p) + self.b)


@dataclass
class Temperature:
    """p' = σ(logit(p) / T), T > 0 by maximum likelihood."""

    name: str = "temperature"
    t: float = 1.0

    def fit(self, p: np.ndarray, y: np.ndarray) -> Temperature:
        z, y = logit(p), np.asarray(y, dtype=float)
        res = minimize_scalar(
            lambda lt: log_loss(y, sigmoid(z / np.exp(lt))), bounds=(-4, 4), method="bounded"
        )
        self.t = float(np.exp(res.x))
        return self

    def transform(self, p: np.ndarray) -> np.ndarray:
        return sigmoid(logit(p) / self.t)


@dataclass
class Isotonic:
    """Monotone step function of p (clipped away from 0 and 1)."""

    name: str = "isotonic"
    model: IsotonicRegression = field(
        default_factory=lambda: IsotonicRegression(y_min=1e-4, y_max=1 - 1e-4, out_of_bounds="clip")
    )

    def fit(self, p: np.ndarray, y: np.ndarray) -> Isotonic:
        self.model.fit(np.asarray(p, dtype=float), np.asarray(y, dtype=float))
        return self

    def transform(self, p: np.ndarray) -> np.ndarray:
        return self.model.predict(np.asarray(p, dtype=float))


CALIBRATORS = {"none": Identity, "platt": Platt, "temperature": Temperature, "isotonic": Isotonic}
COMPLEXITY = ("none", "temperature", "platt", "isotonic")  # fewest degrees of freedom first
ISOTONIC_MIN_EFFECTIVE = 1000  # effective labels below which a step function is not fitted


@dataclass
class Supported:
    """A fitted calibrator whose output is clipped to [`low`, `high`]: the range its
    calibration data supports (`support_range`)."""

    inner: Identity | Platt | Temperature | Isotonic
    low: float = 0.0
    high: float = 1.0

    @property
    def name(self) -> str:
        return self.inner.name

    def transform(self, p: np.ndarray) -> np.ndarray:
        return np.clip(self.inner.transform(p), self.low, self.high)


def support_range(
    calibrated: np.ndarray, y: np.ndarray, horizon: int = 1, min_support: int = 50
) -> tuple[float, float]:
    """How far calibrated probabilities may go on this calibration data. For every group of
    the rows with the highest calibrated values holding at least `min_support` effective
    labels (`horizon` rows each), the upper 95 % Wilson bound of its observed frequency; the
    largest of these is the highest probability the data can support (a thin tail far from
    the rest cannot raise it). Likewise the lowest, from the bottom. Never narrower than the
    overall frequency."""
    c, y = np.asarray(calibrated, dtype=float), np.asarray(y, dtype=float)
    h = max(int(horizon), 1)
    k_min = min(c.size, min_support * h)
    if k_min == 0:
        return 0.0, 1.0
    order = np.argsort(c, kind="stable")
    k = np.arange(1, c.size + 1, dtype=float)
    top = np.cumsum(y[order[::-1]]) / k
    bottom = np.cumsum(y[order]) / k
    n_eff = k / h
    high = float(wilson(top, n_eff)[1][k_min - 1 :].max())
    low = float(wilson(bottom, n_eff)[0][k_min - 1 :].min())
    rate = float(y.mean())
    return min(low, rate), max(high, rate)


def _block_se(diff: np.ndarray, rows_per_block: int) -> float:
    """Standard error of the mean of `diff` with blocks of consecutive rows as the units."""
    b = max(int(rows_per_block), 1)
    n = diff.size // b
    if n < 2:
        return float("inf")
    means = diff[: n * b].reshape(n, b).mean(axis=1)
    return float(means.std(ddof=1) / np.sqrt(n))


def choose_calibrator(
    p: np.ndarray,
    y: np.ndarray,
    methods: tuple[str, ...] = ("none", "platt", "temperature", "isotonic"),
    holdout: float = 0.3,
    horizon: int = 1,
    min_support: int = 50,
    block_rows: int | None = None,
) -> tuple[Supported, dict[str, float]]:
    """Pick a calibrator on the later `holdout` share of the (time-ordered) out-of-fold
    predictions `p` (each label spanning `horizon` bars), then refit it on all of them and keep
    its output within `support_range` (see module docstring). `block_rows`: consecutive rows
    whose outcomes overlap (horizon × symbols when symbols interleave; default max(horizon,
    24)), the units of the standard error.

    Returns the fitted calibrator and each method's held-out log loss.
    """
    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=float)
    h = max(int(horizon), 1)
    cut = int(len(p) * (1 - holdout))
    effective = len(p) / h
    allowed = [
        m for m in COMPLEXITY if m in methods and (m != "isotonic" or effective >= ISOTONIC_MIN_EFFECTIVE)
    ]
    if not allowed:
        allowed = ["none"]
    scores: dict[str, float] = {}
    rows: dict[str, np.ndarray] = {}
    for name in allowed:
        calibrator = CALIBRATORS[name]().fit(p[:cut], y[:cut])
        q = np.clip(calibrator.transform(p[cut:]), EPS, 1 - EPS)
        rows[name] = -(y[cut:] * np.log(q) + (1 - y[cut:]) * np.log(1 - q))
        scores[name] = float(rows[name].mean())
    best = allowed[0]
    for name in allowed[1:]:  # more freedom must pay for itself by more than chance
        diff = rows[best] - rows[name]
        if diff.mean() > _block_se(diff, block_rows or max(h, 24)):
            best = name
    fitted = CALIBRATORS[best]().fit(p, y)
    low, high = support_range(fitted.transform(p), y, h, min_support)
    return Supported(fitted, low, high), scores
