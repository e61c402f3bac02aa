"""Live scoring on both store backends: fan-out per tenant with pins, equality with the
full-history features, idempotent re-runs, a crash mid-write then resume with no gap and no
duplicate, backfill after an outage, and a promotion picked up by the next cycle."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from conftest import small_features

from features.labels import direction_labels
from features.matrix import build_features
from features.spec import DirectionLabelSpec
from models.base_learners import LogisticLearner
from pipelines import ingest
from pipelines.bar_store import BarStore
from pipelines.config import load_params
from pipelines.featurize import load_bars
from pipelines.live_score import LiveScorer
from pipelines.registry import Registry, model_name
from pipelines.store import ResultsStore, Subscription

pytestmark = pytest.mark.slow

SYMBOLS = ["EURUSD", "XAUUSD"]
FEATURES = small_features("calendar", "previous_day")


@pytest.fixture(scope="module")
def world(tmp_path_factory, contract):
    """Bars ingested from the simulator and two registered versions of the M5 h12 model."""
    root = tmp_path_factory.mktemp("live")
    params = load_params(
        "params.yaml",
        None,
        {
            "data": {
                "root": str(root / "data"),
                "symbols": SYMBOLS,
                "timeframes": ["M5", "H1"],
                "simulator": {"end": "2024-01-24T00:00:00"},
            },
            "features": FEATURES,
            "registry": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"},
            "live_score": {"max_bars_per_cycle": 50},
        },
    )
    ingest.history(params.data)
    spec = params.features.spec()
    full = {s: load_bars(BarStore(params.data.root), s, ["M5", "H1"]) for s in SYMBOLS}
    matrices = {s: build_features(full[s], spec) for s in SYMBOLS}
    X = np.concatenate([matrices[s].values for s in SYMBOLS])
    y = np.concatenate(
        [direction_labels(full[s]["M5"], DirectionLabelSpec(horizon=12))["label"] for s in SYMBOLS]
    )
    ok = np.isfinite(y)
    name = model_name("mt5prob", "fx", "M5", "direction", 12)
    registry = Registry(params.registry.tracking_uri)
    meta = {"feature_spec": dataclasses.asdict(spec)}
    columns = matrices["EURUSD"].columns
    example = pd.DataFrame(np.nan_to_num(X[:3]), columns=columns)
    learners = {}
    for version, c in (("1", 1e-3), ("2", 1e-1)):
        learners[version] = LogisticLearner(C=c).fit(X[ok], y[ok])
        registry.log_and_register(name, learners[version], columns, example, {}, {}, {}, [], meta=meta)
    registry.set_champion(name, "1", reason="test", actor="test")
    return {
        "params": params,
        "root": root,
        "name": name,
        "registry": registry,
        "matrices": matrices,
        "learners": learners,
    }


def tenants(store, name):
    a, _ = store.add_tenant("a", [Subscription("EURUSD", "M5", 12), Subscription("XAUUSD", "M5", 12)])
    b, _ = store.add_tenant(
        "b", [Subscription("EURUSD", "M5", 12)], long_above=0.5, short_below=0.5, pins={name: "2"}
    )
    return a, b


def rows_of(store, tenant):
    with store.tenant(tenant.tenant_id, "test") as s:
        return s.probabilities().sort_values(["symbol", "bar_time"]).reset_index(drop=True)


def test_cycle_fans_out_scores_once_and_matches_full_history(world, store):
    a, b = tenants(store, world["name"])
    scorer = LiveScorer(world["params"], store, registry=world["registry"])
    report = scorer.cycle()
    assert report.rows_per_tenant == {a.tenant_id: 2, b.tenant_id: 1}
    # EURUSD is followed by both tenants but scored once per model version
    assert report.scored == {
        ("EURUSD", "M5", world["name"], "1"): 1,
        ("XAUUSD", "M5", world["name"], "1"): 1,
        ("EURUSD", "M5", world["name"], "2"): 1,
    }
    assert report.model_calls == 2
    ra, rb = rows_of(store, a), rows_of(store, b)
    assert set(ra.model_version) == {"1"} and set(rb.model_version) == {"2"}  # b is pinned
    for tenant_rows, version in ((ra, "1"), (rb, "2")):
        for row in tenant_rows.itertuples():
            m = world["matrices"][row.symbol]
            i = int(np.searchsorted(m.time, int(row.bar_time.timestamp())))
            expected = world["learners"][version].predict_proba(m.values[i : i + 1])[0]
            assert row.probability == pytest.approx(expected, abs=1e-6)
            assert i == len(m.time) - 1  # the newest closed bar
    assert rb.signal[0] == (
        "long" if rb.probability[0] > 0.5 else "short" if rb.probability[0] < 0.5 else "flat"
    )
    assert store.watermarks()[("EURUSD", "M5")] == ra.bar_time.max().to_pydatetime()
    again = scorer.cycle()  # nothing new closed: nothing written
    assert again.rows == 0 and len(rows_of(store, a)) == 2


def test_crash_mid_write_then_resume_without_gap_or_duplicate(world, store):
    a, b = tenants(store, world["name"])
    scorer = LiveScorer(world["params"], store, registry=world["registry"])
    scorer.cycle()
    newest = store.watermarks()[("EURUSD", "M5")]
    # an outage: the scorer last ran 8 bars ago (for both series)
    back = {k: v - timedelta(minutes=40) for k, v in store.watermarks().items()}
    store.move_watermarks(back)

    def crash(stage: str) -> None:
        if stage == "rows-written":  # every tenant's rows are in the database, not yet committed
            raise RuntimeError("killed before commit")

    with pytest.raises(RuntimeError, match="killed before commit"):
        scorer.cycle(fault=crash)
    assert store.watermarks() == back and len(rows_of(store, a)) == 2 and len(rows_of(store, b)) == 1
    report = scorer.cycle()
    assert report.rows_per_tenant == {a.tenant_id: 16, b.tenant_id: 8}
    ra = rows_of(store, a)
    # the 8 bars after the old watermark (the newest one again, overwritten in place)
    assert len(ra) == 16 and not ra.duplicated(["symbol", "bar_time", "model_version"]).any()
    for symbol in SYMBOLS:  # every bar from the last scored one to the newest, none missing
        times = world["matrices"][symbol].time
        got = ra[ra.symbol == symbol].bar_time.map(lambda t: int(t.timestamp())).tolist()
        assert got == times[-8:].tolist()
    assert store.watermarks()[("EURUSD", "M5")] == newest
    # a full re-run of the same bars rewrites the same rows (idempotent upserts)
    store.move_watermarks(back)
    scorer.cycle()
    assert rows_of(store, a).drop(columns="scored_at").equals(ra.drop(columns="scored_at"))


def test_backfill_spreads_over_cycles_and_promotion_is_picked_up(world, store):
    a, _ = tenants(store, world["name"])
    scorer = LiveScorer(world["params"], store, registry=world["registry"])
    scorer.cycle()
    back = {k: v - timedelta(minutes=5 * 70) for k, v in store.watermarks().items()}
    store.move_watermarks(back)
    first = scorer.cycle()  # max_bars_per_cycle = 50
    assert first.scored[("EURUSD", "M5", world["name"], "1")] == 50
    world["registry"].set_champion(world["name"], "2", reason="promoted between cycles", actor="test")
    try:
        second = scorer.cycle()
    finally:
        world["registry"].set_champion(world["name"], "1", reason="restore", actor="test")
    assert second.scored[("EURUSD", "M5", world["name"], "2")] == 20
    ra = rows_of(store, a)
    eur = ra[ra.symbol == "EURUSD"]
    times = world["matrices"]["EURUSD"].time
    by_bar = eur.groupby(eur.bar_time.map(lambda t: int(t.timestamp()))).model_version.agg(set)
    assert by_bar.index.tolist() == times[-70:].tolist()  # no gap
    assert all(v == {"1"} for v in by_bar.iloc[:50]) and all("2" in v for v in by_bar.iloc[50:])
    assert by_bar.iloc[-1] == {"1", "2"}  # the newest bar: scored by v1 before, by v2 now


def test_the_challenger_is_scored_in_the_shadow_of_the_champion(world, store):
    """Issue 18: the bars scored with the followed version (champion v1) are scored with the
    challenger (v2) too, after the cycle and given to no tenant; both probabilities are stored
    with the bar, equal to what each version gives on the full-history features."""
    name, registry = world["name"], world["registry"]
    assert registry.alias_version(name, "challenger") == "2"
    a, b = tenants(store, name)
    scorer = LiveScorer(world["params"], store, registry=registry)
    scorer.cycle()
    store.move_watermarks({k: v - timedelta(minutes=40) for k, v in store.watermarks().items()})
    scorer.cycle()  # 8 bars of both series with v1 (the newest again), EURUSD with v2 for b's pin
    given = {t.tenant_id: rows_of(store, t) for t in (a, b)}
    assert scorer.shadow() == 16  # 8 bars × 2 series, the newest bar once
    assert scorer.shadow() == 0  # nothing left to do
    shadow = store.shadow_scores()
    assert (
        len(shadow) == 16
        and set(shadow.challenger_version) == {"2"}
        and set(shadow.champion_version) == {"1"}
    )
    for row in shadow.itertuples():
        m = world["matrices"][row.symbol]
        i = int(np.searchsorted(m.time, int(row.bar_time.timestamp())))
        x = m.values[i : i + 1]
        assert row.challenger == pytest.approx(world["learners"]["2"].predict_proba(x)[0], abs=1e-6)
        assert row.champion == pytest.approx(world["learners"]["1"].predict_proba(x)[0], abs=1e-6)
        assert row.bar_closed_at == row.bar_time + timedelta(minutes=5)
    for t in (a, b):  # no tenant was given a shadow score
        assert (
            rows_of(store, t).drop(columns="scored_at").equals(given[t.tenant_id].drop(columns="scored_at"))
        )
    if store.dialect == "postgresql":  # and none can read them: row-level security
        with store.tenant(b.tenant_id, "test") as session:
            assert session.execute(sa.text("SELECT count(*) FROM shadow_scores")).scalar_one() == 0
    # the challenger is the champion: nothing to shadow
    registry.client.set_registered_model_alias(name, "challenger", "1")
    try:
        same = LiveScorer(world["params"], store, registry=registry)
        store.move_watermarks({k: v - timedelta(minutes=10) for k, v in store.watermarks().items()})
        same.cycle()
        assert same.shadow() == 0
    finally:
        registry.client.set_registered_model_alias(name, "challenger", "2")
    # off: nothing kept for the shadow
    off = LiveScorer(
        world["params"].model_copy(
            update={"live_score": world["params"].live_score.model_copy(update={"shadow": False})}
        ),
        store,
        registry=registry,
    )
    store.move_watermarks({k: v - timedelta(minutes=10) for k, v in store.watermarks().items()})
    off.cycle()
    assert off.shadow() == 0 and len(store.shadow_scores()) == 16


def test_unknown_model_is_skipped_with_a_reason(world, store):
    store.add_tenant("c", [Subscription("EURUSD", "M5", 48)])
    report = LiveScorer(world["params"], store, registry=world["registry"]).cycle()
    assert report.rows == 0 and "mt5prob-fx-M5-direction-h48: no champion" in report.skipped[0]


def test_first_cycle_time_is_utc(world, store):
    tenants(store, world["name"])
    report = LiveScorer(world["params"], store, registry=world["registry"]).cycle()
    wm = report.watermarks[("EURUSD", "M5")]
    assert wm.tzinfo is not None and wm <= datetime(2024, 1, 24, tzinfo=UTC)


def _params_file_and_store(world, tmp_path):
    """A params.yaml over the world's bars and registry, and an empty store it points at."""
    import yaml

    params_file = tmp_path / "params.yaml"
    params_file.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "root": str(world["params"].data.root),
                    "symbols": SYMBOLS,
                    "timeframes": ["M5", "H1"],
                },
                "features": FEATURES,
                "registry": {"tracking_uri": world["params"].registry.tracking_uri},
                "store": {"url": f"sqlite:///{tmp_path / 'results.db'}"},
            }
        )
    )
    store = ResultsStore(f"sqlite:///{tmp_path / 'results.db'}")
    store.migrate()
    return params_file, store


def test_live_score_flow_publishes_rows_per_tenant(world, prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.live_score import live_score_deployment, live_score_flow

    params_file, store = _params_file_and_store(world, tmp_path)
    tenants(store, world["name"])
    out = live_score_flow(params_path=str(params_file), cycles=2)
    a, b = (store.find_tenant(name).tenant_id for name in ("a", "b"))
    # Prefect keeps what a flow returns, publishes and logs: tenants are named there by id only
    assert out[0]["rows_per_tenant"] == {a: 2, b: 1} and out[1]["rows_per_tenant"] == {}
    assert set(out[0]["seconds"]) == {"features", "scoring", "writes", "total"}

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts()

    import asyncio

    latest = [a for a in asyncio.run(artifacts()) if a.key == "live-score"]
    assert latest and any("rows" in (a.description or "") for a in latest)
    # the second cycle had nothing new: its artifact says why, and no latency hides in the table
    why = "Nothing written: no bar closed after the last scored ones"
    idle = [a for a in latest if why in (a.description or "")]
    assert idle, [a.description for a in latest]
    assert all("latency" not in str(x.data) for x in latest)
    tables = [json.loads(x.data) for x in latest if x.data and x.data.startswith("[")]
    named = {r["tenant"] for t in tables for r in t if isinstance(r, dict) and "tenant" in r}
    assert named == {a, b}, named
    deployment = live_score_deployment(str(params_file))
    assert deployment.name == "live-score"
    assert deployment.schedules[0].schedule.interval == timedelta(minutes=5)  # the M5 close
    store.close()


def test_cli_replays_the_newest_bars_one_per_cycle(world, tmp_path, capsys):
    from pipelines.live_score import main

    params_file, store = _params_file_and_store(world, tmp_path)
    a, _ = tenants(store, world["name"])
    assert main(["--params", str(params_file), "--replay", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and all(
        line.startswith(f"cycle {i + 1}: 3 rows for 2 tenants") for i, line in enumerate(out)
    )
    assert len(rows_of(store, a)) == 6  # the newest 3 bars of two symbols, each written once
    store.close()


def test_a_series_without_bars_is_skipped_not_fatal(world, store):
    a, _ = tenants(store, world["name"])
    store.add_tenant("c", [Subscription("GBPUSD", "M5", 12)])  # never ingested
    report = LiveScorer(world["params"], store, registry=world["registry"]).cycle()
    assert report.rows_per_tenant[a.tenant_id] == 2
    assert any("no stored GBPUSD M5 bars" in s for s in report.skipped)
