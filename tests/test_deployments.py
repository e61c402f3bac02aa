"""Every deployment declared in flows/serve.py: typed parameters and schedules, registered
with a real Prefect server by `python -m flows.serve`, and a run triggered through the API
(the same call the UI makes) runs to completion in that process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
import yaml

from pipelines.registry import Registry

pytestmark = pytest.mark.slow

NAMES = {
    "ingest-history",
    "ingest-live",
    "featurize",
    "train",
    "train-matrix",
    "promote",
    "rollback",
    "live-score",
    "live-worker",
    "monitor",
    "rotate-data-key",
    "rotate-master-key",
    "prune-audit",
}


class Constant:
    def __init__(self, p: float) -> None:
        self.p = p

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return np.full(len(X), self.p)


def test_deployments_are_declared_with_schedules():
    from flows.serve import deployments

    found = {d.name: d for d in deployments(profile="fast")}
    assert set(found) == NAMES
    assert found["live-score"].schedules[0].schedule.interval == timedelta(minutes=5)
    assert found["ingest-live"].schedules[0].schedule.interval == timedelta(minutes=5)
    assert found["train-matrix"].schedules[0].schedule.cron == "0 3 * * 6"  # every cell, weekly
    assert not found["train"].schedules
    schema = found["train"]._parameter_openapi_schema.properties
    assert schema["horizon"]["anyOf"][0]["type"] == "integer" and "trials" in schema
    # the bar-close driven worker or the two timers, never both
    worker = found["live-worker"]
    assert worker.schedules[0].schedule.interval == timedelta(minutes=1) and worker.paused
    assert worker.concurrency_limit == 1 or worker.concurrency_limit.limit == 1
    assert not found["live-score"].paused and not found["ingest-live"].paused


def test_live_worker_switch_pauses_the_timers(tmp_path):
    from flows.serve import deployments

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"schedules": {"live_worker": True}}))
    found = {d.name: d for d in deployments(str(params))}
    assert not found["live-worker"].paused
    assert found["live-score"].paused and found["ingest-live"].paused


def test_every_deployment_parameter_is_described_and_every_deployment_tagged_by_room():
    """The Prefect UI shows these descriptions beside each form field (read from the flows'
    docstrings), and the room tags filter the deployments list."""
    from flows.serve import deployments

    rooms = {"ingest", "train", "registry", "scoring", "monitor", "tenants"}
    for d in deployments(profile="fast"):
        props = d._parameter_openapi_schema.properties
        undescribed = [name for name, p in props.items() if not p.get("description")]
        assert not undescribed, f"{d.name}: parameters without a description: {undescribed}"
        assert rooms & set(d.tags), f"{d.name}: no room tag in {d.tags}"


def test_served_deployments_run_from_the_api(prefect_harness, tmp_path):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import get_current_settings

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = Registry(tracking)
    name = "mt5prob-fx-M5-direction-h12"
    X = pd.DataFrame({"f0": [0.1, 0.2]})
    for p in (0.4, 0.6):
        v = registry.log_and_register(name, Constant(p), ["f0"], X, {}, {}, {}, [])
        registry.set_champion(name, v, reason="setup", actor="test")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"registry": {"tracking_uri": tracking}}))
    env = {
        **os.environ,
        "PREFECT_API_URL": get_current_settings().api.url,
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    }
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.serve", "--params", str(params)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        async def listed() -> set[str]:
            async with get_client() as client:
                return {d.name for d in await client.read_deployments()}

        deadline = time.monotonic() + 120
        while not NAMES <= asyncio.run(listed()):
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "deployments did not appear"
            time.sleep(1)
        run = run_deployment(
            "rollback/rollback", parameters={"name": name, "reason": "from the API"}, timeout=120
        )
        assert run.state.is_completed(), (run.state, (tmp_path / "serve.log").read_text()[-3000:])
        assert registry.alias_version(name, "champion") == "1"
        assert "from the API" in registry.client.get_model_version(name, "2").tags["demoted_reason"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
