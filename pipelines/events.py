"""The event bus between the live worker and the scoring service's replicas: a wake-up, not a
store. The results store is the source of truth (every score has an id in commit order); an
event only says "scores were committed, read past your cursor". A lost or duplicated event
therefore loses or duplicates nothing: a replica that misses one catches up on the next, or on
its own periodic re-read.

Redis pub/sub (``events.url``: ``redis://host:port/db``) carries events between processes and
machines: every replica subscribed to the channel receives every event, so each delivers to its
own clients. ``NullBus`` is for a worker with no service to wake (replicas then rely on their
periodic re-read).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("mt5prob.events")

CHANNEL = "mt5prob:scores"


class NullBus:
    """Publishes nowhere."""

    def publish(self, event: dict[str, Any]) -> None:
        return None

    def close(self) -> None:
        return None


class RedisBus:
    """Publish events to, and subscribe to them from, a Redis channel."""

    def __init__(self, url: str, channel: str = CHANNEL) -> None:
        import redis

        self.url = url
        self.channel = channel
        self._redis = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._threads: list[tuple[Any, threading.Thread]] = []

    def publish(self, event: dict[str, Any]) -> None:
        """Publish `event` (JSON-serialisable). A broker failure is logged, not raised: the
        scores are committed already and replicas re-read the store periodically."""
        try:
            self._redis.publish(self.channel, json.dumps(event, default=str))
        except Exception as exc:  # noqa: BLE001 — any broker failure: log, delivery catches up
            log.warning(
                "event bus %s: publish failed (%s); replicas catch up on their re-read", self.url, exc
            )

    def subscribe(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """Call `callback(event)` for every event, from a daemon thread, until `close()`.
        Reconnects on broker failure."""
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                try:
                    if not pubsub.subscribed:
                        pubsub.subscribe(self.channel)
                    message = pubsub.get_message(timeout=0.5)
                except Exception as exc:  # noqa: BLE001 — broker down: retry, replicas re-read meanwhile
                    log.warning("event bus %s: %s; retrying", self.url, exc)
                    stop.wait(1.0)
                    try:
                        pubsub.reset()
                    except Exception:  # noqa: BLE001
                        pass
                    continue
                if message and message.get("type") == "message":
                    try:
                        callback(json.loads(message["data"]))
                    except Exception:  # a bad event or callback must not end the subscription
                        log.exception("event bus: dropping an event that could not be handled")

        thread = threading.Thread(target=loop, name="mt5prob-events", daemon=True)
        thread.start()
        self._threads.append((stop, thread))

    def close(self) -> None:
        for stop, thread in self._threads:
            stop.set()
            thread.join(timeout=2.0)
        self._threads.clear()
        self._redis.close()


def open_bus(url: str | None) -> NullBus | RedisBus:
    """The bus ``events.url`` names (None: `NullBus`)."""
    return RedisBus(url) if url else NullBus()
