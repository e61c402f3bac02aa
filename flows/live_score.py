"""Prefect flow ``live-score``: orchestration only, the work is in `pipelines.live_score`.

Each run does `cycles` scoring cycles (the deployment runs one per base-timeframe close, see
`live_score_deployment`) and publishes a table artifact per cycle: rows written per tenant
and the cycle's latency split into features, scoring and writes.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from pipelines.config import load_params
from pipelines.live_score import CycleReport, LiveScorer, replaying
from pipelines.mt5.constants import timeframe_seconds
from pipelines.store import ResultsStore


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def score_cycle(scorer: LiveScorer) -> CycleReport:
    """One cycle; a failure leaves the store untouched, so a retry cannot duplicate rows."""
    return scorer.cycle()


def _publish(report: CycleReport, cycle: int) -> None:
    """One table per cycle: results given per tenant; the lag from bar close to commit (p50,
    p99), the latency split and, when nothing was written, why, in the description."""
    rows: list[dict[str, Any]] = [
        {"tenant": t, "rows_written": n} for t, n in sorted(report.rows_per_tenant.items())
    ]
    split = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in report.seconds.items())
    description = (
        f"cycle {cycle}: {report.rows} rows from {report.new_scores} new scores, "
        f"{report.model_calls} model calls; latency {split}"
    )
    if report.lag:
        description += (
            f"; bar close → committed p50 {report.lag_ms(0.5):.0f} ms, p99 {report.lag_ms(0.99):.0f} ms"
        )
    if report.idle:
        description += f". Nothing written: {report.idle}"
    elif report.skipped:
        description += f"; skipped: {'; '.join(report.skipped)}"
    create_table_artifact(key="live-score", table=rows, description=description)


@flow(name="live-score", log_prints=True)
def live_score_flow(
    params_path: str = "params.yaml",
    profile: str | None = None,
    cycles: int = 1,
    pause_seconds: float = 0.0,
    replay: int = 0,
) -> list[dict[str, Any]]:
    """Score newly closed bars for every tenant: `cycles` cycles, `pause_seconds` apart.
    `replay` > 0 instead re-scores the newest `replay` bars, one per cycle (demos).

    Args:
        params_path: params.yaml to read (relative to the serving process's working directory).
        profile: a profile of params.yaml merged over it, e.g. ``fast``; empty for none.
        cycles: scoring cycles to run (the deployment runs one per base-timeframe close).
        pause_seconds: wait between cycles.
        replay: re-score the newest N closed bars, one per cycle, as if each had just closed.
    """
    params = load_params(params_path, profile)
    store = ResultsStore.from_params(params.store)
    if store.dialect == "sqlite":
        store.migrate()
    if replay:
        scorer, cycles = replaying(params, store, replay), replay
    else:
        scorer = LiveScorer(params, store)
    out = []
    try:
        for i in range(cycles):
            report = score_cycle(scorer)
            if report.idle:
                get_run_logger().warning("live-score cycle %d wrote nothing: %s", i + 1, report.idle)
            get_run_logger().info(
                "live-score cycle %d: %d rows for %d tenants in %.0f ms%s",
                i + 1,
                report.rows,
                len(report.rows_per_tenant),
                report.seconds.get("total", 0) * 1e3,
                f" (skipped: {report.skipped})" if report.skipped else "",
            )
            _publish(report, i + 1)
            shadowed = scorer.shadow()  # the challenger on the same bars, after the tenants' rows
            out.append(
                {
                    "rows_per_tenant": dict(report.rows_per_tenant),
                    "seconds": report.seconds,
                    "new_scores": report.new_scores,
                    "lag_ms": {"p50": report.lag_ms(0.5), "p99": report.lag_ms(0.99)},
                    "skipped": report.skipped,
                    "shadow_scores": shadowed,
                }
            )
            if pause_seconds and i + 1 < cycles:
                time.sleep(pause_seconds)
    finally:
        store.close()
    return out


def live_score_deployment(
    params_path: str = "params.yaml", profile: str | None = None, paused: bool = False
) -> Any:
    """The ``live-score`` deployment: one cycle at each base-timeframe close (or every
    ``live_score.interval_seconds``). Serve it with ``flows/serve.py``."""
    params = load_params(params_path, profile)
    seconds = params.live_score.interval_seconds or timeframe_seconds(params.features.base_timeframe)
    return live_score_flow.to_deployment(
        name="live-score",
        interval=timedelta(seconds=seconds),
        tags=["scoring", "live"],
        parameters={"params_path": params_path, "profile": profile, "cycles": 1},
        paused=paused,
        description="Score newly closed bars for every tenant, once per base-timeframe close.",
    )
