"""Alerts through Prefect's own machinery (issue 18), as an operator sets them up: a real
`prefect server start`, `python -m flows.alerts --webhook URL` creating the automation and the
webhook block, and the monitor flow run as its deployment would run it (a fresh process). The
simulator's feed stops: the receiver on loopback is told once that the series is stale — not
again while it stays stale — and once that it resolved when bars arrive again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from pipelines.config import load_params
from pipelines.ingest import history
from pipelines.store import ResultsStore

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
END = "2024-01-16T10:00:00"  # a Tuesday morning: the market is open


class Receiver:
    """An HTTP endpoint on loopback that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                received.append(json.loads(body or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, n: int, seconds: float) -> list[dict]:
        deadline = time.monotonic() + seconds
        while len(self.received) < n and time.monotonic() < deadline:
            time.sleep(0.5)
        return list(self.received)


def _params(tmp_path: Path, end: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "root": str(tmp_path / "data"),
                    "symbols": ["EURUSD"],
                    "timeframes": ["M5"],
                    "history_start": "2024-01-15T00:00:00",
                    "simulator": {"end": end},
                },
                "store": {"url": f"sqlite:///{tmp_path / 'results.db'}"},
                "registry": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
                "outputs": str(tmp_path / "outputs"),
                "monitor": {"stale_bars": 3, "state_path": str(tmp_path / "monitor-state.json")},
            }
        )
    )
    return path


def _monitor(env: dict, params: Path, now: str) -> subprocess.CompletedProcess:
    code = (
        "from datetime import datetime\n"
        "from flows.monitor import MonitorBreach, monitor_flow\n"
        "try:\n"
        f"    print(monitor_flow(params_path={str(params)!r}, now=datetime.fromisoformat({now!r})))\n"
        "except MonitorBreach as exc:\n"
        "    print('BREACH', exc)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_a_stopped_feed_is_notified_once_and_its_recovery_once(tmp_path):
    from test_prefect_schedules import assert_no_service_error, start_server

    receiver = Receiver()
    (tmp_path / "prefect").mkdir()
    server, api = start_server(tmp_path / "prefect")
    env = {
        **os.environ,
        "PREFECT_API_URL": api,
        "PREFECT_UI_URL": api.removesuffix("/api"),
        "PYTHONPATH": str(REPO),
    }
    try:
        setup = subprocess.run(
            [sys.executable, "-m", "flows.alerts", "--webhook", receiver.url],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert setup.returncode == 0, setup.stderr
        assert "mt5prob-alerts" in setup.stdout
        params = _params(tmp_path, END)
        history(load_params(params).data)
        store = ResultsStore(load_params(params).store.url)
        store.migrate()
        store.close()

        fine = _monitor(env, params, "2024-01-16T10:10:00+00:00")
        assert "BREACH" not in fine.stdout, fine.stdout + fine.stderr
        stale = _monitor(env, params, "2024-01-16T12:00:00+00:00")  # the feed stopped two hours ago
        assert "BREACH" in stale.stdout and "open market missing" in stale.stdout, stale.stdout + stale.stderr
        again = _monitor(env, params, "2024-01-16T12:05:00+00:00")  # still stale: no repeat
        assert "BREACH" in again.stdout, again.stdout + again.stderr
        got = receiver.wait_for(1, 90)
        assert len(got) == 1, got
        assert got[0]["subject"] == "mt5prob breached: stale:EURUSD:M5"
        assert "BREACHED: EURUSD M5: newest bar opened 2024-01-16 09:55 UTC" in got[0]["body"]
        assert "/flow-run/" in got[0]["body"] and "tab=Artifacts" in got[0]["body"]

        # the feed is back: two hours of bars arrive
        params = _params(tmp_path, "2024-01-16T12:05:00")
        history(load_params(params).data)
        back = _monitor(env, params, "2024-01-16T12:10:00+00:00")
        assert "BREACH" not in back.stdout, back.stdout + back.stderr
        got = receiver.wait_for(2, 90)
        assert [m["subject"] for m in got] == [
            "mt5prob breached: stale:EURUSD:M5",
            "mt5prob resolved: stale:EURUSD:M5",
        ], got
        time.sleep(5)  # nothing else trickles in
        assert len(receiver.received) == 2, receiver.received
        assert_no_service_error(server)
    finally:
        server.stop()
        receiver.server.shutdown()
