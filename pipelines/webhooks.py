"""Webhooks: each tenant's results POSTed to its URL, at least once, from a durable outbox.

The outbox is the tenant's own event stream (``tenant_results``, ids in commit order — the
same events its ``/stream`` gives) and one cursor row per tenant (``webhooks``, migration
0005), so the outbox costs nothing per result. One delivery:

1. the next batch is the pending one if an attempt failed (the same events again), else up to
   ``webhooks.max_events`` events after the acknowledged cursor — recorded as pending before
   it is sent, so a dispatcher killed mid-send sends exactly it again;
2. ``POST <url>`` with body ``{"tenant_id", "events": [...]}`` (canonical JSON, so a retry is
   byte-identical) and headers

   * ``Idempotency-Key: <tenant_id>:<first event id>-<last event id>`` — the same key always
     names the same body; a receiver that has seen it may drop the delivery;
   * ``X-Mt5prob-Timestamp: <unix seconds>`` and
     ``X-Mt5prob-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>`` — check
     them with `verify` (reject stale timestamps: replay protection);

3. a 2xx answer moves the cursor past the batch; anything else (another status, a timeout,
   a refused connection) counts an attempt and schedules the next one after an exponential
   back-off (``backoff_initial_seconds`` doubling up to ``backoff_max_seconds``). Events are
   never dropped: they wait in the outbox, with the attempts counted, until acknowledged.

A slow or dead endpoint cannot slow another tenant's delivery: each delivery runs on its own
worker thread with a ``timeout_seconds`` bound, there is no round that waits for all of them,
and a failing endpoint is retried ever less often. Deliveries start when the live worker
publishes new scores (the event bus) and, failing that, every ``poll_seconds``.

    python -m pipelines.webhooks [--seconds N] [--params params.yaml]
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pipelines.config import WebhooksParams
from pipelines.events import NullBus, RedisBus
from pipelines.retry import retry_after
from pipelines.store import ResultsStore, Webhook

log = logging.getLogger("mt5prob.webhooks")

SIGNATURE_HEADER = "X-Mt5prob-Signature"
TIMESTAMP_HEADER = "X-Mt5prob-Timestamp"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 keyed with the webhook's secret (its UTF-8 bytes) over
    ``"<timestamp>."`` followed by the exact body bytes."""
    mac = hmac.new(secret.encode(), f"{int(timestamp)}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: str, timestamp: str | int, body: bytes, sig: str, now: float | None = None, tolerance: float = 300
) -> bool:
    """What a receiver checks: the signature matches (constant-time) and the timestamp is
    within `tolerance` seconds of `now` (a captured delivery cannot be replayed later)."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance:
        return False
    return hmac.compare_digest(signature(secret, ts, body), sig)


def body_of(tenant_id: str, events: Sequence[dict[str, Any]]) -> bytes:
    """The canonical JSON body of a batch (sorted keys, no spaces): a retry is byte-identical."""
    return json.dumps(
        {"tenant_id": tenant_id, "events": list(events)}, sort_keys=True, separators=(",", ":")
    ).encode()


@dataclass
class DispatchStats:
    attempts: int = 0
    delivered_events: int = 0
    failures: int = 0
    by_tenant: dict[str, int] = field(default_factory=dict)  # events acknowledged per tenant


class WebhookDispatcher:
    """Delivers every tenant's webhook (see module docstring). One per process is enough; two
    are safe (a cursor only moves from where an attempt found it) but may send a batch twice —
    at-least-once, which the idempotency key is for."""

    def __init__(
        self, store: ResultsStore, params: WebhooksParams, bus: NullBus | RedisBus | None = None
    ) -> None:
        import httpx

        self.store = store
        self.params = params
        self.bus = bus or NullBus()
        self.stats = DispatchStats()
        self._http = httpx.Client(
            timeout=httpx.Timeout(params.timeout_seconds),
            limits=httpx.Limits(max_connections=params.concurrency * 2),
            follow_redirects=False,
        )
        self._pool = ThreadPoolExecutor(max_workers=params.concurrency, thread_name_prefix="mt5prob-webhook")
        self._inflight: set[str] = set()
        self._idle: dict[str, int] = {}  # tenant → the newest score id when it had nothing waiting
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        if isinstance(self.bus, RedisBus):
            self.bus.subscribe(lambda _event: self._wake.set())

    # ------------------------------------------------------------------ one pass
    def dispatch(self) -> int:
        """Start a delivery for every due webhook not already being delivered; returns how
        many were started. Does not wait for them."""
        newest = self.store.last_score_id()
        started = 0
        for hook in self.store.webhooks_due(limit=self.params.max_due):
            with self._lock:
                if hook.tenant_id in self._inflight:
                    continue
                if hook.pending_through is None and self._idle.get(hook.tenant_id) == newest:
                    continue  # nothing was committed since it last had nothing waiting
                self._inflight.add(hook.tenant_id)
            self._pool.submit(self._deliver, hook, newest)
            started += 1
        return started

    def _deliver(self, hook: Webhook, newest: int) -> None:
        try:
            batch = self.store.webhook_batch(hook, self.params.max_events)
            if batch is None:
                with self._lock:
                    self._idle[hook.tenant_id] = newest
                return
            events, last = batch
            ok, status = self._post(hook, events)
            now = datetime.now(UTC)
            attempts = 0 if ok else hook.attempts + 1
            wait = (
                0.0
                if ok
                else retry_after(
                    attempts, self.params.backoff_initial_seconds, self.params.backoff_max_seconds
                )
            )
            self.store.webhook_attempted(
                hook, last, ok, status, now + timedelta(seconds=wait), len(events) if ok else 0
            )
            with self._lock:
                self.stats.attempts += 1
                if ok:
                    self.stats.delivered_events += len(events)
                    self.stats.by_tenant[hook.tenant_id] = self.stats.by_tenant.get(hook.tenant_id, 0) + len(
                        events
                    )
                    self._wake.set()  # more may be waiting beyond this batch
                else:
                    self.stats.failures += 1
            if not ok:
                log.warning(
                    "webhook %s (tenant %s): %s; attempt %d, next in %.0fs (%d events waiting)",
                    hook.url[:100],
                    hook.tenant_id,
                    status,
                    attempts,
                    wait,
                    len(events),
                )
        except Exception:  # noqa: BLE001 — the store is down or similar: the next pass retries
            log.exception("webhook delivery for tenant %s failed before sending", hook.tenant_id)
        finally:
            with self._lock:
                self._inflight.discard(hook.tenant_id)

    def _post(self, hook: Webhook, events: list[dict[str, Any]]) -> tuple[bool, str]:
        """(acknowledged, status in words) of one POST."""
        import httpx

        body = body_of(hook.tenant_id, events)
        ts = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": f"{hook.tenant_id}:{events[0]['event_id']}-{events[-1]['event_id']}",
            TIMESTAMP_HEADER: str(ts),
            SIGNATURE_HEADER: signature(hook.secret, ts, body),
            "User-Agent": "mt5prob-webhooks/1",
        }
        try:
            response = self._http.post(hook.url, content=body, headers=headers)
        except httpx.TimeoutException:
            return False, f"timeout after {self.params.timeout_seconds:g}s"
        except httpx.HTTPError as exc:
            return False, f"{type(exc).__name__}: {str(exc)[:200]}"
        if 200 <= response.status_code < 300:
            return True, f"HTTP {response.status_code}"
        return False, f"HTTP {response.status_code}"

    # ------------------------------------------------------------------ the loop
    def run(self, seconds: float | None = None) -> DispatchStats:
        """Dispatch until `stop()` or `seconds`: at once when new scores are published, else
        every ``poll_seconds`` (failed deliveries come due on their own schedule)."""
        end = None if seconds is None else time.monotonic() + seconds
        while not self._stop.is_set() and (end is None or time.monotonic() < end):
            self._wake.clear()
            try:
                self.dispatch()
            except Exception:  # noqa: BLE001 — the store is down: retry on the next pass
                log.exception("webhook dispatch pass failed")
            timeout = self.params.poll_seconds
            if end is not None:
                timeout = max(0.0, min(timeout, end - time.monotonic()))
            self._wake.wait(timeout)
        return self.stats

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until no delivery is in flight (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._inflight:
                    return
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def close(self) -> None:
        self.stop()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._http.close()
        self.bus.close()


def main(argv: Sequence[str] | None = None) -> int:
    from pipelines.config import cli_parser, load_params
    from pipelines.events import open_bus

    parser = cli_parser("python -m pipelines.webhooks", __doc__)
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long (default: run)")
    args = parser.parse_args(argv)
    params = load_params(args.params, args.profile)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    store = ResultsStore.from_params(params.store)
    dispatcher = WebhookDispatcher(store, params.webhooks, open_bus(params.events.url))
    try:
        stats = dispatcher.run(args.seconds)
    except KeyboardInterrupt:
        stats = dispatcher.stats
    finally:
        dispatcher.close()
        store.close()
    print(
        f"webhooks: {stats.attempts} attempts, {stats.delivered_events} events delivered, "
        f"{stats.failures} failed attempts"
    )
    return 0


if __name__ == "__main__":
    from pipelines.config import run_cli

    raise SystemExit(run_cli(main))
