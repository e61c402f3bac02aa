"""Every Prefect deployment of the platform, declared in one place, and a process that runs them.

    .venv/bin/prefect server start                            # UI on http://127.0.0.1:4200
    PREFECT_API_URL=http://127.0.0.1:4200/api .venv/bin/python -m flows.serve [--profile fast]

registers the deployments below (typed, described parameters become forms in the UI) and
serves them from this process — no work pool needed; a run triggered from the UI or the REST
API runs here. Schedules: live ingestion and live scoring at each base-timeframe close,
retraining of the whole matrix on ``schedules.retrain_cron``; the others run on demand.

| deployment | flow | schedule |
|---|---|---|
| ingest-history/ingest-history | ingest-history | on demand |
| ingest-live/ingest-live | ingest-live (one poll) | every base-timeframe close |
| featurize/featurize | featurize | on demand |
| train/train | train (featurize → train → evaluate → register + gate; one model) | on demand |
| train-matrix/train-matrix | train-matrix (every cell of ``matrix.cells``, each gated) | ``retrain_cron`` |
| promote/promote | promote (gate the challenger again) | on demand |
| rollback/rollback | rollback | on demand |
| live-score/live-score | live-score (one cycle) | every base-timeframe close |
| live-worker/live-worker | live-worker (each bar close, for an hour) | every minute, one at a time |

``schedules.live_worker`` chooses the live path: false (default) runs the ingest-live and
live-score timers and pauses live-worker; true runs live-worker and pauses the two timers.
| monitor/monitor | monitor (drift, live calibration) | ``monitor_cron`` (hourly) |
| rotate-data-key/rotate-data-key | re-seal one owner's values under a new data key | on demand |
| rotate-master-key/rotate-master-key | re-wrap every data key under a new master key | on demand |
| prune-audit/prune-audit | delete audit rows past their retention | ``prune_audit_cron`` (daily) |
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from flows.ingest import ingest_history_flow, ingest_live_flow
from flows.keys import prune_audit_flow, rotate_data_key_flow, rotate_master_key_flow
from flows.live import live_worker_deployment
from flows.live_score import live_score_deployment
from flows.matrix import train_matrix_flow
from flows.monitor import monitor_flow
from flows.registry import promote_flow, rollback_flow
from flows.train import featurize_flow, train_flow
from pipelines.config import cli_parser, load_params
from pipelines.mt5.constants import timeframe_seconds


def deployments(params_path: str = "params.yaml", profile: str | None = None) -> list[Any]:
    """The platform's deployments for `params_path` (and `profile`)."""
    params = load_params(params_path, profile)
    poll = params.schedules.ingest_live_seconds or timeframe_seconds(params.features.base_timeframe)
    common = {"params_path": params_path, "profile": profile}
    return [
        ingest_history_flow.to_deployment(
            name="ingest-history",
            parameters=common,
            tags=["ingest"],
            description="Bring the bar store up to the terminal's now.",
        ),
        ingest_live_flow.to_deployment(
            name="ingest-live",
            parameters={**common, "polls": 1},
            tags=["ingest", "live"],
            interval=timedelta(seconds=poll),
            paused=params.schedules.live_worker,  # the live worker ingests instead
            description="One poll for newly closed bars at each base-timeframe close.",
        ),
        featurize_flow.to_deployment(
            name="featurize", parameters=common, tags=["train"], description="Features and labels."
        ),
        train_flow.to_deployment(
            name="train",
            parameters=common,
            tags=["train"],
            description="One model (the base timeframe and labels of params.yaml): featurize → train → "
            "evaluate → register → gate.",
        ),
        train_matrix_flow.to_deployment(
            name="train-matrix",
            parameters=common,
            tags=["train"],
            cron=params.schedules.retrain_cron,
            description="Periodic retraining of the probability matrix: every cell featurized, trained, "
            "evaluated, registered and gated as its own model, two cells at a time; one artifact of "
            "every cell's figures.",
        ),
        promote_flow.to_deployment(
            name="promote", parameters=common, tags=["registry"], description="Gate the challenger again."
        ),
        rollback_flow.to_deployment(
            name="rollback",
            parameters=common,
            tags=["registry"],
            description="Champion back to the previous one, with a reason.",
        ),
        live_score_deployment(params_path, profile, paused=params.schedules.live_worker),
        live_worker_deployment(params_path, profile, paused=not params.schedules.live_worker),
        monitor_flow.to_deployment(
            name="monitor",
            parameters=common,
            tags=["monitor"],
            cron=params.schedules.monitor_cron,
            description="Feature drift and live calibration; fails (optionally retrains) past thresholds.",
        ),
        rotate_data_key_flow.to_deployment(
            name="rotate-data-key",
            parameters=common,
            tags=["tenants"],
            description="Re-seal a tenant's values (or the probabilities: _platform) under a new data key.",
        ),
        rotate_master_key_flow.to_deployment(
            name="rotate-master-key",
            parameters=common,
            tags=["tenants"],
            description="Re-wrap every data key under the master key in a file; tenant rows untouched.",
        ),
        prune_audit_flow.to_deployment(
            name="prune-audit",
            parameters=common,
            tags=["tenants"],
            cron=params.schedules.prune_audit_cron,
            description="Delete audit rows older than store.audit_retention_days.",
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    from prefect import serve

    parser = cli_parser("python -m flows.serve", __doc__)
    args = parser.parse_args(argv)
    serve(*deployments(args.params, args.profile))
    return 0


if __name__ == "__main__":
    from pipelines.config import run_cli

    raise SystemExit(run_cli(main))
