"""The user's whole loop, as the README's first command runs it: `./run demo` in a fresh copy
of the repository on the fast profile, then every surface checked — deployments listed through
the Prefect API, `champion` set in MLflow, the service answering with that version, result rows
per tenant in the store, the README's runnable curl lines as written, narrow DVC metrics and
DVC-native plots, and `dvc repro` up to date afterwards."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from pipelines.config import _deep_merge
from serving.devserver import REPO, free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def copy(tmp_path):
    """The committed files of this repository in a new git repository, with the fast profile
    made the default (so `dvc repro` and every step use it)."""
    dest = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((REPO / name).read_bytes())
        target.chmod((REPO / name).stat().st_mode)
    raw = yaml.safe_load((dest / "params.yaml").read_text())
    fast = raw["profiles"]["fast"]
    (dest / "params.yaml").write_text(
        yaml.safe_dump(_deep_merge({k: v for k, v in raw.items() if k != "profiles"}, fast))
    )
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"],
    ):
        subprocess.run(cmd, cwd=dest, check=True)
    return dest


def test_demo_runs_the_whole_loop_and_every_surface_answers(copy, prefect_harness):
    from prefect.client.orchestration import get_client

    from flows.serve import deployments
    from pipelines.registry import Registry

    port = free_port()
    env = {**os.environ, "VENV": str(Path(sys.executable).parent.parent), "PORT": str(port)}
    for name in ("MT5PROB_MASTER_KEY", "MT5PROB_MASTER_KEY_FILE"):  # a new user has none: the demo makes one
        env.pop(name, None)
    demo = subprocess.run(["./run", "demo"], cwd=copy, env=env, capture_output=True, text=True, timeout=900)
    pid_file = copy / "outputs" / "demo" / "serve.pid"
    try:
        # a string, not a tuple: pytest prints a message string whole but truncates a tuple's repr
        assert demo.returncode == 0, f"stdout:\n{demo.stdout[-4000:]}\nstderr:\n{demo.stderr[-6000:]}"
        out = demo.stdout + demo.stderr
        keys = dict(re.findall(r"(demo-acme|demo-beta): (mt5p_[A-Za-z0-9_-]+)", out))
        assert set(keys) == {"demo-acme", "demo-beta"}

        # MLflow: the gate promoted the first version to champion
        registry = Registry(f"sqlite:///{copy / 'mlflow.db'}")
        name = "mt5prob-fx-M5-direction-h12"
        champion = registry.alias_version(name, "champion")
        assert champion == "1"

        # the service (left running by the demo) answers with that version
        url = f"http://127.0.0.1:{port}"
        models = httpx.post(
            f"{url}/models", json={}, headers={"X-API-Key": keys["demo-beta"]}, timeout=30
        ).json()
        assert models["models"][0]["aliases"]["champion"] == champion
        latest = httpx.post(
            f"{url}/results/latest", json={}, headers={"X-API-Key": keys["demo-acme"]}, timeout=30
        )
        assert latest.status_code == 200
        assert {r["model_version"] for r in latest.json()["rows"]} == {champion}

        # result rows per tenant in the store (6 replayed bars × the symbols each follows)
        # (names are sealed: read through the store, with the master key the demo used)
        from pipelines.store import ResultsStore
        from pipelines.store.crypto import LocalMasterKey

        key_file = copy / "outputs" / "demo" / "master.key"
        assert oct(key_file.stat().st_mode & 0o777) == "0o600"
        master = LocalMasterKey.from_text(key_file.read_text())
        store = ResultsStore(f"sqlite:///{copy / 'results.db'}", masters=[master])
        per_tenant = {}
        for t in store.list_tenants():
            with store.tenant(t.tenant_id, "test") as session:
                per_tenant[t.name] = len(session.probabilities())
        store.close()
        assert per_tenant == {"demo-acme": 12, "demo-beta": 6}  # fast profile: EURUSD and XAUUSD
        with sqlite3.connect(copy / "results.db") as db:  # and no tenant name in the clear
            clear = "SELECT count(*) FROM tenants WHERE instr(name_sealed, CAST('demo-' AS BLOB)) > 0"
            sealed = db.execute(clear).fetchone()[0]
        assert sealed == 0

        # DVC: everything the demo produced is what dvc.yaml says it should be
        dvc = Path(sys.executable).with_name("dvc")
        status = subprocess.run([str(dvc), "status"], cwd=copy, capture_output=True, text=True, env=env)
        assert "up to date" in status.stdout, status.stdout + status.stderr
        metrics = subprocess.run(
            [str(dvc), "metrics", "show"], cwd=copy, capture_output=True, text=True, env=env
        )
        header = metrics.stdout.splitlines()[0].split()
        want = {"log_loss", "edge", "edge_low", "edge_high", "ece", "auc"}
        assert want <= set(header), metrics.stdout + metrics.stderr
        assert max(len(line) for line in metrics.stdout.splitlines()) <= 120, metrics.stdout
        plots = subprocess.run(
            [str(dvc), "plots", "show", "--json"], cwd=copy, capture_output=True, text=True, env=env
        )
        assert plots.returncode == 0, plots.stderr
        shown = json.loads(plots.stdout)["data"]  # plot id → its rendered (vega) definitions
        wanted = {"outputs/evaluate/reliability.csv", "outputs/evaluate/histogram.csv"}
        assert wanted <= set(shown), shown.keys()
        spec = json.dumps(shown["outputs/evaluate/reliability.csv"])
        assert '"predicted"' in spec and '"observed"' in spec  # data series with axes, not an image

        _run_readme_blocks(copy, port, keys["demo-acme"])
        # a variant through dvc exp: only the stages that depend on the changed param run again
        path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
        exp = subprocess.run(
            [str(dvc), "exp", "run", "-S", "models.registered=ensemble"],
            cwd=copy,
            capture_output=True,
            text=True,
            env={**env, "PATH": path},
            timeout=600,
        )
        assert exp.returncode == 0, exp.stdout[-2000:] + exp.stderr[-2000:]
        assert "Running stage 'train'" in exp.stdout and "Running stage 'featurize'" not in exp.stdout

        # Prefect: every deployment registers with the API
        declared = deployments(str(copy / "params.yaml"))

        async def register_and_list() -> set[str]:
            for deployment in declared:
                await deployment.apply()
            async with get_client() as client:
                return {d.name for d in await client.read_deployments()}

        assert {d.name for d in declared} <= asyncio.run(register_and_list())
        assert len(declared) == 13  # their names are checked in test_deployments
    finally:
        if pid_file.exists():
            try:
                os.killpg(int(pid_file.read_text()), signal.SIGTERM)
            except ProcessLookupError:
                pass


RUNNABLE = re.compile(r"<!-- runnable: after ./run demo, with KEY set -->\n```bash\n(.*?)```", re.S)


def _readme_commands() -> list[str]:
    """Every command of the README blocks marked runnable, continuation lines joined."""
    blocks = RUNNABLE.findall((REPO / "README.md").read_text())
    assert blocks, "no runnable block in the README"
    commands: list[str] = []
    pending = ""
    for line in "".join(blocks).splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            commands.append(pending)
            pending = ""
    return commands


def _run_readme_blocks(copy: Path, port: int, key: str) -> None:
    """The README's runnable lines as written (only the port is the test's), one by one: each
    exits 0 and answers JSON that is not an error; the dates of the range call have results."""
    work = copy / "readme-run"
    work.mkdir()
    commands = _readme_commands()
    assert any("/score_bars" in c for c in commands) and any("/results/range" in c for c in commands)
    for command in commands:
        run = subprocess.run(
            ["bash", "-c", command.replace("localhost:3000", f"localhost:{port}")],
            cwd=work,
            env={**os.environ, "KEY": key},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, (command, run.stderr)
        if " -o " in command:
            body = json.loads(next(work.glob(command.split(" -o ")[1].split()[0])).read_text())
        else:
            body = json.loads(run.stdout)
        assert "error" not in body, (command, run.stdout[:500])
        if "/results/range" in command:
            assert body["rows"], (command, body)
        if "/score " in command + " ":
            assert 0 < body["probabilities"][0] < 1
