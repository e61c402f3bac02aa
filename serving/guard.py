"""The service's front door (issue 14): ASGI middleware in front of the BentoML app that
decides, before any endpoint work, whether a request may cost the service anything.

For the keyed routes (``/score``, ``/score_bars``, ``/models``, ``/results/*``), in order:

1. **switched off?** ``serving.endpoints`` → 404 naming the switch;
2. **per-address rate** (``serving.limits.per_address_rps``), and an address whose recent
   keys failed more than ``failed_keys_burst`` times (refilled at ``failed_keys_per_minute``)
   gets 429 *before* any key look-up — a bad-key flood costs no database query — held back up
   to ``TARPIT_SECONDS`` first, so a client retrying in a tight loop slows down to its pace;
3. **the key**, checked from the headers alone, off the event loop (the look-up may query the
   results store); a store that cannot answer is a 503, never a 500; the tenant found rides in
   the request scope (``TENANT_STATE``) so the endpoint does not look it up again;
4. **per-tenant rate and concurrency** (``per_tenant_rps``, ``tenant_concurrency``): one
   tenant cannot take every worker thread from the others;
5. **the body**: JSON only (415 otherwise), ``serving.max_body_bytes`` (a declared length over
   it answers 413 unread; a chunked body is read up to the limit). Its parsing, off the loop
   and with a nesting bound, is `serving.bodies`.

Every 4xx/5xx a keyed route answers — ours, the endpoint's or BentoML's own validation — leaves
with one body shape, ``{"error": "<one line, at most 300 characters>"}`` (BentoML's list of
pydantic errors becomes ``"rows.0.3: Input should be a valid number (and 2 more)"``), and one
log line (no traceback; the client's address and tenant id, never its key) — except 429s,
which are a flood by nature: one line per address per ``FLOOD_LOG_SECONDS`` with the count
of those not logged. Limits are per
service worker process. `readiness` answers ``/readyz`` with the reasons it is not ready.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

log = logging.getLogger("mt5prob.serving")

KEYED = frozenset({"/score", "/score_bars", "/models", "/results/latest", "/results/range"})
SWITCHES = {
    "/score": "score",
    "/score_bars": "score_bars",
    "/models": "models",
    "/results/latest": "results",
    "/results/range": "results",
    "/matrix": "results",
    "/stream": "stream",
    "/export": "export",
}
TENANT_STATE = "mt5prob_tenant"  # scope["state"] key of the tenant the guard authenticated
from serving.errors import bounded  # noqa: E402 - one line, at most MAX_MESSAGE characters


class TokenBuckets:
    """Token buckets by key: each holds up to `burst` tokens and refills at `rate` per second.
    Memory is bounded: past `max_keys` the least recently used key is forgotten (it starts
    full again, which only errs towards letting a caller through). Not thread-safe: used on
    the event loop only."""

    def __init__(
        self, rate: float, burst: int, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def _level(self, key: str, now: float) -> float:
        tokens, stamp = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - stamp) * self.rate)

    def wait(self, key: str) -> float:
        """Seconds until `key` has a token (0.0: it has one now). Takes nothing."""
        if not self.enabled:
            return 0.0
        level = self._level(key, self.clock())
        return 0.0 if level >= 1.0 else (1.0 - level) / self.rate

    def take(self, key: str) -> float:
        """Take a token: 0.0 when there was one, else the seconds until there will be (and
        nothing is taken)."""
        if not self.enabled:
            return 0.0
        now = self.clock()
        level = self._level(key, now)
        if level < 1.0:
            self._buckets[key] = (level, now)
            self._buckets.move_to_end(key)
            return (1.0 - level) / self.rate
        self._buckets[key] = (level - 1.0, now)
        self._buckets.move_to_end(key)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return 0.0


def validation_message(body: Any) -> str:
    """One line from an error body: ours (``{"error": ...}``), BentoML's pydantic list
    (``{"error": "1 validation error for Input", "detail": [...]}``), or BentoML's
    ``[{"error": ...}]``."""
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]
    if not isinstance(body, dict):
        return "bad request"
    detail = body.get("detail")
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        first = detail[0]
        where = ".".join(str(p)[:40] for p in first.get("loc", ()))
        more = f" (and {len(detail) - 1} more)" if len(detail) > 1 else ""
        return f"{where or 'body'}: {first.get('msg', 'invalid')}{more}"
    return str(body.get("error", "bad request"))


async def _respond(
    send: Any, status: int, message: str, headers: list | None = None, close: bool = False
) -> None:
    """`{"error": message}` with `status`. `close`: the request's body was not read — the
    connection is closed after the answer, so the server does not read and discard what the
    client keeps sending (a 100 MB body refused unread would otherwise still be parsed)."""
    body = json.dumps({"error": bounded(message)}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *([(b"connection", b"close")] if close else []),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _retry_after(seconds: float) -> list[tuple[bytes, bytes]]:
    return [(b"retry-after", str(max(1, math.ceil(seconds))).encode())]


class RequestGuard:
    """ASGI middleware (see module docstring). `service()` returns the live ScoringService
    (None while it starts); limits are read from its ``settings`` on first use."""

    def __init__(self, app: Any, service: Callable[[], Any]) -> None:
        self.app = app
        self.service = service
        self._limits: Any = None
        self._in_flight: dict[str, int] = {}
        self._tarpitted = 0

    def _setup(self, settings: Any) -> None:
        lim = settings.limits
        self.per_address = TokenBuckets(lim.per_address_rps, lim.per_address_burst)
        self.failed_keys = TokenBuckets(lim.failed_keys_per_minute / 60.0, lim.failed_keys_burst)
        self.per_tenant = TokenBuckets(lim.per_tenant_rps, lim.per_tenant_burst)
        self._limits = lim

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"].rstrip("/") or "/"
        if path == "/readyz":
            await self._readyz(send)
            return
        if path not in KEYED:
            await self.app(scope, receive, send)
            return
        svc = self.service()
        if svc is None:
            await _respond(send, 503, "the service is starting; retry shortly", close=True)
            return
        if self._limits is None:
            self._setup(svc.settings)
        address = (scope.get("client") or ("?", 0))[0]
        reject = _Rejections(scope, send, address)
        await self._keyed(scope, receive, reject, svc, path, address)

    async def _keyed(
        self, scope: dict, receive: Any, reject: _Rejections, svc: Any, path: str, address: str
    ) -> None:
        from starlette.concurrency import run_in_threadpool
        from starlette.datastructures import Headers

        from serving.errors import ApiError

        switch = SWITCHES[path]
        if not getattr(svc.settings.endpoints, switch):
            await reject(404, f"{path} is switched off on this service (serving.endpoints.{switch})")
            return
        wait = self.per_address.take(address)
        if wait:
            await self._tarpit(wait)
            await reject(429, f"too many requests from {address}; retry in {math.ceil(wait)} s", wait)
            return
        wait = self.failed_keys.wait(address)
        if wait:
            await self._tarpit(wait)
            await reject(429, f"too many failed API keys from {address}; retry in {math.ceil(wait)} s", wait)
            return
        headers = Headers(scope=scope)
        try:
            tenant = await run_in_threadpool(svc.auth.tenant, headers)
        except ApiError as exc:
            if int(exc.status) == 401:
                self.failed_keys.take(address)
                await reject(401, exc.message, extra=[(b"www-authenticate", b'ApiKey header="X-API-Key"')])
            else:
                await reject(int(exc.status), exc.message)
            return
        except Exception as exc:  # noqa: BLE001 — the store is down: not the caller's fault
            svc.health.store_failed(exc)
            await reject(503, "the results store is unavailable (API keys cannot be checked); retry shortly")
            return
        reject.tenant = tenant.tenant_id
        wait = self.per_tenant.take(tenant.tenant_id)
        if wait:
            await reject(429, f"too many requests for this tenant; retry in {math.ceil(wait)} s", wait)
            return
        limit = self._limits.tenant_concurrency
        running = self._in_flight.get(tenant.tenant_id, 0)
        if limit and running >= limit:
            await reject(
                429, f"{running} requests of this tenant are in progress (limit {limit}); retry shortly", 1.0
            )
            return
        media = headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if scope["method"] == "POST" and media not in ("application/json", ""):
            await reject(415, f"send the body as application/json (got {media[:60]!r})")
            return
        scope.setdefault("state", {})[TENANT_STATE] = tenant
        self._in_flight[tenant.tenant_id] = running + 1
        try:
            await self._body(scope, receive, reject, svc.settings.max_body_bytes, headers)
        finally:
            left = self._in_flight.get(tenant.tenant_id, 1) - 1
            if left > 0:
                self._in_flight[tenant.tenant_id] = left
            else:
                self._in_flight.pop(tenant.tenant_id, None)

    async def _tarpit(self, wait: float) -> None:
        """Hold an address that is over its limit for up to `TARPIT_SECONDS` before its 429
        (its body unread: the server stops reading after 64 KB), so a client retrying in a
        loop costs the service a sleeping coroutine instead of hundreds of requests a second.
        At most `TARPIT_MAX` are held at once; beyond that the 429 is immediate."""
        import asyncio

        if self._tarpitted >= TARPIT_MAX:
            return
        self._tarpitted += 1
        try:
            await asyncio.sleep(min(wait, TARPIT_SECONDS))
        finally:
            self._tarpitted -= 1

    async def _body(self, scope: dict, receive: Any, reject: _Rejections, limit: int, headers: Any) -> None:
        declared = headers.get("content-length")
        if declared is not None:
            if not (declared.isascii() and declared.isdigit()):
                await reject(400, "Content-Length must be a number of bytes")
                return
            if int(declared) > limit:
                await reject(413, f"body of {int(declared):,} bytes is over the limit of {limit:,}")
                return
            await self.app(scope, receive, reject.send)  # the server reads no more than declared
            return
        chunks, size = [], 0
        while True:  # no declared length: read up to the limit, then replay to the app
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                await reject(413, f"body is over the limit of {limit:,} bytes")
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, reject.send)

    async def _readyz(self, send: Any) -> None:
        svc = self.service()
        reasons = ["the service is starting"] if svc is None else svc.health.reasons()
        body = json.dumps({"ready": not reasons, "reasons": reasons}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 503 if reasons else 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


TARPIT_SECONDS = 1.0  # an address over its limit waits up to this long for its 429
TARPIT_MAX = 256  # connections held so at once (per worker)
FLOOD_LOG_SECONDS = 1.0  # 429s from one address: one log line per this many seconds, with a count
_FLOOD: dict[str, tuple[float, int]] = {}  # address → (when its last 429 was logged, not logged since)


class _Rejections:
    """The `send` of one keyed request: error answers (status ≥ 400) — the guard's own and
    the app's — are normalised to ``{"error": one bounded line}`` and logged once."""

    def __init__(self, scope: dict, send: Any, address: str) -> None:
        self.scope = scope
        self._send = send
        self.address = address
        self.tenant: str | None = None
        self._start: dict | None = None
        self._chunks: list[bytes] = []
        self._size = 0

    async def __call__(
        self, status: int, message: str, retry_after: float | None = None, extra: list | None = None
    ) -> None:
        self._log(status, message)
        headers = (_retry_after(retry_after) if retry_after is not None else []) + (extra or [])
        await _respond(self._send, status, message, headers, close=True)

    def _log(self, status: int, message: str) -> None:
        more = ""
        if status == 429:  # a flood of refusals must not become a flood of log lines
            now = time.monotonic()
            last, quiet = _FLOOD.get(self.address, (-1.0, 0))
            if now - last < FLOOD_LOG_SECONDS:
                _FLOOD[self.address] = (last, quiet + 1)
                return
            if len(_FLOOD) > 10_000:
                _FLOOD.clear()
            _FLOOD[self.address] = (now, 0)
            more = f" (and {quiet} more 429s from this address not logged)" if quiet else ""
        log.warning(
            "rejected %s %s from %s%s: %d %s%s",
            self.scope.get("method", "?"),
            self.scope.get("path", "?")[:100],
            self.address,
            f" tenant {self.tenant}" if self.tenant else "",
            status,
            bounded(message),
            more,
        )

    async def send(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            if message["status"] < 400:
                await self._send(message)
                return
            self._start = message  # held until its body is complete
            return
        if self._start is None or message["type"] != "http.response.body":
            await self._send(message)
            return
        if self._size < 65_536:
            chunk = message.get("body", b"")
            self._chunks.append(chunk[: 65_536 - self._size])
            self._size += len(chunk)
        if message.get("more_body", False):
            return
        status, start = self._start["status"], self._start
        self._start = None
        try:
            text = validation_message(json.loads(b"".join(self._chunks)))
        except ValueError:
            text = "internal error; see the service log" if status >= 500 else "bad request"
        if status < 500 or status == 503:
            self._log(status, text)
        keep = [
            (k, v) for k, v in start.get("headers", []) if k.lower() in (b"retry-after", b"www-authenticate")
        ]
        await _respond(self._send, status, text, keep)


class _ClientErrorTracebacks(logging.Filter):
    """Drops BentoML's "Exception on /score [POST]" record, with its traceback, for a client
    error (a body that fails validation, a 4xx raised while parsing): the guard logs one line
    for it instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            return False
        code = getattr(getattr(exc, "error_code", None), "value", getattr(exc, "error_code", 500))
        return not (isinstance(code, int) and 400 <= code < 500)


def quiet_client_errors() -> None:
    """Install `_ClientErrorTracebacks` on BentoML's request-error logger (idempotent)."""
    logger = logging.getLogger("bentoml._internal.server.http_app")
    if not any(isinstance(f, _ClientErrorTracebacks) for f in logger.filters):
        logger.addFilter(_ClientErrorTracebacks())
