"""Prefect flow ``train``: featurize → (tune) → train → evaluate → register, as tasks.

Orchestration only: each task calls a pipeline step. Parameters become a form in the Prefect
UI; the run publishes a metrics table and the reliability diagram as artifacts.
"""

from __future__ import annotations

import base64
import shutil
import uuid
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from pipelines import evaluate, featurize, register, train
from pipelines.atomic_files import replace_dirs
from pipelines.config import Params, load_params

STEP_OUTPUTS = ("featurize", "train", "evaluate")  # folders of `Params.outputs` this flow replaces


@task(cache_policy=NO_CACHE)
def featurize_task(params: Params) -> dict[str, int]:
    return featurize.run(params.data, params.features, params.labels, params.outputs / "featurize")


@task(cache_policy=NO_CACHE)
def train_task(params: Params) -> dict[str, Any]:
    bundle = train.run(params)
    return {
        "oof_scores": bundle["oof_scores"],
        "train_rows": bundle["train_rows"],
        "tuned": bundle["tuned"],
        "overfitting": bundle.get("overfitting", {}),
    }


@task(cache_policy=NO_CACHE)
def evaluate_task(params: Params) -> dict[str, Any]:
    return evaluate.run(params)


@task(cache_policy=NO_CACHE)
def register_task(params: Params) -> dict[str, Any]:
    name, version, decision = register.register(params)
    print(register.gate_summary(name, version, decision))
    return {
        "name": name,
        "version": version,
        "promoted": decision.promoted,
        "reason": decision.reason,
        "skill": "demonstrated" if decision.has_skill else "none",
        "edge": decision.skill.as_dict(),
    }


def build_outputs(
    params: Params, featurize_step: Any, train_step: Any, evaluate_step: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """featurize → train → evaluate into a staging root, then ``params.outputs``' three
    folders replaced together — a failed run leaves the previous outputs whole. The steps are
    the tasks above or the plain functions they call; returns (trained, metrics)."""
    stage = params.outputs / f".run-{uuid.uuid4().hex}"
    try:
        staged = params.model_copy(update={"outputs": stage})
        featurize_step(staged)
        trained = train_step(staged)
        metrics = evaluate_step(staged)
        replace_dirs(stage, params.outputs, STEP_OUTPUTS)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return trained, metrics


@flow(name="featurize", log_prints=True)
def featurize_flow(params_path: str = "params.yaml", profile: str | None = None) -> dict[str, int]:
    """Features and labels of every configured symbol into outputs/featurize (the dvc stage).

    Args:
        params_path: params.yaml to read (relative to the serving process's working directory).
        profile: a profile of params.yaml merged over it, e.g. ``fast``; empty for none.
    """
    params = load_params(params_path, profile)
    rows = featurize_task(params)
    create_table_artifact(
        key="featurize",
        table=[{"symbol": s, "rows": n} for s, n in rows.items()],
        description="rows per symbol",
    )
    return rows


@flow(name="train", log_prints=True)
def train_flow(
    params_path: str = "params.yaml",
    profile: str | None = None,
    symbols: list[str] | None = None,
    timeframe: str | None = None,
    label_kind: Literal["direction", "triple_barrier", "up_flat_down"] | None = None,
    horizon: int | None = None,
    trials: int | None = None,
) -> dict[str, Any]:
    """Train, evaluate and register a model; `trials` > 0 turns on Optuna with that many trials.

    Writes the profile's outputs (``outputs/`` for none, ``outputs/profiles/<profile>/``
    otherwise): built in a staging folder and swapped in only when featurize, train and
    evaluate all succeeded, so a failed run leaves the previous outputs whole.

    Args:
        params_path: params.yaml to read (relative to the serving process's working directory).
        profile: a profile of params.yaml merged over it, e.g. ``fast``; empty for none.
        symbols: symbols to train on instead of ``data.symbols``; empty for all.
        timeframe: base timeframe of the model (M5, M15, H1 …); empty for ``features.base_timeframe``.
        label_kind: what the model predicts: ``direction`` (up over the horizon) or
            ``triple_barrier`` (take-profit before stop-loss); empty for ``labels.kind``.
        horizon: label horizon in base bars; empty for ``labels.horizon``.
        trials: Optuna trials per base learner (0 turns tuning off); empty for ``tune.n_trials``.
    """
    overrides: dict[str, Any] = {}
    if symbols:
        overrides["data"] = {"symbols": symbols}
    if timeframe:
        overrides["features"] = {"base_timeframe": timeframe}
    labels = {k: v for k, v in (("kind", label_kind), ("horizon", horizon)) if v is not None}
    if labels:
        overrides["labels"] = labels
    if trials:
        overrides["tune"] = {"enabled": True, "n_trials": trials}
    params = load_params(params_path, profile, overrides or None)
    trained, metrics = build_outputs(params, featurize_task, train_task, evaluate_task)
    registration = register_task(params)
    rows = [
        {"predictor": name, **{k: round(v, 5) for k, v in m.items() if isinstance(v, float)}}
        for name, m in metrics.items()
        if isinstance(m, dict) and isinstance(m.get("log_loss"), float)
    ]
    create_table_artifact(
        key="train-metrics",
        table=rows,
        description=f"holdout metrics; {registration['name']} v{registration['version']}: "
        f"{registration['reason']}",
    )
    create_markdown_artifact(
        key="evaluation",
        markdown="Holdout figures with their 95% block-bootstrap intervals\n\n```\n"
        + evaluate.report(metrics, params.models.backtest.assumed_spread_pips)
        + "\n```",
    )
    png = (params.outputs / "evaluate" / "reliability.png").read_bytes()
    create_markdown_artifact(
        key="reliability-diagram",
        markdown=(f"![reliability](data:image/png;base64,{base64.b64encode(png).decode()})"),
    )
    get_run_logger().info(
        "train: %s v%s %s",
        registration["name"],
        registration["version"],
        "promoted" if registration["promoted"] else "kept as challenger",
    )
    return {"train": trained, "registration": registration, "registered": metrics["registered"]}
