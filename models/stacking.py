"""Stacking and ensembling of base learners from out-of-fold predictions.

Out-of-fold (OOF) probabilities come from purged walk-forward folds: every OOF value is a
prediction by a learner that never saw that row or any row whose label overlaps it.

* `StackedModel`: a non-negative logistic meta-learner on the base learners' OOF logits
  (optionally with regime features: `RegimeInputs`). The meta-learner *is* the stack's
  calibration — a logistic map of the base logits with its own intercept, fitted on
  out-of-fold rows — so no second calibrator is fitted on top; its output is only kept within
  the range its own walk-forward predictions support (`models.calibration.support_range`).
  Why (measured on the simulator, `benchmarks/train_targets.py`): a Platt map chosen on the
  meta-learner's walk-forward predictions "won" its held-out split by tracking the base rate
  as it drifted down across the training window (walk-forward fits lag it), and carried that
  shift forward: forward log loss 0.69072 vs 0.68963 without it on a planted signal, 0.0035
  above the base rate on a random walk.
  The meta-learner's weights come from the out-of-fold logits, but its intercept is then
  re-solved (`NonNegativeLogit.anchor`) so that, applied to the *refit* base learners on the
  training rows, the stack's mean probability equals the training window's up-frequency. The
  out-of-fold logits come from fold models that saw only earlier data and lag a drifting
  level; an intercept fitted on them carries that correction forward, while the refit base
  learners (and the ensemble) already sit at the window's level. Measured (planted signal,
  `train_targets.py --seed 8`): forward ECE 0.0111 → 0.0043.
* `EnsembleModel`: each base learner calibrated on its OOF probabilities, then a weighted
  average with weights (on the simplex) fitted to minimise OOF log loss.

Both refit the base learners on all training rows for prediction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import brentq, minimize

from models.base_learners import BaseLearner
from models.calibration import Identity, Supported, choose_calibrator, logit, sigmoid, support_range
from models.metrics import log_loss
from models.scaling import center_scale
from models.validation import Fold

LearnerFactory = Callable[[], BaseLearner]


def out_of_fold(
    factories: dict[str, LearnerFactory],
    X: np.ndarray,
    y: np.ndarray,
    folds: list[Fold],
    known: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """(n, L) OOF probabilities (columns in `factories` order); NaN where a row was never tested.
    Learners in `known` (name → length-n OOF column from the same folds) are not refitted."""
    known = known or {}
    oof = np.full((len(y), len(factories)), np.nan)
    for j, name in enumerate(factories):
        if name in known:
            if len(known[name]) != len(y):
                raise ValueError(f"known OOF for {name} has {len(known[name])} rows, expected {len(y)}")
            oof[:, j] = known[name]
    for fold in folds:
        for j, (name, make) in enumerate(factories.items()):
            if name not in known:
                learner = make().fit(X[fold.train], y[fold.train])
                oof[fold.test, j] = learner.predict_proba(X[fold.test])
    return oof


@dataclass
class NonNegativeLogit:
    """Meta-learner: P = σ(b + Σ w_j · logit(p_j)) with every w_j ≥ 0 (L2 penalty `l2`).

    Base learners' logits are strongly correlated; an unconstrained fit happily gives one a
    negative weight that only pays off in-sample. Non-negative stacking does not. The last
    `n_free` input columns (regime inputs) have unconstrained weights.
    """

    l2: float = 1e-3
    n_free: int = 0
    coef_: np.ndarray = field(default_factory=lambda: np.zeros(0))
    intercept_: float = 0.0

    def fit(self, z: np.ndarray, y: np.ndarray) -> NonNegativeLogit:
        k = z.shape[1]
        k_pos = k - self.n_free

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w, b = theta[:k], theta[k]
            p = sigmoid(z @ w + b)
            eps = 1e-12
            nll = -np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps)) + self.l2 * w @ w
            g = p - y
            grad = np.r_[z.T @ g / len(y) + 2 * self.l2 * w, g.mean()]
            return float(nll), grad

        start = np.r_[np.full(k_pos, 1.0 / k_pos), np.zeros(self.n_free), 0.0]
        bounds = [(0.0, None)] * k_pos + [(None, None)] * (self.n_free + 1)
        theta = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=bounds).x
        self.coef_, self.intercept_ = theta[:k], float(theta[k])
        return self

    def anchor(self, z: np.ndarray, rate: float) -> NonNegativeLogit:
        """Re-solve only the intercept so the mean prediction on inputs `z` equals `rate` (a
        frequency in (0, 1)); the weights are kept. Unchanged if `rate` is 0 or 1."""
        if not 0.0 < rate < 1.0 or len(z) == 0:
            return self
        s = z @ self.coef_

        def gap(b: float) -> float:
            return float(np.mean(sigmoid(s + b))) - rate

        lo, hi = self.intercept_ - 20.0, self.intercept_ + 20.0
        if gap(lo) < 0.0 < gap(hi):
            self.intercept_ = float(brentq(gap, lo, hi, xtol=1e-12))
        return self

    def predict_proba(self, z: np.ndarray) -> np.ndarray:
        p = sigmoid(z @ self.coef_ + self.intercept_)
        return np.column_stack([1 - p, p])


def _covered(
    factories: dict[str, LearnerFactory],
    X: np.ndarray,
    y: np.ndarray,
    folds: list[Fold],
    oof: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OOF probabilities (computed unless given) restricted to rows every learner predicted,
    the labels of those rows, and the rows' mask."""
    oof = out_of_fold(factories, X, y, folds) if oof is None else oof
    rows = ~np.isnan(oof).any(axis=1)
    return oof[rows], y[rows], rows


def fit_base(factories: dict[str, LearnerFactory], X: np.ndarray, y: np.ndarray) -> list[BaseLearner]:
    """Every base learner fitted on all the given training rows (shared by stack and ensemble)."""
    return [make().fit(X, y) for make in factories.values()]


def _walk_forward_meta(z: np.ndarray, y: np.ndarray, blocks: int, l2: float, n_free: int = 0) -> np.ndarray:
    """Meta-learner predictions for the later blocks, each fitted on the blocks before it."""
    edges = np.linspace(0, len(y), blocks + 1).astype(int)
    out = np.full(len(y), np.nan)
    for lo, hi in zip(edges[1:-1], edges[2:], strict=True):
        meta = NonNegativeLogit(l2, n_free).fit(z[:lo], y[:lo])
        out[lo:hi] = meta.predict_proba(z[lo:hi])[:, 1]
    return out


class _BaseOnDevice:
    """`to(device)` for a combination of fitted base learners (``self.base``)."""

    base: list[BaseLearner]

    def to(self, device: str) -> _BaseOnDevice:
        from models.device import place

        self.base = [place(m, device) for m in self.base]
        return self


@dataclass
class RegimeInputs:
    """Regime features as extra meta-learner inputs: the feature columns at `index`, median
    imputed, standardised and clipped to ±5 (centre and scale fitted on the training rows
    given to `fit`), and each one's product with the mean base logit — so a regime can move
    the level and scale the confidence of the stack. Their weights are unconstrained."""

    index: tuple[int, ...]
    center: np.ndarray | None = None
    scale: np.ndarray | None = None

    @property
    def width(self) -> int:
        return 2 * len(self.index)

    def fit(self, X: np.ndarray) -> RegimeInputs:
        R = X[:, list(self.index)].astype(float)
        self.center, self.scale = center_scale(R)
        return self

    def design(self, z: np.ndarray, X: np.ndarray) -> np.ndarray:
        """The meta-learner's inputs: logits `z`, then the regime columns, then interactions."""
        R = X[:, list(self.index)].astype(float)
        r = np.clip((np.where(np.isnan(R), self.center, R) - self.center) / self.scale, -5, 5)
        return np.column_stack([z, r, r * z.mean(axis=1, keepdims=True)])


@dataclass
class StackedModel(_BaseOnDevice):
    names: list[str]
    base: list[BaseLearner]
    meta: Any
    calibrator: Any
    oof_scores: dict[str, float] = field(default_factory=dict)
    regime: RegimeInputs | None = None

    def base_probabilities(self, X: np.ndarray) -> np.ndarray:
        return np.column_stack([m.predict_proba(X) for m in self.base])

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        z = logit(self.base_probabilities(X))
        inputs = z if self.regime is None else self.regime.design(z, X)
        return self.calibrator.transform(self.meta.predict_proba(inputs)[:, 1])


def fit_stacked(
    factories: dict[str, LearnerFactory],
    X: np.ndarray,
    y: np.ndarray,
    folds: list[Fold],
    oof: np.ndarray | None = None,
    base: list[BaseLearner] | None = None,
    l2: float = 1e-3,
    regime_index: Sequence[int] = (),
    horizon: int = 1,
) -> StackedModel:
    """Fit the stack: OOF base probabilities → non-negative logistic meta (see module; its
    intercept anchored to the frequency of `y` on the refit base learners), its output kept
    within what its walk-forward predictions support (`support_range`, with `horizon` bars per
    label). `regime_index`: feature columns of `X` fed to the meta-learner
    too (`RegimeInputs`, scaled on these training rows only). ``oof_scores["stacked"]``: the
    log loss of the meta-learner's walk-forward predictions (each block by a meta-learner
    fitted on the blocks before it)."""
    probs, yo, rows = _covered(factories, X, y, folds, oof)
    regime = RegimeInputs(tuple(regime_index)).fit(X) if len(regime_index) else None
    z = logit(probs) if regime is None else regime.design(logit(probs), X[rows])
    n_free = 0 if regime is None else regime.width
    meta_oof = _walk_forward_meta(z, yo, blocks=5, l2=l2, n_free=n_free)
    scored = ~np.isnan(meta_oof)
    low, high = support_range(meta_oof[scored], yo[scored], horizon) if scored.sum() > 200 else (0.0, 1.0)
    calibrator = Supported(Identity(), low, high)
    meta = NonNegativeLogit(l2, n_free).fit(z, yo)
    base = fit_base(factories, X, y) if base is None else base
    refit = logit(np.column_stack([m.predict_proba(X) for m in base]))
    meta.anchor(refit if regime is None else regime.design(refit, X), float(np.mean(y)))
    oof_scores = {name: log_loss(yo, probs[:, j]) for j, name in enumerate(factories)}
    oof_scores["stacked"] = log_loss(yo[scored], calibrator.transform(meta_oof[scored]))
    return StackedModel(list(factories), base, meta, calibrator, oof_scores, regime)


@dataclass
class EnsembleModel(_BaseOnDevice):
    names: list[str]
    base: list[BaseLearner]
    calibrators: list[Any]
    weights: np.ndarray
    oof_scores: dict[str, float] = field(default_factory=dict)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        probs = np.column_stack(
            [c.transform(m.predict_proba(X)) for m, c in zip(self.base, self.calibrators, strict=True)]
        )
        return probs @ self.weights


def fit_ensemble(
    factories: dict[str, LearnerFactory],
    X: np.ndarray,
    y: np.ndarray,
    folds: list[Fold],
    oof: np.ndarray | None = None,
    base: list[BaseLearner] | None = None,
    calibration: tuple[str, ...] = ("none", "platt", "temperature", "isotonic"),
    horizon: int = 1,
    block_rows: int | None = None,
) -> EnsembleModel:
    """Calibrate each base learner on its OOF probabilities (`choose_calibrator` with
    `horizon` and `block_rows`), then fit simplex weights."""
    probs, yo, _ = _covered(factories, X, y, folds, oof)
    calibrators = [
        choose_calibrator(probs[:, j], yo, calibration, horizon=horizon, block_rows=block_rows)[0]
        for j in range(probs.shape[1])
    ]
    calibrated = np.column_stack([c.transform(probs[:, j]) for j, c in enumerate(calibrators)])

    def loss(v: np.ndarray) -> float:
        w = np.exp(v - v.max())
        return log_loss(yo, calibrated @ (w / w.sum()))

    v = minimize(loss, np.zeros(calibrated.shape[1]), method="Nelder-Mead").x
    weights = np.exp(v - v.max())
    weights /= weights.sum()
    base = fit_base(factories, X, y) if base is None else base
    scores = {"ensemble_in_sample": log_loss(yo, calibrated @ weights)}  # weights fit on these rows
    return EnsembleModel(list(factories), base, calibrators, weights, scores)
