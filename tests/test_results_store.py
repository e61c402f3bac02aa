"""The results store on both backends: migrations, tenants, idempotent upserts, isolation
(RLS on PostgreSQL, the API on SQLite), audit, right to be forgotten, export."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from models.policy import ThresholdPolicy
from pipelines.store import ResultsStore, ScoreRow, StoreError, Subscription, app_url
from pipelines.tenants import export_results
from pipelines.tenants import main as tenants_cli

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
MIGRATIONS = Path(__file__).resolve().parents[1] / "pipelines/store/migrations/versions"
FOLLOWS = [Subscription("EURUSD", "M5", 12), Subscription("XAUUSD", "M5", 12)]


def rows(
    symbol: str = "EURUSD",
    n: int = 3,
    version: str = "1",
    p: float = 0.6,
    followed: bool = True,
    start: int = 0,
) -> list[ScoreRow]:
    """`n` scores of consecutive M5 bars from bar `start` after T0."""
    out = []
    for i in range(start, start + n):
        bar = T0 + timedelta(minutes=5 * i)
        out.append(
            ScoreRow(
                symbol, "M5", bar, 12, "direction", "m", version, p, followed, bar + timedelta(minutes=5)
            )
        )
    return out


def test_migrate_is_idempotent_and_app_role_cannot_bypass_rls(store):
    store.migrate()
    if store.dialect == "postgresql":
        with store.engine.connect() as conn:
            user, bypass, sup = conn.execute(
                sa.text(
                    "SELECT current_user, rolbypassrls, rolsuper FROM pg_roles WHERE rolname = current_user"
                )
            ).one()
            assert user == "mt5prob_app" and not bypass and not sup
            forced = (
                conn.execute(
                    sa.text("SELECT relname FROM pg_class WHERE relrowsecurity AND relforcerowsecurity")
                )
                .scalars()
                .all()
            )
            assert {"tenants", "subscriptions", "pins", "scores", "audit"} <= set(forced)


def test_keys_hashed_authenticate_and_rotate(store):
    tenant, key = store.add_tenant("acme", FOLLOWS)
    assert store.authenticate(key).tenant_id == tenant.tenant_id
    with store.admin_engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT key_hash, key_id FROM tenants")).one()
    assert key not in stored and stored.key_hash != key
    for bad in (None, "", "nonsense", key[:-1] + ("A" if key[-1] != "A" else "B"), "mt5p_" + "x" * 40):
        assert store.authenticate(bad) is None
    new_key = store.rotate_key("acme")
    assert store.authenticate(key) is None
    assert store.authenticate(new_key).name == "acme"
    with pytest.raises(StoreError, match="exists already"):
        store.add_tenant("acme", FOLLOWS)
    with pytest.raises(StoreError, match="thresholds"):
        store.add_tenant("bad", FOLLOWS, long_above=0.4, short_below=0.6)


def test_scores_are_stored_once_and_never_rewritten(store):
    a, _ = store.add_tenant("a", FOLLOWS)
    b, _ = store.add_tenant("b", FOLLOWS)
    assert store.write_scores(rows()) == 3  # once, for both tenants
    assert store.write_scores(rows(p=0.7)) == 0  # already stored: kept as it was (crash replay)
    assert store.write_scores(rows(version="2", p=0.4, followed=False)) == 3  # for pinned tenants only
    with store.admin_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM scores")).scalar() == 6
    for t in (a, b):
        with store.tenant(t.tenant_id, "test") as s:
            frame = s.probabilities()
            latest = s.latest()
        assert len(frame) == 3 and set(frame.probability) == {0.6} and set(frame.model_version) == {"1"}
        assert frame.bar_time.dt.tz is not None and frame.bar_time.max() == pd.Timestamp(
            T0 + timedelta(minutes=10)
        )
        assert (frame.bar_closed_at - frame.bar_time == pd.Timedelta(minutes=5)).all()
        assert len(latest) == 1 and latest.bar_time[0] == pd.Timestamp(T0 + timedelta(minutes=10))
    # a tenant pinned to the followed version: the same probabilities, stored for its audience
    c, _ = store.add_tenant("c", FOLLOWS, pins={"m": "1"})
    assert store.write_scores(rows(start=3) + rows(start=3, followed=False)) == 6
    for t in (a, c):
        with store.tenant(t.tenant_id, "test") as s:
            frame = s.probabilities(start=T0 + timedelta(minutes=15))
        assert len(frame) == 3 and set(frame.model_version) == {"1"}  # once each, not twice
    with pytest.raises(StoreError, match="outside"):
        store.write_scores(rows(p=float("nan"), start=10))


def test_tenants_read_what_they_followed_when_it_was_committed(store):
    """Subscriptions, thresholds and pins are histories: each score shows to the tenants that
    followed its series when it was committed, with their pin's version (else the followed
    one) and the signal of their thresholds of that moment — the threshold policy's rule."""
    a, _ = store.add_tenant("a", FOLLOWS[:1], long_above=0.6, short_below=0.4)
    store.write_scores(rows(p=0.6) + rows("XAUUSD", p=0.3))  # 0.6 is on the boundary: flat
    store.update_tenant("a", follows=FOLLOWS[1:], long_above=0.55, short_below=0.45)
    store.write_scores(rows(p=0.6, start=3) + rows("XAUUSD", p=0.3, start=3))
    store.update_tenant("a", pins={"m": "2"})
    store.write_scores(
        rows("XAUUSD", p=0.5, start=6) + rows("XAUUSD", p=0.7, start=6, version="2", followed=False)
    )
    with store.tenant(a.tenant_id, "test") as s:
        got = s.probabilities().sort_values("event_id")
    assert list(zip(got.symbol, got.probability, got.signal, got.model_version, strict=True)) == (
        [("EURUSD", 0.6, "flat", "1")] * 3
        + [("XAUUSD", 0.3, "short", "1")] * 3
        + [("XAUUSD", 0.7, "long", "2")] * 3
    )
    policy = ThresholdPolicy(0.55, 0.45)
    grid = [0.0, 0.45, 0.4500001, 0.5, 0.55, 0.5500001, 1.0]
    store.update_tenant("a", pins={})
    store.write_scores(
        [r._replace(probability=p) for r, p in zip(rows("XAUUSD", len(grid), start=20), grid, strict=True)]
    )
    with store.tenant(a.tenant_id, "test") as s:
        new = s.events(after=int(got.event_id.max()))
    assert new.signal.tolist() == [policy.signal(p) for p in grid]
    assert new.event_id.is_monotonic_increasing and len(new) == len(grid)


def test_tenant_isolation(store):
    a, _ = store.add_tenant("a", FOLLOWS[:1])
    b, _ = store.add_tenant("b", FOLLOWS[1:])
    store.write_scores(rows(p=0.61) + rows("XAUUSD", p=0.39))
    with store.tenant(a.tenant_id, "test") as s:
        mine = s.probabilities()
        assert set(mine.symbol) == {"EURUSD"} and len(mine) == 3
        assert s.tenant().name == "a"
    if store.dialect == "postgresql":
        # below the API: raw SQL with no tenant filter sees nothing of B and cannot write
        with store.tenant(a.tenant_id, "test") as s:
            seen = s.execute("SELECT DISTINCT tenant_id FROM tenant_results").scalars().all()
            assert seen == [a.tenant_id]
            assert s.execute("SELECT DISTINCT symbol FROM scores").scalars().all() == ["EURUSD"]
            assert s.execute("SELECT count(*) FROM subscriptions").scalar() == 1
            assert s.execute("SELECT count(*) FROM tenants").scalar() == 1
            assert (
                s.execute("SELECT count(*) FROM audit WHERE tenant_id = :b", {"b": b.tenant_id}).scalar() == 0
            )
            # least privilege: no results deleted or rewritten, no audit row written or altered
            # directly — only appended through mt5prob_audit, for this tenant, at the current time
            for sql in (
                "UPDATE scores SET probability_sealed = NULL",
                "DELETE FROM scores",
                "INSERT INTO audit (tenant_id, actor, action, detail_sealed, at) "
                f"VALUES ('{a.tenant_id}', 'x', 'forged', '\\x00', now() - interval '1 day')",
                "UPDATE audit SET action = 'forged'",
                "DELETE FROM audit",
            ):
                with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                    with s.conn.begin_nested():
                        s.execute(sql)
            with pytest.raises(sa.exc.DBAPIError, match="is not the current time"):
                with s.conn.begin_nested():
                    s.execute("SELECT mt5prob_audit('x', 'forged', '\\x00', now() - interval '1 day')")
            s.audit("note", {"ok": True})  # the API's own path works
        with pytest.raises(sa.exc.DBAPIError, match="acts for no tenant"):
            with store.engine.begin() as conn:
                conn.execute(sa.text("SELECT mt5prob_audit('x', 'forged', '\\x00', now())"))
        with pytest.raises(sa.exc.ProgrammingError, match="row-level security"):
            with store.tenant(a.tenant_id, "test") as s:  # a tenant cannot forge a score
                s.execute(
                    "INSERT INTO scores (symbol, timeframe, bar_time, horizon, label_kind, model_name, "
                    "model_version, probability_sealed, followed, bar_closed_at, committed_at) VALUES "
                    "('EURUSD', 'M5', now(), 12, 'direction', 'm', '9', '\\x00', true, now(), now())"
                )
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
            with store.tenant(a.tenant_id, "test") as s:  # nor follow anything (admin only)
                s.execute(
                    "INSERT INTO subscriptions (tenant_id, symbol, timeframe, horizon, label_kind, "
                    "thresholds_sealed, valid_from) "
                    "VALUES (:b, 'EURUSD', 'M5', 12, 'direction', '\\x00', now())",
                    {"b": b.tenant_id},
                )
        with store.engine.connect() as conn:  # no tenant set at all: no tenant's results
            assert conn.execute(sa.text("SELECT count(*) FROM tenant_results")).scalar() == 0
    with store.tenant(b.tenant_id, "test") as s:
        theirs = s.probabilities()
        assert set(theirs.symbol) == {"XAUUSD"} and (theirs.probability == 0.39).all()


def test_write_scores_is_one_transaction(store):
    a, _ = store.add_tenant("a", FOLLOWS)

    def crash(stage):
        raise RuntimeError(stage)

    with pytest.raises(RuntimeError, match="rows-written"):
        store.write_scores(rows(), watermark={("EURUSD", "M5"): T0}, fault=crash)
    with store.tenant(a.tenant_id, "test") as s:
        assert s.probabilities().empty
    assert store.watermarks() == {}
    assert store.write_scores(rows(), watermark={("EURUSD", "M5"): T0}) == 3
    assert store.watermarks() == {("EURUSD", "M5"): T0}


def test_audit_remove_and_export(store, tmp_path):
    a, _ = store.add_tenant("a", FOLLOWS)
    b, _ = store.add_tenant("b", FOLLOWS)
    store.write_scores(rows())
    out = tmp_path / "a.parquet"
    assert export_results(store, "a", out) == 3
    exported = pd.read_parquet(out)
    assert list(exported.columns)[:3] == ["symbol", "timeframe", "bar_time"] and len(exported) == 3
    assert export_results(store, a.tenant_id, tmp_path / "a.csv") == 3
    with store.tenant(a.tenant_id, "test") as s:
        actions = s.audit_log().action.tolist()
    assert actions[0] == "tenant.add" and "results.read" in actions and "tenant.export" in actions
    assert store.remove_tenant("a")["results"] == 3
    with pytest.raises(StoreError, match="no tenant"):
        store.find_tenant("a")
    with store.admin_engine.connect() as conn:
        left = conn.execute(sa.text("SELECT DISTINCT tenant_id FROM subscriptions")).scalars().all()
        results_left = conn.execute(sa.text("SELECT DISTINCT tenant_id FROM tenant_results")).scalars().all()
        audit_left = conn.execute(sa.text("SELECT DISTINCT tenant_id FROM audit")).scalars().all()
    assert left == results_left == audit_left == [b.tenant_id]


def test_cli_round_trip(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(f"store: {{url: 'sqlite:///{tmp_path / 'r.db'}'}}\n")
    assert (
        tenants_cli(
            [
                "--params",
                str(params),
                "add",
                "acme",
                "--follow",
                "EURUSD:M5:12",
                "--pin",
                "mt5prob-fx-M5-direction-h12=3",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    key = out.split("API key (shown once, store it now): ")[1].strip()
    assert key.startswith("mt5p_")
    assert tenants_cli(["--params", str(params), "list"]) == 0
    listed = capsys.readouterr().out
    assert "acme" in listed and key not in listed and '"mt5prob-fx-M5-direction-h12": "3"' in listed
    assert tenants_cli(["--params", str(params), "add", "x", "--follow", "EURUSD-M5"]) == 2
    assert "SYMBOL:TIMEFRAME:HORIZON" in capsys.readouterr().err
    # only what a model serves (a cell of params.yaml's matrix) can be followed; the nearest are named
    assert tenants_cli(["--params", str(params), "add", "x", "--follow", "EURUSD:H1:6"]) == 2
    err = capsys.readouterr().err
    assert "--follow EURUSD:H1:6:direction: no model serves it" in err, err
    assert "nearest served: EURUSD:H1:4:direction, EURUSD:H1:24:direction" in err, err
    assert tenants_cli(["--params", str(params), "update", "acme", "--follow", "BTCUSD:H1:4"]) == 2
    assert "BTCUSD is not among data.symbols" in capsys.readouterr().err
    follows = ["--follow", "XAUUSD:H1:24:triple_barrier", "--follow", "GBPUSD:M15:4"]
    assert tenants_cli(["--params", str(params), "update", "acme", *follows]) == 0
    assert '"label_kind": "triple_barrier"' in capsys.readouterr().out
    assert tenants_cli(["--params", str(params), "remove", "acme"]) == 2
    assert tenants_cli(["--params", str(params), "remove", "acme", "--yes"]) == 0


def test_latest_is_the_newest_row_of_every_series_ever_followed(store):
    """One row per series, sorted: the newest bar; of two versions scored for that bar (a
    promotion between), the most recent score; a series no longer followed keeps its last row;
    the symbol and timeframe filters narrow it."""
    follows = [*FOLLOWS, Subscription("EURUSD", "H1", 4, "triple_barrier")]
    a, _ = store.add_tenant("a", follows)
    h1 = [
        ScoreRow(
            "EURUSD",
            "H1",
            T0 + timedelta(hours=k),
            4,
            "triple_barrier",
            "tb",
            "1",
            0.3 + k / 10,
            True,
            T0 + timedelta(hours=k + 1),
        )
        for k in range(3)
    ]
    store.write_scores(rows("EURUSD", n=4) + rows("XAUUSD", n=2) + h1)
    store.write_scores(rows("EURUSD", n=1, start=3, version="2", p=0.9))  # promoted: v2 scores bar 3 too
    store.update_tenant("a", follows=FOLLOWS)  # no longer follows the H1 series
    with store.tenant(a.tenant_id, "test") as s:
        latest = s.latest()
        eur = s.latest(symbol="EURUSD")
        h1_only = s.latest(timeframe="H1")
    got = list(zip(latest.symbol, latest.timeframe, latest.horizon, latest.label_kind, strict=True))
    assert got == [
        ("EURUSD", "H1", 4, "triple_barrier"),
        ("EURUSD", "M5", 12, "direction"),
        ("XAUUSD", "M5", 12, "direction"),
    ]
    by = {(r.symbol, r.timeframe): r for r in latest.itertuples()}
    assert by[("EURUSD", "M5")].bar_time == pd.Timestamp(T0 + timedelta(minutes=15))
    assert by[("EURUSD", "M5")].model_version == "2" and by[("EURUSD", "M5")].probability == 0.9
    assert by[("XAUUSD", "M5")].bar_time == pd.Timestamp(T0 + timedelta(minutes=5))
    assert by[("EURUSD", "H1")].probability == pytest.approx(0.5)  # its last row, kept
    assert list(eur.symbol) == ["EURUSD", "EURUSD"] and list(h1_only.timeframe) == ["H1"]
    b, _ = store.add_tenant("b", [Subscription("USDJPY", "M5", 12)])
    with store.tenant(b.tenant_id, "test") as s:
        assert s.latest().empty  # nothing scored for it, and nothing of a's


def test_pinned_versions_visible_without_other_tenant_data(store):
    a, _ = store.add_tenant("a", FOLLOWS, pins={"m": "2"})
    store.add_tenant("b", FOLLOWS)
    assert store.pinned_versions("m") == [(a.tenant_id, "2")]
    assert store.pinned_versions("other") == []


def test_directory_lists_subscriptions_without_keys_or_names(store):
    a, key = store.add_tenant("a", FOLLOWS, pins={"m": "2"})
    b, _ = store.add_tenant("b", FOLLOWS[:1], long_above=0.6, short_below=0.4)
    listed = {t.tenant_id: t for t in store.directory()}
    assert set(listed) == {a.tenant_id, b.tenant_id} and listed[a.tenant_id].pins == {"m": "2"}
    b_listed = listed[b.tenant_id]
    assert b_listed.follows == (Subscription("EURUSD", "M5", 12),)
    # scoring works with ids and follows: a tenant's name and thresholds are its own (sealed),
    # the directory never opens them
    assert all(t.name == t.tenant_id for t in listed.values())
    assert all(np.isnan(t.long_above) and np.isnan(t.short_below) for t in listed.values())
    assert store.find_tenant("b").long_above == 0.6  # the admin opens them
    assert key not in repr(listed)
    if store.dialect == "postgresql":
        with store.engine.connect() as conn:  # the app role cannot read the key columns directly
            assert conn.execute(sa.text("SELECT count(*) FROM tenants")).scalar() == 0


def test_store_migrations_share_a_database_with_other_alembic_users(tmp_path):
    """MLflow and Optuna keep their Alembic history in `alembic_version`; ours is separate."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
        conn.execute(sa.text("INSERT INTO alembic_version VALUES ('someone_elses_head')"))
    engine.dispose()
    store = ResultsStore(url)
    store.migrate()
    store.migrate()
    with store.engine.connect() as conn:
        assert (
            conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "someone_elses_head"
        )
        newest = max(p.name[:4] for p in MIGRATIONS.glob("0*.py"))  # the head revision
        assert conn.execute(sa.text("SELECT version_num FROM mt5prob_store_version")).scalar() == newest
    store.close()


def test_ensure_tenant_adds_then_updates_and_rotates(store):
    key1 = store.ensure_tenant("demo", FOLLOWS[:1], 0.6, 0.4)
    assert store.authenticate(key1).long_above == 0.6
    key2 = store.ensure_tenant("demo", FOLLOWS, 0.55, 0.45)
    assert key2 != key1 and store.authenticate(key1) is None
    tenant = store.authenticate(key2)
    assert tenant.follows == tuple(FOLLOWS) and tenant.long_above == 0.55
    assert [t.name for t in store.list_tenants()] == ["demo"]
    with pytest.raises(StoreError, match="thresholds"):
        store.ensure_tenant("demo", FOLLOWS, 0.4, 0.6)  # bad input is still an error, not "exists"


def test_score_rows_are_typed_records_of_the_table():
    """Live scoring hands the store `ScoreRow`s; their fields are the table's columns in
    order, and the PostgreSQL array casts come from the same table (no length: a cast to
    varchar(n) would silently truncate)."""
    from pipelines.store.results import _INSERT_COLUMNS, _PG_TYPES, SCORE_FIELDS

    # the probability is stored sealed (migration 0007): its column says so
    stored = tuple("probability_sealed" if f == "probability" else f for f in ScoreRow._fields)
    assert stored == SCORE_FIELDS and _INSERT_COLUMNS == (*SCORE_FIELDS, "committed_at")
    assert len(_PG_TYPES) == len(_INSERT_COLUMNS) and not any("(" in t for t in _PG_TYPES)
    assert _PG_TYPES[SCORE_FIELDS.index("bar_time")] == "TIMESTAMP WITH TIME ZONE"


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_upgrade_moves_per_tenant_rows_to_scores(backend, request, tmp_path):
    """A store at revision 0002 (one row per tenant) upgrades with nothing lost: each tenant
    reads the same results through the view, a probability shared by tenants is stored once."""
    if backend == "sqlite":
        store = ResultsStore(f"sqlite:///{tmp_path / 'old.db'}")
    else:
        admin = request.getfixturevalue("pg_database")("upgrade")
        store = ResultsStore(app_url(admin), admin)
    store.migrate("0002")
    made = datetime.now(UTC)
    with store.admin_engine.begin() as conn:  # tenants as revision 0002 stored them
        for name, follows, pins in (("a", FOLLOWS, {}), ("b", FOLLOWS[:1], {"m": "2"})):
            conn.execute(
                sa.text(
                    "INSERT INTO tenants (tenant_id, name, key_id, key_hash, follows, long_above, "
                    "short_below, pins, created_at, key_rotated_at) "
                    "VALUES (:t, :t, :t, :h, :f, 0.55, 0.45, :p, :c, :c)"
                ),
                {
                    "t": name,
                    "h": "0" * 64,
                    "f": json.dumps([f.as_dict() for f in follows]),
                    "p": json.dumps(pins),
                    "c": made,
                },
            )
    a, b = SimpleNamespace(tenant_id="a"), SimpleNamespace(tenant_id="b")
    legacy = [
        (a.tenant_id, "EURUSD", "1", 0.6, "long"),
        (a.tenant_id, "XAUUSD", "1", 0.4, "short"),
        (b.tenant_id, "EURUSD", "2", 0.5, "flat"),
    ]
    later = made + timedelta(seconds=1)
    insert = sa.text(
        "INSERT INTO probabilities VALUES (:t, :s, 'M5', :bt, 12, 'direction', :p, :sig, 'm', :v, :at)"
    )
    with store.admin_engine.begin() as conn:
        for tenant_id, symbol, version, p, signal in legacy:
            values = {"t": tenant_id, "s": symbol, "bt": T0, "p": p, "sig": signal, "v": version}
            conn.execute(insert, {**values, "at": later})
    store.migrate()
    for tenant, want in ((a, legacy[:2]), (b, legacy[2:])):
        with store.tenant(tenant.tenant_id, "test") as s:
            got = s.probabilities().sort_values("symbol")
        assert list(zip(got.symbol, got.model_version, got.probability, got.signal, strict=True)) == [
            w[1:] for w in want
        ]
    with store.admin_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM scores")).scalar() == 3
    store.close()


def test_live_workers_share_symbols_through_leases(store):
    symbols = ["EURUSD", "GBPUSD", "USDJPY", "XAUUSD"]
    assert store.claim_symbols("w1", symbols, 60) == symbols  # alone: all of them
    assert store.claim_symbols("w2", symbols, 60) == []  # all held, none expired
    assert len(store.claim_symbols("w1", symbols, 60)) == 2  # two live workers: gives half back
    assert store.claim_symbols("w2", symbols, 60) == ["USDJPY", "XAUUSD"]
    assert store.claim_symbols("w1", symbols, 60) == ["EURUSD", "GBPUSD"]  # stable
    with store.engine.begin() as conn:  # w1 dies: its heartbeat and leases age past their time
        conn.execute(sa.text("UPDATE series_leases SET expires_at = :t WHERE holder = 'w1'"), {"t": T0})
        conn.execute(sa.text("UPDATE worker_heartbeats SET seen_at = :t WHERE holder = 'w1'"), {"t": T0})
    assert store.claim_symbols("w2", symbols, 60) == symbols  # takes everything over
    store.release_symbols("w2")
    assert store.claim_symbols("w3", symbols, 60) == symbols


def test_three_class_scores_are_sealed_whole_and_signals_follow_the_label_kind(store):
    """A three-class score keeps all three probabilities (sealed together); the tenant reads
    P(up) as its probability, the three as probabilities, and a signal by its label kind's
    rule — and triple-barrier probabilities never give a short."""
    follows = [
        Subscription("EURUSD", "M15", 16, "up_flat_down"),
        Subscription("EURUSD", "M15", 16, "triple_barrier"),
    ]
    a, _ = store.add_tenant("a", follows, long_above=0.55, short_below=0.45)
    three = [(0.6, 0.3, 0.1), (0.1, 0.3, 0.6), (0.3, 0.4, 0.3), (0.5, 0.0, 0.5)]
    scored = []
    for i, p in enumerate(three):
        bar = T0 + timedelta(minutes=15 * i)
        closed = bar + timedelta(minutes=15)
        scored.append(ScoreRow("EURUSD", "M15", bar, 16, "up_flat_down", "m3", "1", p, True, closed))
        scored.append(
            ScoreRow("EURUSD", "M15", bar, 16, "triple_barrier", "tb", "1", 0.1 + 0.3 * i, True, closed)
        )
    store.write_scores(scored)
    with store.tenant(a.tenant_id, "test") as s:
        got = s.probabilities().sort_values(["label_kind", "bar_time"])
        latest = s.latest()
    ufd = got[got.label_kind == "up_flat_down"]
    assert ufd.probability.tolist() == [p[2] for p in three]
    assert ufd.probabilities.tolist() == [dict(zip(("down", "flat", "up"), p, strict=True)) for p in three]
    assert ufd.signal.tolist() == ["short", "long", "flat", "flat"]
    tb = got[got.label_kind == "triple_barrier"]
    assert tb.probabilities.isna().all()
    assert tb.signal.tolist() == ["flat", "flat", "long", "long"]  # 0.1 and 0.4: no short
    newest = latest.set_index("label_kind")
    assert newest.loc["up_flat_down", "probabilities"] == {"down": 0.5, "flat": 0.0, "up": 0.5}
    # what its stream and webhooks deliver: the three probabilities with P(up) and the signal
    from pipelines.store import event_payload

    event = event_payload(next(latest[latest.label_kind == "up_flat_down"].itertuples(index=False)))
    assert event["probabilities"] == {"down": 0.5, "flat": 0.0, "up": 0.5} and event["probability"] == 0.5
    assert event["signal"] == "flat" and json.loads(json.dumps(event)) == event
    # the tenant's export: the three as columns beside P(up), empty for the binary rows
    import io
    import zipfile

    from pipelines.store.export import export_package

    package, _ = export_package(store, a.tenant_id, actor="test")
    exported = pd.read_parquet(io.BytesIO(zipfile.ZipFile(io.BytesIO(package)).read("results.parquet")))
    cols = list(exported.columns)
    assert cols[cols.index("probability") : cols.index("probability") + 4] == [
        "probability",
        "p_down",
        "p_flat",
        "p_up",
    ]
    mine = exported[exported.label_kind == "up_flat_down"]
    assert mine[["p_down", "p_flat", "p_up"]].to_numpy().tolist() == [list(p) for p in three]
    assert exported[exported.label_kind == "triple_barrier"].p_up.isna().all()
    # three probabilities that do not sum to 1, or a wrong count, are refused whole
    bad = scored[0]._replace(bar_time=T0 + timedelta(days=1), probability=(0.5, 0.5, 0.5))
    with pytest.raises(StoreError, match="summing to 1"):
        store.write_scores([bad])
    with pytest.raises(StoreError):
        store.write_scores([bad._replace(probability=(0.5, 0.5))])
