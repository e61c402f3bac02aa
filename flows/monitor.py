"""Prefect flow ``monitor``: orchestration only, the checks are in `pipelines.monitor`.

Publishes the feature-drift and live-calibration tables as artifacts. Past a threshold it
publishes the breaches, logs a WARNING and ends in a failed state — after starting the
``train`` flow when ``monitor.retrain_on_breach`` is true.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from pipelines.config import Params, load_params
from pipelines.monitor import MonitorReport, check
from pipelines.store import ResultsStore


class MonitorBreach(RuntimeError):
    """A monitored quantity is past its threshold (the flow run fails with this)."""


@task(cache_policy=NO_CACHE)
def check_task(params: Params) -> MonitorReport:
    results = ResultsStore.from_params(params.store)
    try:
        return check(params, results)
    finally:
        results.close()


def _round(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows]


@flow(name="monitor", log_prints=True)
def monitor_flow(params_path: str = "params.yaml", profile: str | None = None) -> dict[str, Any]:
    """Feature drift (PSI) and live calibration (ECE, log loss) against ``monitor:`` thresholds.

    Args:
        params_path: params.yaml to read (relative to the serving process's working directory).
        profile: a profile of params.yaml merged over it, e.g. ``fast``; empty for none.
    """
    params = load_params(params_path, profile)
    report = check_task(params)
    create_table_artifact(key="monitor-drift", table=_round(report.drift), description="PSI per symbol")
    if report.calibration:
        create_table_artifact(
            key="monitor-calibration",
            table=_round(report.calibration),
            description="matured live probabilities per model version and tenant",
        )
    if report.ok:
        get_run_logger().info("monitor: no breach")
        return {"breaches": [], "drift": report.drift, "calibration": report.calibration}
    logger = get_run_logger()
    for breach in report.breaches:
        logger.warning("monitor breach: %s", breach)
    create_markdown_artifact(key="monitor-breaches", markdown="\n".join(f"- {b}" for b in report.breaches))
    if params.monitor.retrain_on_breach:
        from flows.train import train_flow

        logger.warning("monitor: starting the train flow (monitor.retrain_on_breach)")
        train_flow(params_path=params_path, profile=profile)
    raise MonitorBreach("; ".join(report.breaches))
