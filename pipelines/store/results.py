"""The results store: tenants, their probabilities and an audit trail, isolated per tenant.

SQLite file by default, PostgreSQL when a ``postgresql+psycopg://`` URL is configured. Two
connections, two privileges:

- ``url`` — what scoring and serving use. On PostgreSQL this is the ``mt5prob_app`` role
  (no BYPASSRLS, owns nothing). Every transaction that touches tenant data first sets
  ``app.tenant_id`` (transaction-local), and row-level security on every tenant table lets the
  session see and write only that tenant's rows, even when a query forgets its filter.
- ``admin_url`` — migrations and tenant administration (add, remove, list across tenants).
  It must own the tables and be a superuser or have BYPASSRLS. Defaults to ``url`` (SQLite).

On SQLite there is no RLS; the API enforces the same rule: data is reached only through a
`TenantSession`, whose queries carry its tenant and whose writes refuse any other tenant.

API keys look like ``mt5p_<key id>_<secret>``; only the key id and the SHA-256 of the whole
key are stored. Keys are compared in constant time and never logged. Times are UTC;
``bar_time`` is the bar's open time.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import secrets
import struct
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from models.policy import ThresholdPolicy
from models.three_way import CLASSES
from pipelines.store.crypto import (
    PLATFORM,
    SEALED,
    KeyDestroyed,
    KeyStore,
    LocalMasterKey,
    MasterKey,
    Vault,
    aad,
    keys_url_for,
    seal,
)
from pipelines.store.schema import (
    APP_ROLE,
    TENANT_SETTING,
    audit,
    scores,
    series_leases,
    shadow_scores,
    subscriptions,
    tenant_results,
    tenants,
    watermarks,
    worker_heartbeats,
)
from pipelines.store.schema import (
    erasures as erasure_table,
)
from pipelines.store.schema import pins as pin_table
from pipelines.store.schema import webhooks as webhook_table

MIGRATIONS = Path(__file__).parent / "migrations"
KEY_PREFIX = "mt5p"
SIGNALS = ("long", "short", "flat")
# a score as written: the ``scores`` table's columns between the id and committed_at, in order
SCORE_FIELDS = tuple(c.name for c in scores.columns)[1:-1]
# what a tenant reads back (`TenantSession`): the view's columns with the probability opened and
# the signal derived from it and the tenant's thresholds
VIEW_COLUMNS = tuple(c.name for c in tenant_results.columns)[1:]
RESULT_COLUMNS = (
    "symbol",
    "timeframe",
    "bar_time",
    "horizon",
    "label_kind",
    "probability",
    "probabilities",
    "signal",
    "model_name",
    "model_version",
    "scored_at",
    "bar_closed_at",
    "event_id",
)
_PROBABILITY = struct.Struct(">d")
_THREE = struct.Struct(">3d")  # a three-class score: P(down), P(flat), P(up)
# result columns `_frame` computes rather than reads
COMPUTED = ("probability", "probabilities", "signal")
# one score's probability: P(label 1), or (P(down), P(flat), P(up)) of a three-class model
Probability = float | tuple[float, float, float]


def pack_probability(p: Probability | Sequence[float] | np.ndarray) -> bytes:
    """8 bytes (one float64) for P(label 1), 24 for a three-class score's (down, flat, up)."""
    if np.ndim(p) == 1:
        values = tuple(float(v) for v in p)  # type: ignore[union-attr]
        if len(values) != 3:
            raise StoreError(f"a three-class score has 3 probabilities, got {len(values)}")
        return _THREE.pack(*values)
    return _PROBABILITY.pack(float(p))  # type: ignore[arg-type]


def unpack_probability(blob: bytes) -> Probability:
    """The inverse of `pack_probability` (told apart by length)."""
    if len(blob) == _THREE.size:
        return _THREE.unpack(blob)  # type: ignore[return-value]
    return _PROBABILITY.unpack(blob)[0]


def probability_array(values: Sequence[Any]) -> np.ndarray:
    """Probabilities of one model's rows as `models.metrics` takes them: (n,) P(label 1), or
    (n, 3) when they are three-class tuples."""
    values = list(values)
    if values and np.ndim(values[0]) == 1:
        return np.array([tuple(v) for v in values], dtype=float).reshape(len(values), 3)
    return np.asarray(values, dtype=float)


def frame_probabilities(frame: pd.DataFrame) -> np.ndarray:
    """The probabilities of result rows of one model (a `TenantSession` frame) as
    `models.metrics` takes them: ``probability`` (n,), or (n, 3) [down, flat, up] from
    ``probabilities`` when they are three-class."""
    if "probabilities" in frame and len(frame) and frame["probabilities"].iloc[0] is not None:
        return np.array([[d[c] for c in CLASSES] for d in frame["probabilities"]], dtype=float)
    return frame["probability"].to_numpy(dtype=float)


def valid_probability(p: Any) -> bool:
    """P(label 1) in [0, 1], or three probabilities in [0, 1] summing to 1 (±1e-6); NaN never."""
    values = np.asarray(p, dtype=float).ravel()
    if values.size not in (1, 3) or not np.all((values >= 0.0) & (values <= 1.0)):
        return False
    return values.size == 1 or abs(float(values.sum()) - 1.0) <= 1e-6


def _score_row_key(
    symbol: str,
    timeframe: str,
    bar_time: datetime,
    horizon: int,
    label_kind: str,
    model_name: str,
    model_version: str,
    followed: bool,
) -> str:
    """A score's unique key as text (the associated data its sealed probability is bound to)."""
    if isinstance(bar_time, str):  # raw SQL on SQLite (a migration) reads times as text
        bar_time = datetime.fromisoformat(bar_time)
    stamp = int(_utc(bar_time).timestamp())  # bar open, UTC, whole seconds
    parts = (symbol, timeframe, str(stamp), str(int(horizon)), label_kind, model_name, model_version)
    return "|".join(parts) + f"|{int(followed)}"


def seal_probability(
    vault: Vault,
    series: tuple[str, str, datetime, int, str],
    model_name: str,
    model_version: str,
    followed: bool,
    probability: Probability,
) -> bytes:
    """`probability` (float64; three of them for a three-class score, `pack_probability`)
    sealed under the platform's data key, bound to its score's row (`series` = symbol,
    timeframe, bar open time, horizon, label kind)."""
    row = _score_row_key(*series, model_name, model_version, followed)
    return vault.seal(PLATFORM, "scores", "probability", row, pack_probability(probability))


def open_probability(vault: Vault, row: Any) -> Probability:
    """The probability of a `tenant_results` row (opens ``probability_sealed``): P(label 1),
    or (P(down), P(flat), P(up)) of a three-class score."""
    key = _score_row_key(
        row.symbol,
        row.timeframe,
        row.bar_time,
        row.horizon,
        row.label_kind,
        row.model_name,
        row.model_version,
        row.followed,
    )
    return unpack_probability(vault.open(PLATFORM, "scores", "probability", key, row.probability_sealed))


_PAIR = struct.Struct(">dd")
_PAIR_THREE = struct.Struct(">6d")  # challenger's then champion's (down, flat, up)


class ShadowRow(NamedTuple):
    """The challenger's and the champion's probability (P(label 1), [0, 1]; three-class: the
    (down, flat, up) tuple) of one live bar of one series, scored in the shadow of the
    champion (``shadow_scores``). Times are UTC datetimes; ``bar_time`` the bar's open,
    ``bar_closed_at`` the wall-clock moment it closed."""

    symbol: str
    timeframe: str
    bar_time: datetime
    horizon: int
    label_kind: str
    model_name: str
    challenger_version: str
    champion_version: str
    challenger: Probability
    champion: Probability
    bar_closed_at: datetime


def _pack_pair(challenger: Probability, champion: Probability) -> bytes:
    if np.ndim(challenger) == 1 or np.ndim(champion) == 1:
        return _PAIR_THREE.pack(*map(float, challenger), *map(float, champion))  # type: ignore[arg-type]
    return _PAIR.pack(float(challenger), float(champion))  # type: ignore[arg-type]


def _unpack_pair(blob: bytes) -> tuple[Probability, Probability]:
    if len(blob) == _PAIR_THREE.size:
        v = _PAIR_THREE.unpack(blob)
        return v[:3], v[3:]
    return _PAIR.unpack(blob)  # type: ignore[return-value]


def _shadow_row_key(r: Any) -> str:
    """A shadow score's unique key as text (what its sealed pair is bound to): the challenger's
    score key (`_score_row_key`) and the champion's version."""
    key = _score_row_key(
        r.symbol, r.timeframe, r.bar_time, r.horizon, r.label_kind, r.model_name, r.challenger_version, False
    )
    return f"{key}|{r.champion_version}"


def event_payload(row: Any) -> dict[str, Any]:
    """One result as a tenant receives it, on its stream and in its webhooks (a row of
    `TenantSession.events`): JSON-ready, times ISO 8601 UTC (``bar_time`` the bar's open)."""
    return {
        "symbol": row.symbol,
        "timeframe": row.timeframe,
        "bar_time": row.bar_time.isoformat(),
        "horizon": int(row.horizon),
        "label_kind": row.label_kind,
        "probability": float(row.probability),
        "probabilities": row.probabilities,  # {down, flat, up} of a three-class model, else None
        "signal": row.signal,
        "model_name": row.model_name,
        "model_version": str(row.model_version),
        "bar_closed_at": row.bar_closed_at.isoformat(),
        "committed_at": row.scored_at.isoformat(),
        "event_id": int(row.event_id),
    }


@dataclass(frozen=True)
class Webhook:
    """A tenant's webhook and where its delivery stands (`ResultsStore.webhooks_due`). Event
    ids: every id ≤ `delivered_through` was acknowledged; (`delivered_through`,
    `pending_through`] is the batch in flight (None: none)."""

    tenant_id: str
    url: str
    secret: str
    delivered_through: int
    pending_through: int | None
    attempts: int
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    last_status: str | None
    delivered: int


class ScoreRow(NamedTuple):
    """One probability for one bar of one series and model version, stored once whatever the
    number of tenants that follow it. Fields are the ``scores`` table's columns between ``id``
    and ``committed_at`` (a test keeps them equal). Times are UTC datetimes; ``bar_time`` is the
    bar's open time, ``bar_closed_at`` the wall-clock moment it closed; ``probability`` is
    P(label 1) in [0, 1]; ``followed`` when it was scored as the version ``serving.alias``
    pointed at (tenants without a pin get those)."""

    symbol: str
    timeframe: str
    bar_time: datetime
    horizon: int
    label_kind: str
    model_name: str
    model_version: str
    probability: Probability
    followed: bool
    bar_closed_at: datetime


class StoreError(ValueError):
    """Bad input to the store (unknown tenant, invalid subscription, wrong tenant...)."""


class TenantIsolationError(PermissionError):
    """A tenant session tried to reach another tenant's rows."""


@dataclass(frozen=True)
class Subscription:
    """One thing a tenant follows: a symbol on a timeframe, a label kind and horizon (bars)."""

    symbol: str
    timeframe: str
    horizon: int
    label_kind: str = "direction"

    @classmethod
    def parse(cls, text: str) -> Subscription:
        """``EURUSD:M5:12`` or ``EURUSD:M5:12:triple_barrier``."""
        parts = text.split(":")
        if len(parts) not in (3, 4) or not parts[2].isdigit():
            raise StoreError(f"subscription {text!r}: expected SYMBOL:TIMEFRAME:HORIZON[:LABEL_KIND]")
        return cls(parts[0].upper(), parts[1].upper(), int(parts[2]), *(parts[3:] or ["direction"]))

    def as_dict(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "horizon": self.horizon,
            "label_kind": self.label_kind,
        }


@dataclass(frozen=True)
class Tenant:
    """A client account. Thresholds are on P(up): long above `long_above`, short below
    `short_below`, flat between. `pins` maps a model name to the version this tenant uses."""

    tenant_id: str
    name: str
    follows: tuple[Subscription, ...]
    long_above: float = 0.55
    short_below: float = 0.45
    pins: Mapping[str, str] = field(default_factory=dict)
    created_at: datetime | None = None

    def policy(self, label_kind: str = "direction") -> ThresholdPolicy:
        """This tenant's thresholds as the one threshold policy for `label_kind`
        (`models.policy`: triple-barrier probabilities are long or flat)."""
        return ThresholdPolicy.for_label_kind(label_kind, self.long_above, self.short_below)

    def signal(self, probability: Probability, label_kind: str = "direction") -> str:
        return self.policy(label_kind).signal(probability)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "name": self.name,
            "follows": [s.as_dict() for s in self.follows],
            "long_above": self.long_above,
            "short_below": self.short_below,
            "pins": dict(self.pins),
            "created_at": None if self.created_at is None else self.created_at.isoformat(),
        }


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _new_key() -> tuple[str, str]:
    key_id = secrets.token_hex(6)
    return key_id, f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"


def _key_id(key: str) -> str | None:
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1]:
        return None
    return parts[1]


@functools.lru_cache(maxsize=65_536)
def _subscription(symbol: str, timeframe: str, horizon: int, label_kind: str = "direction") -> Subscription:
    """One (immutable) Subscription per distinct value: a directory of many tenants following
    the same series builds each once, not once per tenant."""
    return Subscription(symbol, timeframe, horizon, label_kind)


def _tenant_from_row(row: Any, vault: Vault | None) -> Tenant:
    """A tenant from its row; its name and thresholds opened with `vault` (None: they are not
    read — the scoring directory works with ids and follows only — the tenant's id stands in for
    its name and the thresholds are NaN)."""
    follows = row.follows if not isinstance(row.follows, str) else json.loads(row.follows)
    pins = row.pins if not isinstance(row.pins, str) else json.loads(row.pins)
    name, (la, sb) = row.tenant_id, (float("nan"), float("nan"))
    if vault is not None:
        t = row.tenant_id
        name = vault.open_text(t, "tenants", "name", t, row.name_sealed)
        la, sb = json.loads(vault.open(t, "tenants", "thresholds", t, row.thresholds_sealed))
    return Tenant(
        tenant_id=row.tenant_id,
        name=name,
        follows=tuple(_subscription(**f) for f in follows),
        long_above=la,
        short_below=sb,
        pins={str(k): str(v) for k, v in (pins or {}).items()},
        created_at=_utc(row.created_at),
    )


def _webhook_from_row(row: Any, vault: Vault) -> Webhook:
    t = row.tenant_id
    return Webhook(
        tenant_id=t,
        url=vault.open_text(t, "webhooks", "url", t, row.url_sealed),
        secret=vault.open_text(t, "webhooks", "secret", t, row.secret_sealed),
        delivered_through=int(row.delivered_through),
        pending_through=None if row.pending_through is None else int(row.pending_through),
        attempts=int(row.attempts),
        next_attempt_at=_utc(row.next_attempt_at),
        last_attempt_at=None if row.last_attempt_at is None else _utc(row.last_attempt_at),
        last_status=row.last_status,
        delivered=int(row.delivered),
    )


def _validate_thresholds(long_above: float, short_below: float) -> None:
    try:
        ThresholdPolicy(long_above, short_below)
    except ValueError as exc:
        raise StoreError(str(exc)) from None


def _engine(url: str, statement_timeout_ms: int = 0, connect_timeout: float | None = None) -> sa.Engine:
    """An engine for `url`. PostgreSQL: every statement is cancelled after
    `statement_timeout_ms` (0: never) and connecting — or waiting for a pooled connection —
    gives up after `connect_timeout` seconds, so a stalled or unreachable database turns into
    an error the caller can answer (503) instead of a hung request. TLS is the URL's
    ``sslmode`` (``?sslmode=verify-full&sslrootcert=…``), passed to libpq as written.
    SQLite: a writer waits up to 30 s for the file lock."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers do not block the scoring writer
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA secure_delete=ON")  # deleted rows are overwritten, not left in free pages
            cur.close()

        return engine
    connect_args: dict[str, Any] = {}
    kwargs: dict[str, Any] = {}
    if statement_timeout_ms:
        connect_args["options"] = f"-c statement_timeout={int(statement_timeout_ms)}"
    if connect_timeout is not None:
        connect_args["connect_timeout"] = max(1, int(round(connect_timeout)))
        kwargs["pool_timeout"] = connect_timeout
    return sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args, **kwargs)


class ResultsStore:
    """Entry point to the store; cheap to share across threads (SQLAlchemy engines pool)."""

    def __init__(
        self,
        url: str,
        admin_url: str | None = None,
        statement_timeout_ms: int = 0,
        connect_timeout: float | None = None,
        *,
        encryption: bool = True,
        keys_url: str | None = None,
        masters: Sequence[MasterKey] | None = None,
        key_cache_seconds: float = 60.0,
    ) -> None:
        """`statement_timeout_ms` and `connect_timeout` apply to `url`'s connections
        (scoring, serving) on PostgreSQL; the admin connection (migrations, tenant
        administration) is not cut short.

        `encryption` (default on): tenant data is sealed under per-tenant data keys kept in the
        key store at `keys_url` (default `crypto.keys_url_for`), wrapped by `masters` (default:
        the master key in the environment, then any previous ones) — missing: `MasterKeyError`
        here, before anything is read or written. Off: values are stored marked plain."""
        _require_password(url)
        self.url = url
        self.admin_url = admin_url or url
        self.engine = _engine(url, statement_timeout_ms, connect_timeout)
        self.admin_engine = (
            self.engine if self.admin_url == url else _engine(self.admin_url, 0, connect_timeout)
        )
        self.dialect = self.engine.dialect.name
        keys = None
        if encryption:
            if masters is None:
                masters = [LocalMasterKey.from_env(), *LocalMasterKey.previous_from_env()]
            if keys_url:
                keys = KeyStore(keys_url, masters, cache_seconds=key_cache_seconds)
            else:  # read as the app, written as the admin (PostgreSQL: two roles)
                keys = KeyStore(
                    keys_url_for(url), masters, keys_url_for(self.admin_url), cache_seconds=key_cache_seconds
                )
        self.vault = Vault(keys)

    @classmethod
    def from_params(cls, store: Any) -> ResultsStore:
        """The store of a ``store:`` section (`pipelines.config.StoreParams`)."""
        return cls(
            store.url,
            store.admin_url,
            store.statement_timeout_ms,
            store.connect_timeout_seconds,
            encryption=store.encryption,
            keys_url=store.keys_url,
            key_cache_seconds=store.key_cache_seconds,
        )

    def verify_keys(self) -> None:
        """At start (service, workers, CLI): raise `crypto.MasterKeyError` with one clear message
        unless this process's master key opens the key store. Nothing to check when encryption
        is off."""
        if self.vault.keys is not None:
            self.vault.keys.verify()

    def ping(self) -> None:
        """Raise unless the store answers a trivial query (PostgreSQL: within the connect and
        statement timeouts)."""
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()
        if self.admin_engine is not self.engine:
            self.admin_engine.dispose()
        if self.vault.keys is not None:
            self.vault.keys.close()

    # ---------------------------------------------------------------- schema
    def migrate(self, revision: str = "head") -> None:
        """Apply Alembic migrations up to `revision` (idempotent) through the admin connection;
        first create the key store if missing and check the master key opens it."""
        if self.vault.keys is not None:
            self.vault.keys.create()
            self.vault.keys.grant_read(APP_ROLE)  # when the role exists (an upgrade)
            self.vault.keys.verify()
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["vault"] = self.vault
        with self.admin_engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            password = sa.make_url(self.url).password
            if self.dialect == "postgresql" and password and sa.make_url(self.url).username == APP_ROLE:
                # the app role authenticates with the password its URL gives
                quoted = conn.execute(sa.text("SELECT quote_literal(:p)"), {"p": password}).scalar_one()
                conn.execute(sa.text(f"ALTER ROLE {APP_ROLE} WITH PASSWORD {quoted}"))
        if self.vault.keys is not None:
            self.vault.keys.grant_read(APP_ROLE)  # the role exists now (migration 0001)

    # ---------------------------------------------------------------- admin
    def add_tenant(
        self,
        name: str,
        follows: Sequence[Subscription],
        long_above: float = 0.55,
        short_below: float = 0.45,
        pins: Mapping[str, str] | None = None,
        actor: str = "admin",
    ) -> tuple[Tenant, str]:
        """Create a tenant; returns it and its API key (shown once: only a hash is stored)."""
        if not name.strip():
            raise StoreError("tenant name must not be empty")
        if not follows:
            raise StoreError("a tenant must follow at least one SYMBOL:TIMEFRAME:HORIZON")
        _validate_thresholds(long_above, short_below)
        tenant_id = uuid.uuid4().hex[:16]
        key_id, key = _new_key()
        now = _now()
        with self.admin_engine.begin() as conn:
            if conn.dialect.name == "postgresql":  # names are sealed: uniqueness is checked here, alone
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": TENANT_NAME_LOCK})
            if self._by_name(conn, name) is not None:
                raise StoreError(f"a tenant named {name!r} exists already")
            if self.vault.find_name(name):  # named for an add that never completed: free it
                self.vault.release_name(name)
            self.vault.new_owner(tenant_id)
            if self.vault.claim_name(tenant_id, name) is False:
                raise StoreError(f"a tenant named {name!r} exists already")
            conn.execute(
                tenants.insert().values(
                    tenant_id=tenant_id,
                    name_sealed=self.vault.seal_text(tenant_id, "tenants", "name", tenant_id, name),
                    key_id=key_id,
                    key_hash=_hash_key(key),
                    follows=[s.as_dict() for s in follows],
                    thresholds_sealed=_seal_thresholds(self.vault, tenant_id, long_above, short_below),
                    pins={str(k): str(v) for k, v in (pins or {}).items()},
                    created_at=now,
                    key_rotated_at=now,
                )
            )
            _open_subscriptions(conn, self.vault, tenant_id, follows, long_above, short_below, now)
            _open_pins(conn, tenant_id, pins or {}, now)
            _audit(conn, self.vault, tenant_id, actor, "tenant.add", {"name": name})
        tenant = Tenant(tenant_id, name, tuple(follows), long_above, short_below, dict(pins or {}), now)
        return tenant, key

    def list_tenants(self) -> list[Tenant]:
        """Every tenant, oldest first. One whose keys are destroyed but whose rows are not yet
        deleted (an erasure cut short) is listed with its id as its name, to finish by id."""
        with self.admin_engine.connect() as conn:
            rows = conn.execute(sa.select(tenants).order_by(tenants.c.created_at, tenants.c.tenant_id)).all()
        self.vault.preload([r.tenant_id for r in rows])
        out = []
        for r in rows:
            try:
                out.append(_tenant_from_row(r, self.vault))
            except KeyDestroyed:
                out.append(_tenant_from_row(r, None))
        return out

    def find_tenant(self, ref: str) -> Tenant:
        """A tenant by id or by name (admin connection)."""
        row = self._tenant_row(ref)
        if row is None:
            raise StoreError(f"no tenant with id or name {ref!r}")
        return _tenant_from_row(row, self.vault)

    def _tenant_row(self, ref: str) -> Any:
        """The tenants row whose id is `ref`, else the one named `ref`, else None."""
        with self.admin_engine.connect() as conn:
            row = conn.execute(sa.select(tenants).where(tenants.c.tenant_id == ref)).first()
            return row if row is not None else self._by_name(conn, ref)

    def _by_name(self, conn: sa.Connection, name: str) -> Any:
        """The tenants row named `name`, or None. Names are sealed; the key store keeps a keyed
        digest of each (`crypto.KeyStore.find_name`: not in the results, so no backup of them
        can confirm a guessed name after an erasure). With encryption off there is no index and
        every name is opened."""
        owner = self.vault.find_name(name)
        if owner is not False:
            if owner is None:
                return None
            return conn.execute(sa.select(tenants).where(tenants.c.tenant_id == owner)).first()
        rows = conn.execute(sa.select(tenants.c.tenant_id, tenants.c.name_sealed)).all()
        self.vault.preload([r.tenant_id for r in rows])
        for r in rows:
            try:
                if self.vault.open_text(r.tenant_id, "tenants", "name", r.tenant_id, r.name_sealed) == name:
                    return conn.execute(sa.select(tenants).where(tenants.c.tenant_id == r.tenant_id)).first()
            except KeyDestroyed:
                continue
        return None

    def update_tenant(
        self,
        ref: str,
        *,
        follows: Sequence[Subscription] | None = None,
        long_above: float | None = None,
        short_below: float | None = None,
        pins: Mapping[str, str] | None = None,
        actor: str = "admin",
    ) -> Tenant:
        tenant = self.find_tenant(ref)
        values: dict[str, Any] = {}
        if follows is not None:
            values["follows"] = [s.as_dict() for s in follows]
        la = tenant.long_above if long_above is None else long_above
        sb = tenant.short_below if short_below is None else short_below
        _validate_thresholds(la, sb)
        values["thresholds_sealed"] = _seal_thresholds(self.vault, tenant.tenant_id, la, sb)
        if pins is not None:
            values["pins"] = {str(k): str(v) for k, v in pins.items()}
        now = _now()
        new_follows = tuple(follows) if follows is not None else tenant.follows
        with self.admin_engine.begin() as conn:
            conn.execute(tenants.update().where(tenants.c.tenant_id == tenant.tenant_id).values(**values))
            if (set(new_follows), la, sb) != (set(tenant.follows), tenant.long_above, tenant.short_below):
                _close(conn, subscriptions, tenant.tenant_id, now)
                _open_subscriptions(conn, self.vault, tenant.tenant_id, new_follows, la, sb, now)
            if pins is not None and values["pins"] != dict(tenant.pins):
                _close(conn, pin_table, tenant.tenant_id, now)
                _open_pins(conn, tenant.tenant_id, values["pins"], now)
            detail = {k: str(v) for k, v in values.items() if k != "thresholds_sealed"}
            detail.update(long_above=str(la), short_below=str(sb))  # sealed with the audit row
            _audit(conn, self.vault, tenant.tenant_id, actor, "tenant.update", detail)
        return self.find_tenant(tenant.tenant_id)

    def ensure_tenant(
        self,
        name: str,
        follows: Sequence[Subscription],
        long_above: float = 0.55,
        short_below: float = 0.45,
        actor: str = "admin",
    ) -> str:
        """Make the tenant `name` exist with these settings (add it, or update it and rotate its
        key); returns its new API key. Idempotent setup for demos and provisioning scripts."""
        with self.admin_engine.connect() as conn:
            exists = self._by_name(conn, name)
        if exists is None:
            return self.add_tenant(name, follows, long_above, short_below, actor=actor)[1]
        self.update_tenant(name, follows=follows, long_above=long_above, short_below=short_below, actor=actor)
        return self.rotate_key(name, actor=actor)

    def rotate_key(self, ref: str, actor: str = "admin") -> str:
        """A new API key for the tenant; the old one stops working at once."""
        tenant = self.find_tenant(ref)
        key_id, key = _new_key()
        with self.admin_engine.begin() as conn:
            conn.execute(
                tenants.update()
                .where(tenants.c.tenant_id == tenant.tenant_id)
                .values(key_id=key_id, key_hash=_hash_key(key), key_rotated_at=_now())
            )
            _audit(conn, self.vault, tenant.tenant_id, actor, "tenant.rotate_key", {})
        return key

    def remove_tenant(self, ref: str, actor: str = "admin") -> dict[str, int]:
        """Erase the tenant (right to be forgotten), by crypto-shredding then deleting:

        1. its data keys are destroyed in the key store, so every copy of what was sealed under
           them — here, in replicas, in backups taken before — is unreadable from then on;
        2. its rows go in one transaction: subscription and pin history (so no result is its
           any more), webhook, audit trail, the tenant row. Rows of other tables reference the
           tenant (ON DELETE CASCADE), so one written concurrently for it fails instead of
           outliving it;
        3. an erasure record stays in the same transaction: a digest of the id, when, `actor`
           and the counts — nothing personal.

        `ref` is the id or the name; after a crash between 1 and 2 the name is unreadable and
        the id finishes the erasure. Returns the counts (``results``: rows it could read,
        ``keys``: data keys destroyed, then rows deleted per table). Scores belong to no tenant
        and stay."""
        row = self._tenant_row(ref)
        if row is None:
            raise StoreError(f"no tenant with id or name {ref!r}")
        tenant_id = row.tenant_id
        counts = {"keys": self.vault.destroy(tenant_id)}
        with self.admin_engine.begin() as conn:
            counts["results"] = int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(tenant_results)
                    .where(tenant_results.c.tenant_id == tenant_id)
                ).scalar_one()
            )
            for table in (subscriptions, pin_table, webhook_table, audit, tenants):
                gone = conn.execute(table.delete().where(table.c.tenant_id == tenant_id)).rowcount
                counts[table.name] = int(gone)
            conn.execute(
                erasure_table.insert().values(
                    subject=hashlib.sha256(tenant_id.encode()).hexdigest(),
                    erased_at=_now(),
                    actor=actor,
                    counts=json.dumps(counts, sort_keys=True),
                )
            )
        if self.dialect == "sqlite":  # the WAL still holds the pages as they were: fold it in, empty it
            with self.admin_engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return counts

    # ---------------------------------------------------------------- retention
    def prune_audit(self, retention_days: float, now: datetime | None = None, batch: int = 10_000) -> int:
        """Delete audit rows older than `retention_days` (every tenant; admin connection), in
        batches of `batch` rows so a large backlog never holds one long transaction; returns how
        many went. Erasure records are not audit rows and stay."""
        cutoff = (now or _now()) - timedelta(days=retention_days)
        gone = 0
        while True:
            with self.admin_engine.begin() as conn:
                ids = (
                    conn.execute(
                        sa.select(audit.c.id).where(audit.c.at < cutoff).order_by(audit.c.id).limit(batch)
                    )
                    .scalars()
                    .all()
                )
                if not ids:
                    return gone
                gone += conn.execute(audit.delete().where(audit.c.id.in_(ids))).rowcount

    # ---------------------------------------------------------------- key rotation
    def rotate_master_key(self, new_key_file: Path) -> dict[str, Any]:
        """Re-wrap every data key under the master key in `new_key_file` (no tenant row is
        touched); returns the number of data keys, the new key's id and the seconds taken."""
        if self.vault.keys is None:
            raise StoreError("encryption is off (store.encryption: false): there is no master key to rotate")
        try:
            new = LocalMasterKey.from_text(new_key_file.read_text(), f"key file {new_key_file}")
        except OSError as exc:
            raise StoreError(f"cannot read {new_key_file}: {exc.strerror}") from None
        started = time.perf_counter()
        n = self.vault.keys.rewrap(new)
        seconds = round(time.perf_counter() - started, 3)
        return {"data_keys": n, "master_key_id": new.key_id, "seconds": seconds}

    def rotate_data_key(
        self,
        owner: str,
        batch: int = 1000,
        fault: Any = None,
        wait: bool = True,
    ) -> dict[str, Any]:
        """Re-seal every value of `owner` — a tenant (id or name), or ``crypto.PLATFORM`` for
        the scores — under a new data key, online and resumable:

        1. a new version of its data key becomes current (unless a rotation of it is already
           under way: more than one version exists — then it is resumed, no new key is made);
        2. its sealed values still under an older version are re-sealed in batches of `batch`
           rows, one transaction each, each row compare-and-set (a value changed meanwhile is
           left for the next pass), readers opening either version throughout;
        3. processes that cached the old version may seal under it for up to the key cache
           time: after twice that (`wait`; else the call returns unfinished) a last sweep
           re-seals what they wrote, and the older versions are destroyed.

        A crash anywhere loses nothing (both keys exist until step 3 ends) and a rerun finishes
        the job; `fault(batches_done)` is a test hook called after each committed batch.
        Returns counts and timings."""
        keys = self.vault.keys
        if keys is None:
            raise StoreError("encryption is off (store.encryption: false): there is no data key to rotate")
        if owner != PLATFORM:
            row = self._tenant_row(owner)
            if row is None:
                raise StoreError(f"no tenant with id or name {owner!r}")
            owner = row.tenant_id
        versions = keys.versions(owner)
        if not versions:
            raise StoreError(f"{owner} has no data key (erased?)")
        resumed = len(versions) > 1
        current = versions[-1] if resumed else keys.new_key(owner)
        started = time.perf_counter()
        done = {"owner": owner, "version": current, "resumed": resumed, "resealed": 0, "batches": 0}

        def sweep() -> None:
            for target in _sealed_columns(owner):
                while n := self._reseal_batch(owner, target, current, batch):
                    done["resealed"] += n
                    done["batches"] += 1
                    if fault is not None:
                        fault(done["batches"])

        sweep()
        made = keys.created_at(owner, current) or _now()
        settle = 2 * keys.cache_seconds - (_now() - made).total_seconds()
        if settle > 0:
            if not wait:
                return {**done, "finished": False, "seconds": time.perf_counter() - started}
            time.sleep(settle)
        sweep()
        done["retired"] = keys.retire(owner, current)
        return {**done, "finished": True, "seconds": time.perf_counter() - started}

    def _reseal_batch(self, owner: str, target: _Sealed, version: int, batch: int) -> int:
        table, pk, column, row_key, where = target
        col = table.c[column]
        prefix = SEALED + version.to_bytes(4, "big")
        cipher = self.vault.keys.cipher(owner, version)  # type: ignore[union-attr]
        name = column.removesuffix("_sealed")
        with self.admin_engine.begin() as conn:
            q = sa.select(table).where(sa.func.substr(col, 1, 5) != prefix).order_by(table.c[pk]).limit(batch)
            if where is not None:
                q = q.where(where(table, owner))
            rows = conn.execute(q).all()
            if not rows:
                return 0
            updates = []
            for r in rows:
                key = row_key(r)
                old = bytes(getattr(r, column))
                value = self.vault.open(owner, table.name, name, key, old)
                new = seal(cipher, version, value, aad(owner, table.name, name, key))
                updates.append({"_pk": getattr(r, pk), "_old": old, "_new": new})
            conn.execute(
                table.update()
                .where(table.c[pk] == sa.bindparam("_pk"), col == sa.bindparam("_old"))
                .values({column: sa.bindparam("_new")}),
                updates,
            )
        return len(rows)

    def erasures(self) -> list[dict[str, Any]]:
        """Every erasure record, oldest first (admin): subject digest, when, by whom, counts."""
        with self.admin_engine.connect() as conn:
            rows = conn.execute(sa.select(erasure_table).order_by(erasure_table.c.id)).all()
        return [
            {
                "subject": r.subject,
                "erased_at": _utc(r.erased_at),
                "actor": r.actor,
                "counts": json.loads(r.counts),
            }
            for r in rows
        ]

    # ---------------------------------------------------------------- webhooks
    def set_webhook(self, ref: str, url: str, actor: str = "admin") -> str:
        """Give the tenant a webhook at `url` (http or https), replacing any it had; returns
        the new signing secret (shown once). Delivery starts after the tenant's newest result
        now: a new webhook is not flooded with history (the stream's ?after= replays that)."""
        from urllib.parse import urlsplit

        if len(url) > 2000:
            raise StoreError("webhook url is longer than 2000 characters")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise StoreError(f"webhook url {url[:200]!r}: expected http(s)://host[:port]/path")
        tenant = self.find_tenant(ref)
        with self.tenant(tenant.tenant_id, actor) as session:
            start = session.last_event_id()
        secret = secrets.token_hex(32)
        now = _now()
        t = tenant.tenant_id
        row = {
            "tenant_id": t,
            "url_sealed": self.vault.seal_text(t, "webhooks", "url", t, url),
            "secret_sealed": self.vault.seal_text(t, "webhooks", "secret", t, secret),
            "delivered_through": start,
            "pending_through": None,
            "attempts": 0,
            "next_attempt_at": now,
            "last_attempt_at": None,
            "last_status": None,
            "delivered": 0,
            "created_at": now,
        }
        with self.admin_engine.begin() as conn:
            _upsert(conn, webhook_table, [row], ("tenant_id",))
            _audit(conn, self.vault, t, actor, "webhook.set", {"url": url, "after": start})
        return secret

    def remove_webhook(self, ref: str, actor: str = "admin") -> bool:
        """Stop the tenant's webhook (undelivered events stay readable on its stream)."""
        tenant = self.find_tenant(ref)
        with self.admin_engine.begin() as conn:
            gone = webhook_table.delete().where(webhook_table.c.tenant_id == tenant.tenant_id)
            n = conn.execute(gone).rowcount
            if n:
                _audit(conn, self.vault, tenant.tenant_id, actor, "webhook.remove", {})
        return bool(n)

    def webhook(self, ref: str) -> Webhook | None:
        """The tenant's webhook and its delivery state (admin), or None."""
        tenant = self.find_tenant(ref)
        with self.admin_engine.connect() as conn:
            row = conn.execute(
                sa.select(webhook_table).where(webhook_table.c.tenant_id == tenant.tenant_id)
            ).first()
        return None if row is None else _webhook_from_row(row, self.vault)

    def last_score_id(self) -> int:
        """The newest score id (0 when none): changes exactly when scores are committed."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(scores.c.id))).scalar() or 0)

    def webhooks_due(self, now: datetime | None = None, limit: int = 1000) -> list[Webhook]:
        """Webhooks whose next attempt is due at `now`, most overdue first (admin connection:
        the dispatcher serves every tenant)."""
        now = now or _now()
        w = webhook_table.c
        with self.admin_engine.connect() as conn:
            rows = conn.execute(
                sa.select(webhook_table)
                .where(w.next_attempt_at <= now)
                .order_by(w.next_attempt_at)
                .limit(limit)
            ).all()
        return [_webhook_from_row(r, self.vault) for r in rows]

    def webhook_batch(self, hook: Webhook, max_events: int) -> tuple[list[dict[str, Any]], int] | None:
        """The events to send to `hook` now and the last id among them, or None when nothing
        is waiting: the pending batch again (the same events, so the same body and
        idempotency key), else the next up to `max_events` after ``delivered_through`` —
        recorded as pending *before* it is sent, so a dispatcher that dies mid-send sends
        exactly it again. Events are read through the tenant's own session (its RLS)."""
        with self.tenant(hook.tenant_id, actor="webhook") as session:
            if hook.pending_through is not None:
                pending = hook.pending_through - hook.delivered_through
                frame = session.events(hook.delivered_through, limit=pending, through=hook.pending_through)
            else:
                frame = session.events(after=hook.delivered_through, limit=max_events)
        if frame.empty:
            return None
        events = [event_payload(r) for r in frame.itertuples(index=False)]
        last = int(events[-1]["event_id"])
        if hook.pending_through is None:
            w = webhook_table.c
            with self.admin_engine.begin() as conn:
                conn.execute(
                    webhook_table.update()
                    .where(w.tenant_id == hook.tenant_id, w.delivered_through == hook.delivered_through)
                    .values(pending_through=last)
                )
        return events, last

    def webhook_attempted(
        self, hook: Webhook, through: int, ok: bool, status: str, next_attempt_at: datetime, events: int = 0
    ) -> None:
        """Record one delivery attempt of the batch ending at event `through`: acknowledged
        (`ok`: the cursor moves past it, attempts reset) or failed (attempts counted, next
        attempt at `next_attempt_at`). Only moves a cursor still where the attempt found it,
        so two dispatchers cannot move it twice."""
        w = webhook_table.c
        now = _now()
        values: dict[str, Any] = {
            "last_attempt_at": now,
            "last_status": status[:300],
            "next_attempt_at": next_attempt_at,
        }
        if ok:
            values.update(
                delivered_through=through, pending_through=None, attempts=0, delivered=w.delivered + events
            )
        else:
            values.update(attempts=w.attempts + 1)
        with self.admin_engine.begin() as conn:
            conn.execute(
                webhook_table.update()
                .where(w.tenant_id == hook.tenant_id, w.delivered_through == hook.delivered_through)
                .values(**values)
            )

    # ---------------------------------------------------------------- auth
    def authenticate(self, api_key: str | None) -> Tenant | None:
        """The tenant an API key belongs to, or None. Constant-time comparison of hashes;
        an unknown key id still costs one comparison."""
        if not api_key:
            return None
        key_id = _key_id(api_key)
        presented = _hash_key(api_key)
        stored = None
        tenant_id = None
        if key_id is not None:
            with self.engine.connect() as conn:
                if self.dialect == "postgresql":
                    row = conn.execute(
                        sa.text("SELECT tenant_id, key_hash FROM mt5prob_key_lookup(:k)"), {"k": key_id}
                    ).first()
                else:
                    row = conn.execute(
                        sa.select(tenants.c.tenant_id, tenants.c.key_hash).where(tenants.c.key_id == key_id)
                    ).first()
            if row is not None:
                tenant_id, stored = row.tenant_id, row.key_hash
        ok = hmac.compare_digest(presented, stored or "0" * 64)
        if not ok or tenant_id is None:
            return None
        with self.tenant(tenant_id, actor="auth") as session:
            return session.tenant()

    def directory(self) -> list[Tenant]:
        """Every tenant's subscriptions, thresholds and pins — never keys — through the app
        connection (a SECURITY DEFINER function on PostgreSQL): what live scoring fans out to."""
        with self.engine.connect() as conn:
            if self.dialect == "postgresql":
                rows = conn.execute(
                    sa.text("SELECT * FROM mt5prob_tenant_directory() ORDER BY created_at, tenant_id")
                )
            else:
                cols = [c for c in tenants.c if c.name not in ("key_id", "key_hash", "name_sealed")]
                rows = conn.execute(sa.select(*cols).order_by(tenants.c.created_at, tenants.c.tenant_id))
            return [_tenant_from_row(r, None) for r in rows]

    def pinned_versions(self, model_name: str) -> list[tuple[str, str]]:
        """(tenant id, version) of every tenant pinned to a version of `model_name` — and
        nothing else about them (a SECURITY DEFINER function on PostgreSQL)."""
        with self.engine.connect() as conn:
            if self.dialect == "postgresql":
                rows = conn.execute(
                    sa.text("SELECT tenant_id, version FROM mt5prob_pinned_versions(:m)"), {"m": model_name}
                ).all()
                return [(r.tenant_id, str(r.version)) for r in rows]
            rows = conn.execute(sa.select(tenants.c.tenant_id, tenants.c.pins)).all()
        out = []
        for r in rows:
            pins = r.pins if not isinstance(r.pins, str) else json.loads(r.pins)
            if model_name in (pins or {}):
                out.append((r.tenant_id, str(pins[model_name])))
        return out

    # ---------------------------------------------------------------- tenant data
    @contextmanager
    def tenant(self, tenant_id: str, actor: str) -> Iterator[TenantSession]:
        """One transaction scoped to `tenant_id` (RLS on PostgreSQL, the API on SQLite);
        commits on success, rolls back on error."""
        with self.engine.begin() as conn:
            _set_tenant(conn, tenant_id)
            yield TenantSession(conn, tenant_id, actor, self.vault)

    def write_scores(
        self,
        rows: Sequence[ScoreRow],
        watermark: Mapping[tuple[str, str], datetime] | None = None,
        fault: Any = None,
    ) -> int:
        """Insert new scores and move the scoring watermarks in ONE transaction: all of it
        lands or none. A score already stored (same series, bar and model version) is kept as
        it was, so writing again after a crash is harmless. ``committed_at`` is stamped here,
        as the transaction's last statements run. Returns how many scores were new. Runs as a
        session acting for no tenant (on PostgreSQL, a tenant session cannot write scores)."""
        for r in rows:
            if not valid_probability(r[7]):  # also NaN
                raise StoreError(
                    f"{r[0]} {r[1]} {r[2]:%Y-%m-%d %H:%M}: probability {r[7]} outside [0, 1] "
                    "(three-class: three in [0, 1] summing to 1)"
                )
        with self.engine.begin() as conn:
            now = _now()
            marks = [
                {"symbol": symbol, "timeframe": timeframe, "last_bar_time": _utc(last), "updated_at": now}
                for (symbol, timeframe), last in sorted((watermark or {}).items())
            ]
            if marks:  # one statement for every series
                _upsert(conn, watermarks, marks, ("symbol", "timeframe"))
            return _insert_scores(conn, rows, _now(), fault, self.vault)

    def write_shadow(self, rows: Sequence[ShadowRow]) -> int:
        """Store challenger-vs-champion probabilities of live bars (`ShadowRow`), the pair
        sealed under the platform's data key; a row already stored is kept (idempotent).
        Returns how many were new. Runs as a session acting for no tenant."""
        for r in rows:
            if not (0.0 <= r.challenger <= 1.0 and 0.0 <= r.champion <= 1.0):  # also NaN
                raise StoreError(
                    f"{r.symbol} {r.timeframe} {r.bar_time:%Y-%m-%d %H:%M}: shadow probabilities "
                    f"{r.challenger}, {r.champion} outside [0, 1]"
                )
        if not rows:
            return 0
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        now = _now()
        values = [
            {
                **{k: v for k, v in r._asdict().items() if k not in ("challenger", "champion")},
                "bar_time": _utc(r.bar_time),
                "bar_closed_at": _utc(r.bar_closed_at),
                "probabilities_sealed": self.vault.seal(
                    PLATFORM,
                    "shadow_scores",
                    "probabilities",
                    _shadow_row_key(r),
                    _pack_pair(r.challenger, r.champion),
                ),
                "scored_at": now,
            }
            for r in rows
        ]
        stmt = insert(shadow_scores).on_conflict_do_nothing().returning(shadow_scores.c.id)
        with self.engine.begin() as conn:
            return len(conn.execute(stmt, values).all())

    def shadow_scores(self, since: datetime | None = None) -> pd.DataFrame:
        """Every shadow score (of bars opening at or after `since`, UTC), the pair opened:
        `ShadowRow`'s fields with ``challenger`` and ``champion`` probabilities, and
        ``scored_at``; oldest bar first."""
        q = sa.select(shadow_scores).order_by(shadow_scores.c.bar_time, shadow_scores.c.id)
        if since is not None:
            q = q.where(shadow_scores.c.bar_time >= _utc(since))
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        out = []
        for r in rows:
            pair = self.vault.open(
                PLATFORM, "shadow_scores", "probabilities", _shadow_row_key(r), r.probabilities_sealed
            )
            challenger, champion = _unpack_pair(pair)
            out.append(
                {
                    **{f: getattr(r, f) for f in ShadowRow._fields if f not in ("challenger", "champion")},
                    "challenger": challenger,
                    "champion": champion,
                    "scored_at": r.scored_at,
                }
            )
        frame = pd.DataFrame(out, columns=[*ShadowRow._fields, "scored_at"])
        for c in ("bar_time", "bar_closed_at", "scored_at"):
            frame[c] = pd.to_datetime(frame[c], utc=True)
        return frame

    def move_watermarks(self, watermark: Mapping[tuple[str, str], datetime]) -> None:
        """Set scoring watermarks (last scored bar open time per series, UTC) without scores."""
        self.write_scores([], watermark)

    def claim_symbols(self, holder: str, symbols: Sequence[str], ttl_seconds: float) -> list[str]:
        """The live worker `holder`'s share of `symbols`: it heartbeats, keeps the leases it
        holds, takes free or expired ones and gives back any beyond its fair share
        (ceil(symbols / live workers), a worker being live when it heartbeated within
        `ttl_seconds`); every lease it holds then runs `ttl_seconds` from now. Claims are
        serialised (an advisory lock on PostgreSQL; SQLite's single writer), so no symbol
        is ever held by two live workers. Returns the symbols held, sorted."""
        now = _now()
        until = now + timedelta(seconds=ttl_seconds)
        wanted = sorted(set(symbols))
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": LEASE_LOCK})
            _upsert(conn, worker_heartbeats, [{"holder": holder, "seen_at": now}], ("holder",))
            live = conn.execute(
                sa.select(sa.func.count())
                .select_from(worker_heartbeats)
                .where(worker_heartbeats.c.seen_at > now - timedelta(seconds=ttl_seconds))
            ).scalar_one()
            share = -(-len(wanted) // max(1, live))
            held = {
                r.symbol: (r.holder, _utc(r.expires_at))
                for r in conn.execute(sa.select(series_leases).where(series_leases.c.symbol.in_(wanted)))
            }
            mine = [s for s in wanted if s in held and held[s][0] == holder]
            free = [s for s in wanted if s not in held or (held[s][0] != holder and held[s][1] <= now)]
            keep = mine[:share]
            take = free[: max(0, share - len(keep))]
            give = [s for s in mine if s not in keep]
            if give:
                conn.execute(
                    series_leases.delete().where(
                        series_leases.c.holder == holder, series_leases.c.symbol.in_(give)
                    )
                )
            owned = sorted(keep + take)
            if owned:
                _upsert(
                    conn,
                    series_leases,
                    [{"symbol": s, "holder": holder, "expires_at": until} for s in owned],
                    ("symbol",),
                )
            return owned

    def release_symbols(self, holder: str) -> None:
        """Give back every lease of `holder` and forget its heartbeat (a clean stop)."""
        with self.engine.begin() as conn:
            conn.execute(series_leases.delete().where(series_leases.c.holder == holder))
            conn.execute(worker_heartbeats.delete().where(worker_heartbeats.c.holder == holder))

    def watermarks(self) -> dict[tuple[str, str], datetime]:
        """Last scored bar open time (UTC) per (symbol, timeframe)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(watermarks.c.symbol, watermarks.c.timeframe, watermarks.c.last_bar_time)
            )
            return {(r.symbol, r.timeframe): _utc(r.last_bar_time) for r in rows}


def _set_tenant(conn: sa.Connection, tenant_id: str) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT set_config(:k, :v, true)"), {"k": TENANT_SETTING, "v": tenant_id})


def _audit(
    conn: sa.Connection,
    vault: Vault,
    tenant_id: str,
    actor: str,
    action: str,
    detail: Mapping[str, Any],
    as_app: bool = False,
) -> None:
    """One audit row; its detail sealed under the tenant's key, bound to the row by action and
    time. `as_app` on PostgreSQL: through ``mt5prob_audit`` (migration 0008), the only way the
    application role can append one (the tenant is the session's, the time the database's)."""
    at = _now()
    text = json.dumps(detail, sort_keys=True, default=str)
    sealed = vault.seal_text(tenant_id, "audit", "detail", _audit_row(action, at), text)
    if as_app and conn.dialect.name == "postgresql":
        conn.execute(
            sa.text("SELECT mt5prob_audit(:actor, :action, :detail, :at)"),
            {"actor": actor, "action": action, "detail": sealed, "at": at},
        )
        return
    conn.execute(
        audit.insert().values(
            tenant_id=tenant_id,
            actor=actor,
            action=action,
            detail_sealed=sealed,
            at=at,
        )
    )


# a sealed column: (table, primary key column, sealed column, the row key its value is bound to,
# the rows of one owner — None: every row, the platform's)
_Sealed = tuple[sa.Table, str, str, Callable[[Any], str], Callable[[sa.Table, str], Any] | None]


def _of_tenant(table: sa.Table, owner: str) -> Any:
    return table.c.tenant_id == owner


def _sealed_columns(owner: str) -> list[_Sealed]:
    """Every sealed value `owner` has: the scores for the platform; a tenant's name, thresholds
    (settings and subscription history), webhook URL and secret and audit details."""
    if owner == PLATFORM:
        return [
            (
                scores,
                "id",
                "probability_sealed",
                lambda r: _score_row_key(
                    r.symbol, r.timeframe, r.bar_time, r.horizon, r.label_kind, r.model_name, r.model_version,
                    r.followed,
                ),
                None,
            ),
            (shadow_scores, "id", "probabilities_sealed", _shadow_row_key, None),
        ]  # fmt: skip
    return [
        (tenants, "tenant_id", "name_sealed", lambda r: r.tenant_id, _of_tenant),
        (tenants, "tenant_id", "thresholds_sealed", lambda r: r.tenant_id, _of_tenant),
        (
            subscriptions,
            "id",
            "thresholds_sealed",
            lambda r: subscription_row_key(r.symbol, r.timeframe, r.horizon, r.label_kind, r.valid_from),
            _of_tenant,
        ),
        (webhook_table, "tenant_id", "url_sealed", lambda r: r.tenant_id, _of_tenant),
        (webhook_table, "tenant_id", "secret_sealed", lambda r: r.tenant_id, _of_tenant),
        (audit, "id", "detail_sealed", lambda r: _audit_row(r.action, r.at), _of_tenant),
    ]


def _audit_row(action: str, at: datetime) -> str:
    return f"{action}|{_utc(at).isoformat(timespec='microseconds')}"


def _seal_thresholds(vault: Vault, tenant_id: str, long_above: float, short_below: float) -> bytes:
    value = json.dumps([long_above, short_below]).encode()
    return vault.seal(tenant_id, "tenants", "thresholds", tenant_id, value)


def subscription_row_key(
    symbol: str, timeframe: str, horizon: int, label_kind: str, valid_from: datetime | str
) -> str:
    """A subscription row's natural key (what its sealed thresholds are bound to)."""
    if isinstance(valid_from, str):  # raw SQL on SQLite (a migration) reads times as text
        valid_from = datetime.fromisoformat(valid_from)
    start = _utc(valid_from).isoformat(timespec="microseconds")
    return f"{symbol}|{timeframe}|{int(horizon)}|{label_kind}|{start}"


def _open_thresholds(vault: Vault, tenant_id: str, row: Any, valid_from: datetime) -> tuple[float, float]:
    key = subscription_row_key(row.symbol, row.timeframe, row.horizon, row.label_kind, valid_from)
    la, sb = json.loads(vault.open(tenant_id, "subscriptions", "thresholds", key, row.thresholds_sealed))
    return float(la), float(sb)


def _open_subscriptions(
    conn: sa.Connection,
    vault: Vault,
    tenant_id: str,
    follows: Iterable[Subscription],
    long_above: float,
    short_below: float,
    now: datetime,
) -> None:
    value = json.dumps([long_above, short_below]).encode()
    rows = []
    for s in dict.fromkeys(follows):
        key = subscription_row_key(s.symbol, s.timeframe, s.horizon, s.label_kind, now)
        rows.append(
            {
                **s.as_dict(),
                "tenant_id": tenant_id,
                "thresholds_sealed": vault.seal(tenant_id, "subscriptions", "thresholds", key, value),
                "valid_from": now,
            }
        )
    if rows:
        conn.execute(subscriptions.insert(), rows)


def _open_pins(conn: sa.Connection, tenant_id: str, versions: Mapping[str, str], now: datetime) -> None:
    rows = [
        {"tenant_id": tenant_id, "model_name": str(k), "version": str(v), "valid_from": now}
        for k, v in versions.items()
    ]
    if rows:
        conn.execute(pin_table.insert(), rows)


def _close(conn: sa.Connection, table: sa.Table, tenant_id: str, now: datetime) -> None:
    """End the tenant's open rows of a history table (subscriptions, pins) at `now`."""
    conn.execute(
        table.update().where(table.c.tenant_id == tenant_id, table.c.valid_to.is_(None)).values(valid_to=now)
    )


def _pg_array_type(column: sa.Column) -> str:
    """The PostgreSQL type of `column` for the unnest arrays, from the table definition,
    without a length: an explicit cast to ``varchar(n)`` would silently truncate, while an
    over-long value must fail at the column as any other insert does."""
    kind = column.type
    if isinstance(kind, sa.String):
        kind = type(kind)()
    return kind.compile(dialect=postgresql.dialect())


_INSERT_COLUMNS = (*SCORE_FIELDS, "committed_at")
_PG_TYPES = tuple(_pg_array_type(scores.c[c]) for c in _INSERT_COLUMNS)
_PG_INSERT = (
    f"INSERT INTO scores ({', '.join(_INSERT_COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"%s::{t}[]" for t in _PG_TYPES)
    + ") ON CONFLICT DO NOTHING"
)
_SQLITE_INSERT = (
    f"INSERT INTO scores ({', '.join(_INSERT_COLUMNS)}) VALUES ({', '.join('?' * len(_INSERT_COLUMNS))}) "
    "ON CONFLICT DO NOTHING"
)
TENANT_NAME_LOCK = 0x6D7437  # adding a tenant: the check that its name is new, one at a time
# writers of scores take this transaction-level lock before inserting, so ids become visible
# in commit order: a reader that has seen id N never later finds a committed id below N
SCORE_WRITE_LOCK = 0x6D7435  # "mt5"
LEASE_LOCK = 0x6D7436  # claims of live-worker leases, one at a time


def _sqlite_time(value: datetime) -> str:
    """SQLAlchemy's SQLite DATETIME text for a UTC instant (so Core reads it back unchanged)."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _insert_scores(
    conn: sa.Connection, rows: Sequence[ScoreRow], now: datetime, fault: Any, vault: Vault
) -> int:
    """Insert `rows` (new ones only: a score is never rewritten) in the caller's transaction,
    each probability sealed (`seal_probability`); returns how many were new. PostgreSQL: after
    the score-write lock, one ``INSERT … SELECT unnest(arrays) ON CONFLICT DO NOTHING``.
    SQLite: one executemany."""
    if not rows:
        return 0
    sealed = [seal_probability(vault, r[:5], r[5], r[6], bool(r[8]), r[7]) for r in rows]
    if conn.dialect.name == "postgresql":
        raw = conn.connection.dbapi_connection
        with raw.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCORE_WRITE_LOCK,))
            cols = [list(col) for col in zip(*rows, strict=True)]
            cols[7] = sealed
            cur.execute(_PG_INSERT, [*cols, [now] * len(rows)])
            n = cur.rowcount
    else:
        stamp: dict[datetime, str] = {}
        flat = []
        committed = _sqlite_time(now)
        for r, blob in zip(rows, sealed, strict=True):
            bt = stamp.get(r[2]) or stamp.setdefault(r[2], _sqlite_time(r[2]))
            flat.append((*r[:2], bt, *r[3:7], blob, bool(r[8]), _sqlite_time(r[9]), committed))
        before = conn.exec_driver_sql("SELECT total_changes()").scalar_one()
        conn.exec_driver_sql(_SQLITE_INSERT, flat)
        n = conn.exec_driver_sql("SELECT total_changes()").scalar_one() - before
    if fault is not None:  # test hook: a crash after every row reached the database, before commit
        fault("rows-written")
    return int(n)


def _upsert(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]], keys: Sequence[str]) -> None:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(table)
    updates = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
    conn.execute(stmt.on_conflict_do_update(index_elements=list(keys), set_=updates), rows)


class TenantSession:
    """Reads and writes of one tenant inside one transaction. Every query carries the tenant;
    on PostgreSQL RLS enforces it again underneath."""

    def __init__(self, conn: sa.Connection, tenant_id: str, actor: str, vault: Vault) -> None:
        self.conn = conn
        self.tenant_id = tenant_id
        self.actor = actor
        self.vault = vault

    def tenant(self) -> Tenant | None:
        row = self.conn.execute(sa.select(tenants).where(tenants.c.tenant_id == self.tenant_id)).first()
        return None if row is None else _tenant_from_row(row, self.vault)

    def probabilities(
        self,
        symbol: str | None = None,
        timeframe: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int | None = None,
    ) -> pd.DataFrame:
        """This tenant's results, bar_time in [start, end) (UTC), newest first."""
        q = sa.select(*[tenant_results.c[c] for c in VIEW_COLUMNS]).where(
            tenant_results.c.tenant_id == self.tenant_id
        )
        if symbol:
            q = q.where(tenant_results.c.symbol == symbol)
        if timeframe:
            q = q.where(tenant_results.c.timeframe == timeframe)
        if start is not None:
            q = q.where(tenant_results.c.bar_time >= _utc(start))
        if end is not None:
            q = q.where(tenant_results.c.bar_time < _utc(end))
        q = q.order_by(tenant_results.c.bar_time.desc(), tenant_results.c.symbol, tenant_results.c.timeframe)
        if limit:
            q = q.limit(limit)
        frame = _frame(self.conn.execute(q), self.vault, self.tenant_id)
        self.audit(
            "results.read",
            {"symbol": symbol, "timeframe": timeframe, "start": start, "end": end, "rows": len(frame)},
        )
        return frame

    def latest(self, symbol: str | None = None, timeframe: str | None = None) -> pd.DataFrame:
        """The newest row per (symbol, timeframe, horizon, label kind) this tenant has ever
        followed (of several model versions scored for the same bar, the most recent score).

        One index seek per series (``ix_scores_series``, newest bar first, LIMIT 1) in a single
        statement: the cost grows with the series followed, not with the history stored (a
        GROUP BY over the tenant's rows took 0.4 s for 40 series × 30 days on SQLite)."""
        sub = subscriptions.c
        series = (
            sa.select(sub.symbol, sub.timeframe, sub.horizon, sub.label_kind)
            .where(sub.tenant_id == self.tenant_id)
            .distinct()
        )
        if symbol:
            series = series.where(sub.symbol == symbol)
        if timeframe:
            series = series.where(sub.timeframe == timeframe)
        # in the order the frame is returned in: UNION ALL keeps its terms' order, so no sort after
        keys = sorted(self.conn.execute(series).all())
        frames = []
        for i in range(0, max(len(keys), 1), 200):  # SQLite allows 500 terms in a compound SELECT
            chunk = keys[i : i + 200]
            binds: dict[str, Any] = {"t": self.tenant_id}
            for j, k in enumerate(chunk):
                binds.update(
                    {f"s{j}": k.symbol, f"f{j}": k.timeframe, f"h{j}": k.horizon, f"k{j}": k.label_kind}
                )
            frames.append(
                _frame(self.conn.execute(_latest_sql(len(chunk)), binds), self.vault, self.tenant_id)
            )
        frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        order = list(zip(frame.symbol, frame.timeframe, frame.horizon, frame.label_kind, strict=True))
        if order != sorted(order):  # a database that did not keep the terms' order
            frame = frame.sort_values(["symbol", "timeframe", "horizon", "label_kind"]).reset_index(drop=True)
        self.audit("results.read_latest", {"symbol": symbol, "timeframe": timeframe, "rows": len(frame)})
        return frame

    def events(self, after: int = 0, limit: int = 1000, through: int | None = None) -> pd.DataFrame:
        """This tenant's results with event id above `after` (and at most `through`, when
        given), oldest first, at most `limit`: the stream cursor. Ids grow in commit order,
        so resuming from the last id seen misses nothing and repeats nothing. Not audited per
        call (a stream reads on every bar close; the stream's connection is audited where it
        is opened)."""
        p = tenant_results.c
        q = (
            sa.select(*[p[c] for c in VIEW_COLUMNS])
            .where(p.tenant_id == self.tenant_id, p.event_id > after)
            .order_by(p.event_id)
            .limit(limit)
        )
        if through is not None:
            q = q.where(p.event_id <= through)
        return _frame(self.conn.execute(q), self.vault, self.tenant_id)

    def last_event_id(self) -> int:
        """The newest event id this tenant has (0 when none): where a new stream starts."""
        p = tenant_results.c
        q = sa.select(sa.func.max(p.event_id)).where(p.tenant_id == self.tenant_id)
        return int(self.conn.execute(q).scalar() or 0)

    def webhook(self) -> Webhook | None:
        """This tenant's webhook and its delivery state, or None."""
        w = webhook_table.c
        row = self.conn.execute(sa.select(webhook_table).where(w.tenant_id == self.tenant_id)).first()
        return None if row is None else _webhook_from_row(row, self.vault)

    def subscription_history(self) -> list[dict[str, Any]]:
        """What this tenant followed and with which thresholds, over time (valid_from ≤ t <
        valid_to, UTC; valid_to None: still open), oldest first."""
        s = subscriptions.c
        q = (
            sa.select(
                s.symbol, s.timeframe, s.horizon, s.label_kind, s.thresholds_sealed, s.valid_from, s.valid_to
            )
            .where(s.tenant_id == self.tenant_id)
            .order_by(s.id)
        )  # fmt: skip
        out = []
        for r in self.conn.execute(q):
            la, sb = _open_thresholds(self.vault, self.tenant_id, r, r.valid_from)
            row = {c: getattr(r, c) for c in ("symbol", "timeframe", "horizon", "label_kind")}
            out.append(
                _with_utc(
                    {
                        **row,
                        "long_above": la,
                        "short_below": sb,
                        "valid_from": r.valid_from,
                        "valid_to": r.valid_to,
                    }
                )
            )
        return out

    def pin_history(self) -> list[dict[str, Any]]:
        """This tenant's pinned model versions over time (same validity rule), oldest first."""
        p = pin_table.c
        q = (
            sa.select(p.model_name, p.version, p.valid_from, p.valid_to)
            .where(p.tenant_id == self.tenant_id)
            .order_by(p.id)
        )
        return [_with_utc(dict(r)) for r in self.conn.execute(q).mappings()]

    def audit_log(self) -> pd.DataFrame:
        """This tenant's audit trail, oldest first: actor, action, detail (JSON text), at (UTC)."""
        q = (
            sa.select(audit.c.actor, audit.c.action, audit.c.detail_sealed, audit.c.at)
            .where(audit.c.tenant_id == self.tenant_id)
            .order_by(audit.c.id)
        )
        rows = [
            {
                "actor": r.actor,
                "action": r.action,
                "detail": self.vault.open_text(
                    self.tenant_id, "audit", "detail", _audit_row(r.action, r.at), r.detail_sealed
                ),
                "at": _utc(r.at),
            }
            for r in self.conn.execute(q)
        ]
        return pd.DataFrame(rows, columns=["actor", "action", "detail", "at"])

    def audit(self, action: str, detail: Mapping[str, Any]) -> None:
        _audit(self.conn, self.vault, self.tenant_id, self.actor, action, detail, as_app=True)

    def execute(self, statement: Any, parameters: Any = None) -> Any:
        """Raw SQL inside this tenant's transaction (RLS still applies on PostgreSQL)."""
        return self.conn.execute(sa.text(statement) if isinstance(statement, str) else statement, parameters)


def _with_utc(row: dict[str, Any]) -> dict[str, Any]:
    return {k: _utc(v) if isinstance(v, datetime) else v for k, v in row.items()}


@functools.lru_cache(maxsize=256)
def _latest_sql(n: int) -> Any:
    """The newest visible row of each of `n` series of one tenant (binds ``t``; ``s<i>``,
    ``f<i>``, ``h<i>``, ``k<i>``): one LIMIT-1 seek per series down ``ix_scores_series``,
    UNION ALL'd. Cached per `n`, so a request costs no statement building."""
    cols = ", ".join(VIEW_COLUMNS)
    one = (
        "SELECT * FROM (SELECT {cols} FROM tenant_results WHERE tenant_id = :t AND symbol = :s{i} "
        "AND timeframe = :f{i} AND horizon = :h{i} AND label_kind = :k{i} "
        "ORDER BY bar_time DESC, event_id DESC LIMIT 1) AS newest{i}"
    )
    if n == 0:
        return sa.text(f"SELECT {cols} FROM tenant_results WHERE 1 = 0").columns(
            *[tenant_results.c[c] for c in VIEW_COLUMNS]
        )
    sql = " UNION ALL ".join(one.format(cols=cols, i=i) for i in range(n))
    return sa.text(sql).columns(*[tenant_results.c[c] for c in VIEW_COLUMNS])


def _frame(result: Any, vault: Vault, tenant_id: str) -> pd.DataFrame:
    """A tenant's result rows (RESULT_COLUMNS) from rows of the view: each probability opened,
    each signal derived under the thresholds the tenant had when the score was committed (the
    one rule of `models.policy.ThresholdPolicy`, by label kind). ``probability`` is P(label 1)
    — P(up) of a three-class score, whose ``probabilities`` are {down, flat, up} (None for
    binary scores)."""
    rows = result.all()
    data: dict[str, Any] = {c: [getattr(r, c) for r in rows] for c in RESULT_COLUMNS if c not in COMPUTED}
    opened = [open_probability(vault, r) for r in rows]
    three = np.array([isinstance(v, tuple) for v in opened], dtype=bool)
    data["probability"] = np.array([v[2] if isinstance(v, tuple) else v for v in opened], dtype=float)
    data["probabilities"] = [
        dict(zip(CLASSES, v, strict=True)) if isinstance(v, tuple) else None for v in opened
    ]
    signal = np.full(len(rows), "flat", dtype=object)
    if rows:
        subs: dict[tuple, tuple[float, float]] = {}  # once per subscription row
        for r in rows:
            sub = (r.symbol, r.timeframe, r.horizon, r.label_kind, r.subscription_from)
            if sub not in subs:
                subs[sub] = _open_thresholds(vault, tenant_id, r, r.subscription_from)
        thresholds = [
            subs[(r.symbol, r.timeframe, r.horizon, r.label_kind, r.subscription_from)] for r in rows
        ]
        la = np.array([t[0] for t in thresholds], dtype=float)
        sb = np.array([t[1] for t in thresholds], dtype=float)
        kinds = np.array([r.label_kind for r in rows], dtype=object)
        for low, high, kind, multi in set(
            zip(sb.tolist(), la.tolist(), kinds.tolist(), three.tolist(), strict=True)
        ):
            mine = np.flatnonzero((la == high) & (sb == low) & (kinds == kind) & (three == multi))
            p = probability_array([opened[i] for i in mine])
            sides = ThresholdPolicy.for_label_kind(kind, high, low).sides(p)
            signal[mine] = np.where(sides > 0, "long", np.where(sides < 0, "short", "flat"))
    data["signal"] = signal
    frame = pd.DataFrame(data, columns=list(RESULT_COLUMNS))
    for col in ("bar_time", "scored_at", "bar_closed_at"):
        frame[col] = (
            pd.to_datetime(frame[col], utc=True) if len(frame) else pd.Series([], dtype="datetime64[ns, UTC]")
        )
    return frame


PASSWORDLESS_ENV = "MT5PROB_ALLOW_PASSWORDLESS"  # "1": a local test server with trust auth


def _require_password(url: str) -> None:
    """The application role must authenticate: a PostgreSQL URL without a password is refused
    unless libpq has one elsewhere (PGPASSWORD, PGPASSFILE, ~/.pgpass) or ``MT5PROB_ALLOW_PASSWORDLESS=1``
    says this is a local server with trust authentication (the test suite, the benchmarks)."""
    import os

    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "postgresql" or parsed.password:
        return
    if os.environ.get(PASSWORDLESS_ENV) == "1" or os.environ.get("PGPASSWORD"):
        return
    passfile = Path(os.environ.get("PGPASSFILE", Path.home() / ".pgpass"))
    if passfile.is_file():
        return
    raise StoreError(
        f"store.url connects as {parsed.username or 'the default user'} with no password: give the app role "
        "one (in the URL, PGPASSWORD or ~/.pgpass; `tenants migrate` sets it from store.url), or set "
        f"{PASSWORDLESS_ENV}=1 for a local server with trust authentication"
    )


def app_url(admin_url: str, role: str = APP_ROLE) -> str:
    """The application URL for a PostgreSQL admin URL: same host and database, the app role."""
    url = sa.make_url(admin_url)
    return url.set(username=role, password=None).render_as_string(hide_password=False)
