"""Prefect flows for ingestion: orchestration only, the work is in `pipelines.ingest`.

* ``ingest-history`` — one all-or-nothing ingest of every configured series; terminal errors
  are retried with exponential backoff, bad input fails at once. Publishes a table artifact
  with rows fetched, written and quarantined per series.
* ``ingest-live`` — polls for newly closed bars (backoff, reconnect and backfill are inside the
  step), then publishes the same artifact for its last poll.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from pipelines.bar_store import BarStore
from pipelines.config import DataParams, load_params
from pipelines.ingest import (
    SeriesReport,
    TerminalError,
    history,
    ingest_live,
    make_contract,
)
from pipelines.terminal import initialize_kwargs, open_terminal


def _retry_terminal_errors(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only what may pass: terminal errors. Bad input and contract failures do not."""
    try:
        state.result()
    except TerminalError:
        return True
    except Exception:
        return False
    return False


def _data_params(
    params_path: str, profile: str | None, symbols: list[str] | None, timeframes: list[str] | None
) -> DataParams:
    overrides: dict[str, Any] = {}
    if symbols:
        overrides["symbols"] = symbols
    if timeframes:
        overrides["timeframes"] = timeframes
    return load_params(params_path, profile, {"data": overrides} if overrides else None).data


def publish_reports(reports: list[SeriesReport], key: str, title: str) -> None:
    rows = [{**asdict(r), "rules": ", ".join(f"{k}={v}" for k, v in r.rules.items()) or "-"} for r in reports]
    create_table_artifact(key=key, table=rows, description=title)


@task(
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_condition_fn=_retry_terminal_errors,
    cache_policy=NO_CACHE,
)
def ingest_history_task(params: DataParams) -> list[SeriesReport]:
    """Connect, ingest every series once, disconnect."""
    return history(params)


@flow(name="ingest-history", log_prints=True)
def ingest_history_flow(
    params_path: str = "params.yaml",
    profile: str | None = None,
    symbols: list[str] | None = None,
    timeframes: list[str] | None = None,
) -> list[SeriesReport]:
    """Bring the bar store up to the terminal's now for the configured symbols and timeframes.

    Args:
        params_path: params.yaml to read (relative to the serving process's working directory).
        profile: a profile of params.yaml merged over it, e.g. ``fast``; empty for none.
        symbols: symbols to ingest instead of ``data.symbols`` (e.g. EURUSD); empty for all.
        timeframes: timeframes to ingest instead of ``data.timeframes`` (M1 … D1); empty for all.
    """
    params = _data_params(params_path, profile, symbols, timeframes)
    reports = ingest_history_task(params)
    written = sum(r.written for r in reports)
    quarantined = sum(r.quarantined for r in reports)
    get_run_logger().info(
        "ingest-history: %d rows written, %d quarantined over %d series", written, quarantined, len(reports)
    )
    publish_reports(reports, "ingest-history", f"{written} rows written, {quarantined} quarantined")
    return reports


@task(cache_policy=NO_CACHE)
def ingest_live_task(params: DataParams, polls: int | None, duration_seconds: float | None) -> dict:
    client = open_terminal(params)
    try:
        stats = ingest_live(
            client,
            BarStore(params.root),
            make_contract(params),
            params,
            polls=polls,
            duration_seconds=duration_seconds,
            init_kwargs=initialize_kwargs(params),
        )
    finally:
        client.shutdown()
    return asdict(stats)


@flow(name="ingest-live", log_prints=True)
def ingest_live_flow(
    params_path: str = "params.yaml",
    profile: str | None = None,
    polls: int | None = 12,
    duration_seconds: float | None = None,
) -> dict:
    """Poll for newly closed bars: `polls` polls, or for `duration_seconds`.

    Args:
        params_path: params.yaml to read (relative to the serving process's working directory).
        profile: a profile of params.yaml merged over it, e.g. ``fast``; empty for none.
        polls: polls to make, ``data.live.poll_seconds`` apart (the deployment makes one per run).
        duration_seconds: poll for this long instead of a number of polls.
    """
    params = _data_params(params_path, profile, None, None)
    stats = ingest_live_task(params, polls, duration_seconds)
    get_run_logger().info(
        "ingest-live: %d polls, %d rows written, %d terminal errors, %d reconnects",
        stats["polls"],
        stats["written"],
        stats["errors"],
        stats["reconnects"],
    )
    reports = [SeriesReport(**r) for r in stats["reports"]]
    publish_reports(reports, "ingest-live", f"{stats['written']} rows written over {stats['polls']} polls")
    return stats
