"""An Optuna worker: run the ``tune:`` studies of the configured learners and print the best
parameters. Start several — on one machine or many — with the same PostgreSQL storage and they
share each study (together they run ``tune.n_trials`` per learner); then ``python -m
pipelines.train`` with ``tune.enabled: true`` finds the studies complete and trains with their
best parameters.

    python -m pipelines.tune --storage postgresql+psycopg://postgres@127.0.0.1:5432/test &
    python -m pipelines.tune --storage postgresql+psycopg://postgres@127.0.0.1:5432/test &
    wait

Needs ``outputs/featurize`` (``dvc repro featurize`` or ``python -m pipelines.featurize``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence


def ensure_storage(storage: str | None, attempts: int = 5) -> None:
    """Create the Optuna storage's schema once, before studies run side by side: the first two
    users of an empty storage race to create it (SQLite: ``UNIQUE constraint failed:
    alembic_version.version_num``). Retries while another process is creating it."""
    if not storage:
        return
    import optuna

    for attempt in range(attempts):
        try:
            optuna.storages.RDBStorage(storage)
            return
        except Exception:  # noqa: BLE001 - another worker is creating it: retry
            if attempt == attempts - 1:
                raise
            time.sleep(1 + attempt)


def main(argv: Sequence[str] | None = None) -> int:
    from pipelines.config import cli_parser, load_params
    from pipelines.train import load_training_data, tune_learners

    parser = cli_parser("python -m pipelines.tune", __doc__)
    parser.add_argument("--storage", default=None, help="Optuna storage URL (default: tune.storage)")
    parser.add_argument(
        "--trials", type=int, default=None, help="finished trials per study (default: tune.n_trials)"
    )
    args = parser.parse_args(argv)
    tune_override = {k: v for k, v in (("storage", args.storage), ("n_trials", args.trials)) if v is not None}
    params = load_params(args.params, args.profile, {"tune": tune_override} if tune_override else None)
    ensure_storage(params.tune.storage)  # workers started together race to create the schema
    data = load_training_data(params.outputs / "featurize", params.labels.kind)
    best = tune_learners(
        data, params.models, params.tune, params.labels.horizon, params.registry.tracking_uri
    )
    for name, values in best.items():
        print(f"{name}: {values}")
    return 0


if __name__ == "__main__":
    from pipelines.config import run_cli

    raise SystemExit(run_cli(main))
