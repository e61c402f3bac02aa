"""The results store on both backends: migrations, tenants, idempotent upserts, isolation
(RLS on PostgreSQL, the API on SQLite), audit, right to be forgotten, export."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa

from pipelines.store import ResultsStore, StoreError, Subscription, TenantIsolationError, app_url
from pipelines.tenants import export_results
from pipelines.tenants import main as tenants_cli

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
FOLLOWS = [Subscription("EURUSD", "M5", 12), Subscription("XAUUSD", "M5", 12)]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = ResultsStore(f"sqlite:///{tmp_path / 'results.db'}")
        s.migrate()
        yield s
        s.close()
        return
    admin = request.getfixturevalue("pg_admin_url")
    s = ResultsStore(app_url(admin), admin)
    s.migrate()
    yield s
    with s.admin_engine.begin() as conn:  # the database is shared by the session's tests
        for table in ("probabilities", "audit", "tenants", "score_watermarks"):
            conn.execute(sa.text(f"DELETE FROM {table}"))
    s.close()


def rows(symbol: str = "EURUSD", n: int = 3, version: str = "1", p: float = 0.6) -> list[dict]:
    return [
        {
            "symbol": symbol,
            "timeframe": "M5",
            "bar_time": T0 + timedelta(minutes=5 * i),
            "horizon": 12,
            "label_kind": "direction",
            "probability": p,
            "signal": "long",
            "model_name": "m",
            "model_version": version,
        }
        for i in range(n)
    ]


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
            assert {"tenants", "probabilities", "audit"} <= set(forced)


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


def test_upsert_idempotent_and_unique_per_model_version(store):
    a, _ = store.add_tenant("a", FOLLOWS)
    with store.tenant(a.tenant_id, "test") as s:
        assert s.upsert(rows()) == 3
    with store.tenant(a.tenant_id, "test") as s:
        s.upsert(rows(p=0.7))  # same keys: replaced, not duplicated
        s.upsert(rows(version="2", p=0.4))  # another model version: its own rows
    with store.tenant(a.tenant_id, "test") as s:
        frame = s.probabilities()
        latest = s.latest()
    assert len(frame) == 6
    assert sorted(frame[frame.model_version == "1"].probability.unique()) == [0.7]
    assert frame.bar_time.dt.tz is not None and frame.bar_time.max() == pd.Timestamp(
        T0 + timedelta(minutes=10)
    )
    assert len(latest) == 1 and latest.bar_time[0] == pd.Timestamp(T0 + timedelta(minutes=10))


def test_tenant_isolation(store):
    a, _ = store.add_tenant("a", FOLLOWS)
    b, _ = store.add_tenant("b", FOLLOWS)
    store.write_results({a.tenant_id: rows(p=0.61), b.tenant_id: rows("XAUUSD", p=0.39)})
    with store.tenant(a.tenant_id, "test") as s:
        mine = s.probabilities()
        assert set(mine.symbol) == {"EURUSD"} and len(mine) == 3
        with pytest.raises(TenantIsolationError):
            s.upsert([{**rows()[0], "tenant_id": b.tenant_id}])
        assert s.tenant().name == "a"
    if store.dialect == "postgresql":
        # below the API: raw SQL with no tenant filter sees nothing of B and cannot write for B
        with store.tenant(a.tenant_id, "test") as s:
            seen = s.execute("SELECT DISTINCT tenant_id FROM probabilities").scalars().all()
            assert seen == [a.tenant_id]
            assert s.execute("SELECT count(*) FROM tenants").scalar() == 1
            assert (
                s.execute("SELECT count(*) FROM audit WHERE tenant_id = :b", {"b": b.tenant_id}).scalar() == 0
            )
            assert (
                s.execute(
                    "UPDATE probabilities SET probability = 0 WHERE tenant_id = :b", {"b": b.tenant_id}
                ).rowcount
                == 0
            )
        with pytest.raises(sa.exc.ProgrammingError, match="row-level security"):
            with store.tenant(a.tenant_id, "test") as s:
                s.execute(
                    "INSERT INTO probabilities VALUES (:b, 'EURUSD', 'M5', now(), 12, 'direction',"
                    " 0.5, 'flat', 'm', '9', now())",
                    {"b": b.tenant_id},
                )
        with store.engine.connect() as conn:  # no tenant set at all: nothing visible
            assert conn.execute(sa.text("SELECT count(*) FROM probabilities")).scalar() == 0
    with store.tenant(b.tenant_id, "test") as s:
        theirs = s.probabilities()
        assert set(theirs.symbol) == {"XAUUSD"} and (theirs.probability == 0.39).all()


def test_write_results_is_one_transaction(store):
    a, _ = store.add_tenant("a", FOLLOWS)
    b, _ = store.add_tenant("b", FOLLOWS)
    bad = rows()
    bad[1]["probability"] = 1.5
    with pytest.raises(StoreError):
        store.write_results({a.tenant_id: rows(), b.tenant_id: bad}, watermark={("EURUSD", "M5"): T0})
    for t in (a, b):
        with store.tenant(t.tenant_id, "test") as s:
            assert s.probabilities().empty
    assert store.watermarks() == {}
    written = store.write_results(
        {a.tenant_id: rows(), b.tenant_id: rows()}, watermark={("EURUSD", "M5"): T0}
    )
    assert written == {a.tenant_id: 3, b.tenant_id: 3}
    assert store.watermarks() == {("EURUSD", "M5"): T0}


def test_audit_remove_and_export(store, tmp_path):
    a, _ = store.add_tenant("a", FOLLOWS)
    b, _ = store.add_tenant("b", FOLLOWS)
    store.write_results({a.tenant_id: rows(), b.tenant_id: rows()})
    out = tmp_path / "a.parquet"
    assert export_results(store, "a", out) == 3
    exported = pd.read_parquet(out)
    assert list(exported.columns)[:3] == ["symbol", "timeframe", "bar_time"] and len(exported) == 3
    assert export_results(store, a.tenant_id, tmp_path / "a.csv") == 3
    with store.tenant(a.tenant_id, "test") as s:
        actions = s.audit_log().action.tolist()
    assert actions[0] == "tenant.add" and "results.write" in actions and "tenant.export" in actions
    assert store.remove_tenant("a") == 3
    with pytest.raises(StoreError, match="no tenant"):
        store.find_tenant("a")
    with store.admin_engine.connect() as conn:
        left = conn.execute(sa.text("SELECT DISTINCT tenant_id FROM probabilities")).scalars().all()
        audit_left = conn.execute(sa.text("SELECT DISTINCT tenant_id FROM audit")).scalars().all()
    assert left == [b.tenant_id] and audit_left == [b.tenant_id]


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
    assert tenants_cli(["--params", str(params), "remove", "acme"]) == 2
    assert tenants_cli(["--params", str(params), "remove", "acme", "--yes"]) == 0


def test_pinned_versions_visible_without_other_tenant_data(store):
    a, _ = store.add_tenant("a", FOLLOWS, pins={"m": "2"})
    store.add_tenant("b", FOLLOWS)
    assert store.pinned_versions("m") == [(a.tenant_id, "2")]
    assert store.pinned_versions("other") == []


def test_directory_lists_subscriptions_without_keys(store):
    a, key = store.add_tenant("a", FOLLOWS, pins={"m": "2"})
    b, _ = store.add_tenant("b", FOLLOWS[:1], long_above=0.6, short_below=0.4)
    listed = {t.name: t for t in store.directory()}
    assert set(listed) == {"a", "b"} and listed["a"].pins == {"m": "2"}
    assert listed["b"].follows == (Subscription("EURUSD", "M5", 12),) and listed["b"].long_above == 0.6
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
        assert conn.execute(sa.text("SELECT version_num FROM mt5prob_store_version")).scalar() == "0002"
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


def test_result_rows_are_typed_records_of_the_table():
    """Live scoring hands the store `ResultRow`s; their fields are the table's columns in
    order, and the PostgreSQL array casts come from the same table (no length: a cast to
    varchar(n) would silently truncate)."""
    from pipelines.store.results import _PG_TYPES, ROW_FIELDS, ResultRow

    assert ResultRow._fields == ROW_FIELDS
    assert len(_PG_TYPES) == len(ROW_FIELDS) and not any("(" in t for t in _PG_TYPES)
    assert _PG_TYPES[ROW_FIELDS.index("bar_time")] == "TIMESTAMP WITH TIME ZONE"
