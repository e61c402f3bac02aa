"""Prefect flow ``monitor``: orchestration only, the checks are in `pipelines.monitor`.

Publishes freshness, drift, live calibration and skill, and lag as artifacts, and a status
summary (`monitor-status`). Notifications due — a check that breaches, once; a check that
resolves — go out as Prefect events that the ``mt5prob-alerts`` automation sends to a
notification block (`flows.alerts`). Past a threshold the run publishes the breaches, logs a
WARNING and ends in a failed state — after retraining, when ``monitor.retrain_on_breach`` is
true, the matrix cells the breaches call for (`pipelines.monitor.cells_to_retrain`: the cell of a
model whose live calibration or skill breached, every cell of a group with a drifted symbol) in a
``train-matrix`` subflow; each new version passes its own gate before it serves.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.alerts import emit_notifications
from pipelines.config import Params, load_params
from pipelines.monitor import Alerts, MonitorReport, cells_to_retrain, check
from pipelines.status import status_markdown
from pipelines.store import ResultsStore


class MonitorBreach(RuntimeError):
    """A monitored quantity is past its threshold (the flow run fails with this)."""


@task(cache_policy=NO_CACHE)
def check_task(params: Params, now: datetime | None = None, alerts: Alerts | None = None) -> MonitorReport:
    results = ResultsStore.from_params(params.store)
    try:
        return check(params, results, now=now, alerts=alerts)
    finally:
        results.close()


def _run_url() -> str:
    """The Prefect UI page of this flow run (its artifacts tab), for notifications."""
    from prefect.runtime import flow_run

    return (flow_run.ui_url or "") + "?tab=Artifacts" if flow_run.ui_url else ""


def _round(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows]


@flow(name="monitor", log_prints=True)
def monitor_flow(
    params_path: str = "params.yaml", profile: str | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """Freshness, drift (PSI), live calibration and skill, lag and the scoring API against the
    ``monitor:`` thresholds; notifies on breaches and resolutions (`flows.alerts`).

    Args:
        params_path: params.yaml to read (relative to the serving process's working directory).
        profile: a profile of params.yaml merged over it, e.g. ``fast``; empty for none.
        now: the moment judged (UTC); empty for the wall clock.
    """
    params = load_params(params_path, profile)
    alerts = Alerts(params.monitor.state_path)
    report = check_task(params, now, alerts)
    due = alerts.update(report.findings, (now or datetime.now(UTC)).timestamp())
    alerts.save()
    emit_notifications(due, _run_url())
    create_markdown_artifact(key="monitor-status", markdown=status_markdown(report, alerts))
    if report.freshness:
        create_table_artifact(
            key="monitor-freshness", table=report.freshness, description="newest bar per series"
        )
    if report.drift:
        create_table_artifact(key="monitor-drift", table=_round(report.drift), description="PSI per symbol")
    if report.calibration:
        create_table_artifact(
            key="monitor-calibration",
            table=_round(report.calibration),
            description="matured live probabilities per model version and tenant: ECE, log loss, skill",
        )
    summary = {
        "breaches": report.breaches,
        "drift": report.drift,
        "calibration": report.calibration,
        "notified": [n.kind + " " + n.check for n in due],
    }
    if report.ok:
        get_run_logger().info("monitor: no breach")
        return summary
    logger = get_run_logger()
    for breach in report.breaches:
        logger.warning("monitor breach: %s", breach)
    create_markdown_artifact(key="monitor-breaches", markdown="\n".join(f"- {b}" for b in report.breaches))
    message = "; ".join(report.breaches)
    if params.monitor.retrain_on_breach:
        cells = cells_to_retrain(report.findings, params)
        if cells:
            from flows.matrix import train_matrix_flow

            logger.warning("monitor: retraining %s (monitor.retrain_on_breach)", ", ".join(cells))
            try:  # each retrained version still passes its own gate before it serves
                train_matrix_flow(params_path=params_path, profile=profile, cells=cells)
                message += f"; retrained {', '.join(cells)}"
            except Exception as exc:  # noqa: BLE001 - the breach is still reported, with this
                logger.error("monitor: retraining failed: %s", exc)
                message += f"; retraining {', '.join(cells)} failed: {exc}"
        else:
            logger.warning("monitor: no breach that retraining a model fixes (monitor.retrain_on_breach)")
    raise MonitorBreach(message)
