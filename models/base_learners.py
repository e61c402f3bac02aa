"""Base learners: plain fit/predict objects returning P(y = 1).

Each learner sees only the rows it is given (one training window); every transform it needs
(imputation, scaling, early stopping's validation split) is fitted inside `fit` on those rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from models.scaling import center_scale


class BaseLearner(Protocol):
    name: str

    def fit(self, X: np.ndarray, y: np.ndarray) -> BaseLearner: ...

    def predict_proba(self, X: np.ndarray) -> np.ndarray: ...


@dataclass
class LogisticLearner:
    """Median imputation + standardisation + L2 logistic regression (the baseline).

    Strong regularisation by default: the features are many and collinear (returns over
    nested lags, oscillators of the same prices), and a weakly regularised fit extrapolates
    badly across regimes (seen on simulator folds: C=0.01 lost to the base rate, C=0.001 won).
    """

    C: float = 0.001
    seed: int = 0
    name: str = "logistic"
    model: Any = None
    fill: Any = None

    def fit(self, X: np.ndarray, y: np.ndarray) -> LogisticLearner:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        # np.nanmedian: sklearn's SimpleImputer(median) goes through numpy.ma and took ~3 s
        # on 80k × 143 rows, 20× longer than the regression itself
        self.fill, _ = center_scale(X)
        self.model = make_pipeline(
            StandardScaler(), LogisticRegression(C=self.C, max_iter=2000, random_state=self.seed)
        )
        self.model.fit(self._filled(X), y)
        return self

    def _filled(self, X: np.ndarray) -> np.ndarray:
        return np.where(np.isnan(X), self.fill, X)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(self._filled(X))[:, 1]


@dataclass
class XGBoostLearner:
    """Gradient-boosted trees (hist), early-stopped on the latest `validation_fraction` of the
    training rows, with `purge_rows` dropped between the two so overlapping labels do not leak
    into the stopping decision. Runs on CUDA when available."""

    params: dict[str, Any] = field(default_factory=dict)
    n_estimators: int = 400
    early_stopping_rounds: int = 30
    validation_fraction: float = 0.2
    purge_rows: int = 0
    seed: int = 0
    n_jobs: int | None = None  # threads; None = every core (hist is deterministic either way)
    name: str = "xgboost"
    model: Any = None

    def fit(self, X: np.ndarray, y: np.ndarray) -> XGBoostLearner:
        import xgboost as xgb

        from models.device import xgboost_device

        cut = int(len(y) * (1 - self.validation_fraction))
        fit_end = max(1, cut - self.purge_rows)
        settings = {
            "max_depth": 2,
            "learning_rate": 0.05,
            "subsample": 0.8,
            "colsample_bytree": 0.8,
            "min_child_weight": 100,
            "reg_lambda": 1.0,
            **self.params,
        }
        self.model = xgb.XGBClassifier(
            n_estimators=self.n_estimators,
            tree_method="hist",
            device=xgboost_device(),
            objective="binary:logistic",
            eval_metric="logloss",
            random_state=self.seed,
            early_stopping_rounds=self.early_stopping_rounds,
            n_jobs=self.n_jobs,
            **settings,
        )
        self.model.fit(X[:fit_end], y[:fit_end], eval_set=[(X[cut:], y[cut:])], verbose=False)
        # predict on one thread: scoring comes in small batches, and idle OpenMP workers
        # spinning beside a service's event loop on 2 cores cost more than they save
        self.model.set_params(n_jobs=1)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(X)[:, 1]

    def to(self, device: str) -> XGBoostLearner:
        """Predict on `device` ("cpu" or "cuda")."""
        self.model.set_params(device=device)
        return self
