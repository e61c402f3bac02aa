"""Limits before work for the keyed API routes (issue 14): ASGI middleware in front of the
BentoML app.

For ``/score``, ``/score_bars``, ``/models`` and ``/results/*`` a request is, in this order:

1. authenticated from its headers alone — off the event loop (the key look-up may query the
   results store) — so a caller without a valid key gets its 401 before a byte of its body is
   read (a 100 MB body with no key used to be parsed first, stalling every other request);
   the tenant found rides in the request scope, so the endpoint does not look it up again;
2. held to ``serving.max_body_bytes``: a declared ``Content-Length`` over it answers 413 at
   once, unread; a body without one (chunked) is read up to the limit and refused past it.

A results store that cannot answer the key look-up is a 503 naming it, never a 500.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("mt5prob.serving")

KEYED = frozenset({"/score", "/score_bars", "/models", "/results/latest", "/results/range"})
TENANT_STATE = "mt5prob_tenant"  # scope["state"] key of the tenant the guard authenticated


async def _respond(send: Any, status: int, message: str, headers: list | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """ASGI middleware (see module docstring). `service()` returns the live ScoringService."""

    def __init__(self, app: Any, service: Callable[[], Any]) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") not in KEYED:
            await self.app(scope, receive, send)
            return
        from starlette.concurrency import run_in_threadpool
        from starlette.datastructures import Headers

        from serving.errors import ApiError

        svc = self.service()
        if svc is None:
            await _respond(send, 503, "the service is starting; retry shortly")
            return
        headers = Headers(scope=scope)
        try:
            tenant = await run_in_threadpool(svc.auth.tenant, headers)
        except ApiError as exc:
            extra = [(b"www-authenticate", b'ApiKey header="X-API-Key"')] if int(exc.status) == 401 else []
            await _respond(send, int(exc.status), exc.message, extra)
            return
        except Exception as exc:  # noqa: BLE001 — the store is down: not the caller's fault
            log.warning("key look-up failed: %s", str(exc).splitlines()[0][:200])
            await _respond(send, 503, "the results store is unavailable; retry shortly")
            return
        scope.setdefault("state", {})[TENANT_STATE] = tenant
        limit = svc.settings.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None:
            if not (declared.isascii() and declared.isdigit()):
                await _respond(send, 400, "Content-Length must be a number of bytes")
                return
            if int(declared) > limit:
                await _respond(send, 413, f"body of {int(declared):,} bytes is over the limit of {limit:,}")
                return
            await self.app(scope, receive, send)  # the server reads no more than declared
            return
        chunks, size = [], 0
        while True:  # no declared length: read up to the limit, then replay to the app
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                await _respond(send, 413, f"body is over the limit of {limit:,} bytes")
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

        await self.app(scope, replay, send)
