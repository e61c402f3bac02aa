"""Shared fast defaults: CPU, seeded, tmp paths, no network, one Prefect harness per session."""

from __future__ import annotations

import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# the results store seals tenant data under a master key from the environment (issue 15): the
# suite's own, fixed, so every process it starts (services, workers, flows) opens the same keys
TEST_MASTER_KEY = "dGVzdC1vbmx5LW1hc3Rlci1rZXktbXQ1cHJvYi0zMmI"
os.environ.setdefault("MT5PROB_MASTER_KEY", TEST_MASTER_KEY)
# this machine's PostgreSQL trusts local connections: the app role has no password here (outside
# tests a passwordless app URL is refused, pipelines/store/results.py)
os.environ.setdefault("MT5PROB_ALLOW_PASSWORDLESS", "1")

from datetime import UTC, datetime  # noqa: E402

import pytest  # noqa: E402

from pipelines.config import DataParams  # noqa: E402
from pipelines.mt5.simulator import MarketSimulator, SimulatorConfig  # noqa: E402
from pipelines.validate import DataContract  # noqa: E402

START = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="session")
def contract() -> DataContract:
    """One GX context for the session (building one costs seconds)."""
    return DataContract()


@pytest.fixture
def sim() -> MarketSimulator:
    """A small initialised simulator: 2024-01-01 → 2024-01-15 UTC."""
    s = MarketSimulator(SimulatorConfig(end=datetime(2024, 1, 15, tzinfo=UTC)))
    assert s.initialize()
    return s


@pytest.fixture
def data_params(tmp_path) -> DataParams:
    """Fast ingest settings on the simulator, storing under tmp_path/data."""
    return DataParams.model_validate(
        {
            "root": str(tmp_path / "data"),
            "symbols": ["EURUSD", "XAUUSD"],
            "timeframes": ["M5", "H1"],
            "history_start": "2024-01-01T00:00:00",
            "simulator": {"end": "2024-01-10T00:00:00"},
        }
    )


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect server shared by every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


PG_SERVER = os.environ.get("MT5PROB_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def pg_server():
    """The PostgreSQL server (superuser engine, autocommit). Unreachable: skip on a laptop,
    FAIL when CI=true."""
    import sqlalchemy as sa

    server = sa.create_engine(PG_SERVER, isolation_level="AUTOCOMMIT")
    try:
        with server.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        server.dispose()
        message = f"PostgreSQL unreachable at {PG_SERVER}: {exc.orig}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    yield server
    server.dispose()


@pytest.fixture(scope="session")
def pg_database(pg_server):
    """A factory of fresh PostgreSQL databases (admin URLs), all dropped at the session's end:
    MLflow, Optuna and the results store each get their own, as in production."""
    import uuid

    import sqlalchemy as sa

    made: list[str] = []

    def make(purpose: str) -> str:
        name = f"mt5prob_test_{purpose}_{uuid.uuid4().hex[:8]}"
        with pg_server.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        return sa.make_url(PG_SERVER).set(database=name).render_as_string(hide_password=False)

    yield make
    with pg_server.connect() as conn:
        for name in made:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            # a results store's key store (pipelines/store/crypto.keys_url_for)
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}_keys" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_admin_url(pg_database):
    """The results store's database for this test session (admin URL)."""
    return pg_database("results")


def small_features(*extra_families: str) -> dict:
    """A small `features:` section (M5 base, H1 above it, short windows) for fast tests:
    returns, volatility, ATR and RSI, plus `extra_families` on the base timeframe."""
    return {
        "base_timeframe": "M5",
        "higher_timeframes": ["H1"],
        "families": ["returns", "volatility", "atr", "rsi", *extra_families],
        "htf_families": ["returns", "atr"],
        "windows": {"return_lags": [1, 4], "volatility": [16], "atr": 14, "rsi": 14},
    }


def featurized_pair(root, contract, signal_strength: float, labels: dict, models: dict, **sections):
    """Params for two simulated symbols (EURUSD, GBPUSD; M5 base, H1 above) up to 2024-02-20
    under `root`, with their history ingested and featurized: the small training world of the
    pipeline tests. `labels`, `models` and any other `sections` are those params sections."""
    from pipelines.bar_store import BarStore
    from pipelines.config import Params
    from pipelines.featurize import run as featurize
    from pipelines.ingest import connect, ingest_history
    from pipelines.terminal import open_terminal

    p = Params.model_validate(
        {
            "data": {
                "root": str(root / "data"),
                "symbols": ["EURUSD", "GBPUSD"],
                "timeframes": ["M5", "H1"],
                "simulator": {"end": "2024-02-20T00:00:00", "signal_strength": signal_strength},
            },
            "features": {"base_timeframe": "M5", "higher_timeframes": ["H1"]},
            "labels": labels,
            "models": models,
            "outputs": str(root / "outputs"),
            **sections,
        }
    )
    client = open_terminal(p.data)
    connect(client)
    ingest_history(client, BarStore(p.data.root), contract, p.data)
    featurize(p.data, p.features, p.labels, p.outputs / "featurize", contract)
    return p


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request, tmp_path):
    """A migrated results store, once on SQLite and once on PostgreSQL (the session's shared
    database, emptied after each test)."""
    import sqlalchemy as sa

    from pipelines.store import ResultsStore, app_url

    if request.param == "sqlite":
        s = ResultsStore(f"sqlite:///{tmp_path / 'results.db'}")
        s.migrate()
        yield s
        s.close()
        return
    admin = request.getfixturevalue("pg_admin_url")
    s = ResultsStore(app_url(admin), admin)
    s.migrate()
    yield s
    with s.admin_engine.begin() as conn:  # the database is shared by the session's tests
        for table in (
            "scores",
            "shadow_scores",
            "subscriptions",
            "pins",
            "audit",
            "tenants",
            "score_watermarks",
            "series_leases",
            "worker_heartbeats",
            "webhooks",
            "erasures",
        ):
            conn.execute(sa.text(f"DELETE FROM {table}"))
    s.close()
