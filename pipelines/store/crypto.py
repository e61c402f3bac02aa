"""Envelope encryption of tenant data at rest (issue 15).

Three layers, the usual KMS shape:

- the **master key** (`MasterKey`): never stored with the data. `LocalMasterKey` takes it from
  ``MT5PROB_MASTER_KEY`` (32 random bytes, URL-safe base64) or the file named by
  ``MT5PROB_MASTER_KEY_FILE``; a real KMS implements the same two calls (wrap, unwrap) and
  replaces it. It only ever encrypts data keys.
- **data keys** (`KeyStore`): one AES-256 key per owner (a tenant id, or ``_platform`` for what
  belongs to no tenant), in versions, each stored *wrapped* by the master key in a key store of
  its own — a database apart from the results store, so a dump or replica of the results holds
  no key, and destroying a tenant's keys here (crypto-shredding) makes every copy of its rows
  unreadable, old backups included. Rotating the master key re-wraps these few rows and nothing
  else.
- **ciphertexts** in the results store: AES-256-GCM (``cryptography``), a fresh 96-bit nonce per
  value, and associated data that names the owner, the table, the column and the row, so a
  ciphertext moved to another tenant or row fails authentication instead of decrypting.

Blob layout: ``b"\\x01" + key version (4 bytes, big-endian) + nonce (12) + ciphertext+tag``.
``b"\\x00" + plaintext`` marks a value written with encryption switched off
(``store.encryption: false``); readers accept both, so switching is an operator's choice, never a
silent fallback: with encryption on, a missing or wrong master key stops the process at start.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MASTER_KEY_ENV = "MT5PROB_MASTER_KEY"
MASTER_KEY_FILE_ENV = "MT5PROB_MASTER_KEY_FILE"
# previous master keys (comma-separated, same encoding), readable while a rotation settles
PREVIOUS_KEYS_ENV = "MT5PROB_MASTER_KEY_PREVIOUS"
PLATFORM = "_platform"  # the owner of data keys for what belongs to no tenant
SEALED, PLAIN = b"\x01", b"\x00"
KEY_CACHE_SECONDS = 60.0  # unwrapped data keys are kept this long in a process


class KeyringError(RuntimeError):
    """Encryption cannot work as configured (no master key, the wrong one, a damaged blob)."""


class MasterKeyError(KeyringError):
    """The master key is missing or is not the one the key store was wrapped with."""


class KeyDestroyed(KeyringError):
    """The owner's data keys were destroyed (the tenant was erased): its data is unreadable."""


class MasterKey(Protocol):
    """What a KMS offers: wrap and unwrap data keys under a key that never leaves it."""

    key_id: str

    def wrap(self, data_key: bytes, context: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes: ...


class LocalMasterKey:
    """A master key held in this process (from the environment or a key file)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) != 32:
            raise MasterKeyError(f"a master key is 32 bytes; this one is {len(secret)}")
        self._aead = AESGCM(secret)
        # names the key without revealing it: which master key wrapped a data key
        self.key_id = hmac.new(secret, b"mt5prob master key id", hashlib.sha256).hexdigest()[:16]

    @classmethod
    def from_text(cls, text: str, source: str = "the master key") -> LocalMasterKey:
        try:
            secret = base64.urlsafe_b64decode(text.strip().encode() + b"==")
        except (ValueError, TypeError) as exc:
            raise MasterKeyError(f"{source} is not URL-safe base64 ({exc})") from None
        if len(secret) != 32:
            raise MasterKeyError(
                f"{source} decodes to {len(secret)} bytes, not 32: create one with "
                "`python -m pipelines.tenants keygen`"
            )
        return cls(secret)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LocalMasterKey:
        """The master key named by the environment, or `MasterKeyError` saying how to give one."""
        env = os.environ if environ is None else environ
        text = env.get(MASTER_KEY_ENV, "").strip()
        if text:
            return cls.from_text(text, MASTER_KEY_ENV)
        path = env.get(MASTER_KEY_FILE_ENV, "").strip()
        if path:
            try:
                return cls.from_text(Path(path).read_text(), f"key file {path}")
            except OSError as exc:
                raise MasterKeyError(f"cannot read the master key file {path}: {exc.strerror}") from None
        raise MasterKeyError(
            f"no master key: set {MASTER_KEY_ENV} (or {MASTER_KEY_FILE_ENV} to a file holding it); "
            "create one with `python -m pipelines.tenants keygen`, or set store.encryption: false "
            "to store tenant data unencrypted"
        )

    @staticmethod
    def previous_from_env(environ: Mapping[str, str] | None = None) -> list[LocalMasterKey]:
        env = os.environ if environ is None else environ
        texts = [t for t in env.get(PREVIOUS_KEYS_ENV, "").split(",") if t.strip()]
        return [LocalMasterKey.from_text(t, PREVIOUS_KEYS_ENV) for t in texts]

    def wrap(self, data_key: bytes, context: bytes) -> bytes:
        nonce = secrets.token_bytes(12)
        return nonce + self._aead.encrypt(nonce, data_key, b"mt5prob data key|" + context)

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        try:
            return self._aead.decrypt(wrapped[:12], wrapped[12:], b"mt5prob data key|" + context)
        except InvalidTag:
            raise MasterKeyError("a data key does not unwrap under this master key") from None


def new_master_key_text() -> str:
    """A fresh master key, URL-safe base64 (what ``MT5PROB_MASTER_KEY`` holds)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


# ----------------------------------------------------------------------------- values
def aad(owner: str, table: str, column: str, row: str) -> bytes:
    """Associated data binding a ciphertext to its owner, table, column and row key."""
    return f"{owner}|{table}|{column}|{row}".encode()


def seal(key: bytes | AESGCM | None, version: int, plaintext: bytes, associated: bytes) -> bytes:
    """Encrypt `plaintext` under data key `key` (version `version`; raw or as its AESGCM);
    `key` None: encryption is switched off and the value is stored marked as plain."""
    if key is None:
        return PLAIN + plaintext
    aead = key if isinstance(key, AESGCM) else AESGCM(key)
    nonce = secrets.token_bytes(12)
    return SEALED + version.to_bytes(4, "big") + nonce + aead.encrypt(nonce, plaintext, associated)


def blob_version(blob: bytes) -> int | None:
    """The data-key version a sealed blob needs (None: a plain value)."""
    if blob[:1] == PLAIN:
        return None
    if blob[:1] != SEALED or len(blob) < 1 + 4 + 12 + 16:
        raise KeyringError("a stored value is neither sealed nor plain: damaged")
    return int.from_bytes(blob[1:5], "big")


def unseal(key: bytes | AESGCM | None, blob: bytes, associated: bytes) -> bytes:
    """The plaintext of `blob` (from `seal`); `KeyringError` if it was altered, moved to another
    row or owner, or sealed under another key."""
    if blob[:1] == PLAIN:
        return bytes(blob[1:])
    if key is None:
        raise KeyringError("a sealed value needs its data key")
    try:
        aead = key if isinstance(key, AESGCM) else AESGCM(key)
        return aead.decrypt(bytes(blob[5:17]), bytes(blob[17:]), associated)
    except InvalidTag:
        raise KeyringError("a stored value fails authentication (altered, or not this row's)") from None


# ----------------------------------------------------------------------------- key store
_meta = sa.MetaData()
data_keys = sa.Table(
    "data_keys",
    _meta,
    sa.Column("owner", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("master_key_id", sa.String(32), nullable=False),
    sa.Column("wrapped", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
# one row: a value wrapped by the master key at creation, so a wrong key is told at start
keystore_check = sa.Table(
    "keystore_check",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("master_key_id", sa.String(32), nullable=False),
    sa.Column("wrapped", sa.LargeBinary, nullable=False),
)
# names (of tenants) by keyed digest → owner: kept here, beside the keys, not in the results
# store — a digest in a results backup would outlive an erasure and confirm a guessed name;
# here it goes when the owner's keys go
name_index = sa.Table(
    "name_index",
    _meta,
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=False, index=True),
)
_CHECK = b"mt5prob key store"
LOOKUP = "_lookup"  # owner of the key the name digests are made with (re-wrapped, never re-keyed)


def keys_url_for(results_url: str) -> str:
    """The default key store of a results store: a SQLite file beside a SQLite results file; on
    PostgreSQL a database of its own on the same server (``<database>_keys``)."""
    url = sa.make_url(results_url)
    if url.get_backend_name() == "sqlite":
        path = url.database or ""
        if not path or path == ":memory:":
            raise KeyringError("an in-memory results store needs store.keys_url")
        return f"sqlite:///{Path(path).with_suffix('')}.keys.db"
    return url.set(database=f"{url.database}_keys").render_as_string(hide_password=False)


class KeyStore:
    """The data keys (wrapped) of every owner, in their own database. Thread-safe.

    `masters`: the current master key first, then earlier ones still accepted for reading while
    a rotation settles. `admin_url` (default `url`) is what creates, destroys and re-wraps keys;
    `url` only reads them (on PostgreSQL the app role, granted SELECT by `grant_read`)."""

    def __init__(
        self,
        url: str,
        masters: Sequence[MasterKey],
        admin_url: str | None = None,
        cache_seconds: float = KEY_CACHE_SECONDS,
    ) -> None:
        if not masters:
            raise MasterKeyError("a key store needs a master key")
        self.url = url
        self.admin_url = admin_url or url
        self.master = masters[0]
        self._masters = {m.key_id: m for m in masters}
        # how long a process keeps using an unwrapped key (and the version it seals under)
        # before asking the key store again: the bound on how late a destroyed or rotated key
        # is noticed elsewhere
        self.cache_seconds = cache_seconds
        self.engine = _key_engine(url)
        self.admin_engine = self.engine if self.admin_url == url else _key_engine(self.admin_url)
        self._cache: dict[tuple[str, int], tuple[bytes, float]] = {}
        self._ciphers: dict[tuple[str, int], tuple[bytes, AESGCM]] = {}
        self._current: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ setup
    def create(self) -> None:
        """Create the key store's tables (and, on PostgreSQL, its database) if missing, and
        record the master key it is wrapped with (idempotent)."""
        url = sa.make_url(self.admin_url)
        if url.get_backend_name() == "postgresql":
            server = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
            try:
                with server.connect() as conn:
                    exists = conn.execute(
                        sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": url.database}
                    ).first()
                    if not exists:
                        conn.execute(sa.text(f'CREATE DATABASE "{url.database}"'))
            finally:
                server.dispose()
        _meta.create_all(self.admin_engine)
        with self.admin_engine.begin() as conn:
            if conn.execute(sa.select(keystore_check.c.id)).first() is None:
                conn.execute(
                    keystore_check.insert().values(
                        id=1, master_key_id=self.master.key_id, wrapped=self.master.wrap(_CHECK, b"check")
                    )
                )

        with self.admin_engine.connect() as conn:
            mine = conn.execute(sa.select(data_keys.c.version).where(data_keys.c.owner == PLATFORM)).first()
        if mine is None:  # made once, here, by the migrating admin: processes never race to
            self.new_key(PLATFORM)
        with self.admin_engine.connect() as conn:
            mine = conn.execute(sa.select(data_keys.c.version).where(data_keys.c.owner == LOOKUP)).first()
        if mine is None:
            self.new_key(LOOKUP)

    # ------------------------------------------------------------ names
    def _digest(self, name: str) -> str:
        _, key = self.current(LOOKUP)
        return hmac.new(key, name.encode("utf-8"), hashlib.sha256).hexdigest()

    def claim_name(self, owner: str, name: str) -> bool:
        """Record `name` as `owner`'s; False when another owner has it already."""
        digest = self._digest(name)
        try:
            with self.admin_engine.begin() as conn:
                q = sa.select(name_index.c.owner).where(name_index.c.digest == digest)
                have = conn.execute(q).scalar()
                if have is not None:
                    return have == owner
                conn.execute(name_index.insert().values(digest=digest, owner=owner))
        except sa.exc.IntegrityError:  # another process claimed it just now
            return False
        return True

    def release_name(self, name: str) -> None:
        """Forget `name` (its owner no longer exists: an add that did not complete)."""
        with self.admin_engine.begin() as conn:
            conn.execute(name_index.delete().where(name_index.c.digest == self._digest(name)))

    def find_name(self, name: str) -> str | None:
        """The owner `name` belongs to, or None."""
        digest = self._digest(name)
        with self.engine.connect() as conn:
            return conn.execute(sa.select(name_index.c.owner).where(name_index.c.digest == digest)).scalar()

    def grant_read(self, role: str) -> None:
        """PostgreSQL: let `role` (the app role) read wrapped keys, and nothing else."""
        if self.admin_engine.dialect.name != "postgresql":
            return
        with self.admin_engine.begin() as conn:
            if conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first():
                conn.execute(sa.text(f"GRANT SELECT ON data_keys, keystore_check, name_index TO {role}"))

    def verify(self) -> None:
        """Raise `MasterKeyError` with one clear message unless this process's master key opens
        the key store (called by the service, the workers and the CLI at start)."""
        try:
            with self.admin_engine.connect() as conn:
                row = conn.execute(sa.select(keystore_check)).first()
        except sa.exc.OperationalError as exc:
            raise KeyringError(f"the key store at {_safe(self.url)} cannot be read: {exc.orig}") from None
        except sa.exc.ProgrammingError:
            row = None
        if row is None:
            raise KeyringError(
                f"the key store at {_safe(self.url)} is not set up: run `python -m pipelines.tenants migrate`"
            )
        master = self._masters.get(row.master_key_id)
        if master is None:
            raise MasterKeyError(
                f"wrong master key: the key store is wrapped with master key {row.master_key_id}, "
                f"this process has {', '.join(self._masters)}; refusing to start"
            )
        if master.unwrap(row.wrapped, b"check") != _CHECK:
            raise MasterKeyError("the master key does not open the key store; refusing to start")

    # ------------------------------------------------------------ keys
    def new_key(self, owner: str) -> int:
        """A new data key for `owner` (its first, or the next version: a rotation); returns its
        version. New values are sealed under it from now on."""
        key = AESGCM.generate_key(256)
        now = datetime.now(UTC)
        with self.admin_engine.begin() as conn:
            last = conn.execute(
                sa.select(sa.func.max(data_keys.c.version)).where(data_keys.c.owner == owner)
            ).scalar()
            version = int(last or 0) + 1
            conn.execute(
                data_keys.insert().values(
                    owner=owner,
                    version=version,
                    master_key_id=self.master.key_id,
                    wrapped=self.master.wrap(key, _context(owner, version)),
                    created_at=now,
                )
            )
        with self._lock:
            self._cache[(owner, version)] = (key, time.monotonic())
            self._current[owner] = (version, time.monotonic())
        return version

    def current(self, owner: str, create: bool = False) -> tuple[int, bytes]:
        """(version, key) that new values of `owner` are sealed under. `KeyDestroyed` when the
        owner has none (erased, or never given one and `create` is false)."""
        now = time.monotonic()
        with self._lock:
            hit = self._current.get(owner)
        if hit is None or now - hit[1] > self.cache_seconds:
            with self.engine.connect() as conn:
                last = conn.execute(
                    sa.select(sa.func.max(data_keys.c.version)).where(data_keys.c.owner == owner)
                ).scalar()
            if last is None:
                if not create:
                    with self._lock:
                        self._current.pop(owner, None)
                    raise KeyDestroyed(f"owner {owner} has no data key (erased?)")
                last = self.new_key(owner)
            hit = (int(last), now)
            with self._lock:
                self._current[owner] = hit
        return hit[0], self.key(owner, hit[0])

    def key(self, owner: str, version: int) -> bytes:
        """The data key `version` of `owner`, unwrapped (kept in memory `KEY_CACHE_SECONDS`)."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get((owner, version))
        if hit is not None and now - hit[1] <= self.cache_seconds:
            return hit[0]
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(data_keys.c.master_key_id, data_keys.c.wrapped).where(
                    data_keys.c.owner == owner, data_keys.c.version == version
                )
            ).first()
        if row is None:
            with self._lock:
                self._cache.pop((owner, version), None)
            raise KeyDestroyed(f"owner {owner} has no data key version {version} (erased or retired)")
        master = self._masters.get(row.master_key_id)
        if master is None:
            raise MasterKeyError(
                f"data key {owner} v{version} is wrapped with master key {row.master_key_id}, "
                "which this process does not have"
            )
        key = master.unwrap(bytes(row.wrapped), _context(owner, version))
        with self._lock:
            self._cache[(owner, version)] = (key, now)
        return key

    def preload(self, owners: Sequence[str]) -> None:
        """Unwrap every current data key of `owners` with one query (a scan over many tenants,
        e.g. finding one by name, would otherwise ask the key store once per tenant)."""
        wanted = sorted(set(owners))
        if not wanted:
            return
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(data_keys).where(data_keys.c.owner.in_(wanted))).all()
        now = time.monotonic()
        for r in rows:
            master = self._masters.get(r.master_key_id)
            if master is None:
                continue  # key() says which master key is missing when it is needed
            key = master.unwrap(bytes(r.wrapped), _context(r.owner, r.version))
            with self._lock:
                self._cache[(r.owner, int(r.version))] = (key, now)

    def cipher(self, owner: str, version: int) -> AESGCM:
        """`key(owner, version)` ready to use (built once per key while it is cached)."""
        key = self.key(owner, version)
        hit = self._ciphers.get((owner, version))
        if hit is None or hit[0] is not key:
            hit = (key, AESGCM(key))
            with self._lock:
                self._ciphers[(owner, version)] = hit
        return hit[1]

    def created_at(self, owner: str, version: int) -> datetime | None:
        with self.engine.connect() as conn:
            k = data_keys.c
            at = conn.execute(sa.select(k.created_at).where(k.owner == owner, k.version == version)).scalar()
        if at is None:
            return None
        return at.replace(tzinfo=UTC) if at.tzinfo is None else at

    def versions(self, owner: str) -> list[int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(data_keys.c.version).where(data_keys.c.owner == owner).order_by(data_keys.c.version)
            )
            return [int(r.version) for r in rows]

    def retire(self, owner: str, below: int) -> int:
        """Destroy `owner`'s data key versions older than `below` (after its values were re-sealed
        under a newer one); returns how many went."""
        with self.admin_engine.begin() as conn:
            n = conn.execute(
                data_keys.delete().where(data_keys.c.owner == owner, data_keys.c.version < below)
            ).rowcount
        self._forget(owner)
        return int(n)

    def destroy(self, owner: str) -> int:
        """Crypto-shred: delete every data key of `owner`, so every copy of what was sealed under
        them — in the store, its replicas and its backups — is unreadable. Idempotent."""
        with self.admin_engine.begin() as conn:
            n = conn.execute(data_keys.delete().where(data_keys.c.owner == owner)).rowcount
            conn.execute(name_index.delete().where(name_index.c.owner == owner))
        self._forget(owner)
        return int(n)

    def rewrap(self, new_master: MasterKey) -> int:
        """Master-key rotation: unwrap every data key with the key that wrapped it and wrap it
        with `new_master`, in one transaction; the values sealed under the data keys are not
        touched. Returns the number of data keys re-wrapped. This process uses `new_master`
        from then on; others need it (as current or previous key) before their next unwrap."""
        with self.admin_engine.begin() as conn:
            rows = conn.execute(sa.select(data_keys)).all()
            updates = []
            for r in rows:
                master = self._masters.get(r.master_key_id)
                if master is None:
                    raise MasterKeyError(
                        f"data key {r.owner} v{r.version} is wrapped with master key {r.master_key_id}, "
                        "which this process does not have: give it as a previous key"
                    )
                context = _context(r.owner, r.version)
                key = master.unwrap(bytes(r.wrapped), context)
                updates.append(
                    {
                        "o": r.owner,
                        "v": r.version,
                        "m": new_master.key_id,
                        "w": new_master.wrap(key, context),
                    }
                )
            if updates:
                conn.execute(
                    data_keys.update()
                    .where(data_keys.c.owner == sa.bindparam("o"), data_keys.c.version == sa.bindparam("v"))
                    .values(master_key_id=sa.bindparam("m"), wrapped=sa.bindparam("w")),
                    updates,
                )
            conn.execute(
                keystore_check.update().values(
                    master_key_id=new_master.key_id, wrapped=new_master.wrap(_CHECK, b"check")
                )
            )
        self.master = new_master
        self._masters[new_master.key_id] = new_master
        return len(updates)

    def _forget(self, owner: str) -> None:
        with self._lock:
            self._current.pop(owner, None)
            for k in [k for k in self._cache if k[0] == owner]:
                del self._cache[k]
            for k in [k for k in self._ciphers if k[0] == owner]:
                del self._ciphers[k]

    def close(self) -> None:
        self.engine.dispose()
        if self.admin_engine is not self.engine:
            self.admin_engine.dispose()


def _key_engine(url: str) -> sa.Engine:
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)
    engine = sa.create_engine(url, connect_args={"timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA secure_delete=ON")  # a destroyed key is overwritten in the file
        cur.close()

    return engine


def _context(owner: str, version: int) -> bytes:
    return f"{owner}|{version}".encode()


def _safe(url: str) -> str:
    return sa.make_url(url).render_as_string(hide_password=True)


class Vault:
    """Seals and opens the results store's values for their owners. `keys` None: encryption is
    switched off (values are stored marked plain; sealed values already stored still open
    only with a key store)."""

    def __init__(self, keys: KeyStore | None) -> None:
        self.keys = keys

    @property
    def on(self) -> bool:
        return self.keys is not None

    def seal(self, owner: str, table: str, column: str, row: str, value: bytes) -> bytes:
        if self.keys is None:
            return seal(None, 0, value, b"")
        version, _ = self.keys.current(owner)
        return seal(self.keys.cipher(owner, version), version, value, aad(owner, table, column, row))

    def open(self, owner: str, table: str, column: str, row: str, blob: bytes) -> bytes:
        version = blob_version(blob)
        if version is None:
            return bytes(blob[1:])
        if self.keys is None:
            raise KeyringError(f"{table}.{column} is sealed: it needs the key store (encryption is off)")
        return unseal(self.keys.cipher(owner, version), blob, aad(owner, table, column, row))

    def seal_text(self, owner: str, table: str, column: str, row: str, text: str) -> bytes:
        return self.seal(owner, table, column, row, text.encode("utf-8"))

    def open_text(self, owner: str, table: str, column: str, row: str, blob: bytes) -> str:
        return self.open(owner, table, column, row, blob).decode("utf-8")

    def new_owner(self, owner: str) -> None:
        """Give `owner` (a new tenant) its first data key."""
        if self.keys is not None:
            self.keys.new_key(owner)

    def destroy(self, owner: str) -> int:
        return 0 if self.keys is None else self.keys.destroy(owner)

    def preload(self, owners: Sequence[str]) -> None:
        if self.keys is not None:
            self.keys.preload(owners)

    def claim_name(self, owner: str, name: str) -> bool | None:
        """Record a tenant's name in the key store's index (None: encryption is off, no index)."""
        return None if self.keys is None else self.keys.claim_name(owner, name)

    def find_name(self, name: str) -> str | None | bool:
        """The tenant id `name` belongs to, None if none, False when there is no index (off)."""
        return False if self.keys is None else self.keys.find_name(name)

    def release_name(self, name: str) -> None:
        if self.keys is not None:
            self.keys.release_name(name)
