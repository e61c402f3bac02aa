"""``GET /stream``: a tenant's results pushed as server-sent events, resumable.

Each event is one result row of the tenant (``tenant_results``: what it follows, its pinned or
followed version, its signal), ``id:`` its event id — ids grow in commit order — and
``event: result``. A client that reconnects sends ``Last-Event-ID`` (browsers' EventSource
does) or ``?after=ID`` and receives every result after it, none missed, none repeated, across
client reconnects and service restarts: the store is the source of truth, not the connection.
Without either, the stream starts after the newest result (only new ones come).

New results are noticed through the event bus (pipelines.events: the live worker publishes
after each commit; every replica subscribes, so each delivers to its own clients) and, as a
fallback, by re-reading the store every ``events.reread_seconds``. Reads run off the event
loop, under the tenant's own session (row-level security on PostgreSQL).

Limits: a client that does not take an event within ``stream_send_timeout_seconds`` is
dropped (its socket buffer is all it may hold: the next rows are read only when the previous
ones were sent); at most ``stream_max_per_tenant`` streams per tenant per replica (429 beyond);
401 without a valid key; 503 when the store cannot be reached. A comment line every
``stream_heartbeat_seconds`` keeps proxies from closing an idle stream. Each result pushed is
recorded in the service's Prometheus histograms (``/metrics``): bar close → committed and bar
close → handed to the client, by timeframe.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import Counter
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from pipelines.store import event_payload
from serving.errors import ApiError

log = logging.getLogger("mt5prob.stream")

BATCH = 500  # rows read per query


class StreamHub:
    """One per service replica: wakes its open streams when an event arrives from the bus."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: set[asyncio.Event] = set()
        self._lock = threading.Lock()
        self.open: Counter[str] = Counter()  # tenant id → open streams
        self.closing = False  # the replica is shutting down: streams end, clients reconnect
        self.generation = 0  # events notified so far (see `wait`)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is None and threading.current_thread() is threading.main_thread():
            self._drain_on_exit()
        self._loop = loop

    def _drain_on_exit(self) -> None:
        """End every open stream when this process is told to stop (SIGTERM/SIGINT), before
        the server's own handler runs: the server waits for open connections before it exits,
        and a stream never ends by itself, so without this a restart or a rolling deploy
        would hang on its streams while their clients kept talking to a replica on its way
        out. Clients reconnect (``retry:``) with their last event id to a live replica."""
        import signal

        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(signum)

            def handler(sig: int, frame: Any, previous: Any = previous) -> None:
                self.close_all()
                if callable(previous):
                    previous(sig, frame)

            signal.signal(signum, handler)

    def close_all(self) -> None:
        """Mark the replica as closing and wake every stream so it ends (any thread)."""
        self.closing = True
        self.notify()

    def notify(self, _event: Any = None) -> None:
        """Wake every waiting stream (callable from any thread: the bus's), and count the
        event (`generation`), so that a stream busy reading when it came does not miss it."""
        with self._lock:
            self.generation += 1
            waiters = list(self._waiters)
        loop = self._loop
        if loop is None:
            return
        for w in waiters:
            loop.call_soon_threadsafe(w.set)

    async def wait(self, timeout: float, seen: int | None = None) -> None:
        """Until the next event or `timeout` seconds; at once if an event came since the
        stream read `generation` as `seen` (before its last read of the store). Without it, an
        event arriving while a stream was reading or sending was lost, and its results waited
        for the next event or the fallback re-read (seconds)."""
        event = asyncio.Event()
        with self._lock:
            if seen is not None and self.generation != seen:
                return
            self._waiters.add(event)
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                self._waiters.discard(event)


def _event(row: Any) -> bytes:
    data = event_payload(row)
    return f"id: {int(row.event_id)}\nevent: result\ndata: {json.dumps(data)}\n\n".encode()


def _cursor(headers: Any, query: str) -> int | None:
    """The client's resume point: Last-Event-ID, else ?after=, else None (from now). 400 on
    anything but a non-negative integer of at most 18 digits."""
    from urllib.parse import parse_qs

    raw = headers.get("last-event-id")
    if raw is None:
        values = parse_qs(query).get("after")
        raw = values[0] if values else None
    if raw is None:
        return None
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise ApiError(
            HTTPStatus.BAD_REQUEST, "Last-Event-ID / after must be a non-negative integer event id"
        )
    return int(raw)


def stream_app(service: Any) -> Any:
    """A raw ASGI app for mounting at ``/stream``; `service()` returns the running service
    (its store, authenticator, settings, hub), or None while it starts."""

    async def respond(send: Any, status: int, message: str, headers: list | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), *(headers or [])],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        svc = service()
        if svc is None:
            await respond(send, 503, "the service is still starting")
            return
        if not svc.settings.endpoints.stream:
            await respond(send, 404, "/stream is switched off on this service (serving.endpoints.stream)")
            return
        if scope["method"] != "GET":
            await respond(send, 405, "use GET /stream", [(b"allow", b"GET")])
            return
        from starlette.concurrency import run_in_threadpool

        hub: StreamHub = svc.hub
        hub.attach(asyncio.get_running_loop())
        settings, events_cfg = svc.settings, svc.events_settings
        from starlette.datastructures import Headers

        headers = Headers(scope=scope)  # case-insensitive, as the other endpoints see them
        try:
            after = _cursor(headers, scope.get("query_string", b"").decode("latin-1"))
            tenant = await run_in_threadpool(svc.auth.tenant, headers)
        except ApiError as exc:
            extra = [(b"www-authenticate", b'ApiKey header="X-API-Key"')] if exc.status == 401 else []
            await respond(send, int(exc.status), exc.message, extra)
            return
        except Exception as exc:  # noqa: BLE001 — the store is down: not the caller's fault
            svc.health.store_failed(exc)
            await respond(send, 503, "the results store is unavailable; retry shortly")
            return
        if hub.closing:
            await respond(send, 503, "this replica is shutting down; reconnect with your last event id")
            return
        if hub.open[tenant.tenant_id] >= settings.stream_max_per_tenant:
            await respond(send, 429, f"at most {settings.stream_max_per_tenant} open streams per tenant")
            return

        def first_cursor() -> int:
            with svc.store.tenant(tenant.tenant_id, actor="stream") as s:
                start = s.last_event_id() if after is None else after
                s.audit("results.stream", {"after": start})
                return start

        def read(cursor: int) -> tuple[bytes, list[Any]]:
            """The rows after `cursor`, formatted as one chunk of events (off the event loop:
            one send per read, not one per row — a bar close brings dozens of rows)."""
            with svc.store.tenant(tenant.tenant_id, actor="stream") as s:
                rows = list(s.events(after=cursor, limit=BATCH).itertuples(index=False))
            return b"".join(_event(row) for row in rows), rows

        try:
            cursor = await run_in_threadpool(first_cursor)
        except Exception as exc:  # noqa: BLE001 - the store is down: one line, no traceback
            svc.health.store_failed(exc)
            await respond(send, 503, "the results store is unavailable; retry shortly")
            return

        hub.open[tenant.tenant_id] += 1
        disconnected = asyncio.Event()

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected.set()
                    hub.notify()
                    return

        watcher = asyncio.create_task(watch())
        timeout = settings.stream_send_timeout_seconds

        async def put(chunk: bytes) -> None:
            await asyncio.wait_for(
                send({"type": "http.response.body", "body": chunk, "more_body": True}), timeout
            )

        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream; charset=utf-8"),
                        (b"cache-control", b"no-cache"),
                        (b"x-accel-buffering", b"no"),
                    ],
                }
            )
            await put(f": stream of {tenant.name} after event {cursor}\nretry: 1000\n\n".encode())
            idle = 0.0
            while not disconnected.is_set() and not hub.closing:
                seen = hub.generation  # before the read: an event during it wakes the next wait
                try:
                    chunk, rows = await run_in_threadpool(read, cursor)
                except Exception:  # noqa: BLE001 — store blip: tell the client, keep the stream
                    log.exception("stream: read failed")
                    await put(b": store unavailable, retrying\n\n")
                    chunk, rows = b"", []
                    await asyncio.sleep(events_cfg.reread_seconds)
                if rows:
                    await put(chunk)
                    cursor = int(rows[-1].event_id)
                    sent = datetime.now(UTC)
                    for row in rows:
                        svc.observe_delivery(row.timeframe, row.bar_closed_at, row.scored_at, sent)
                if len(rows) == BATCH:
                    continue
                if rows:
                    idle = 0.0
                elif idle >= settings.stream_heartbeat_seconds:
                    await put(b": heartbeat\n\n")
                    idle = 0.0
                if hub.closing:
                    break
                started = asyncio.get_running_loop().time()
                await hub.wait(events_cfg.reread_seconds, seen)
                idle += asyncio.get_running_loop().time() - started
        except (TimeoutError, OSError):
            log.info(
                "stream of %s dropped: the client did not take events within %.0f s",
                tenant.tenant_id,
                timeout,
            )
        finally:
            hub.open[tenant.tenant_id] -= 1
            watcher.cancel()
            try:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except Exception:  # noqa: BLE001 — the client is gone already
                pass

    return app


class StreamRoute:
    """ASGI middleware that answers ``/stream`` itself (a mounted app would answer only
    ``/stream/`` and redirect the rest) and passes every other request on."""

    def __init__(self, app: Any, handler: Any, path: str = "/stream") -> None:
        self.app = app
        self.handler = handler
        self.path = path

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].rstrip("/") == self.path:
            await self.handler(scope, receive, send)
        else:
            await self.app(scope, receive, send)
