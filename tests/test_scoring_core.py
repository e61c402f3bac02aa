"""The scoring core, shared by the service and live scoring:

* the same bars scored through ``/score_bars``, ``/score`` and live scoring give *identical*
  probabilities for the same model version (the service built in-process from its class,
  reading its params when it starts);
* the trailing window reproduces the full-history feature rows; the bar checks refuse each
  broken-bar kind with a message naming it;
* ``import serving.service`` needs no params.yaml.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import small_features

from features.bars import BAR_COLUMNS
from features.labels import direction_labels
from features.matrix import build_features
from features.spec import DirectionLabelSpec
from features.window import BarCheckError, bar_fields, check_bars, trailing_window
from models.base_learners import LogisticLearner
from pipelines import ingest
from pipelines.bar_store import BarStore
from pipelines.config import load_params
from pipelines.featurize import load_bars
from pipelines.live_score import LiveScorer
from pipelines.registry import Registry, model_name
from pipelines.store import ResultsStore, Subscription

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("core")
    overrides = {
        "data": {
            "root": str(root / "data"),
            "symbols": ["EURUSD"],
            "timeframes": ["M5", "H1"],
            "simulator": {"end": "2024-02-03T00:00:00"},
        },
        "features": small_features("calendar"),
        "registry": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"},
        "store": {"url": f"sqlite:///{root / 'results.db'}"},
        "serving": {"auth_cache_seconds": 0},
    }
    params = load_params(REPO / "params.yaml", None, overrides)
    ingest.history(params.data)
    spec = params.features.spec()
    full = load_bars(BarStore(params.data.root), "EURUSD", ["M5", "H1"])
    matrix = build_features(full, spec)
    y = direction_labels(full["M5"], DirectionLabelSpec(horizon=12))["label"]
    ok = np.isfinite(y) & np.isfinite(matrix.values).all(axis=1)
    name = model_name("mt5prob", "fx", "M5", "direction", 12)
    registry = Registry(params.registry.tracking_uri)
    learner = LogisticLearner(C=1e-2).fit(matrix.values[ok], y[ok])
    example = pd.DataFrame(matrix.values[ok][:3], columns=matrix.columns)
    meta = {"feature_spec": dataclasses.asdict(spec)}
    version = registry.log_and_register(name, learner, matrix.columns, example, {}, {}, {}, [], meta=meta)
    registry.set_champion(name, version, reason="test", actor="test")
    store = ResultsStore(params.store.url)
    store.migrate()
    _, key = store.add_tenant("acme", [Subscription("EURUSD", "M5", 12)])
    path = root / "params.yaml"
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw.pop("profiles", None)
    for section, values in overrides.items():
        raw[section] = {**raw.get(section, {}), **values}
    raw["serving"]["models"] = [name]
    path.write_text(yaml.safe_dump(raw))
    yield {
        "params": params,
        "path": path,
        "store": store,
        "key": key,
        "full": full,
        "spec": spec,
        "matrix": matrix,
        "name": name,
        "version": version,
    }
    store.close()


@pytest.fixture(scope="module")
def client(world, tmp_path_factory):
    """The scoring service in this process (one per process: its metrics register globally),
    on the world's params with API keys cached for a minute."""
    from starlette.testclient import TestClient

    raw = yaml.safe_load(world["path"].read_text())
    raw["serving"]["auth_cache_seconds"] = 60
    path = tmp_path_factory.mktemp("client") / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    saved = {k: os.environ.get(k) for k in ("MT5PROB_PARAMS", "MT5PROB_PROFILE")}
    os.environ["MT5PROB_PARAMS"] = str(path)
    os.environ.pop("MT5PROB_PROFILE", None)
    from serving.service import ScoringService

    try:
        with TestClient(app=ScoringService.to_asgi()) as c:
            yield c
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_same_bars_same_probability_through_every_path(world, client):

    store, spec, full = world["store"], world["spec"], world["full"]
    report = LiveScorer(world["params"], store).cycle()  # no watermark yet: the newest bar
    assert report.rows == 1, report
    tenant = store.directory()[0]
    with store.tenant(tenant.tenant_id, "test") as s:
        live = s.probabilities().iloc[0]

    # the same bars a client would send: the newest M5 bars and the H1 bars closed by then
    n = len(full["M5"])
    window = trailing_window(full, spec, n - 1)
    assert not window.short
    body = {
        "symbol": "EURUSD",
        "bars": {tf: {f: getattr(b, f).tolist() for f in BAR_COLUMNS} for tf, b in window.bars.items()},
    }
    X, times = window.features(spec)
    assert int(times[0]) == int(live.bar_time.timestamp())
    row = [None if not np.isfinite(v) else float(v) for v in X[0]]

    headers = {"X-API-Key": world["key"]}
    by_bars = client.post("/score_bars", json=body, headers=headers)
    by_rows = client.post("/score", json={"rows": [row]}, headers=headers)
    assert by_bars.status_code == 200, by_bars.text
    assert by_rows.status_code == 200, by_rows.text
    assert by_bars.json()["version"] == by_rows.json()["version"] == live.model_version == world["version"]
    p_bars, p_rows = by_bars.json()["probability"], by_rows.json()["probabilities"][0]
    assert p_bars == p_rows == float(live.probability), (p_bars, p_rows, live.probability)


def test_trailing_window_rows_equal_full_history_rows(world):
    spec, full, matrix = world["spec"], world["full"], world["matrix"]
    n = len(full["M5"])
    for first, last in ((n - 1, n - 1), (n - 40, n - 1), (n - 300, n - 295)):
        window = trailing_window(full, spec, first, last)
        assert not window.short
        assert len(window.bars["M5"]) < n  # a real window, not the whole history
        X, times = window.features(spec)
        np.testing.assert_array_equal(times, full["M5"].time[first : last + 1])
        np.testing.assert_allclose(X, matrix.values[first : last + 1], rtol=1e-5, atol=1e-6, equal_nan=True)


def test_trailing_window_reports_missing_history(world):
    spec, full = world["spec"], world["full"]
    window = trailing_window(full, spec, 3)
    assert "M5" in window.short and window.short["M5"][0] == 4
    with pytest.raises(IndexError):
        trailing_window(full, spec, len(full["M5"]))


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda f: f.update(close=f["close"][:-1]), "different lengths"),
        (lambda f: f.update(time=f["time"][::-1].copy()), "increasing"),
        (lambda f: f.update(time=f["time"] + 7), "grid"),
        (lambda f: f["low"].__setitem__(3, f["high"][3] + 1), "high below low"),
        (lambda f: f["open"].__setitem__(0, -1.0), "finite and positive"),
        (lambda f: f["close"].__setitem__(0, np.nan), "finite and positive"),
        (lambda f: f["spread"].__setitem__(0, np.inf), "tick_volume and spread"),
        (lambda f: f.pop("spread"), "missing"),
    ],
)
def test_bar_checks_name_each_broken_rule(world, breakage, message):
    b = world["full"]["M5"].slice(0, 50)
    fields = {k: v.copy() for k, v in bar_fields(b).items()}
    check_bars("M5", 300, fields)  # intact bars pass
    breakage(fields)
    with pytest.raises(BarCheckError, match=message):
        check_bars("M5", 300, fields)
    with pytest.raises(BarCheckError, match="over the limit"):
        check_bars("M5", 300, bar_fields(b), max_bars=10)


def test_service_module_imports_without_params(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MT5PROB_")}
    r = subprocess.run(
        [sys.executable, "-c", "import serving.service as s; print(s.ScoringService.name)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and r.stdout.strip() == "mt5prob", r.stderr[-2000:]


def test_version_references_have_one_spelling():
    from pipelines.model_cache import BadVersion, canonical_ref

    assert [canonical_ref(r) for r in ("2", "02", "000000002", "champion", "previous_champion")] == [
        "2",
        "2",
        "2",
        "champion",
        "previous_champion",
    ]
    for bad in (" 2", "2 ", "\t2", "２", "٢", "+2", "2.0", "", "1234567890", "a b", "é", "x" * 65):
        with pytest.raises(BadVersion, match="expected a version number"):
            canonical_ref(bad)
    with pytest.raises(BadVersion) as info:
        canonical_ref("y" * 10_000)
    assert len(str(info.value)) < 200


def test_the_pin_rule_fails_closed_when_the_store_cannot_answer(world, client):
    """Asking for a version number that no alias names needs the store (is it another
    tenant's pin?). With the store unable to answer, the service says 503 — it used to
    assume "not pinned" and serve it."""
    import sqlalchemy as sa

    headers = {"X-API-Key": world["key"]}
    rows = {"rows": [[0.0] * world["matrix"].values.shape[1]]}
    store = world["store"]
    assert client.post("/score", json=rows, headers=headers).status_code == 200  # the key is cached
    with store.admin_engine.begin() as conn:  # the tenants table unreadable: the store fails
        conn.execute(sa.text("ALTER TABLE tenants RENAME TO tenants_away"))
    try:
        r = client.post("/score", json=rows | {"version": "99"}, headers=headers)
    finally:
        with store.admin_engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE tenants_away RENAME TO tenants"))
    assert r.status_code == 503 and "pinned" in r.json()["error"], r.text
    assert client.post("/score", json=rows | {"version": "99"}, headers=headers).status_code == 404
