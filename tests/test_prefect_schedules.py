"""Prefect's own server, started as a user starts it (`prefect server start`), with the
platform's deployments served by `python -m flows.serve`:

* scheduled runs are created by the scheduler *and executed* with nobody triggering them
  (the pinned stack once broke this: SQLAlchemy 2.1 made the scheduler's bulk insert raise
  every loop, so no schedule ever fired, while runs triggered through the API still worked);
* the server's loop services (scheduler, late runs, cancellation cleanup, foreman, pause
  expirations, automations) run for a minute without one error line in the server's log.

Service loops are shortened to 5 s so a minute covers a dozen iterations of each. Two servers
run side by side: one on Prefect's default SQLite database (the README's `prefect server
start`), one on PostgreSQL, the database the README recommends for a server that runs the
platform's schedules for real, where the late-runs service and an automation also do work.
(On SQLite, Prefect 3.8's late-runs service logs "database is locked"
when several runs are overdue at once — its marking tasks run concurrently in deferred
transactions; upstream PrefectHQ/prefect#18934 — so that part is checked on PostgreSQL.)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from pipelines.bar_store import BarStore, SeriesKey

pytestmark = pytest.mark.slow

LOOP = "5"
# each scheduled run starts a fresh process (~10 s of imports on 2 busy cores): an interval
# shorter than that only piles up runs
INTERVAL = 20
SERVICE_LOOPS = {
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": LOOP,
    "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": LOOP,
    "PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS": LOOP,
    "PREFECT_SERVER_SERVICES_LATE_RUNS_AFTER_SECONDS": "PT5S",
    "PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_LOOP_SECONDS": LOOP,
    "PREFECT_SERVER_SERVICES_FOREMAN_LOOP_SECONDS": LOOP,
    "PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_LOOP_SECONDS": LOOP,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A child process in its own session, with its combined output in a log file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str], cwd: Path | None = None) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> None:
        assert self.proc.poll() is None, f"{self.log.name}: exited\n" + self.text()[-3000:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_server(home: Path, database_url: str | None = None) -> tuple[Process, str]:
    """`prefect server start` on a free port with its own PREFECT_HOME; its database is a
    SQLite file there (Prefect's default) or `database_url` (``postgresql+asyncpg://…``).
    Returns the process and its API URL once `/health` answers."""
    port = _free_port()
    env = {
        **os.environ,
        **SERVICE_LOOPS,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    if database_url:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    prefect = str(Path(sys.executable).parent / "prefect")
    server = Process(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], home / "server.log", env
    )
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while True:
        server.alive()
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return server, api
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise AssertionError("prefect server did not start in 120 s:\n" + server.text()[-3000:])
        time.sleep(0.5)


def serve_platform(tmp_path: Path, api: str) -> tuple[Process, Path]:
    """`python -m flows.serve` (every platform deployment) against `api`, with `ingest-live`
    scheduled every `INTERVAL` s on a live simulator; data and stores in `tmp_path`."""
    root = tmp_path / "data"
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "root": str(root),
                    "symbols": ["EURUSD"],
                    "timeframes": ["M1"],
                    "history_start": "2024-01-03T09:00:00",
                    "simulator": {
                        "live": True,
                        "speed": 60,
                        "end": None,
                        "live_start": "2024-01-03T10:00:00",
                    },
                    "live": {"poll_seconds": 0.1},
                },
                "schedules": {"ingest_live_seconds": INTERVAL},
                # the other deployments' schedules may fire too: keep their writes in tmp
                "store": {"url": f"sqlite:///{tmp_path / 'results.db'}"},
                "registry": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
            }
        )
    )
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    proc = Process(
        [sys.executable, "-m", "flows.serve", "--params", str(params)],
        tmp_path / "serve.log",
        env,
        cwd=tmp_path,
    )  # relative paths land in tmp
    return proc, root


def _runs(api: str, deployment: str) -> list[dict]:
    """Every flow run of `deployment` (name), as the REST API returns them."""
    body = {"deployments": {"name": {"any_": [deployment]}}, "limit": 200}
    r = httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10)
    r.raise_for_status()
    return r.json()


def wait_for_scheduled_runs(api: str, served: Process, server: Process, n: int, within: float) -> None:
    """At least `n` runs of `ingest-live` completed, every one created by its schedule."""
    t0 = time.monotonic()
    completed: list[dict] = []
    while time.monotonic() - t0 < within:
        served.alive()
        completed = [r for r in _runs(api, "ingest-live") if r["state_type"] == "COMPLETED"]
        if len(completed) >= n:
            break
        time.sleep(1)
    assert len(completed) >= n, (
        f"{len(completed)} scheduled ingest-live runs completed in {within:.0f} s; runs: "
        f"{[(r['name'], r['state_name']) for r in _runs(api, 'ingest-live')]}\n"
        + server.text()[-3000:]
        + served.text()[-2000:]
    )
    # nothing in these tests creates or triggers a run: the schedule alone did
    assert all("auto-scheduled" in r["tags"] for r in completed)
    assert all(r["created_by"]["type"] == "SCHEDULE" for r in completed)


def assert_no_service_error(server: Process) -> None:
    text = server.text()
    bad = [line for line in text.splitlines() if "Traceback" in line or "| ERROR" in line]
    assert not bad, f"{len(bad)} error lines in the Prefect server log:\n" + text[-5000:]


def _automation(api: str) -> str:
    """An automation on completed `ingest-live` runs: the triggers service must evaluate it."""
    from prefect.events.actions import DoNothing
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    automation = AutomationCore(
        name="ingest-live completed",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Completed"},
            match_related={"prefect.resource.name": "ingest-live"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[DoNothing()],
    )
    r = httpx.post(f"{api}/automations/", json=automation.model_dump(mode="json"), timeout=10)
    r.raise_for_status()
    return r.json()["id"]


def _unserved_deployment(api: str) -> None:
    """A deployment with a 5 s schedule and no process serving it: its runs go Late."""
    r = httpx.post(f"{api}/flows/", json={"name": "unserved"}, timeout=10)
    r.raise_for_status()
    body = {
        "name": "unserved",
        "flow_id": r.json()["id"],
        "schedules": [{"schedule": {"interval": 5.0}, "active": True}],
    }
    httpx.post(f"{api}/deployments/", json=body, timeout=10).raise_for_status()


def _automation_events(api: str, automation_id: str) -> list[dict]:
    body = {"filter": {"event": {"prefix": ["prefect.automation."]}}, "limit": 50}
    r = httpx.post(f"{api}/events/filter", json=body, timeout=10)
    r.raise_for_status()
    return [
        e
        for e in r.json()["events"]
        if e["resource"]["prefect.resource.id"] == f"prefect.automation.{automation_id}"
    ]


@pytest.mark.postgres
def test_schedules_fire_and_server_services_run_a_minute_without_error(tmp_path, pg_database):
    """Two Prefect servers side by side for a minute (one minute of the suite, not two):

    * the README's `prefect server start` on its default SQLite file: `ingest-live` runs by
      its schedule alone and writes bars; the server logs no error meanwhile;
    * a server on PostgreSQL: schedules fire and run, overdue runs of an unserved deployment
      are marked Late, an automation fires on completed runs — and not one error line in the
      server's log."""
    import sqlalchemy as sa

    url = sa.make_url(pg_database("prefect")).set(drivername="postgresql+asyncpg")
    lite, pg = tmp_path / "sqlite", tmp_path / "postgres"
    for folder in (lite / "prefect-home", pg / "prefect-home"):
        folder.mkdir(parents=True)
    servers: list[Process] = []
    served: list[Process] = []
    t0 = time.monotonic()
    try:
        lite_server, lite_api = start_server(lite / "prefect-home")
        servers.append(lite_server)
        pg_server, pg_api = start_server(pg / "prefect-home", url.render_as_string(hide_password=False))
        servers.append(pg_server)
        automation_id = _automation(pg_api)
        _unserved_deployment(pg_api)
        lite_served, lite_root = serve_platform(lite, lite_api)
        served.append(lite_served)
        pg_served, _ = serve_platform(pg, pg_api)
        served.append(pg_served)
        wait_for_scheduled_runs(lite_api, lite_served, lite_server, n=2, within=180)
        assert BarStore(lite_root).watermark(SeriesKey("bars", "EURUSD", "M1")) is not None
        wait_for_scheduled_runs(pg_api, pg_served, pg_server, n=2, within=60)
        time.sleep(max(0.0, 60 - (time.monotonic() - t0)))
        late = [r for r in _runs(pg_api, "unserved") if r["state_name"] == "Late"]
        assert late, "the late-runs service marked no overdue run of the unserved deployment Late"
        assert _automation_events(pg_api, automation_id), "the automation never fired on a completed run"
    finally:
        for proc in served + servers:
            proc.stop()
    for server in servers:
        assert_no_service_error(server)
