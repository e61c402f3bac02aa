"""Three-class (down / flat / up) probability models as a nested dichotomy of two binary ones.

Labels are 0 = down, 1 = flat, 2 = up (`features.labels.up_flat_down_labels`). Two binary
questions answer them:

* **move**: does price leave the flat zone? Trained on every row, target ``label != flat``.
* **side**: given that it does, is it up? Trained only on the rows that moved, target
  ``label == up`` — the same question the binary direction model asks.

so that P(up) = P(move)·P(up | move), P(down) = P(move)·(1 − P(up | move)) and P(flat) =
1 − P(move): three probabilities that sum to 1 by construction, each factor a full stacked or
ensembled binary model with its own out-of-fold calibration (`models.stacking`). Calibration
of the product is not assumed: evaluation and the promotion gate measure it (classwise ECE,
`models.metrics.ece`). Why two binary models rather than one multinomial one: every binary
part of the platform (purged walk-forward stacking, non-negative meta-learner, calibrator
choice with its support range, Optuna studies) applies to each factor unchanged, and each
factor is a question a user can read on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from models.validation import Fold

DOWN, FLAT, UP = 0, 1, 2
CLASSES = ("down", "flat", "up")  # column order of every three-class probability array


def compose(p_move: np.ndarray, p_up_given_move: np.ndarray) -> np.ndarray:
    """(n, 3) probabilities [down, flat, up] from P(move) and P(up | move) (each length n)."""
    m = np.clip(np.asarray(p_move, dtype=float), 0.0, 1.0)
    u = np.clip(np.asarray(p_up_given_move, dtype=float), 0.0, 1.0)
    return np.column_stack([m * (1.0 - u), 1.0 - m, m * u])


def move_target(y: np.ndarray) -> np.ndarray:
    """1.0 where the three-class label left the flat zone (down or up), else 0.0."""
    return (np.asarray(y) != FLAT).astype(float)


def side_rows(y: np.ndarray) -> np.ndarray:
    """Mask of the rows that moved (the side model's training rows)."""
    return np.asarray(y) != FLAT


def side_target(y: np.ndarray) -> np.ndarray:
    """1.0 for up, 0.0 for down (meaningful on `side_rows` only)."""
    return (np.asarray(y) == UP).astype(float)


def restrict_folds(folds: list[Fold], mask: np.ndarray) -> list[Fold]:
    """The same folds over the rows where `mask` holds, re-indexed into those rows: the side
    model is validated on exactly the time splits (and purges) the move model is."""
    mask = np.asarray(mask, dtype=bool)
    position = np.cumsum(mask) - 1
    return [Fold(train=position[f.train[mask[f.train]]], test=position[f.test[mask[f.test]]]) for f in folds]


@dataclass
class ThreeWayModel:
    """P(down), P(flat), P(up) from a fitted `move` and `side` binary predictor (anything with
    ``predict_proba(X) -> P(label 1)``). `base` pairs the two factors' base learners, so each
    base learner is also readable as a three-class predictor."""

    move: Any
    side: Any

    @property
    def names(self) -> list[str]:
        return list(getattr(self.move, "names", []))

    @property
    def base(self) -> list[ThreeWayModel]:
        return [ThreeWayModel(m, s) for m, s in zip(self.move.base, self.side.base, strict=True)]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(n, 3) [down, flat, up], rows summing to 1."""
        return compose(self.move.predict_proba(X), self.side.predict_proba(X))

    def to(self, device: str) -> ThreeWayModel:
        from models.device import place

        self.move, self.side = place(self.move, device), place(self.side, device)
        return self
