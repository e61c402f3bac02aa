"""The user's whole loop, as the README's first command runs it: `./run demo` in a fresh copy
of the repository on the fast profile's data, then every surface checked — deployments listed
through the Prefect API, every cell of the matrix registered and gated in MLflow, the service
answering with the champions, result rows per tenant in the store, the tenant's matrix in one
call, the README's runnable curl lines as written. And the research build: `dvc repro` of a
copy whose matrix has two cells — each cell in its own outputs, narrow DVC metrics listing every
cell, DVC-native plots, up to date afterwards, and a per-cell `dvc exp run -S` that reruns that
cell only."""

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


def make_copy(tmp_path: Path, cells: dict | None = None, **overrides: object) -> Path:
    """The committed files of this repository in a new git repository, with the fast profile
    made the default (so `dvc repro` and every step use it; the other profiles stay),
    `overrides` (top-level sections) merged over it and `cells` replacing ``matrix.cells``."""
    dest = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((REPO / name).read_bytes())
        target.chmod((REPO / name).stat().st_mode)
    raw = yaml.safe_load((dest / "params.yaml").read_text())
    profiles = raw.pop("profiles")
    raw = _deep_merge(_deep_merge(raw, profiles.pop("fast")), overrides)
    if cells is not None:
        raw["matrix"]["cells"] = cells
    (dest / "params.yaml").write_text(yaml.safe_dump({**raw, "profiles": profiles}))
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"],
    ):
        subprocess.run(cmd, cwd=dest, check=True)
    return dest


@pytest.fixture
def copy(tmp_path):
    return make_copy(tmp_path)


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

        # MLflow: every cell of the matrix registered (version 1) and gated; the M5 direction
        # model (the fast data's planted signal is strong there) promoted to champion
        from pipelines.config import load_params
        from pipelines.registry import catalog

        params = load_params(copy / "params.yaml", "demo")
        served = catalog(params)
        assert len(served) == 14
        registry = Registry(f"sqlite:///{copy / 'mlflow.db'}")
        aliases = registry.aliases_of(list(served))
        assert set(aliases) == set(served)
        champions = {n: a["champion"] for n, a in aliases.items() if "champion" in a}
        assert champions.get("mt5prob-fx-M5-direction-h12") == "1", aliases
        # the three-class model of the same horizon: three probabilities, skill shown too
        three = "mt5prob-fx-M5-up_flat_down-h12"
        assert champions.get(three) == "1", registry.version_tags(three, "1").get("gate_reason")
        assert "matrix: 14 cells" in out and "promoted to champion" in out

        # the service (left running by the demo) serves the whole catalog, with each state
        url = f"http://127.0.0.1:{port}"
        models = httpx.post(
            f"{url}/models", json={}, headers={"X-API-Key": keys["demo-beta"]}, timeout=30
        ).json()["models"]
        assert {m["name"] for m in models} == set(served)
        for m in models:
            assert (m["state"] == "serving") == (m["name"] in champions), m
            assert m["state"] in ("serving", "no skill", "refused by the gate"), m
            assert m["aliases"].get("champion") == champions.get(m["name"]), m
        assert "demo-acme's matrix" in demo.stdout and "XAUUSD   M5   direction" in demo.stdout

        # demo-acme follows every cell for both symbols: /matrix has a probability for each cell
        # whose model has a champion, null (and named missing) for the others
        matrix = httpx.post(
            f"{url}/matrix", json={}, headers={"X-API-Key": keys["demo-acme"]}, timeout=30
        ).json()
        assert matrix["follows"] == 28
        filled = set()
        for symbol, by_tf in matrix["grid"].items():
            for tf, by_kind in by_tf.items():
                for kind, by_h in by_kind.items():
                    for h, cell in by_h.items():
                        if cell is not None:
                            assert 0 < cell["probability"] < 1
                            assert champions[cell["model"]] == cell["version"]
                            filled.add(cell["model"])
                            three_class = cell["probabilities"]
                            assert (three_class is not None) == (kind == "up_flat_down"), cell
                            if three_class:  # P(up) is the cell's probability; the three sum to 1
                                assert list(three_class) == ["down", "flat", "up"]
                                assert three_class["up"] == cell["probability"]
                                assert sum(three_class.values()) == pytest.approx(1.0)
                        else:
                            assert f"{symbol}:{tf}:{h}:{kind}" in matrix["missing"]
        assert filled == set(champions)
        # /score_bars for every cell with a champion from the demo's own history (the newest
        # 2,000 bars of each timeframe from the cell's up), and a 400 naming the need with too few
        from pipelines.bar_store import BarStore, SeriesKey, frame_times

        history = BarStore(copy / "data")

        def bars_of(tf: str, n: int) -> dict:
            f = history.read(SeriesKey("bars", "XAUUSD", tf)).tail(n)
            fields = ("open", "high", "low", "close", "tick_volume", "spread")
            return {"time": frame_times(f, "s").tolist(), **{c: f[c].astype(float).tolist() for c in fields}}

        ladder = ["M5", "M15", "H1"]
        for name in champions:
            tfs = ladder[ladder.index(served[name]["timeframe"]) :]
            body = {"symbol": "XAUUSD", "model": name, "bars": {tf: bars_of(tf, 2000) for tf in tfs}}
            scored = httpx.post(
                f"{url}/score_bars", json=body, headers={"X-API-Key": keys["demo-acme"]}, timeout=60
            )
            assert scored.status_code == 200, (name, scored.text[:500])
            assert scored.json()["model"] == name and 0 < scored.json()["probability"] < 1
            if served[name]["label_kind"] == "up_flat_down":
                three_class = scored.json()["probabilities"]
                assert (
                    sum(three_class.values()) == pytest.approx(1.0)
                    and three_class["up"] == scored.json()["probability"]
                )
        body = {"symbol": "XAUUSD", "bars": {tf: bars_of(tf, 30) for tf in ladder}}
        short = httpx.post(
            f"{url}/score_bars", json=body, headers={"X-API-Key": keys["demo-acme"]}, timeout=60
        )
        assert short.status_code == 400 and "need" in short.text, short.text[:500]

        latest = httpx.post(
            f"{url}/results/latest", json={}, headers={"X-API-Key": keys["demo-beta"]}, timeout=30
        )
        assert latest.status_code == 200
        assert {r["model_version"] for r in latest.json()["rows"]} == {
            champions["mt5prob-fx-M5-direction-h12"]
        }

        # result rows per tenant in the store: 6 replayed bars × each followed series with a champion
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
        # the replay scores each series' newest 6 bars — those after the weekend's hole only
        # (features spanning a hole are NaN, by design): the data ends Mon 2024-07-01 00:00 UTC,
        # 2 h after the weekly open (Sun 22:00), so an H1 series has 2 such bars, M15 8, M5 24
        from pipelines.mt5.constants import timeframe_seconds

        def replayed(name: str) -> int:
            return min(6, 7200 // timeframe_seconds(served[name]["timeframe"]))

        scored = sum(len(served[n]["symbols"]) * replayed(n) for n in champions)  # EURUSD and XAUUSD
        assert per_tenant == {"demo-acme": scored, "demo-beta": 6}
        with sqlite3.connect(copy / "results.db") as db:  # and no tenant name in the clear
            clear = "SELECT count(*) FROM tenants WHERE instr(name_sealed, CAST('demo-' AS BLOB)) > 0"
            sealed = db.execute(clear).fetchone()[0]
        assert sealed == 0

        _run_readme_blocks(copy, port, keys["demo-acme"])

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


TWO_CELLS = {"fx-H1-direction-h4": {}, "fx-M15-triple_barrier-h4": {}}


def test_dvc_repro_builds_every_cell_in_its_own_outputs_and_reruns_only_what_changed(tmp_path):
    """The research build of a two-cell matrix (fast data; no Optuna studies, to keep the suite
    short: tuning has its own tests): `dvc repro` runs the default model's stages and each cell's, into
    ``outputs/cells/<id>/``; afterwards everything is up to date, `dvc metrics show` lists every
    cell in a narrow table, `dvc plots show` renders every reliability diagram as data, and
    `dvc exp run -S` on one cell's entry reruns that cell and nothing else."""
    copy = make_copy(tmp_path, cells=TWO_CELLS, tune={"enabled": False})
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    env = {**os.environ, "PATH": path}

    def run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        done = subprocess.run(args, cwd=copy, capture_output=True, text=True, env=env, timeout=timeout)
        assert done.returncode == 0, f"{args}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done

    run(sys.executable, "-m", "pipelines.ingest", "history")
    run("dvc", "commit", "-f", "-q", "data.dvc")
    repro = run("dvc", "repro").stdout
    for cell in TWO_CELLS:
        for step in ("featurize", "train", "evaluate"):
            assert f"Running stage 'cell-{step}@{cell}'" in repro, repro[-3000:]
        metrics = json.loads((copy / "outputs" / "cells" / cell / "evaluate" / "metrics.json").read_text())
        assert metrics["rows"] > 0 and "edge_low" in metrics
    assert "Running stage 'train'" in repro  # the default model's stages too
    assert sorted(p.name for p in (copy / "outputs" / "cells").iterdir()) == sorted(TWO_CELLS)

    assert "up to date" in run("dvc", "status").stdout
    shown = run("dvc", "metrics", "show").stdout
    header = shown.splitlines()[0].split()
    assert {"log_loss", "edge", "edge_low", "edge_high", "ece", "auc"} <= set(header), shown
    assert "outputs/evaluate/metrics.json" in shown
    for cell in TWO_CELLS:
        assert f"outputs/cells/{cell}/evaluate/metrics.json" in shown, shown
    assert max(len(line) for line in shown.splitlines()) <= 160, shown  # headline figures, no nesting
    plots = json.loads(run("dvc", "plots", "show", "--json").stdout)["data"]
    wanted = {"outputs/evaluate/reliability.csv", "outputs/evaluate/histogram.csv"} | {
        f"outputs/cells/{cell}/evaluate/reliability.csv" for cell in TWO_CELLS
    }
    assert wanted <= set(plots), plots.keys()
    spec = json.dumps(plots["outputs/cells/fx-H1-direction-h4/evaluate/reliability.csv"])
    assert '"predicted"' in spec and '"observed"' in spec  # data series with axes, not an image

    # one cell's variant: its stages run again (all three: each depends on the cell's entry),
    # no other cell's and not the default model's
    # (a key the cell's entry does not have yet takes hydra's leading +)
    exp = run("dvc", "exp", "run", "-S", "+matrix.cells.fx-H1-direction-h4.models.registered=ensemble")
    out = exp.stdout
    assert "Running stage 'cell-train@fx-H1-direction-h4'" in out, out[-3000:]
    assert "Running stage 'cell-evaluate@fx-H1-direction-h4'" in out, out[-3000:]
    ran = [line for line in out.splitlines() if line.startswith("Running stage")]
    assert all("@fx-H1-direction-h4'" in line for line in ran), ran  # not the other cell, not 'train'
    shown = run("dvc", "exp", "show", "--no-pager", "--md").stdout
    assert "fx-H1-direction-h4" in shown
