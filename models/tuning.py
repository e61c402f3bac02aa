"""Hyper-parameter search with Optuna: TPE with pruning, objective = purged-CV log loss.

A search space is a plain mapping from ``params.yaml`` (``{name: {low, high, log, int}}`` or
``{name: {choices: [...]}}``). The objective trains the learner on each purged walk-forward
fold and reports the running mean log loss after every fold, so unpromising trials are pruned
early (for every learner, xgboost and the Lightning nets included). Studies live in an Optuna
storage (a SQLite file by default, PostgreSQL for several workers) and resume where they
stopped: only the missing trials are run. Several processes (``python -m pipelines.tune`` on
one or many machines) with the same storage share each study and together run `n_trials`;
every trial records which worker ran it (user attribute ``worker``).

The out-of-fold predictions of the best trial are kept (when this process ran it) so that
training reuses them instead of refitting the same learner on the same folds.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.base_learners import BaseLearner
from models.metrics import log_loss
from models.validation import Fold

Space = dict[str, dict[str, Any]]


def suggest(trial: Any, space: Space) -> dict[str, Any]:
    """Draw one point of `space` from an Optuna trial."""
    out: dict[str, Any] = {}
    for name, spec in space.items():
        if "choices" in spec:
            out[name] = trial.suggest_categorical(name, list(spec["choices"]))
        elif spec.get("int"):
            out[name] = trial.suggest_int(
                name, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log"))
            )
        else:
            out[name] = trial.suggest_float(
                name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log"))
            )
    return out


def cv_log_loss(
    make: Callable[[], BaseLearner],
    X: np.ndarray,
    y: np.ndarray,
    folds: list[Fold],
    trial: Any = None,
    oof: np.ndarray | None = None,
) -> float:
    """Mean out-of-fold log loss over `folds`; prunes `trial` after a fold when Optuna says so.
    With `oof` (length ``len(y)``), each fold's test predictions are written into it."""
    import optuna

    losses = []
    for step, fold in enumerate(folds):
        learner = make().fit(X[fold.train], y[fold.train])
        p = learner.predict_proba(X[fold.test])
        if oof is not None:
            oof[fold.test] = p
        losses.append(log_loss(y[fold.test], p))
        if trial is not None:
            trial.report(float(np.mean(losses)), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
    return float(np.mean(losses))


@dataclass
class TuneResult:
    """A finished study: its best parameters, the study, and the best trial's out-of-fold
    probabilities (NaN outside the folds' test rows) when this call ran that trial, else None."""

    params: dict[str, Any]
    study: Any
    oof: np.ndarray | None = None


def tune(
    study_name: str,
    build: Callable[[dict[str, Any]], BaseLearner],
    space: Space,
    X: np.ndarray,
    y: np.ndarray,
    folds: list[Fold],
    n_trials: int,
    timeout: float | None,
    storage: str | None,
    seed: int = 0,
    on_trial: Callable[[Any, Any], None] | None = None,
) -> TuneResult:
    """Run (or resume) a study until it holds `n_trials` finished trials; return the best
    parameters, the study and (see `TuneResult`) the best trial's out-of-fold predictions.
    `build(params)` returns an unfitted learner."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        load_if_exists=True,
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
    )
    finished = {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    done = sum(t.state in finished for t in study.trials)

    kept: dict[str, Any] = {}  # the best trial this call completed: number, value, oof

    def objective(trial: Any) -> float:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        params = suggest(trial, space)
        oof = np.full(len(y), np.nan)
        value = cv_log_loss(lambda: build(params), X, y, folds, trial, oof)
        if not kept or value < kept["value"]:
            kept.update(number=trial.number, value=value, oof=oof)
        return value

    if done < n_trials:
        # with several workers on one storage, stop when the study as a whole has n_trials
        # finished trials (a worker may finish the one it is running: at most workers − 1 more)
        stop = optuna.study.MaxTrialsCallback(n_trials, states=tuple(finished))
        study.optimize(
            objective,
            n_trials=n_trials - done,
            timeout=timeout,
            callbacks=[stop, *([on_trial] if on_trial else [])],
        )
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise RuntimeError(f"study {study_name}: no trial completed (all pruned or failed)")
    best = study.best_trial
    return TuneResult(dict(best.params), study, kept["oof"] if kept.get("number") == best.number else None)
