"""The live worker (pipelines.live) as a long-lived Prefect flow.

One run follows the terminal for ``seconds`` (an hour by default): every bar close is ingested,
scored and pushed as it happens. It logs a heartbeat and publishes a ``live-worker`` table
artifact every ``report_every`` steps (bars, new scores, bar close → committed p50/p99). The
deployment starts a run every minute with at most one running (further starts are cancelled),
so a worker that fails — or a machine that restarts — is running again within a minute, and
resumes from the watermarks: nothing missed, nothing scored twice. Several deployments (or
machines) running it share the symbols through leases. With ``webhooks.enabled`` the run also
delivers tenants' webhooks (pipelines.webhooks) on a thread beside the worker.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

from pipelines.config import load_params
from pipelines.events import open_bus
from pipelines.live import LiveWorker, StepReport
from pipelines.live_score import quantile_ms
from pipelines.store import ResultsStore
from pipelines.webhooks import WebhookDispatcher


@flow(name="live-worker", log_prints=True)
def live_worker_flow(
    params_path: str = "params.yaml",
    profile: str | None = None,
    seconds: float = 3600.0,
    report_every: int = 12,
) -> dict[str, Any]:
    """Follow the terminal for `seconds`: each bar close → bar store → scores → pushed.

    Args:
        params_path: params.yaml to read (relative to the serving process's working directory).
        profile: a profile of params.yaml merged over it, e.g. ``fast``; empty for none.
        seconds: how long this run follows the terminal before it ends (the deployment starts
            the next one).
        report_every: steps (bar closes) between heartbeats and ``live-worker`` artifacts.
    """
    logger = get_run_logger()
    params = load_params(params_path, profile)
    store = ResultsStore.from_params(params.store)
    if store.dialect == "sqlite":
        store.migrate()
    window: list[StepReport] = []
    rows: list[dict[str, Any]] = []

    def on_step(report: StepReport) -> None:
        window.append(report)
        if len(window) < report_every:
            return
        lag = [x for r in window for x in r.lag]
        row = {
            "steps": len(window),
            "bars": sum(r.bars_written for r in window),
            "new_scores": sum(r.new_scores for r in window),
            "committed_p50_ms": quantile_ms(lag, 0.5),
            "committed_p99_ms": quantile_ms(lag, 0.99),
            "symbols": ",".join(worker.symbols()),
        }
        rows.append(row)
        logger.info("live worker heartbeat: %s", row)
        create_table_artifact(
            key="live-worker",
            table=rows[-50:],
            description="Live worker, per window of bar closes: bar close → committed lag (ms), "
            "bars ingested, scores committed, symbols held",
        )
        window.clear()

    worker = LiveWorker(params, store, on_step=on_step)
    logger.info("live worker %s starting for %.0f s", worker.holder, seconds)
    dispatcher, delivering = None, None
    if params.webhooks.enabled:
        dispatcher = WebhookDispatcher(store, params.webhooks, open_bus(params.events.url))
        delivering = threading.Thread(target=dispatcher.run, name="mt5prob-webhooks", daemon=True)
        delivering.start()
    try:
        stats = worker.run(seconds)
    finally:
        worker.close()
        if dispatcher is not None and delivering is not None:
            dispatcher.stop()
            delivering.join(timeout=params.webhooks.timeout_seconds + 5)
            dispatcher.close()
        store.close()
    summary = {
        "steps": stats.steps,
        "bars": stats.bars_written,
        "new_scores": stats.new_scores,
        "committed_p50_ms": stats.lag_ms(0.5),
        "committed_p99_ms": stats.lag_ms(0.99),
        "errors": stats.errors,
        "reconnects": stats.reconnects,
        "rss_mb": [round(stats.rss_start_mb), round(stats.rss_end_mb)],
    }
    if dispatcher is not None:
        summary["webhook_events_delivered"] = dispatcher.stats.delivered_events
        summary["webhook_failed_attempts"] = dispatcher.stats.failures
    logger.info("live worker done: %s", summary)
    return summary


def live_worker_deployment(
    params_path: str = "params.yaml", profile: str | None = None, paused: bool = False
) -> Any:
    """The ``live-worker`` deployment: a run every minute, at most one at a time (a new start
    while one runs is cancelled), so a failed worker is back within a minute. `paused` while
    the timer deployments (ingest-live, live-score) run instead (``schedules.live_worker``)."""
    return live_worker_flow.to_deployment(
        name="live-worker",
        interval=timedelta(minutes=1),
        paused=paused,
        tags=["scoring", "live"],
        parameters={"params_path": params_path, "profile": profile},
        concurrency_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
        ),
        description="Each bar close → bar store → scores → pushed to tenants (long-lived, restarted "
        "within a minute when it stops).",
    )
