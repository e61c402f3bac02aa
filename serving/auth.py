"""Who is calling: the tenant behind an API key (``X-API-Key``, or ``Authorization: Bearer``).

Keys are looked up by their SHA-256 in the results store (`ResultsStore.authenticate`, which
compares in constant time); a hit is cached for ``serving.auth_cache_seconds`` under the
key's digest, never the key itself, so a rotated or removed key stops within that time.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from serving.errors import ApiError

MAX_CACHED = 10_000


class Authenticator:
    def __init__(self, store: Any, header: str = "X-API-Key", cache_seconds: float = 5.0) -> None:
        self.store = store
        self.header = header
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def key(self, headers: Mapping[str, str]) -> str:
        """The API key a request carries, or 401 saying where to put it."""
        key = headers.get(self.header)
        if not key:
            auth = headers.get("authorization", "")
            key = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if not key:
            raise ApiError(HTTPStatus.UNAUTHORIZED, f"missing API key: send it in the {self.header} header")
        return key

    def tenant(self, headers: Mapping[str, str]) -> Any:
        """The caller's `Tenant`, or 401."""
        key = self.key(headers)
        digest = hashlib.sha256(key.encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(digest)
        if hit is not None and now - hit[0] < self.cache_seconds:
            return hit[1]
        tenant = self.store.authenticate(key)
        if tenant is None:
            raise ApiError(HTTPStatus.UNAUTHORIZED, "unknown API key")
        with self._lock:
            if len(self._cache) > MAX_CACHED:
                self._cache.clear()
            self._cache[digest] = (now, tenant)
        return tenant
