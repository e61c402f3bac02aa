"""Probability calibration fitted on out-of-fold predictions only.

Three calibrators with one interface (`fit(p, y)`, `transform(p)`): Platt scaling (logistic
regression on the logit), temperature scaling (one divisor of the logit) and isotonic
regression. `choose_calibrator` compares them by the log loss of a time-ordered split of the
out-of-fold predictions (fit on the earlier part, score on the later), then refits the winner
on all of them — so the calibrator never sees the data it will be judged on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from sklearn.isotonic import IsotonicRegression

from models.metrics import EPS, log_loss


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


def choose_calibrator(
    p: np.ndarray,
    y: np.ndarray,
    methods: tuple[str, ...] = ("none", "platt", "temperature", "isotonic"),
    holdout: float = 0.3,
) -> tuple[Identity | Platt | Temperature | Isotonic, dict[str, float]]:
    """Pick the calibrator with the lowest log loss on the later `holdout` share of the
    (time-ordered) out-of-fold predictions, then refit it on all of them.

    Returns the fitted calibrator and each method's held-out log loss.
    """
    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=float)
    cut = int(len(p) * (1 - holdout))
    scores = {}
    for name in methods:
        calibrator = CALIBRATORS[name]().fit(p[:cut], y[:cut])
        scores[name] = log_loss(y[cut:], calibrator.transform(p[cut:]))
    best = min(scores, key=lambda k: scores[k])
    return CALIBRATORS[best]().fit(p, y), scores
