"""Train step: featurized rows → stacked and ensemble probability models, purged walk-forward.

Pools the configured symbols' rows (sorted by decision time), holds out the final
``models.holdout_fraction`` of time for evaluation (purged and embargoed), computes
out-of-fold base-learner probabilities on purged walk-forward folds of the rest, and fits
both the stack and the ensemble. Writes ``outputs/train/model.pkl`` (both predictors, the
feature columns, the label) and ``outputs/train/train.json`` (out-of-fold scores).

    python -m pipelines.train [--params params.yaml] [--profile fast]
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd

from features.labels import binary_label
from models.learners import LEARNERS, BuildContext, build_learner
from models.stacking import LearnerFactory, fit_base, fit_ensemble, fit_stacked, out_of_fold
from models.tuning import tune
from models.validation import Fold, holdout_split, purged_walk_forward_splits
from pipelines.atomic_files import staged_dir, write_atomic, write_text_atomic
from pipelines.config import ModelsParams, Params, TuneParams
from pipelines.mt5.constants import timeframe_seconds
from pipelines.registry import TrialLogger


@dataclass
class TrainingData:
    """Rows sorted by decision time t0 (UTC s, the base bar's close); y ∈ {0, 1}."""

    X: np.ndarray
    y: np.ndarray
    t0: np.ndarray
    t1: np.ndarray
    symbol: np.ndarray
    bar_time: np.ndarray  # base bar open time, UTC s
    close: np.ndarray
    spread: np.ndarray  # points
    point: np.ndarray
    ret: np.ndarray  # log return from close[t] to the label's end
    columns: list[str]
    manifest: dict[str, Any]


def load_training_data(featurize_dir: Path, label_kind: str) -> TrainingData:
    """Read the featurize outputs and build binary labels of `label_kind`.

    direction: y = 1 for up, 0 for down (flat rows dropped; needs ``neutral: drop``);
    triple_barrier: y = 1 when the take-profit is touched first, else 0.
    """
    manifest = json.loads((featurize_dir / "columns.json").read_text())
    columns = manifest["columns"]
    step = timeframe_seconds(manifest["base_timeframe"])
    parts = []
    for symbol in manifest["symbols"]:
        frame = pd.read_parquet(featurize_dir / f"{symbol}.parquet")
        frame["symbol"] = symbol
        frame["point"] = manifest["points"][symbol]
        parts.append(frame)
    rows = pd.concat(parts, ignore_index=True)
    if label_kind == "direction":
        if set(rows["dir_label"].dropna().unique()) - {0.0, 1.0}:
            raise ValueError(
                "direction labels have a flat class: set labels.direction.neutral: drop "
                "for binary probability models"
            )
        label, t1, ret = rows["dir_label"], rows["dir_t1"], rows["dir_ret"]
    else:
        label = pd.Series(binary_label("triple_barrier", rows["tb_label"].to_numpy(float)))
        t1, ret = rows["tb_t1"], rows["tb_ret"]
    bar_time = rows["time"].array.as_unit("s").asi8
    keep = label.notna().to_numpy()
    t0 = (bar_time + step).astype(float)
    order = np.argsort(t0[keep], kind="stable")
    pick = np.flatnonzero(keep)[order]
    t1_s = t1.array.as_unit("s").asi8.astype(float)
    return TrainingData(
        X=rows[columns].to_numpy(np.float32)[pick],
        y=label.to_numpy(float)[pick],
        t0=t0[pick],
        t1=t1_s[pick],
        symbol=rows["symbol"].to_numpy()[pick],
        bar_time=bar_time[pick],
        close=rows["close"].to_numpy(float)[pick],
        spread=rows["spread"].to_numpy(float)[pick],
        point=rows["point"].to_numpy(float)[pick],
        ret=ret.to_numpy(float)[pick],
        columns=columns,
        manifest=manifest,
    )


def learner_factories(
    models: ModelsParams,
    purge_rows: int,
    tuned: dict[str, dict[str, Any]] | None = None,
    columns: Sequence[str] = (),
) -> dict[str, LearnerFactory]:
    """Base-learner constructors named in ``models.learners``, each built by its entry in the
    learner registry (`models.learners.LEARNERS`) from its ``models.<section>`` settings, with
    tuned hyper-parameters taking precedence. `columns` are the feature columns (the sequence
    learner locates its ``seq_*`` inputs in them)."""
    tuned = tuned or {}
    context = BuildContext(seed=models.seed, purge_rows=purge_rows, columns=tuple(columns))

    def factory(name: str) -> LearnerFactory:
        settings = {**getattr(models, LEARNERS[name].section).model_dump(), **tuned.get(name, {})}
        return lambda: build_learner(name, settings, context)

    return {name: factory(name) for name in models.learners}


def splits(data: TrainingData, models: ModelsParams) -> tuple[Fold, list[Fold]]:
    """The evaluation holdout and the purged walk-forward folds of the training segment."""
    step = timeframe_seconds(data.manifest["base_timeframe"])
    embargo = models.cv.embargo_bars * step
    holdout = holdout_split(data.t0, data.t1, models.holdout_fraction, embargo)
    tr = holdout.train
    folds = purged_walk_forward_splits(
        data.t0[tr], data.t1[tr], models.cv.n_splits, models.cv.test_fraction, embargo
    )
    return holdout, folds


def tune_learners(
    data: TrainingData,
    models: ModelsParams,
    tune_cfg: TuneParams,
    horizon: int,
    tracking_uri: str | None = None,
    learners: Sequence[str] | None = None,
    oof_out: dict[str, np.ndarray] | None = None,
) -> dict[str, dict[str, Any]]:
    """One Optuna study per base learner with a search space (only `learners`, when given:
    the unit of a per-learner fan-out); returns the best parameters. With `oof_out`, the best
    trial's out-of-fold probabilities (training-segment rows) are put there per learner when
    this call ran that trial, for `train` to reuse.

    Each trial is also recorded as a nested MLflow run under a ``tune-<learner>`` parent run
    when `tracking_uri` is given and ``tune.log_to_mlflow`` is on.
    """
    holdout, folds = splits(data, models)
    X, y = data.X[holdout.train], data.y[holdout.train]
    purge_rows = horizon * len(data.manifest["symbols"])
    best: dict[str, dict[str, Any]] = {}
    for name in models.learners:
        if learners is not None and name not in learners:
            continue
        space = tune_cfg.spaces.get(name)
        if not space:
            continue

        def build(params: dict[str, Any], name: str = name) -> Any:
            return learner_factories(models, purge_rows, {name: params}, data.columns)[name]()

        study_name = _study_name(data, models, int(y.size), horizon, name, space)
        logger = TrialLogger(tracking_uri, study_name) if tracking_uri and tune_cfg.log_to_mlflow else None
        with logger or nullcontext():
            result = tune(
                study_name,
                build,
                space,
                X,
                y,
                folds,
                tune_cfg.n_trials,
                tune_cfg.timeout_seconds,
                tune_cfg.storage,
                models.seed,
                logger.on_trial if logger else None,
            )
        best[name] = result.params
        if oof_out is not None and result.oof is not None:
            oof_out[name] = result.oof
    return best


def _study_name(
    data: TrainingData, models: ModelsParams, rows: int, horizon: int, name: str, space: Any
) -> str:
    """A study answers one question: same rows, labels, folds, fixed settings and space."""
    key = hashlib.sha256(
        json.dumps(
            [
                data.manifest["feature_spec"],
                data.manifest["direction"],
                data.manifest["label_kind"],
                rows,
                horizon,
                models.cv.model_dump(),
                models.seed,
                getattr(models, LEARNERS[name].section).model_dump(),
                space,
            ],
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()[:10]
    return f"{name}-{data.manifest['label_kind']}-h{horizon}-{key}"


def tuning_overfitting(
    data: TrainingData, models: ModelsParams, tune_cfg: TuneParams, horizon: int
) -> dict[str, dict[str, float]]:
    """Per tuned learner, how much choosing its best trial overfits: the probability of
    backtest overfitting (`models.uncertainty.probability_of_overfitting`) over the study's
    completed trials, with each walk-forward fold's log loss as a partition (read back from
    the per-fold running means the trials reported). Learners without a study, or with fewer
    than two complete trials, are left out."""
    import optuna

    from models.uncertainty import fold_values, probability_of_overfitting

    holdout, folds = splits(data, models)
    rows = int(holdout.train.size)
    out: dict[str, dict[str, float]] = {}
    for name in models.learners:
        space = tune_cfg.spaces.get(name)
        if not space:
            continue
        try:
            study = optuna.load_study(
                study_name=_study_name(data, models, rows, horizon, name, space), storage=tune_cfg.storage
            )
        except KeyError:  # no such study (tuning off, or another storage)
            continue
        columns = [
            v
            for t in study.trials
            if t.state == optuna.trial.TrialState.COMPLETE
            and (v := fold_values(t.intermediate_values, len(folds))) is not None
        ]
        if len(columns) < 2:
            continue
        perf = np.column_stack(columns)  # folds × trials, log loss (lower is better)
        usable = perf.shape[0] - perf.shape[0] % 2
        out[name] = {
            "pbo": probability_of_overfitting(perf[-usable:]),
            "trials": float(perf.shape[1]),
            "partitions": float(usable),
        }
    return out


def _progress(total: int, desc: str, disable: bool | None = None, file: Any = None) -> Any:
    """A progress bar on stderr when it is a terminal (silent in logs and CI)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="fit", disable=disable, leave=True, file=file)


def _ticking(make: Any, name: str, bar: Any) -> Any:
    """The same factory, advancing `bar` each time a learner is made to be fitted."""

    def factory() -> Any:
        bar.set_postfix_str(name)
        bar.update(1)
        return make()

    return factory


def regime_columns(columns: Sequence[str], names: Sequence[str]) -> list[int]:
    """Indices of ``models.stack.regime_features`` among the feature columns."""
    missing = [n for n in names if n not in columns]
    if missing:
        raise ValueError(
            f"models.stack.regime_features: {missing} are not feature columns "
            f"(features.families and higher_timeframes make e.g. {list(columns[:4])})"
        )
    return [list(columns).index(n) for n in names]


def train(
    data: TrainingData,
    models: ModelsParams,
    horizon: int,
    tuned: dict[str, dict[str, Any]] | None = None,
    oof: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Fit stack and ensemble on the training segment; returns the bundle to persist.

    `oof`: out-of-fold probabilities already computed for some learners with exactly these
    parameters and folds (the tuning study's best trial, `tune_learners`); those learners are
    not refitted fold by fold."""
    regime_index = regime_columns(data.columns, models.stack.regime_features)  # fail before fitting
    holdout, folds = splits(data, models)
    tr = holdout.train
    overlap = horizon * len(data.manifest["symbols"])  # rows (symbols interleaved) sharing an outcome
    factories = learner_factories(models, purge_rows=overlap, tuned=tuned, columns=data.columns)
    X, y = data.X[tr], data.y[tr]
    known = {k: v for k, v in (oof or {}).items() if k in factories}
    fits = len(factories) + (len(factories) - len(known)) * len(folds)
    with _progress(fits, "train: base-learner fits") as bar:
        counted = {name: _ticking(make, name, bar) for name, make in factories.items()}
        probs = out_of_fold(counted, X, y, folds, known)
        base = fit_base(counted, X, y)
    stacked = fit_stacked(
        factories,
        X,
        y,
        folds,
        oof=probs,
        base=base,
        l2=models.stack.l2,
        regime_index=regime_index,
        horizon=horizon,
    )
    ensemble = fit_ensemble(
        factories,
        X,
        y,
        folds,
        oof=probs,
        base=base,
        calibration=models.calibration,
        horizon=horizon,
        block_rows=overlap,
    )
    return {
        "stacked": stacked,
        "ensemble": ensemble,
        "registered": models.registered,
        "columns": data.columns,
        "label_kind": data.manifest["label_kind"],
        "base_timeframe": data.manifest["base_timeframe"],
        "symbols": data.manifest["symbols"],
        "train_rows": int(tr.size),
        "holdout_rows": int(holdout.test.size),
        "holdout_start": float(data.t0[holdout.test[0]]),
        "oof_scores": {**stacked.oof_scores, **ensemble.oof_scores},
        "train_positive_rate": float(y.mean()),
        "tuned": tuned or {},
    }


def save_bundle(bundle: dict[str, Any], out_dir: Path) -> None:
    """``model.pkl`` (the bundle) and ``train.json`` (its out-of-fold report), swapped in for
    `out_dir` as one folder."""
    report = {k: v for k, v in bundle.items() if k not in ("stacked", "ensemble", "columns")}
    with staged_dir(out_dir) as stage:
        write_atomic(stage / "model.pkl", lambda h: joblib.dump(bundle, h))
        write_text_atomic(json.dumps(report, indent=2) + "\n", stage / "train.json")


def run(params: Params) -> dict[str, Any]:
    """The whole step from params: load, (tune), train, save; returns the bundle."""
    data = load_training_data(params.outputs / "featurize", params.labels.kind)
    oof: dict[str, np.ndarray] = {}
    tuned = (
        tune_learners(
            data, params.models, params.tune, params.labels.horizon, params.registry.tracking_uri, oof_out=oof
        )
        if params.tune.enabled
        else None
    )
    bundle = train(data, params.models, params.labels.horizon, tuned, oof)
    if params.tune.enabled:
        bundle["overfitting"] = tuning_overfitting(data, params.models, params.tune, params.labels.horizon)
    save_bundle(bundle, params.outputs / "train")
    return bundle


def main(argv: Sequence[str] | None = None) -> int:
    from pipelines.config import params_from_cli

    params = params_from_cli("python -m pipelines.train", __doc__, argv)
    bundle = run(params)
    scores = ", ".join(f"{k}={v:.4f}" for k, v in bundle["oof_scores"].items())
    print(
        f"trained on {bundle['train_rows']} rows ({len(bundle['columns'])} features); out of fold: {scores}"
    )
    return 0


if __name__ == "__main__":
    from pipelines.config import run_cli

    raise SystemExit(run_cli(main))
