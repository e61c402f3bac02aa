"""Tenant data protection (issue 15): values sealed under per-tenant data keys, bound to their
row and tenant; a missing or wrong master key stops a process at start; master-key rotation
re-wraps keys without touching rows; erasure crypto-shreds (an old backup stays unreadable),
catches rows written during it and leaves a record with nothing personal."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipelines.store import ResultsStore, ScoreRow, ShadowRow, StoreError, Subscription
from pipelines.store.crypto import (
    KeyDestroyed,
    KeyringError,
    KeyStore,
    LocalMasterKey,
    MasterKeyError,
    Vault,
    new_master_key_text,
)

REPO = Path(__file__).resolve().parents[1]
FOLLOWS = [Subscription("EURUSD", "M5", 12)]
NAME = "Zebra Capital Partners LLP"  # distinctive: searched for byte-wise in dumps
HOOK = "https://hooks.zebra-capital.example/mt5prob-inbox"


def test_a_sealed_value_opens_only_as_itself_for_its_own_row_and_tenant(tmp_path):
    keys = KeyStore(f"sqlite:///{tmp_path / 'k.db'}", [LocalMasterKey.from_env()])
    keys.create()
    vault = Vault(keys)
    for owner in ("t1", "t2"):
        vault.new_owner(owner)
    blob = vault.seal_text("t1", "audit", "detail", "row-1", '{"ip": "10.0.0.1"}')
    assert b"10.0.0.1" not in blob
    assert vault.open_text("t1", "audit", "detail", "row-1", blob) == '{"ip": "10.0.0.1"}'
    for owner, row in (("t2", "row-1"), ("t1", "row-2")):  # moved to another tenant, another row
        with pytest.raises(KeyringError, match="fails authentication"):
            vault.open_text(owner, "audit", "detail", row, blob)
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(KeyringError, match="fails authentication"):
        vault.open_text("t1", "audit", "detail", "row-1", tampered)
    # two seals of one value differ (fresh nonces): equal values are not visible as equal
    assert vault.seal_text("t1", "audit", "detail", "row-1", "x") != vault.seal_text(
        "t1", "audit", "detail", "row-1", "x"
    )


def test_a_missing_or_wrong_master_key_stops_every_entry_point_with_one_message(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    store = ResultsStore(url)
    store.migrate()
    store.add_tenant(NAME, FOLLOWS)
    store.close()
    monkeypatch.delenv("MT5PROB_MASTER_KEY")
    with pytest.raises(MasterKeyError, match="no master key: set MT5PROB_MASTER_KEY"):
        ResultsStore(url)
    wrong = LocalMasterKey.from_text(new_master_key_text())
    store = ResultsStore(url, masters=[wrong])
    with pytest.raises(MasterKeyError, match="wrong master key"):
        store.verify_keys()
    with pytest.raises(MasterKeyError, match="wrong master key"):
        store.migrate()
    store.close()
    params = tmp_path / "params.yaml"
    params.write_text(f"store: {{url: '{url}'}}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MT5PROB_MASTER_KEY")}
    for entry, extra in (("pipelines.tenants", ["list"]), ("pipelines.live", ["--seconds", "1"])):
        for key_env in ({}, {"MT5PROB_MASTER_KEY": new_master_key_text()}):
            out = subprocess.run(
                [sys.executable, "-m", entry, "--params", str(params), *extra],
                cwd=REPO,
                env={**env, **key_env},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert out.returncode == 2, (entry, out.stdout, out.stderr)
            last = out.stderr.strip().splitlines()[-1]
            assert last.startswith("error: ") and "master key" in last and "Traceback" not in out.stderr, last
            assert NAME not in out.stdout + out.stderr


def _raw_bytes(store: ResultsStore, tmp_path: Path) -> bytes:
    """Everything the results database holds, as bytes: the SQLite file (and its WAL), or a
    plain pg_dump of the PostgreSQL database."""
    if store.dialect == "sqlite":
        path = Path(sa.make_url(store.url).database)
        return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())
    url = sa.make_url(store.admin_url)
    out = subprocess.run(
        ["pg_dump", "-h", url.host, "-p", str(url.port or 5432), "-U", url.username, url.database],
        capture_output=True,
        check=True,
        timeout=120,
    )
    return out.stdout


PROBABILITIES = (0.6180339887498949, 0.3819660112501051, 0.7071067811865476)  # distinctive


def _scores() -> list[ScoreRow]:
    t0 = datetime(2024, 3, 1, 12, tzinfo=UTC)
    return [
        ScoreRow("EURUSD", "M5", t0 + timedelta(minutes=5 * i), 12, "direction", "m", "1", p, True,
                 t0 + timedelta(minutes=5 * (i + 1)))
        for i, p in enumerate(PROBABILITIES)
    ]  # fmt: skip


def _plain_forms(p: float) -> list[bytes]:
    """How a probability could sit in a dump: as text (any rounding a dump might print), or as
    an 8-byte IEEE double either way round."""
    return [repr(p).encode(), f"{p:.4f}".encode(), struct.pack(">d", p), struct.pack("<d", p)]


def test_a_dump_of_the_store_holds_no_probability_name_webhook_or_audit_detail_in_the_clear(store, tmp_path):
    tenant, _ = store.add_tenant(NAME, FOLLOWS, long_above=0.6137, short_below=0.3861)
    secret = store.set_webhook(NAME, HOOK)
    with store.tenant(tenant.tenant_id, "test") as session:
        session.audit("note", {"contact": "ops@zebra-capital.example"})
    assert store.write_scores(_scores()) == 3
    assert (
        store.write_shadow(
            [
                ShadowRow(*r[:6], "2", "1", p, p, r.bar_closed_at)
                for r, p in zip(_scores(), PROBABILITIES, strict=True)
            ]
        )
        == 3
    )
    dump = _raw_bytes(store, tmp_path)
    assert tenant.tenant_id.encode() in dump and b"EURUSD" in dump  # the dump is real
    for plain in (NAME, HOOK, secret, "ops@zebra-capital.example", "zebra"):
        assert plain.encode() not in dump and plain.encode("utf-16-le") not in dump, plain
    for p in (*PROBABILITIES, 0.6137, 0.3861):  # the probabilities, the tenant's thresholds
        for form in _plain_forms(p):
            assert form not in dump, (p, form)
    # and the tenant reads them back exactly, with its signals
    with store.tenant(tenant.tenant_id, "test") as session:
        got = session.probabilities().sort_values("bar_time")
    assert got.probability.tolist() == list(PROBABILITIES)
    assert got.signal.tolist() == ["long", "short", "long"]
    # and everything opens again through the store
    assert store.find_tenant(NAME).name == NAME
    assert store.webhook(NAME).url == HOOK and store.webhook(NAME).secret == secret
    with store.tenant(tenant.tenant_id, "test") as session:
        log = session.audit_log()
    assert "ops@zebra-capital.example" in log[log.action == "note"].detail.iloc[0]


def test_master_key_rotation_rewraps_data_keys_and_touches_no_tenant_row(tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    store = ResultsStore(url)
    store.migrate()
    for i in range(20):
        store.add_tenant(f"{NAME} {i}", FOLLOWS)
    with store.admin_engine.connect() as conn:
        before = conn.execute(sa.text("SELECT tenant_id, name_sealed FROM tenants ORDER BY 1")).all()
    store.close()
    new_file = tmp_path / "new.key"
    from pipelines.tenants import main as tenants_cli

    params = tmp_path / "params.yaml"
    params.write_text(f"store: {{url: '{url}'}}\n")
    assert tenants_cli(["--params", str(params), "keygen", "--out", str(new_file)]) == 0
    assert oct(new_file.stat().st_mode & 0o777) == "0o600"
    assert tenants_cli(["--params", str(params), "rotate-master-key", "--new-key-file", str(new_file)]) == 0
    said = capsys.readouterr().out
    # 20 tenants' keys, the platform's (scores) and the name index's
    assert "re-wrapped 22 data keys" in said and "no tenant row touched" in said
    new = LocalMasterKey.from_text(new_file.read_text())
    store = ResultsStore(url, masters=[new])
    store.verify_keys()
    with store.admin_engine.connect() as conn:
        after = conn.execute(sa.text("SELECT tenant_id, name_sealed FROM tenants ORDER BY 1")).all()
    assert after == before  # rows untouched, byte for byte
    assert store.find_tenant(f"{NAME} 7").name == f"{NAME} 7"
    store.close()
    old_only = ResultsStore(url)  # the environment still holds the old key
    with pytest.raises(MasterKeyError, match="wrong master key"):
        old_only.verify_keys()
    old_only.close()
    monkeypatch.setenv("MT5PROB_MASTER_KEY_PREVIOUS", os.environ["MT5PROB_MASTER_KEY"])
    monkeypatch.setenv("MT5PROB_MASTER_KEY", new_file.read_text().strip())
    both = ResultsStore(url)
    both.verify_keys()
    assert both.find_tenant(f"{NAME} 3").name == f"{NAME} 3"
    both.close()


def test_erasure_shreds_every_copy_catches_late_rows_and_keeps_an_impersonal_record(store, tmp_path):
    tenant, _ = store.add_tenant(NAME, FOLLOWS)
    other, _ = store.add_tenant("other", FOLLOWS)
    store.set_webhook(NAME, HOOK)
    with store.tenant(tenant.tenant_id, "test") as session:
        session.audit("note", {"contact": "ops@zebra-capital.example"})
    backup = _backup(store, tmp_path)

    # a request in another process began before the erasure (the tenant's key still in that
    # process's cache) and writes its audit row after it: the database must refuse the row
    elsewhere = ResultsStore(store.url, store.admin_url, keys_url=store.vault.keys.url)
    late = elsewhere.engine.connect()
    tx = late.begin()
    from pipelines.store.results import TenantSession, _set_tenant

    _set_tenant(late, tenant.tenant_id)
    session = TenantSession(late, tenant.tenant_id, "late", elsewhere.vault)
    assert session.tenant().name == NAME
    elsewhere.vault.seal_text(tenant.tenant_id, "audit", "detail", "warm", "{}")  # it wrote for it lately
    counts = store.remove_tenant(NAME, actor="ops:alice")
    assert counts["keys"] == 1 and counts["tenants"] == 1 and counts["webhooks"] == 1
    assert counts["audit"] >= 3 and counts["subscriptions"] == 1
    with pytest.raises(sa.exc.IntegrityError):
        session.audit("results.read", {"rows": 1})
        tx.commit()
    late.close()
    elsewhere.close()
    with store.admin_engine.connect() as conn:
        for table in ("tenants", "subscriptions", "pins", "audit", "webhooks"):
            n = conn.execute(
                sa.text(f"SELECT count(*) FROM {table} WHERE tenant_id = :t"), {"t": tenant.tenant_id}
            ).scalar_one()
            assert n == 0, table
    with pytest.raises(StoreError, match="no tenant"):
        store.find_tenant(NAME)
    assert store.find_tenant("other").tenant_id == other.tenant_id

    (record,) = store.erasures()
    assert record["subject"] == hashlib.sha256(tenant.tenant_id.encode()).hexdigest()
    assert record["actor"] == "ops:alice" and record["counts"]["tenants"] == 1
    dump = _raw_bytes(store, tmp_path)
    assert NAME.encode() not in dump and tenant.tenant_id.encode() not in dump

    # the backup taken before: its rows are back, and none of them opens
    restored = _restore(store, backup, tmp_path)
    try:
        row = restored._tenant_row(tenant.tenant_id)
        assert row is not None  # the row itself came back with the backup …
        with pytest.raises(KeyDestroyed):  # … sealed under a key that no longer exists
            restored.find_tenant(tenant.tenant_id)
        with pytest.raises(StoreError, match="no tenant"):
            restored.find_tenant(NAME)
        with pytest.raises(KeyDestroyed):
            restored.webhook(tenant.tenant_id)
        with pytest.raises(KeyDestroyed), restored.tenant(tenant.tenant_id, "restore") as s:
            s.audit_log()
        assert restored.find_tenant("other").name == "other"  # others are unaffected
        # and erasing it again (the restore brought it back) finishes the job
        assert restored.remove_tenant(tenant.tenant_id)["tenants"] == 1
    finally:
        restored.close()
        _drop_restored(restored)


def _backup(store: ResultsStore, tmp_path: Path) -> Path:
    """A copy of the results database only (the key store is not in it)."""
    out = tmp_path / "backup"
    if store.dialect == "sqlite":
        src = Path(sa.make_url(store.url).database)
        with store.admin_engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        shutil.copy(src, out)
        return out
    out.write_bytes(_raw_bytes(store, tmp_path))
    return out


def _restore(store: ResultsStore, backup: Path, tmp_path: Path) -> ResultsStore:
    """The backup restored as a database of its own, opened with the live key store."""
    keys_url = store.vault.keys.admin_url
    if store.dialect == "sqlite":
        target = tmp_path / "restored.db"
        shutil.copy(backup, target)
        return ResultsStore(f"sqlite:///{target}", keys_url=keys_url)
    url = sa.make_url(store.admin_url)
    name = f"{url.database}_restored"
    server = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    server.dispose()
    restored = url.set(database=name)
    subprocess.run(
        ["psql", "-q", "-h", url.host, "-p", str(url.port or 5432), "-U", url.username, "-d", name],
        input=backup.read_bytes(),
        capture_output=True,
        check=True,
        timeout=120,
    )
    admin = restored.render_as_string(hide_password=False)
    return ResultsStore(admin, admin, keys_url=keys_url)


def _drop_restored(store: ResultsStore) -> None:
    if store.dialect != "postgresql":
        return
    url = sa.make_url(store.admin_url)
    server = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
    server.dispose()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_upgrading_a_store_seals_what_it_held_in_the_clear_and_drops_orphans(backend, tmp_path, request):
    from pipelines.store import app_url

    if backend == "sqlite":
        store = ResultsStore(f"sqlite:///{tmp_path / 'r.db'}")
    else:
        admin = request.getfixturevalue("pg_database")("upgrade")
        store = ResultsStore(app_url(admin), admin)
    store.migrate("0005")  # the store as the previous release left it: names and details in the clear
    now = datetime(2026, 12, 1, tzinfo=UTC)
    with store.admin_engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO tenants (tenant_id, name, key_id, key_hash, follows, long_above, short_below, "
                "pins, created_at, key_rotated_at) VALUES ('t1', :n, 'k1', :h, :f, 0.55, 0.45, '{}', :c, :c)"
            ),
            {"n": NAME, "h": "0" * 64, "f": json.dumps([FOLLOWS[0].as_dict()]), "c": now},
        )
        conn.execute(
            sa.text(
                "INSERT INTO subscriptions (tenant_id, symbol, timeframe, horizon, label_kind, long_above, "
                "short_below, valid_from) VALUES ('t1', 'EURUSD', 'M5', 12, 'direction', 0.55, 0.45, :c)"
            ),
            {"c": now},
        )
        for tenant in ("t1", "gone"):  # "gone": a row the old removal left behind
            conn.execute(
                sa.text(
                    "INSERT INTO audit (tenant_id, actor, action, detail, at) VALUES (:t, 'x', 'a', :d, :c)"
                ),
                {"t": tenant, "d": '{"contact": "ops@zebra-capital.example"}', "c": now},
            )
        conn.execute(
            sa.text(
                "INSERT INTO webhooks (tenant_id, url, secret, delivered_through, attempts, next_attempt_at, "
                "delivered, created_at) VALUES ('t1', :u, 'ab' , 0, 0, :c, 0, :c)"
            ),
            {"u": HOOK, "c": now},
        )
    store.migrate()
    try:
        assert store.find_tenant(NAME).tenant_id == "t1"
        assert store.webhook("t1").url == HOOK and store.webhook("t1").secret == "ab"
        with store.tenant("t1", "test") as session:
            assert "ops@zebra-capital.example" in session.audit_log().detail.iloc[0]
        with store.admin_engine.connect() as conn:
            orphans = conn.execute(sa.text("SELECT count(*) FROM audit WHERE tenant_id = 'gone'")).scalar()
        assert orphans == 0
        if backend == "postgresql":
            dump = _raw_bytes(store, tmp_path)
            assert NAME.encode() not in dump and HOOK.encode() not in dump
    finally:
        store.close()


class Crash(RuntimeError):
    pass


def test_data_key_rotation_reseals_online_under_live_writes_and_a_crash_and_finishes_on_rerun(store):
    """A tenant's key and the platform's (the scores) rotated while another process writes audit
    rows and scores: a crash after two batches loses nothing, the rerun resumes (no third key),
    every value ends under the new key, the old one is destroyed, all of it reads back."""
    import threading

    from pipelines.store.crypto import PLATFORM

    store.vault.keys.cache_seconds = 0.3
    tenant, _ = store.add_tenant(NAME, FOLLOWS)
    store.set_webhook(NAME, HOOK)
    t0 = datetime(2024, 3, 1, tzinfo=UTC)

    def score(i: int) -> ScoreRow:
        bar = t0 + timedelta(minutes=5 * i)
        return ScoreRow("EURUSD", "M5", bar, 12, "direction", "m", "1", (i % 97) / 97, True, bar)

    store.write_scores([score(i) for i in range(40)])
    shadow = [
        ShadowRow(*score(i)[:6], "2", "1", 0.25, (i % 97) / 97, score(i).bar_closed_at) for i in range(20)
    ]
    assert store.write_shadow(shadow) == 20  # the platform's too: challenger and champion, live
    with store.tenant(tenant.tenant_id, "test") as session:
        for i in range(30):
            session.audit("note", {"i": i})
    other = ResultsStore(store.url, store.admin_url, keys_url=store.vault.keys.admin_url)
    other.vault.keys.cache_seconds = 0.3
    stop, written = threading.Event(), {"audit": 30, "scores": 40}

    def writer() -> None:  # another process, live: its own key cache
        i = 1000
        while not stop.is_set():
            with other.tenant(tenant.tenant_id, "live") as session:
                session.audit("note", {"i": i})
            other.write_scores([score(i)])
            written["audit"] += 1
            written["scores"] += 1
            i += 1
            time.sleep(0.01)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for owner in (tenant.tenant_id, PLATFORM):

            def crash(batches: int) -> None:
                if batches == 2:
                    raise Crash

            with pytest.raises(Crash):
                store.rotate_data_key(owner, batch=7, fault=crash)
            assert store.vault.keys.versions(owner) == [1, 2]  # both kept: nothing unreadable
            with store.tenant(tenant.tenant_id, "test") as session:
                session.audit_log()
                session.probabilities()
            done = store.rotate_data_key(owner, batch=7)
            assert done["resumed"] and done["finished"] and done["retired"] == 1, done
            assert store.vault.keys.versions(owner) == [2]
    finally:
        stop.set()
        thread.join()
        other.close()
    with store.tenant(tenant.tenant_id, "test") as session:
        log = session.audit_log()
        results = session.probabilities()
    notes = [json.loads(d)["i"] for d in log[log.action == "note"].detail]
    assert len(notes) == written["audit"] == len(set(notes))  # none lost, none twice
    assert len(results) == written["scores"]
    assert store.webhook(tenant.tenant_id).url == HOOK
    assert store.find_tenant(NAME).tenant_id == tenant.tenant_id
    with store.admin_engine.connect() as conn:
        blobs = [
            *conn.execute(sa.text("SELECT detail_sealed FROM audit")).scalars(),
            *conn.execute(sa.text("SELECT probability_sealed FROM scores")).scalars(),
            *conn.execute(sa.text("SELECT name_sealed FROM tenants")).scalars(),
            *conn.execute(sa.text("SELECT probabilities_sealed FROM shadow_scores")).scalars(),
        ]
    assert {bytes(b[1:5]) for b in blobs} == {(2).to_bytes(4, "big")}
    assert store.shadow_scores().champion.tolist() == [(i % 97) / 97 for i in range(20)]


def test_rotations_run_as_prefect_flows_that_name_tenants_by_id_only(prefect_harness, tmp_path):
    from flows.keys import rotate_data_key_flow, rotate_master_key_flow
    from pipelines.tenants import main as tenants_cli

    url = f"sqlite:///{tmp_path / 'r.db'}"
    params = tmp_path / "params.yaml"
    params.write_text(f"store: {{url: '{url}', key_cache_seconds: 0.2}}\n")
    store = ResultsStore(url)
    store.migrate()
    tenant, _ = store.add_tenant(NAME, FOLLOWS)
    with store.tenant(tenant.tenant_id, "test") as session:
        session.audit("note", {"i": 1})
    store.close()
    done = rotate_data_key_flow(params_path=str(params), owner=tenant.tenant_id)
    assert done["finished"] and done["resealed"] >= 2 and done["owner"] == tenant.tenant_id
    with pytest.raises(ValueError, match="the tenant's id, not its name"):
        rotate_data_key_flow(params_path=str(params), owner=NAME)
    new_file = tmp_path / "new.key"
    assert tenants_cli(["keygen", "--out", str(new_file)]) == 0
    from flows.keys import prune_audit_flow

    assert prune_audit_flow(params_path=str(params)) == 0  # nothing past a year old
    done = rotate_master_key_flow(new_key_file=str(new_file), params_path=str(params))
    new = LocalMasterKey.from_text(new_file.read_text())
    assert done["master_key_id"] == new.key_id and done["data_keys"] == 3  # the tenant, _platform, _lookup
    store = ResultsStore(url, masters=[new])
    assert store.find_tenant(NAME).tenant_id == tenant.tenant_id
    store.close()

    import asyncio

    from prefect.client.orchestration import get_client

    async def artifacts_and_logs():
        async with get_client() as client:
            return await client.read_artifacts(), await client.read_logs()

    artifacts, logs = asyncio.run(artifacts_and_logs())
    mine = [a for a in artifacts if a.key in ("rotate-data-key", "rotate-master-key")]
    assert mine and any(tenant.tenant_id in str(a.data) for a in mine)
    assert not any(NAME in str(a.data) + (a.description or "") for a in artifacts)
    assert not any(NAME in (entry.message or "") for entry in logs)


def test_export_package_holds_settings_history_results_and_audit_with_checksums(store, tmp_path):
    import io
    import zipfile

    import pandas as pd

    from pipelines.store.export import verify_package
    from pipelines.tenants import export_results

    tenant, key = store.add_tenant(NAME, FOLLOWS, long_above=0.6, short_below=0.4, pins={"m": "1"})
    other, _ = store.add_tenant("other", FOLLOWS)
    secret = store.set_webhook(NAME, HOOK)
    store.update_tenant(NAME, long_above=0.65)  # a second subscription interval
    store.write_scores(_scores())
    out = tmp_path / "package.zip"
    assert export_results(store, NAME, out) == 0  # pinned to version 1 of "m", followed scores: none
    store.update_tenant(NAME, pins={})
    store.write_scores([s._replace(bar_time=s.bar_time + timedelta(days=1)) for s in _scores()])
    assert export_results(store, NAME, out) == 3
    data = out.read_bytes()
    manifest = verify_package(data)
    assert manifest["tenant_id"] == tenant.tenant_id and manifest["files"]["results.parquet"]["rows"] == 3
    archive = zipfile.ZipFile(io.BytesIO(data))
    settings = json.loads(archive.read("tenant.json"))
    assert settings["name"] == NAME and settings["long_above"] == 0.65 and settings["pins"] == {}
    assert settings["webhook"]["url"] == HOOK and "secret" not in settings["webhook"]
    subs = json.loads(archive.read("subscriptions.json"))
    assert [s["long_above"] for s in subs] == [0.6, 0.65] and subs[0]["valid_to"] is not None
    assert [p["version"] for p in json.loads(archive.read("pins.json"))] == ["1"]
    results = pd.read_parquet(io.BytesIO(archive.read("results.parquet")))
    assert results.probability.tolist() == list(PROBABILITIES)
    assert results.signal.tolist() == ["flat", "short", "long"]  # under 0.65 / 0.4
    audit = pd.read_parquet(io.BytesIO(archive.read("audit.parquet")))
    assert {"tenant.add", "webhook.set", "tenant.update"} <= set(audit.action)
    sums = archive.read("SHA256SUMS").decode().splitlines()
    assert len(sums) == len(manifest["files"]) and all(len(line.split()[0]) == 64 for line in sums)
    everything = b"".join(archive.read(n) for n in archive.namelist())
    assert secret.encode() not in everything and key.encode() not in everything
    assert other.tenant_id.encode() not in everything  # nothing of another tenant
    # a damaged package is told apart
    damaged = io.BytesIO()
    with zipfile.ZipFile(damaged, "w") as z:
        for n in archive.namelist():
            z.writestr(n, archive.read(n) + (b" " if n == "tenant.json" else b""))
    with pytest.raises(ValueError, match="tenant.json does not match its checksum"):
        verify_package(damaged.getvalue())


def test_audit_rows_past_their_retention_are_pruned_and_erasure_records_stay(store):
    tenant, _ = store.add_tenant(NAME, FOLLOWS)
    gone, _ = store.add_tenant("gone", FOLLOWS)
    with store.tenant(tenant.tenant_id, "test") as session:
        for i in range(25):
            session.audit("note", {"i": i})
    store.remove_tenant("gone")
    now = datetime.now(UTC)
    assert store.prune_audit(30, now=now) == 0  # all of them are fresh
    assert store.prune_audit(30, now=now + timedelta(days=31), batch=10) == 26  # 25 notes + tenant.add
    with store.tenant(tenant.tenant_id, "test") as session:
        assert session.audit_log().empty
    assert len(store.erasures()) == 1


def test_an_app_role_without_a_password_is_refused_outside_tests(monkeypatch, tmp_path):
    for name in ("MT5PROB_ALLOW_PASSWORDLESS", "PGPASSWORD", "PGPASSFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.pgpass
    with pytest.raises(StoreError, match="no password"):
        ResultsStore("postgresql+psycopg://mt5prob_app@127.0.0.1:5432/test")
    ResultsStore("postgresql+psycopg://mt5prob_app:s3cret@127.0.0.1:5432/test").close()
    (tmp_path / ".pgpass").write_text("127.0.0.1:5432:test:mt5prob_app:s3cret\n")
    ResultsStore("postgresql+psycopg://mt5prob_app@127.0.0.1:5432/test").close()
    ResultsStore(f"sqlite:///{tmp_path / 'r.db'}").close()  # a file has no roles


@pytest.mark.postgres
def test_migrate_gives_the_app_role_the_password_its_url_names(pg_database, pg_server):
    from pipelines.store import app_url

    admin = pg_database("password")
    url = sa.make_url(app_url(admin)).set(password="s3cret-for-tests").render_as_string(hide_password=False)
    store = ResultsStore(url, admin)
    store.migrate()
    store.close()
    with pg_server.connect() as conn:
        q = "SELECT rolpassword FROM pg_authid WHERE rolname = 'mt5prob_app'"
        stored = conn.execute(sa.text(q)).scalar()
    assert stored and stored.startswith(("SCRAM-SHA-256$", "md5"))


def test_master_key_rotation_under_live_writes_loses_nothing(store):
    """Another process writes audit rows and scores while the master key is rotated: its
    unwrapped data keys stay valid (the data keys did not change), nothing fails, and a process
    holding only the new master key reads everything afterwards."""
    import threading

    tenant, _ = store.add_tenant(NAME, FOLLOWS)
    other = ResultsStore(store.url, store.admin_url, keys_url=store.vault.keys.admin_url)
    stop, written, errors = threading.Event(), [], []
    t0 = datetime(2024, 3, 1, tzinfo=UTC)

    def writer() -> None:
        i = 0
        try:
            while not stop.is_set():
                with other.tenant(tenant.tenant_id, "live") as session:
                    session.audit("note", {"i": i})
                bar = t0 + timedelta(minutes=5 * i)
                other.write_scores([ScoreRow("EURUSD", "M5", bar, 12, "direction", "m", "1", 0.5, True, bar)])
                written.append(i)
                i += 1
                time.sleep(0.005)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.3)
        new = LocalMasterKey.from_text(new_master_key_text())
        assert store.vault.keys.rewrap(new) >= 2  # the tenant's, the platform's (and others' on PG)
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join()
        other.close()
    assert not errors and len(written) > 5, errors
    fresh = ResultsStore(store.url, store.admin_url, keys_url=store.vault.keys.admin_url, masters=[new])
    try:
        fresh.verify_keys()
        with fresh.tenant(tenant.tenant_id, "test") as session:
            notes = [json.loads(d)["i"] for d in session.audit_log().query("action == 'note'").detail]
            results = session.probabilities()
        assert notes == written and len(results) == len(written)
    finally:
        fresh.close()
        store.vault.keys.rewrap(LocalMasterKey.from_env())  # the session's key store, as it was


def test_the_service_does_not_start_with_the_wrong_master_key(tmp_path, monkeypatch):
    from serving.devserver import running_service

    url = f"sqlite:///{tmp_path / 'r.db'}"
    store = ResultsStore(url)
    store.migrate()
    store.add_tenant(NAME, FOLLOWS)
    store.close()
    params = tmp_path / "params.yaml"
    registry = f"sqlite:///{tmp_path / 'm.db'}"
    params.write_text(f"store: {{url: '{url}'}}\nregistry: {{tracking_uri: '{registry}'}}\n")
    monkeypatch.setenv("MT5PROB_MASTER_KEY", new_master_key_text())
    log = tmp_path / "serve.log"
    with pytest.raises((RuntimeError, TimeoutError)):  # it exits, or never becomes ready
        with running_service(params, log=log, timeout=25):
            pass
    text = log.read_text()
    assert "wrong master key" in text and NAME not in text


def test_names_are_found_through_the_key_stores_index_and_a_half_done_add_does_not_block_one(store):
    store.vault.claim_name("ghost0000000000", NAME)  # an add that died after claiming the name
    tenant, _ = store.add_tenant(NAME, FOLLOWS)
    assert store.find_tenant(NAME).tenant_id == tenant.tenant_id
    with pytest.raises(StoreError, match="exists already"):
        store.add_tenant(NAME, FOLLOWS)
    with store.admin_engine.connect() as conn:  # the results hold no digest of the name
        columns = [c["name"] for c in sa.inspect(conn).get_columns("tenants")]
    assert not any("digest" in c for c in columns)
    store.remove_tenant(NAME)
    assert store.vault.find_name(NAME) is None  # gone with the keys
