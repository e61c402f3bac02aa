"""The demo's pipeline part as Prefect flows (what ``./run demo`` runs before starting the
service): progress is visible as Prefect logs, and training shows a progress bar.

1. flow ``demo``: ingest history (subflow ``ingest-history``: simulate + validate + write) →
   ``dvc commit data.dvc`` and ``dvc repro`` (featurize → train → evaluate; dvc's output and
   the training progress bar go straight to the terminal) → register + promotion gate;
2. two demo tenants (outside any flow, so their API keys never reach Prefect's logs; each is
   printed once as ``name: key``);
3. flow ``live-score`` replaying the newest bars one per cycle, fanned out to the tenants.

    python -m flows.demo [--params params.yaml] [--replay 6]
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.ingest import ingest_history_flow
from flows.live_score import live_score_flow
from flows.train import register_task
from pipelines.config import cli_parser, load_params

DEMO_TENANTS = {
    "demo-acme": {"follows": ["EURUSD:M5:12", "XAUUSD:M5:12"], "long_above": 0.55, "short_below": 0.45},
    "demo-beta": {"follows": ["EURUSD:M5:12"], "long_above": 0.52, "short_below": 0.48},
}


@task(cache_policy=NO_CACHE)
def dvc(*args: str) -> None:
    """Run a dvc command with this interpreter's environment; output goes to the terminal."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    get_run_logger().info("dvc %s", " ".join(args))
    subprocess.run([str(Path(bin_dir) / "dvc"), *args], check=True, env=env)


@flow(name="demo", log_prints=True)
def demo_flow(params_path: str = "params.yaml") -> dict[str, Any]:
    """Ingest → dvc repro (featurize, train, evaluate) → register and gate."""
    logger = get_run_logger()
    reports = ingest_history_flow(params_path=params_path)
    logger.info("ingested %d rows over %d series", sum(r.written for r in reports), len(reports))
    dvc("commit", "-f", "-q", "data.dvc")
    dvc("status", "data.dvc")
    dvc("repro")
    registration = register_task(load_params(params_path))
    logger.info(
        "%s v%s %s: %s",
        registration["name"],
        registration["version"],
        "promoted to champion" if registration["promoted"] else "kept as challenger",
        registration["reason"],
    )
    return registration


def demo_tenants(params_path: str) -> dict[str, str]:
    """Create the demo tenants (or rotate their keys when they exist); returns name → key."""
    from pipelines.store import ResultsStore, Subscription

    params = load_params(params_path)
    store = ResultsStore.from_params(params.store)
    store.migrate()
    try:
        return {
            name: store.ensure_tenant(
                name,
                [Subscription.parse(f) for f in spec["follows"]],
                spec["long_above"],
                spec["short_below"],
            )
            for name, spec in DEMO_TENANTS.items()
        }
    finally:
        store.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli_parser("python -m flows.demo", __doc__)
    parser.add_argument("--replay", type=int, default=6, help="newest bars to score, one per cycle")
    args = parser.parse_args(argv)
    if args.profile:
        parser.error("the demo runs dvc repro, which reads params.yaml as it is: no --profile")
    load_params(args.params)  # a bad params.yaml stops here, in one line, before any flow runs
    demo_flow(params_path=args.params)
    keys = demo_tenants(args.params)
    for name, key in keys.items():
        print(f"   {name}: {key}", flush=True)  # shown once, never logged
    live_score_flow(params_path=args.params, replay=args.replay)
    return 0


if __name__ == "__main__":
    from pipelines.config import run_cli

    raise SystemExit(run_cli(main))
