"""The BentoML service, started for real (`bentoml serve` in a subprocess) against a real
MLflow store and a real results store: scoring, versions, pins, auth, bad input, rollback
under load, metrics, results endpoints, and schemathesis over its OpenAPI spec."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from features.bars import Bars
from features.labels import direction_labels, up_flat_down_labels
from features.matrix import build_features, history_bars
from features.spec import DirectionLabelSpec, FeatureSpec, Windows
from models.base_learners import LogisticLearner
from models.three_way import ThreeWayModel
from pipelines.mt5 import constants as C
from pipelines.mt5.simulator import MarketSimulator, SimulatorConfig
from pipelines.registry import Registry
from pipelines.store import ResultsStore, ScoreRow, Subscription
from serving.devserver import REPO, running_service

pytestmark = pytest.mark.slow

NAME = "mt5prob-test-M5-direction-h12"
NOSKILL = "mt5prob-noise-M5-direction-h12"  # every version refused by the gate for want of skill
UNBUILT = "mt5prob-test-H1-triple_barrier-h24"  # served, never registered: a cell not trained yet
THREE = "mt5prob-test-M5-up_flat_down-h12"  # a three-class model: P(down), P(flat), P(up)
SPEC = FeatureSpec(
    "M5",
    ("H1",),
    ("returns", "volatility", "atr", "rsi", "calendar"),
    ("returns", "atr"),
    Windows(return_lags=(1, 4), volatility=(16,), atr=14, rsi=14),
)
TF_SECONDS = {"M5": 300, "H1": 3600}


def _bars() -> dict[str, Bars]:
    sim = MarketSimulator(SimulatorConfig(end=datetime(2024, 2, 5, tzinfo=UTC)))
    assert sim.initialize()
    out = {}
    for tf in ("M5", "H1"):
        rates = sim.copy_rates_range("EURUSD", C.timeframe_value(tf), 0, 2**40)
        out[tf] = Bars.from_rates(rates, TF_SECONDS[tf])
    return out


def _payload(bars: dict[str, Bars], upto: int | None = None) -> dict:
    """The newest M5 bars up to index `upto` (exclusive) and the H1 bars closed by then."""
    m5 = bars["M5"] if upto is None else bars["M5"].slice(0, upto)
    close = int(m5.time[-1]) + 300
    h1 = bars["H1"].slice(0, int(np.searchsorted(bars["H1"].time, close - 3600, side="right")))
    out = {}
    for tf, b in (("M5", m5.slice(max(0, len(m5) - 400))), ("H1", h1.slice(max(0, len(h1) - 450)))):
        out[tf] = {
            f: getattr(b, f).tolist()
            for f in ("time", "open", "high", "low", "close", "tick_volume", "spread")
        }
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    bars = _bars()
    fm = build_features(bars, SPEC)
    y = direction_labels(bars["M5"], DirectionLabelSpec(horizon=12))["label"]
    ok = np.isfinite(y) & np.isfinite(fm.values).all(axis=1)
    X = fm.values[ok]
    registry = Registry(f"sqlite:///{root / 'mlflow.db'}")
    meta = {
        "feature_spec": dataclasses.asdict(SPEC),
        "base_timeframe": "M5",
        "label_kind": "direction",
        "horizon": 12,
        "symbols": ["EURUSD"],
    }
    example = pd.DataFrame(X[:3], columns=fm.columns)
    predictors = {}
    for version, C_ in (("1", 1e-3), ("2", 1e-1), ("3", 1.0)):
        learner = LogisticLearner(C=C_).fit(X, y[ok])
        predictors[version] = learner
        got = registry.log_and_register(
            NAME, learner, fm.columns, example, {"C": C_}, {}, {"git_commit": "t"}, [], meta=meta
        )
        assert got == version
        if version != "3":
            registry.set_champion(NAME, version, reason="test setup", actor="test")
    registry.client.delete_registered_model_alias(NAME, "challenger")  # v3: not aliased
    # a model of shuffled labels: the gate finds no skill on the newest rows, so no champion
    noise = LogisticLearner(C=1e-4).fit(X, np.random.default_rng(0).permutation(y[ok]))
    registry.log_and_register(NOSKILL, noise, fm.columns, example, {}, {}, {"git_commit": "t"}, [], meta=meta)
    held = slice(len(X) - 2000, None)
    refused = registry.promotion_gate(
        NOSKILL, pd.DataFrame(X[held], columns=fm.columns), y[ok][held], max_ece=0.05, horizon=12
    )
    assert not refused.promoted and not refused.has_skill, refused.reason
    # a three-class model: the nested dichotomy of two binary learners (move, then side)
    three_y = up_flat_down_labels(bars["M5"], 12, 0.3)["label"][ok]
    moved = three_y != 1
    three = ThreeWayModel(
        LogisticLearner(C=1e-2).fit(X, (three_y != 1).astype(float)),
        LogisticLearner(C=1e-2).fit(X[moved], (three_y[moved] == 2).astype(float)),
    )
    three_meta = {**meta, "label_kind": "up_flat_down"}
    registry.log_and_register(
        THREE, three, fm.columns, example, {}, {}, {"git_commit": "t"}, [], meta=three_meta
    )
    registry.set_champion(THREE, "1", reason="test setup", actor="test")
    predictors["three"] = three
    store = ResultsStore(f"sqlite:///{root / 'results.db'}")
    store.migrate()
    follows = [Subscription("EURUSD", "M5", 12)]
    acme, acme_key = store.add_tenant("acme", follows)
    beta, beta_key = store.add_tenant("beta", follows, pins={NAME: "1"})
    _, gamma_key = store.add_tenant("gamma", follows, pins={NAME: "3"})
    # a tenant following four cells of the matrix, three of them scored (twice: the newest counts)
    grid = [
        Subscription("EURUSD", "M15", 4),  # not what the other tenants follow: their views stay as they were
        Subscription("EURUSD", "H1", 24, "triple_barrier"),
        Subscription("XAUUSD", "M5", 12),
        Subscription("XAUUSD", "H1", 24, "triple_barrier"),
    ]
    delta, delta_key = store.add_tenant("delta", grid)
    t0 = datetime(2024, 2, 5, 10, tzinfo=UTC)
    store.write_scores(
        [
            ScoreRow(
                sub.symbol,
                sub.timeframe,
                t0 + k * timedelta(hours=1),
                sub.horizon,
                sub.label_kind,
                f"grid-{sub.timeframe}-{sub.label_kind}",
                "1",
                0.40 + 0.05 * i + 0.01 * k,
                True,
                t0 + k * timedelta(hours=1) + timedelta(hours=1),
            )
            for i, sub in enumerate(grid[:3])
            for k in (0, 1)
        ]
    )
    params = root / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "registry": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"},
                "store": {"url": f"sqlite:///{root / 'results.db'}"},
                "serving": {
                    "models": [NAME, NOSKILL, UNBUILT, THREE],
                    "reload_interval_seconds": 0.5,
                    "max_batch_rows": 500,
                    "max_bars": 3000,
                    "auth_cache_seconds": 0,
                    "max_loaded_versions": 2,
                    "stream_max_per_tenant": 3,
                    # rate limits are tested in test_hostile; here they would turn the rollback
                    # test's three unpaced load threads (one tenant) into 429s on a fast run
                    "limits": {"per_tenant_rps": 0},
                    "max_body_bytes": 2**20,
                },
                # streams must be woken by the bus: the fallback re-read is far off
                "events": {"reread_seconds": 30},
            }
        )
    )
    log = root / "serve.log"
    with running_service(params, log=log) as service:
        yield {
            "url": service.url,
            "root": root,
            "params": params,
            "bars": bars,
            "fm": fm,
            "X": X,
            "registry": registry,
            "predictors": predictors,
            "store": store,
            "acme": acme,
            "beta": beta,
            "log": log,
            "keys": {"acme": acme_key, "beta": beta_key, "gamma": gamma_key, "delta": delta_key},
        }
    store.close()


def post(env, path, body, tenant="acme", **kw):
    headers = {"X-API-Key": env["keys"][tenant]} if tenant else {}
    return httpx.post(env["url"] + path, json=body, headers=headers, timeout=30, **kw)


def test_probes_and_metrics(env):
    for path in ("/livez", "/readyz", "/healthz"):
        assert httpx.get(env["url"] + path).status_code == 200
    assert post(env, "/score", {"rows": env["X"][:2].tolist()}).status_code == 200
    metrics = httpx.get(env["url"] + "/metrics").text
    line = next(
        m
        for m in metrics.splitlines()
        if m.startswith("mt5prob_requests_total") and 'endpoint="score"' in m and 'status="200"' in m
    )
    assert f'model="{NAME}"' in line and 'version="2"' in line
    assert "mt5prob_request_seconds_bucket" in metrics


def test_the_monitor_is_told_when_the_service_turns_slow_and_when_it_recovers(env, tmp_path):
    """Issue 18, "slow the service": the monitor scrapes the running service's own metrics at
    each check. Light traffic is healthy; a burst of heavy concurrent requests (whole bar
    histories, queued behind each other on the scoring lane) drives p99 over its limit — one
    'breached' notification; a check with too few requests to judge keeps the alert open and
    says nothing; light traffic again — one 'resolved'. No repeats."""
    from concurrent.futures import ThreadPoolExecutor

    from pipelines.config import load_params
    from pipelines.monitor import Alerts, check

    params = load_params(
        env["params"],
        None,
        {
            "data": {"root": str(tmp_path / "data")},  # no series, no training outputs: only the
            "outputs": str(tmp_path / "outputs"),  # API is judged here
            "monitor": {
                "service_url": env["url"],
                "api_p99_ms": 200,  # light requests take ≤ 50 ms here, the burst's p99 ~1 s
                "api_min_requests": 20,
                "state_path": str(tmp_path / "state.json"),
            },
        },
    )
    alerts = Alerts(params.monitor.state_path)
    sent = []

    def monitor() -> dict:
        report = check(params, alerts=alerts)
        sent.extend(
            (n.check, n.kind)
            for n in alerts.update(report.findings, time.time())
            if n.check.startswith("api:")
        )
        return {f.check: f for f in report.findings}

    def light(n: int = 40) -> None:
        for i in range(n):
            assert post(env, "/score", {"rows": env["X"][i : i + 1].tolist()}).status_code == 200

    heavy_body = {"symbol": "EURUSD", "bars": _payload(env["bars"])}

    def heavy(i: int) -> list[int]:  # 6 clients per tenant: under its concurrency limit (8)
        tenant = ("acme", "beta", "gamma")[i % 3]
        return [post(env, "/score_bars", heavy_body, tenant=tenant).status_code for _ in range(4)]

    assert monitor()["api:up"].breached is False  # the first scrape: a baseline
    light()
    first = monitor()
    assert not first["api:p99"].breached and first["api:p99"].judged, first["api:p99"].message
    with ThreadPoolExecutor(18) as pool:
        codes = [c for batch in pool.map(heavy, range(18)) for c in batch]
    assert set(codes) == {200}, codes
    slow = monitor()
    assert slow["api:p99"].breached, slow["api:p99"].message
    assert not slow["api:error_rate"].breached  # slow, not failing
    quiet = monitor()  # nothing since: too few to judge, the alert stays open
    assert not quiet["api:p99"].judged and "api:p99" in alerts.open
    light()
    healed = monitor()
    assert not healed["api:p99"].breached, healed["api:p99"].message
    assert sent == [("api:p99", "breached"), ("api:p99", "resolved")], sent


def test_api_docs_are_where_the_readme_says_and_describe_the_service(env):
    """``/docs`` (the URL the README names): the service's title and version, an API-key
    scheme on every scoring operation with its error answers, and request examples that the
    served model accepts exactly as documented."""
    readme = (REPO / "README.md").read_text()
    assert "interactive API docs at `http://127.0.0.1:3000/docs`" in readme
    page = httpx.get(env["url"] + "/docs", follow_redirects=True)
    assert page.status_code == 200 and "swagger-ui" in page.text and "/docs/openapi.json" in page.text
    assert "googletagmanager" not in page.text
    doc = httpx.get(env["url"] + "/docs/openapi.json").json()
    assert doc["info"]["title"] == "mt5prob scoring API" and doc["info"]["version"] == "0.1.0"
    assert "X-API-Key" in doc["info"]["description"]
    scheme = doc["components"]["securitySchemes"]["ApiKey"]
    assert scheme == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    for path in ("/score", "/score_bars", "/models", "/results/latest", "/results/range"):
        operation = doc["paths"][path]["post"]
        assert {"ApiKey": []} in operation["security"], path
        assert {"400", "401", "403", "404"} <= set(operation["responses"]), path
    assert "security" not in doc["paths"]["/readyz"]["get"]
    for path in ("/score", "/score_bars"):
        example = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["example"]
        assert httpx.get(env["url"] + f"/docs/examples{path}.json").json() == example
        r = post(env, path, example)
        assert r.status_code == 200, (path, r.text[:300])
        if path == "/score":
            assert len(example["rows"][0]) == len(env["fm"].columns)


def test_score_rows_names_model_and_version_and_matches_the_model(env):
    X = env["X"][-50:]
    r = post(env, "/score", {"rows": X.tolist()})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == NAME and body["version"] == "2" and body["alias"] == "champion"
    expected = env["predictors"]["2"].predict_proba(X.astype(np.float32))
    np.testing.assert_allclose(body["probabilities"], expected, rtol=1e-6)
    # named columns in another order give the same answer
    cols = env["fm"].columns
    order = list(reversed(range(len(cols))))
    r2 = post(env, "/score", {"rows": X[:, order].tolist(), "columns": [cols[i] for i in order]})
    np.testing.assert_allclose(r2.json()["probabilities"], expected, rtol=1e-6)
    # a version by number, and the previous champion by alias
    assert post(env, "/score", {"rows": X[:1].tolist(), "version": "1"}).json()["version"] == "1"
    r3 = post(env, "/score", {"rows": X[:1].tolist(), "version": "previous_champion"}).json()
    assert r3["version"] == "1" and r3["alias"] == "previous_champion"


def test_pinned_tenant_gets_its_version(env):
    X = env["X"][-5:].tolist()
    assert post(env, "/score", {"rows": X}, tenant="beta").json()["version"] == "1"
    assert post(env, "/score", {"rows": X}, tenant="acme").json()["version"] == "2"
    models = post(env, "/models", {}, tenant="beta").json()
    assert models["tenant"] == "beta" and models["models"][0]["default_version"] == "1"
    assert models["models"][0]["aliases"]["champion"] == "2"


def test_a_model_without_skill_is_not_served_as_informative(env):
    """The gate refused every version of NOSKILL for want of skill: asking for its champion
    answers 409 with the gate's interval, not probabilities; a version asked for by number is
    scored and says it has no demonstrated skill; the champion of a skilled model says it has."""
    X = env["X"][-3:].tolist()
    r = post(env, "/score", {"rows": X, "model": NOSKILL})
    assert r.status_code == 409, r.text
    why = r.json()["error"]
    assert f"model {NOSKILL} has no champion: the promotion gate found no skill (version 1: " in why
    assert "does not exclude zero" in why and "ask for a version number" in why, why
    bars = post(env, "/score_bars", {"symbol": "EURUSD", "bars": _payload(env["bars"]), "model": NOSKILL})
    assert bars.status_code == 409 and "no skill" in bars.json()["error"]
    catalog = {m["name"]: m for m in post(env, "/models", {}).json()["models"]}
    assert catalog[NOSKILL]["no_skill"] == why and catalog[NAME]["no_skill"] is None
    anyway = post(env, "/score", {"rows": X, "model": NOSKILL, "version": "1"})
    assert anyway.status_code == 200 and anyway.json()["skill"] == "none"
    # NAME's versions were set champion by hand, never gated: the service does not pretend
    assert post(env, "/score", {"rows": X}).json()["skill"] == "unknown"


def test_models_is_the_catalog_and_matrix_is_a_tenants_grid_in_one_call(env):
    """/models lists every served model with its cell (timeframe, horizon, label kind) and
    state — a served model never registered is "not built", answers 404 saying so, and does not
    make the service unready; /matrix returns the tenant's newest probability of every cell it
    follows as symbol → timeframe → label kind → horizon, null where nothing is scored yet."""
    catalog = {m["name"]: m for m in post(env, "/models", {}).json()["models"]}
    assert list(catalog) == [NAME, NOSKILL, UNBUILT, THREE]
    assert catalog[THREE]["label_kind"] == "up_flat_down" and catalog[THREE]["state"] == "serving"
    assert catalog[NAME]["state"] == "serving" and catalog[NOSKILL]["state"] == "no skill"
    assert (catalog[NAME]["timeframe"], catalog[NAME]["horizon"], catalog[NAME]["label_kind"]) == (
        "M5",
        12,
        "direction",
    )
    built = catalog[UNBUILT]
    assert (
        built["state"] == "not built" and built["aliases"] == {} and built["label_kind"] == "triple_barrier"
    )
    assert (built["timeframe"], built["horizon"]) == ("H1", 24)
    r = post(env, "/score", {"rows": env["X"][-1:].tolist(), "model": UNBUILT})
    assert r.status_code == 404 and f"model {UNBUILT} is not built yet" in r.json()["error"], r.text
    assert httpx.get(env["url"] + "/readyz", timeout=5).status_code == 200

    r = post(env, "/matrix", {}, tenant="delta")
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["tenant"] == "delta" and got["follows"] == 4
    assert got["missing"] == ["XAUUSD:H1:24:triple_barrier"]
    grid = got["grid"]
    assert set(grid) == {"EURUSD", "XAUUSD"}
    newest = grid["EURUSD"]["M15"]["direction"]["4"]
    assert newest["probability"] == pytest.approx(0.41) and newest["bar_time"].startswith("2024-02-05T11:00")
    assert newest["model"] == "grid-M15-direction" and newest["signal"] == "short"  # below 0.45
    assert grid["EURUSD"]["H1"]["triple_barrier"]["24"]["probability"] == pytest.approx(0.46)
    assert grid["XAUUSD"]["M5"]["direction"]["12"]["probability"] == pytest.approx(0.51)
    assert grid["XAUUSD"]["H1"]["triple_barrier"]["24"] is None
    # only one's own grid
    assert post(env, "/matrix", {"tenant": "acme"}, tenant="delta").status_code == 403
    assert post(env, "/matrix", {}, tenant=None).status_code == 401
    acme = post(env, "/matrix", {}).json()
    assert acme["follows"] == 1 and "XAUUSD" not in acme["grid"]


def test_loaded_versions_are_bounded_lru(env):
    X = env["X"][-1:].tolist()
    for tenant, version in (("beta", "1"), ("gamma", "3"), ("acme", "2"), ("gamma", "3")):
        assert post(env, "/score", {"rows": X}, tenant=tenant).json()["version"] == version
    loaded = post(env, "/models", {}).json()["models"][0]["loaded_versions"]
    assert len(loaded) == 2 and "2" in loaded  # max_loaded_versions=2; the champion is kept
    assert post(env, "/score", {"rows": X}, tenant="beta").json()["version"] == "1"  # reloaded on demand


def test_long_lived_objects_are_hidden_from_the_collector_once_at_start(env):
    """The service's full cyclic collections (100-300 ms with the GIL held) fell on stream
    pushes: what is alive once the champion is loaded is frozen, once, before serving — not
    again when other versions load (that pass would be such a stall itself)."""

    def freezes() -> float:
        metrics = httpx.get(env["url"] + "/metrics", timeout=5).text
        line = next(x for x in metrics.splitlines() if x.startswith("mt5prob_gc_freezes_total"))
        return float(line.split()[-1])

    X = env["X"][-1:].tolist()
    for tenant in ("beta", "gamma", "acme"):  # pins 1 and 3 and the champion: other versions load
        assert post(env, "/score", {"rows": X}, tenant=tenant).status_code == 200
    time.sleep(2.5)  # two health checks
    assert freezes() == 1
    metrics = httpx.get(env["url"] + "/metrics", timeout=5).text
    assert 'mt5prob_gc_pause_seconds_count{generation="0"}' in metrics  # every pass is timed


def test_bentoml_build_packages_the_service(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "True"}
    bentoml = Path(sys.executable).with_name("bentoml")
    r = subprocess.run(
        [str(bentoml), "build", "."], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (bento,) = [p for p in (tmp_path / "bentos" / "mt5prob").iterdir() if p.name != "latest"]
    assert (bento / "src" / "serving" / "service.py").is_file()
    assert (
        bento / "src" / "pipelines" / "store" / "migrations" / "versions" / "0001_results_store.py"
    ).is_file()
    openapi = yaml.safe_load((bento / "apis" / "openapi.yaml").read_text())
    assert {"/score", "/score_bars", "/models", "/results/latest", "/results/range"} <= set(openapi["paths"])


def test_auth(env):
    X = env["X"][-1:].tolist()
    assert post(env, "/score", {"rows": X}, tenant=None).status_code == 401
    r = httpx.post(env["url"] + "/score", json={"rows": X}, headers={"X-API-Key": "mt5p_nope_nope"})
    assert r.status_code == 401 and "unknown API key" in r.text
    bearer = httpx.post(
        env["url"] + "/score", json={"rows": X}, headers={"Authorization": f"Bearer {env['keys']['acme']}"}
    )
    assert bearer.status_code == 200
    # version 3 is pinned to gamma and not aliased: not for acme
    r = post(env, "/score", {"rows": X, "version": "3"})
    assert r.status_code == 403 and "pinned to another tenant" in r.text
    r = post(env, "/results/latest", {"tenant": "beta"})
    assert r.status_code == 403
    assert env["keys"]["acme"] not in env["log"].read_text()


def _raw_post(env, path: str, headers: dict[str, str], body: bytes = b"", timeout: float = 5.0):
    """POST over a bare socket — headers (which may declare a Content-Length the body never
    reaches) then `body` — and read the answer: (status, body, seconds until it came)."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(env["url"])
    lines = [f"POST {path} HTTP/1.1", f"Host: {url.hostname}", *(f"{k}: {v}" for k, v in headers.items())]
    head = "\r\n".join(lines) + "\r\n"
    started = time.monotonic()
    with socket.create_connection((url.hostname, url.port), timeout=timeout) as sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1], time.monotonic() - started


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def test_the_key_and_the_body_size_are_checked_before_the_body_is_read(env):
    """A caller declaring a 100 MB body gets its answer at once, with nothing read: 401
    without a valid key, 413 with one; a chunked body past the limit is cut off at the limit;
    a normal request passes the guard and the endpoint reuses its key look-up."""
    big = {"Content-Type": "application/json", "Content-Length": str(100 * 2**20)}
    status, body, took = _raw_post(env, "/score", big)
    assert status == 401 and b"API key" in body and took < 2.0
    status, body, took = _raw_post(env, "/score", big | {"X-API-Key": "mt5p_nope_nope"})
    assert status == 401 and b"unknown API key" in body and took < 2.0
    status, body, took = _raw_post(env, "/score", big | {"X-API-Key": env["keys"]["acme"]})
    assert status == 413 and b"over the limit" in body and took < 2.0
    status, body, _ = _raw_post(env, "/score", {"Content-Length": "12x", "X-API-Key": env["keys"]["acme"]})
    assert status == 400
    limit = 2**20  # the env's serving.max_body_bytes
    chunk = b"x" * 65536
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(limit // len(chunk) + 2))
    chunked = {
        "Transfer-Encoding": "chunked",
        "Content-Type": "application/json",
        "X-API-Key": env["keys"]["acme"],
    }
    status, body, _ = _raw_post(env, "/score", chunked, chunks + b"0\r\n\r\n")
    assert status == 413 and b"over the limit" in body
    small = json.dumps({"rows": env["X"][-1:].tolist()}).encode()
    one = b"%x\r\n%s\r\n0\r\n\r\n" % (len(small), small)
    status, body, _ = _raw_post(env, "/score", chunked, one)
    assert status == 200 and "probabilities" in json.loads(body)
    assert post(env, "/models", {}).status_code == 200 and httpx.get(env["url"] + "/livez").status_code == 200


@pytest.mark.parametrize("spelling", ["03", "003"])
def test_other_digit_strings_of_a_pinned_version_are_the_same_version(env, spelling):
    """ "03" is version 3 (canonical before the pin rule), so gamma's pin refuses it too."""
    r = post(env, "/score", {"rows": env["X"][-1:].tolist(), "version": spelling})
    assert r.status_code == 403 and "version 3 of" in r.text


NOT_CANONICAL = [" 3", "3 ", "\t3", "３", "٣", "+3", "3.0", "-3", "3\x00", "x" * 100_000]


@pytest.mark.parametrize("spelling", NOT_CANONICAL, ids=[f"spelling{i}" for i in range(len(NOT_CANONICAL))])
def test_version_spellings_that_are_not_canonical_are_refused_before_any_loading(env, spelling):
    """Spaces, signs, full-width or Arabic-Indic digits, NUL, a huge string: 400, naming the
    accepted spellings, with at most 40 characters of the input quoted back."""
    r = post(env, "/score", {"rows": env["X"][-1:].tolist(), "version": spelling})
    assert r.status_code == 400, r.text[:200]
    error = r.json()["error"]
    named = (
        "expected a version number" in error or error == "version: String should have at most 64 characters"
    )
    assert named and len(r.content) < 600, error


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"rows": [[0.1, 0.2]]}, 400, "expects"),
        ({"rows": "BAD"}, 400, "rows: Input should be a valid array"),
        ({"rows": [["a"] * 3]}, 400, "rows.0.0: Input should be a valid number"),
        ({"rows": [[0.5, True]]}, 400, "rows.0.1: Input should be a valid number"),
        ({"rows": [[0.5, "0.5"]]}, 400, "rows.0.1: Input should be a valid number"),
        ({"rows": [["a"] * 200] * 1000}, 400, "rows.0.0: Input should be a valid number"),
        ({"rows": []}, 400, "rows: List should have at least 1 item"),
        ({"rows": [[0.0]], "model": "m" * 10**5}, 400, "model: String should have at most 200"),
        ({"rows": [[0.0]], "columns": ["c" * 10**5]}, 400, "columns.0: String should have at most 200"),
        ({"rows": [[0.0]] * 501}, 400, "over the limit"),
        ({"rows": [[0.0, 1.0], [0.0]]}, 400, "row 1 has 1 values"),
        ({"model": "nope", "rows": [[0.0]]}, 404, "not served"),
        ({"version": "99", "rows": [[0.0]]}, 404, "no version"),
        ({"version": "staging", "rows": [[0.0]]}, 404, "no alias"),
    ],
)
def test_bad_rows_are_4xx_with_a_message(env, body, status, message):
    """Each bad body: its 4xx, one line naming the field, nothing of the input echoed whole
    (a body of 400,000 strings is one error, not 400,000)."""
    r = post(env, "/score", body)
    assert r.status_code == status, r.text
    assert message in r.text and len(r.content) <= 400 and list(r.json()) == ["error"]


def test_a_large_batch_with_warm_up_nulls_is_scored_like_a_small_one(env):
    """A body over the off-loop threshold (parsed in the helper process) gives the same
    probabilities as the same rows sent in small requests; nulls are imputed as in training."""
    X = env["X"][-480:].copy()
    X[::3, 2] = np.nan
    rows = [[None if np.isnan(v) else float(v) for v in row] for row in X]
    big = post(env, "/score", {"rows": rows, "columns": list(env["fm"].columns)})
    assert big.status_code == 200, big.text
    small = [
        p
        for i in range(0, 480, 40)
        for p in post(env, "/score", {"rows": rows[i : i + 40]}).json()["probabilities"]
    ]
    assert np.allclose(big.json()["probabilities"], small, atol=1e-7)


def test_bad_columns_and_non_finite_values(env):
    X = env["X"][-2:].copy()
    cols = list(env["fm"].columns)
    r = post(env, "/score", {"rows": X.tolist(), "columns": ["x"] + cols[1:]})
    assert r.status_code == 400 and "missing" in r.text and "'x'" in r.text
    X[1, 3] = np.inf
    body = json.dumps({"rows": X.tolist()}).replace("Infinity", "1e999")
    r = httpx.post(
        env["url"] + "/score",
        content=body,
        headers={"X-API-Key": env["keys"]["acme"], "Content-Type": "application/json"},
    )
    assert r.status_code == 400 and "rows.1.3: Input should be a finite number" in r.text
    X[1, 3] = np.nan
    r = httpx.post(
        env["url"] + "/score",
        content=json.dumps({"rows": X.tolist()}),
        headers={"X-API-Key": env["keys"]["acme"], "Content-Type": "application/json"},
    )
    assert r.status_code == 400, r.text


def test_score_from_bars_equals_training_features(env):
    bars, fm = env["bars"], env["fm"]
    i = len(bars["M5"]) - 7
    r = post(env, "/score_bars", {"symbol": "EURUSD", "bars": _payload(bars, i + 1)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (
        body["version"] == "2"
        and body["bar_time"] == datetime.fromtimestamp(bars["M5"].time[i], UTC).isoformat()
    )
    expected = env["predictors"]["2"].predict_proba(fm.values[i : i + 1])
    assert body["probability"] == pytest.approx(float(expected[0]), abs=1e-6)


def test_a_three_class_model_answers_all_three_probabilities(env):
    """/score and /score_bars of an up/flat/down model: P(up) where a binary model gives
    P(label 1), and [P(down), P(flat), P(up)] per row (summing to 1) as the model computes them."""
    X = env["X"][-20:]
    r = post(env, "/score", {"rows": X.tolist(), "model": THREE})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = env["predictors"]["three"].predict_proba(X.astype(np.float32))
    assert body["classes"] == ["down", "flat", "up"] and body["version"] == "1"
    np.testing.assert_allclose(body["class_probabilities"], expected, rtol=1e-6)
    np.testing.assert_allclose(np.sum(body["class_probabilities"], axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(body["probabilities"], expected[:, 2], rtol=1e-6)
    binary = post(env, "/score", {"rows": X[:1].tolist()}).json()
    assert binary["classes"] is None and binary["class_probabilities"] is None

    bars, fm = env["bars"], env["fm"]
    i = len(bars["M5"]) - 7
    r = post(env, "/score_bars", {"symbol": "EURUSD", "bars": _payload(bars, i + 1), "model": THREE})
    assert r.status_code == 200, r.text
    got = r.json()
    want = env["predictors"]["three"].predict_proba(fm.values[i : i + 1])[0]
    assert list(got["probabilities"]) == ["down", "flat", "up"]
    np.testing.assert_allclose(list(got["probabilities"].values()), want, atol=1e-6)
    assert got["probability"] == pytest.approx(float(want[2]), abs=1e-6)


def test_bad_bars(env):
    bars = env["bars"]
    need = history_bars(bars, SPEC)
    short = _payload(bars)
    short["H1"] = {k: v[-(need["H1"] - 1) :] for k, v in short["H1"].items()}
    r = post(env, "/score_bars", {"symbol": "EURUSD", "bars": short})
    assert r.status_code == 400 and "too few bars" in r.text and "H1" in r.text
    r = post(env, "/score_bars", {"symbol": "EURUSD", "bars": {"M5": _payload(bars)["M5"]}})
    assert r.status_code == 400 and "missing" in r.text
    broken = _payload(bars)
    broken["M5"]["time"] = list(reversed(broken["M5"]["time"]))
    r = post(env, "/score_bars", {"symbol": "EURUSD", "bars": broken})
    assert r.status_code == 400 and "increasing" in r.text
    ragged = _payload(bars)
    ragged["M5"]["close"] = ragged["M5"]["close"][:-1]
    assert post(env, "/score_bars", {"symbol": "EURUSD", "bars": ragged}).status_code == 400
    for when in (2**63, 2**62, 10**12, -1):  # past 64 bits, past year 2100, before 1970
        odd = _payload(bars)
        odd["M5"]["time"][-1] = when
        r = post(env, "/score_bars", {"symbol": "EURUSD", "bars": odd})
        assert r.status_code == 400 and r.json()["error"].startswith("bars.M5.time."), r.text
    for symbol in ("EUR\x00USD", "E" * 1000, ""):
        r = post(env, "/score_bars", {"symbol": symbol, "bars": _payload(bars)})
        assert r.status_code == 400 and r.json()["error"].startswith("symbol:"), r.text
    r = post(env, "/score_bars", {"symbol": "EURUSD", "bars": {"M7": _payload(bars)["M5"]}})
    assert r.status_code == 400 and r.json()["error"].startswith("bars.M7"), r.text


def test_results_endpoints(env):
    store = env["store"]
    t0 = datetime(2024, 3, 1, tzinfo=UTC)
    bars = [t0 + timedelta(minutes=5 * k) for k in range(4)]
    scores = [  # the followed version for every bar; beta's pinned version for the first
        ScoreRow("EURUSD", "M5", t, 12, "direction", NAME, "2", 0.5 + k / 100, True, t + timedelta(minutes=5))
        for k, t in enumerate(bars)
    ] + [ScoreRow("EURUSD", "M5", t0, 12, "direction", NAME, "1", 0.4, False, t0 + timedelta(minutes=5))]
    store.write_scores(scores)
    latest = post(env, "/results/latest", {}).json()
    assert latest["tenant"] == "acme" and len(latest["rows"]) == 1
    assert latest["rows"][0]["probability"] == pytest.approx(0.53)
    rng = post(
        env, "/results/range", {"start": t0.isoformat(), "end": (t0 + timedelta(minutes=10)).isoformat()}
    )
    assert [r["bar_time"] for r in rng.json()["rows"]] == [
        (t0 + timedelta(minutes=5)).isoformat(),
        t0.isoformat(),
    ]
    assert post(env, "/results/range", {"start": t0.isoformat(), "end": t0.isoformat()}).status_code == 400
    assert len(post(env, "/results/latest", {}, tenant="beta").json()["rows"]) == 1

    # portability: the caller's own whole package, a zip whose checksums hold
    import io
    import zipfile

    from pipelines.store.export import verify_package

    r = post(env, "/export", {}, tenant="beta")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip", r.text[:300]
    assert "attachment" in r.headers["content-disposition"]
    manifest = verify_package(r.content)
    assert manifest["tenant_id"] == env["beta"].tenant_id
    archive = zipfile.ZipFile(io.BytesIO(r.content))
    settings = json.loads(archive.read("tenant.json"))
    assert settings["name"] == "beta" and settings["pins"] == {NAME: "1"}
    results = pd.read_parquet(io.BytesIO(archive.read("results.parquet")))
    assert results.model_version.tolist() == ["1"] and results.probability.tolist() == [0.4]
    everything = b"".join(archive.read(n) for n in archive.namelist())
    assert env["acme"].tenant_id.encode() not in everything and env["keys"]["beta"].encode() not in everything
    assert post(env, "/export", {}, tenant=None).status_code == 401


class SseClient:
    """A GET /stream reader on its own thread: parsed events as they arrive."""

    def __init__(self, env, tenant="acme", headers=None, params=None):
        self.events: list[tuple[int, dict]] = []
        self.client = httpx.Client(timeout=httpx.Timeout(10.0, read=None))
        hdrs = {"X-API-Key": env["keys"][tenant], **(headers or {})}
        self._cm = self.client.stream("GET", env["url"] + "/stream", headers=hdrs, params=params)
        self.response = self._cm.__enter__()
        self.received_at: list[float] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        event_id, data = None, None
        try:
            for line in self.response.iter_lines():
                if line.startswith("id: "):
                    event_id = int(line[4:])
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                elif line == "" and data is not None:
                    self.events.append((event_id, data))
                    self.received_at.append(time.time())
                    event_id, data = None, None
        except (httpx.HTTPError, RuntimeError):
            pass

    def wait(self, n, timeout=10.0):
        end = time.monotonic() + timeout
        while len(self.events) < n and time.monotonic() < end:
            time.sleep(0.02)
        return self.events

    def close(self):
        try:
            self._cm.__exit__(None, None, None)
        finally:
            self.client.close()


def test_stream_pushes_results_resumes_and_isolates_tenants(env):
    from pipelines.events import RedisBus

    store = env["store"]
    bus = RedisBus("redis://127.0.0.1:6379/0")
    t0 = datetime(2024, 5, 6, 10, tzinfo=UTC)

    def scores(k0, n, version="2", followed=True):
        out = []
        for k in range(k0, k0 + n):
            t = t0 + timedelta(minutes=5 * k)
            out.append(ScoreRow("EURUSD", "M5", t, 12, "direction", NAME, version, 0.5, followed, t))
        return out

    acme = SseClient(env, params={"after": 0})
    beta = SseClient(env, tenant="beta")  # no cursor: only what comes from now on
    assert acme.response.status_code == 200
    assert acme.response.headers["content-type"].startswith("text/event-stream")
    before = len(acme.wait(10**6, timeout=1.0))  # whatever acme had already (other tests)
    sent = time.time()
    store.write_scores(scores(0, 3) + scores(0, 1, version="1", followed=False))
    bus.publish({"scores": 4})
    got = acme.wait(before + 3, timeout=5.0)
    assert len(got) == before + 3 and time.time() - sent < 5.0  # the bus woke it, not the 30 s re-read
    new = got[before:]
    assert [d["bar_time"] for _, d in new] == [(t0 + timedelta(minutes=5 * k)).isoformat() for k in range(3)]
    assert {d["model_version"] for _, d in new} == {"2"} and all(i == d["event_id"] for i, d in new)
    theirs = beta.wait(1, timeout=5.0)
    assert [d["model_version"] for _, d in theirs] == ["1"]  # beta is pinned to v1: its row only
    last = new[-1][0]
    acme.close()
    store.write_scores(scores(3, 2))  # while acme is away
    bus.publish({"scores": 2})
    again = SseClient(env, headers={"Last-Event-ID": str(last)})
    resumed = again.wait(2, timeout=5.0)
    expected = [(t0 + timedelta(minutes=5 * k)).isoformat() for k in (3, 4)]
    assert [d["bar_time"] for _, d in resumed] == expected
    assert all(i > last for i, _ in resumed)  # nothing repeated, nothing missed
    time.sleep(0.3)
    assert len(again.events) == 2
    again.close()
    beta.close()
    bus.close()
    metrics = httpx.get(env["url"] + "/metrics", timeout=5).text
    for name in ("mt5prob_result_commit_lag_seconds", "mt5prob_result_delivery_lag_seconds"):
        line = next(x for x in metrics.splitlines() if x.startswith(f'{name}_count{{timeframe="M5"}}'))
        assert float(line.split()[-1]) >= 6  # every result pushed above (acme 5, beta 1)
    # bad requests: no key, a cursor that is not an event id, too many streams
    r = httpx.get(env["url"] + "/stream", timeout=5)
    assert r.status_code == 401 and "API key" in r.json()["error"]
    bad = httpx.get(
        env["url"] + "/stream", headers={"X-API-Key": env["keys"]["acme"], "Last-Event-ID": "1e9"}, timeout=5
    )
    assert bad.status_code == 400
    held = [SseClient(env, tenant="gamma") for _ in range(3)]
    try:
        for h in held:
            assert h.response.status_code == 200
        extra = httpx.get(env["url"] + "/stream", headers={"X-API-Key": env["keys"]["gamma"]}, timeout=5)
        assert extra.status_code == 429
    finally:
        for h in held:
            h.close()


def test_streams_end_when_a_replica_stops_and_resume_on_its_successor(env):
    """A restart: the stopping replica ends its open streams at once (it does not wait on
    them, and its clients do not keep talking to a replica on its way out); the client
    reconnects to the new one with its last event id and gets exactly what it missed."""
    from pipelines.events import RedisBus
    from serving.devserver import free_port

    store = env["store"]
    t0 = datetime(2024, 6, 3, 10, tzinfo=UTC)

    def scores(k0, n):
        rows = []
        for k in range(k0, k0 + n):
            t = t0 + timedelta(minutes=5 * k)
            rows.append(ScoreRow("EURUSD", "M5", t, 12, "direction", NAME, "2", 0.5, True, t))
        return rows

    bus = RedisBus("redis://127.0.0.1:6379/0")
    port = free_port()
    first = running_service(env["params"], port=port, log=env["root"] / "restart-1.log")
    service = first.__enter__()
    try:
        client = SseClient({**env, "url": service.url}, params={"after": 0})
        time.sleep(0.5)  # subscribed
        store.write_scores(scores(0, 2))
        bus.publish({"scores": 2})
        deadline = time.monotonic() + 10
        while not any(d["bar_time"] == (t0 + timedelta(minutes=5)).isoformat() for _, d in client.events):
            assert time.monotonic() < deadline, "the stream did not deliver"
            time.sleep(0.05)
        got = client.events
        assert got and got[-1][1]["bar_time"] == (t0 + timedelta(minutes=5)).isoformat()
        last = got[-1][0]
    finally:
        stopping = time.monotonic()
        first.__exit__(None, None, None)
    stopped_in = time.monotonic() - stopping
    client._thread.join(timeout=5)
    assert not client._thread.is_alive(), "the stream outlived its replica"
    assert stopped_in < 15, f"the replica took {stopped_in:.0f} s to stop with a stream open"
    client.close()
    store.write_scores(scores(2, 3))  # while no replica runs
    with running_service(env["params"], port=port, log=env["root"] / "restart-2.log") as again:
        resumed = SseClient({**env, "url": again.url}, headers={"Last-Event-ID": str(last)})
        resumed.wait(3, timeout=10.0)
        time.sleep(0.3)
        resumed.close()
    bus.close()
    assert [d["bar_time"] for _, d in resumed.events] == [
        (t0 + timedelta(minutes=5 * k)).isoformat() for k in (2, 3, 4)
    ]
    assert all(i > last for i, _ in resumed.events)


def test_rollback_and_promotion_under_load_without_failures(env):
    X = env["X"][-1:].tolist()
    seen: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(headers={"X-API-Key": env["keys"]["acme"]}, timeout=30) as c:
            while not stop.is_set():
                r = c.post(env["url"] + "/score", json={"rows": X})
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text}")
                else:
                    seen.append(r.json()["version"])

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        rollback = subprocess.run(
            [
                sys.executable,
                "-m",
                "serving.rollback",
                NAME,
                "--reason",
                "test under load",
                "--params",
                str(env["params"]),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert rollback.returncode == 0, rollback.stderr
        assert "champion 2 -> 1" in rollback.stdout
        moved = _wait_for_version(env, "1", timeout=5.0)
        demoted = env["registry"].client.get_model_version(NAME, "2").tags
        env["registry"].set_champion(NAME, "2", reason="promotion back", actor="test")
        promoted = _wait_for_version(env, "2", timeout=5.0)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:3]
    assert moved <= 5.0 and promoted <= 5.0
    assert "1" in seen and seen[-1] == "2"
    assert "test under load" in demoted["demoted_reason"]
    tags = env["registry"].client.get_model_version(NAME, "2").tags  # champion again: tags cleaned
    assert "demoted_reason" not in tags and tags["champion_reason"] == "promotion back"
    bad = subprocess.run(
        [sys.executable, "-m", "serving.rollback", NAME, "--to", "42", "--params", str(env["params"])],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "no version '42'" in bad.stderr


def _wait_for_version(env, version: str, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        r = post(env, "/score", {"rows": env["X"][-1:].tolist()})
        # a non-200 here is retried: the load threads record every one they meet, with its body
        if r.status_code == 200 and r.json()["version"] == version:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"service did not move to version {version} within {timeout} s")


def test_schemathesis_finds_no_server_errors_and_no_schema_violations(env):
    """Schema-generated requests (valid and invalid bodies) on every keyed operation, with a
    valid key: never a 5xx; every answer's status, content type, headers and body as the
    document declares; every schema-invalid body rejected with a 4xx (strict types)."""
    import schemathesis
    from schemathesis.checks import (
        content_type_conformance,
        negative_data_rejection,
        not_a_server_error,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        negative_data_rejection,
    ]
    schema = schemathesis.openapi.from_url(env["url"] + "/docs/openapi.json")
    failures: list[str] = []
    counts: dict[str, int] = {}
    for op in ("/score", "/score_bars", "/models", "/results/latest", "/results/range"):
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            strategy = schema[op]["POST"].as_strategy(generation_mode=mode)
            _fuzz(strategy, env, f"{op} {mode}", failures, counts, checks)
    assert not failures, failures[:3]
    assert len(counts) == 10 and all(n >= 5 for n in counts.values()), counts


def _fuzz(strategy, env, op: str, failures: list[str], counts: dict[str, int], checks: list) -> None:
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=strategy)
    def run(case):
        case.headers = {**(case.headers or {}), "X-API-Key": env["keys"]["acme"]}
        response = case.call(base_url=env["url"], timeout=30)
        counts[op] = counts.get(op, 0) + 1
        try:
            case.validate_response(response, checks=checks)
        except Exception as exc:  # noqa: BLE001 - every failed check is collected and shown
            failures.append(
                f"{op}: {response.status_code} {response.text[:200]} for {case.body!r:.200}: "
                f"{' '.join(str(exc).split())[:600]}"
            )

    run()
