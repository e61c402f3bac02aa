"""Train step: featurized rows → stacked and ensemble probability models, purged walk-forward.

Pools the configured symbols' rows (sorted by decision time), holds out the final
``models.holdout_fraction`` of time for evaluation (purged and embargoed), computes
out-of-fold base-learner probabilities on purged walk-forward folds of the rest, and fits
both the stack and the ensemble. Three-class (``up_flat_down``) labels train two binary
problems the same way, ``move`` and ``side`` (`models.three_way`), on the same holdout and
folds, and combine them into three-class predictors. Writes ``outputs/train/model.pkl`` (both predictors, the
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

from features.labels import model_target
from models.learners import LEARNERS, BuildContext, build_learner
from models.stacking import LearnerFactory, fit_base, fit_ensemble, fit_stacked, out_of_fold
from models.three_way import ThreeWayModel, move_target, restrict_folds, side_rows, side_target
from models.tuning import tune
from models.validation import Fold, holdout_split, purged_walk_forward_splits
from pipelines.atomic_files import staged_dir, write_atomic, write_text_atomic
from pipelines.config import ModelsParams, Params, TuneParams
from pipelines.mt5.constants import timeframe_seconds
from pipelines.registry import TrialLogger


@dataclass
class TrainingData:
    """Rows sorted by decision time t0 (UTC s, the base bar's close); y ∈ {0, 1}, or
    {0 down, 1 flat, 2 up} for ``up_flat_down``."""

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
    """Read the featurize outputs and build the labels of `label_kind`.

    direction: y = 1 for up, 0 for down (flat rows dropped; needs ``neutral: drop``);
    triple_barrier: y = 1 when the take-profit is touched first, else 0; up_flat_down:
    y = 0 down, 1 flat, 2 up (``labels.up_flat_down``).
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
    elif label_kind == "up_flat_down":
        if "ufd_label" not in rows:
            raise ValueError(f"{featurize_dir} has no up/flat/down labels: run the featurize step again")
        label, t1, ret = rows["ufd_label"], rows["dir_t1"], rows["dir_ret"]
    else:
        label = pd.Series(model_target("triple_barrier", rows["tb_label"].to_numpy(float)))
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


@dataclass
class Problem:
    """One binary question trained on the training segment: `name` "" for a binary label
    kind, ``move`` or ``side`` for up/flat/down (`models.three_way`). `X`, `y` and `folds`
    (indices into these rows) are the training segment's rows that question is asked on."""

    name: str
    X: np.ndarray
    y: np.ndarray
    folds: list[Fold]

    def key(self, learner: str) -> str:
        """How its learner `learner` is named in ``tuned`` and OOF maps."""
        return f"{self.name}:{learner}" if self.name else learner


def problems(data: TrainingData, models: ModelsParams) -> tuple[Fold, list[Problem]]:
    """The evaluation holdout and the binary problems of the training segment (see `Problem`):
    one for binary label kinds; ``move`` (every row) and ``side`` (the rows that moved, the
    same folds restricted to them) for ``up_flat_down``."""
    holdout, folds = splits(data, models)
    X, y = data.X[holdout.train], data.y[holdout.train]
    if data.manifest["label_kind"] != "up_flat_down":
        return holdout, [Problem("", X, y, folds)]
    moved = side_rows(y)
    return holdout, [
        Problem("move", X, move_target(y), folds),
        Problem("side", X[moved], side_target(y[moved]), restrict_folds(folds, moved)),
    ]


def _of(problem: Problem, mapping: dict[str, Any] | None) -> dict[str, Any]:
    """The entries of `mapping` (keyed by `Problem.key`) that belong to `problem`, by learner."""
    prefix = f"{problem.name}:" if problem.name else ""
    return {
        k[len(prefix) :]: v
        for k, v in (mapping or {}).items()
        if (k.startswith(prefix) if prefix else ":" not in k)
    }


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
    the unit of a per-learner fan-out) and per binary problem (`problems`); returns the best
    parameters by `Problem.key`. With `oof_out`, the best trial's out-of-fold probabilities
    (the problem's training rows) are put there the same way when this call ran that trial,
    for `train` to reuse.

    Each trial is also recorded as a nested MLflow run under a ``tune-<learner>`` parent run
    when `tracking_uri` is given and ``tune.log_to_mlflow`` is on.
    """
    _, asked = problems(data, models)
    purge_rows = horizon * len(data.manifest["symbols"])
    best: dict[str, dict[str, Any]] = {}
    for problem in asked:
        for name in models.learners:
            if learners is not None and name not in learners:
                continue
            space = tune_cfg.spaces.get(name)
            if not space:
                continue

            def build(params: dict[str, Any], name: str = name) -> Any:
                return learner_factories(models, purge_rows, {name: params}, data.columns)[name]()

            study_name = _study_name(data, models, int(problem.y.size), horizon, name, space, problem.name)
            logger = (
                TrialLogger(tracking_uri, study_name) if tracking_uri and tune_cfg.log_to_mlflow else None
            )
            with logger or nullcontext():
                result = tune(
                    study_name,
                    build,
                    space,
                    problem.X,
                    problem.y,
                    problem.folds,
                    tune_cfg.n_trials,
                    tune_cfg.timeout_seconds,
                    tune_cfg.storage,
                    models.seed,
                    logger.on_trial if logger else None,
                )
            best[problem.key(name)] = result.params
            if oof_out is not None and result.oof is not None:
                oof_out[problem.key(name)] = result.oof
    return best


def _study_name(
    data: TrainingData,
    models: ModelsParams,
    rows: int,
    horizon: int,
    name: str,
    space: Any,
    problem: str = "",
) -> str:
    """A study answers one question: same rows, labels, folds, fixed settings and space
    (`problem`: which binary question of a three-class label, `Problem`)."""
    kind = data.manifest["label_kind"] + (f"-{problem}" if problem else "")
    extra = [data.manifest.get("up_flat_down")] if problem else []  # binary kinds keep their names
    key = hashlib.sha256(
        json.dumps(
            [
                data.manifest["feature_spec"],
                data.manifest["direction"],
                kind,
                rows,
                horizon,
                models.cv.model_dump(),
                models.seed,
                getattr(models, LEARNERS[name].section).model_dump(),
                space,
                *extra,
            ],
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()[:10]
    return f"{name}-{kind}-h{horizon}-{key}"


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

    _, asked = problems(data, models)
    out: dict[str, dict[str, float]] = {}
    for problem, name in ((p, n) for p in asked for n in models.learners):
        space = tune_cfg.spaces.get(name)
        if not space:
            continue
        study_name = _study_name(data, models, int(problem.y.size), horizon, name, space, problem.name)
        try:
            study = optuna.load_study(study_name=study_name, storage=tune_cfg.storage)
        except KeyError:  # no such study (tuning off, or another storage)
            continue
        columns = [
            v
            for t in study.trials
            if t.state == optuna.trial.TrialState.COMPLETE
            and (v := fold_values(t.intermediate_values, len(problem.folds))) is not None
        ]
        if len(columns) < 2:
            continue
        perf = np.column_stack(columns)  # folds × trials, log loss (lower is better)
        usable = perf.shape[0] - perf.shape[0] % 2
        out[problem.key(name)] = {
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


def _fit_problem(
    problem: Problem,
    factories: dict[str, LearnerFactory],
    models: ModelsParams,
    horizon: int,
    overlap: int,
    regime_index: Sequence[int],
    known: dict[str, np.ndarray],
) -> tuple[Any, Any]:
    """Stack and ensemble of one binary problem (OOF over its folds, then both fitted)."""
    X, y, folds = problem.X, problem.y, problem.folds
    fits = len(factories) + (len(factories) - len(known)) * len(folds)
    desc = "train: base-learner fits" + (f" ({problem.name})" if problem.name else "")
    with _progress(fits, desc) as bar:
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
    return stacked, ensemble


def train(
    data: TrainingData,
    models: ModelsParams,
    horizon: int,
    tuned: dict[str, dict[str, Any]] | None = None,
    oof: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Fit stack and ensemble on the training segment; returns the bundle to persist. For
    ``up_flat_down`` each is a `ThreeWayModel` of the ``move`` and ``side`` problems' ones, and
    ``oof_scores`` are named ``<problem>:<predictor>``.

    `tuned` and `oof` (by `Problem.key`): tuned parameters, and out-of-fold probabilities
    already computed for some learners with exactly these parameters and folds (the tuning
    study's best trial, `tune_learners`); those learners are not refitted fold by fold."""
    regime_index = regime_columns(data.columns, models.stack.regime_features)  # fail before fitting
    holdout, asked = problems(data, models)
    overlap = horizon * len(data.manifest["symbols"])  # rows (symbols interleaved) sharing an outcome
    fitted, scores = {}, {}
    for problem in asked:
        factories = learner_factories(models, overlap, _of(problem, tuned), data.columns)
        known = {k: v for k, v in _of(problem, oof).items() if k in factories}
        stacked, ensemble = _fit_problem(problem, factories, models, horizon, overlap, regime_index, known)
        fitted[problem.name] = (stacked, ensemble)
        scores.update({problem.key(k): v for k, v in {**stacked.oof_scores, **ensemble.oof_scores}.items()})
    if len(asked) == 1:
        stacked, ensemble = fitted[""]
    else:
        stacked, ensemble = (ThreeWayModel(fitted["move"][i], fitted["side"][i]) for i in (0, 1))
    y = data.y[holdout.train]
    return {
        "stacked": stacked,
        "ensemble": ensemble,
        "registered": models.registered,
        "columns": data.columns,
        "label_kind": data.manifest["label_kind"],
        "base_timeframe": data.manifest["base_timeframe"],
        "symbols": data.manifest["symbols"],
        "train_rows": int(holdout.train.size),
        "holdout_rows": int(holdout.test.size),
        "holdout_start": float(data.t0[holdout.test[0]]),
        "oof_scores": scores,
        "train_positive_rate": float(y.mean()) if len(asked) == 1 else None,
        "train_class_rates": [float(np.mean(y == k)) for k in range(3)] if len(asked) > 1 else None,
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
