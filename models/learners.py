"""The learner registry: every base learner the platform can train, by name.

Adding a learner takes four things and nothing else: its class (a `BaseLearner`), one entry
here (`LEARNERS`: name → the ``models.<section>`` of params.yaml it reads and how to build it
from that section's settings), that params section (a typed class in `pipelines.config` plus
its values in params.yaml) and its search space (``tune.spaces.<name>``). Training, tuning,
stacking and the config's validation of ``models.learners`` all read this table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from models.base_learners import BaseLearner, LogisticLearner, XGBoostLearner


@dataclass(frozen=True)
class BuildContext:
    """What every learner may need beyond its own settings: the seed, the rows to purge
    between its internal train/validation split (label overlap), the feature columns."""

    seed: int
    purge_rows: int = 0
    columns: Sequence[str] = ()


Build = Callable[[Mapping[str, Any], BuildContext], BaseLearner]


@dataclass(frozen=True)
class LearnerEntry:
    section: str  # the ``models.<section>`` settings it is built from
    build: Build


def _logistic(s: Mapping[str, Any], c: BuildContext) -> BaseLearner:
    return LogisticLearner(C=s["C"], seed=c.seed)


def _xgboost(s: Mapping[str, Any], c: BuildContext) -> BaseLearner:
    booster = ("max_depth", "learning_rate", "min_child_weight", "subsample", "colsample_bytree")
    return XGBoostLearner(
        params={k: s[k] for k in booster},
        n_estimators=s["n_estimators"],
        early_stopping_rounds=s["early_stopping_rounds"],
        purge_rows=c.purge_rows,
        seed=c.seed,
    )


def _mlp(s: Mapping[str, Any], c: BuildContext) -> BaseLearner:
    from models.lightning_learners import MLPLearner

    return MLPLearner(**s, purge_rows=c.purge_rows, seed=c.seed)


def _sequence(s: Mapping[str, Any], c: BuildContext) -> BaseLearner:
    from models.lightning_learners import SequenceLearner

    seq_index = tuple(i for i, col in enumerate(c.columns) if col.startswith("seq_"))
    return SequenceLearner(**s, purge_rows=c.purge_rows, seed=c.seed, seq_index=seq_index)


LEARNERS: dict[str, LearnerEntry] = {
    "logistic": LearnerEntry("logistic", _logistic),
    "xgboost": LearnerEntry("xgb", _xgboost),
    "mlp": LearnerEntry("mlp", _mlp),
    "sequence": LearnerEntry("sequence", _sequence),  # needs the `return_sequence` feature family
}


def build_learner(name: str, settings: Mapping[str, Any], context: BuildContext) -> BaseLearner:
    """A fresh, unfitted learner `name` with `settings` (its params section, tuned values
    applied by the caller)."""
    if name not in LEARNERS:
        raise KeyError(f"unknown learner {name!r}; registered: {sorted(LEARNERS)}")
    return LEARNERS[name].build(settings, context)
