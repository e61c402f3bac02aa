"""The demo's pipeline part as Prefect flows (what ``./run demo`` runs before starting the
service): progress is visible as Prefect logs.

1. flow ``demo``: ingest history (subflow ``ingest-history``: simulate + validate + write the
   default data, which ``data.dvc`` versions) → ``dvc commit data.dvc`` → subflow
   ``train-matrix`` on the ``demo`` profile of params.yaml: every cell of ``matrix.cells``
   featurized, trained, evaluated, registered and gated, two at a time (the profile trims the
   work to minutes: two symbols, no H4/D1 features, no Optuna studies — see params.yaml);
2. two demo tenants (outside any flow, so their API keys never reach Prefect's logs; each is
   printed once as ``name: key``): ``demo-acme`` follows every cell for both symbols,
   ``demo-beta`` one;
3. flow ``live-score`` replaying the newest bars one per cycle, fanned out to the tenants.

The research build of the same matrix (every symbol, tuned) is ``dvc repro``.

    python -m flows.demo [--params params.yaml] [--profile demo] [--replay 6]
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
from flows.matrix import train_matrix_flow
from pipelines.config import cli_parser, load_params

DEMO_PROFILE = "demo"
# demo-acme follows (None) every cell of the matrix for each symbol the profile trains
# (`pipelines.registry.served_subscriptions`)
DEMO_TENANTS = {
    "demo-acme": {"follows": None, "long_above": 0.55, "short_below": 0.45},
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
def demo_flow(params_path: str = "params.yaml", profile: str = DEMO_PROFILE) -> dict[str, Any]:
    """Ingest the default data → the matrix trained, registered and gated on `profile`."""
    logger = get_run_logger()
    reports = ingest_history_flow(params_path=params_path)
    logger.info("ingested %d rows over %d series", sum(r.written for r in reports), len(reports))
    dvc("commit", "-f", "-q", "data.dvc")
    dvc("status", "data.dvc")
    built = train_matrix_flow(params_path=params_path, profile=profile)
    promoted = [c["cell"] for c in built["cells"] if c["promoted"]]
    logger.info(
        "matrix: %d cells in %.0f s, %d promoted to champion (%s); the others kept as challengers",
        len(built["cells"]),
        built["seconds"],
        len(promoted),
        ", ".join(promoted) or "none",
    )
    return built


def demo_tenants(params_path: str, profile: str | None = DEMO_PROFILE) -> dict[str, str]:
    """Create the demo tenants (or rotate their keys when they exist); returns name → key."""
    from pipelines.registry import served_subscriptions
    from pipelines.store import ResultsStore, Subscription

    params = load_params(params_path, profile)
    store = ResultsStore.from_params(params.store)
    store.migrate()
    try:
        return {
            name: store.ensure_tenant(
                name,
                [Subscription.parse(f) for f in spec["follows"]]
                if spec["follows"]
                else served_subscriptions(params),
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
    profile = args.profile or DEMO_PROFILE
    load_params(args.params, profile)  # a bad params.yaml stops here, in one line, before any flow runs
    demo_flow(params_path=args.params, profile=profile)
    keys = demo_tenants(args.params, profile)
    for name, key in keys.items():
        print(f"   {name}: {key}", flush=True)  # shown once, never logged
    live_score_flow(params_path=args.params, profile=profile, replay=args.replay)
    return 0


if __name__ == "__main__":
    from pipelines.config import run_cli

    raise SystemExit(run_cli(main))
