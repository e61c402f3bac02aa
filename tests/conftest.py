"""Shared fast defaults: CPU, seeded, tmp paths, no network, one Prefect harness per session."""

from __future__ import annotations

import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

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
