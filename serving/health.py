"""What the service depends on, checked in the background (issue 14): ``/readyz`` answers 503
with the reasons while the results store, the model registry or a served model is
unavailable, and 200 again by itself once they are back.

A thread re-checks every ``serving.health_interval_seconds``: the store with ``SELECT 1``
(PostgreSQL: bounded by ``store.connect_timeout_seconds`` and ``statement_timeout_ms``), the
registry by whether the last alias refresh could read MLflow, and each served model by
whether its default alias resolves to a version that is loaded (or loads now; a version whose
artifact fails is backed off, `pipelines.model_cache.ModelUnavailable`). A model with no
champion because the promotion gate found no skill in it is not a failure: requests for it
are answered 409 with the gate's reason (`pipelines.model_cache.NoSkill`). A request that meets
a failing store reports it at once (`store_failed`), so readiness drops before the next check.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import deque
from typing import Any

import bentoml

log = logging.getLogger("mt5prob.serving")

_GC_PAUSE = bentoml.metrics.Histogram(
    name="mt5prob_gc_pause_seconds",
    documentation="Cyclic garbage-collector passes in the service, by generation (seconds, GIL held)",
    labelnames=["generation"],
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
_GC_FREEZES = bentoml.metrics.Counter(
    name="mt5prob_gc_freezes",
    documentation="Times the service hid its long-lived objects from the collector (once, at start)",
)
_GC_STARTED: list[float] = []
# pauses measured by the collector's callback, observed into _GC_PAUSE later by `flush_gc_pauses`:
# the callback runs wherever a collection starts — also inside prometheus_client while it holds
# its (non-reentrant) multiprocess lock, where observing a metric deadlocked the whole worker
# (seen: /readyz hung for good after `json.dumps` in a metric's set-up triggered a collection)
_GC_PAUSES: deque[tuple[int, float]] = deque(maxlen=10_000)


def _time_collections(phase: str, info: dict[str, int]) -> None:
    """gc callback: no locks, no metrics — append only (deque.append is atomic)."""
    if phase == "start":
        _GC_STARTED[:] = [time.perf_counter()]
    elif _GC_STARTED:
        _GC_PAUSES.append((info["generation"], time.perf_counter() - _GC_STARTED[0]))


def flush_gc_pauses() -> None:
    """Observe the pauses the callback recorded (called outside any collection)."""
    while _GC_PAUSES:
        generation, seconds = _GC_PAUSES.popleft()
        _GC_PAUSE.labels(generation=str(generation)).observe(seconds)


class Health:
    def __init__(self, store: Any, models: Any, alias: str, interval: float) -> None:
        self.store = store
        self.models = models
        self.alias = alias
        self.interval = interval
        self._store_error: str | None = None
        self._model_errors: list[str] = []
        self._verified: set[tuple[str, str]] = set()  # (model, version) that loaded: not re-checked
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ reading
    def reasons(self) -> list[str]:
        """Why the service is not ready now (empty: ready). Cheap: no I/O."""
        with self._lock:
            out = [f"results store unavailable: {self._store_error}"] if self._store_error else []
            registry = self.models.registry_error
            if registry:
                out.append(f"model registry unavailable: {registry}")
            return out + list(self._model_errors)

    def store_failed(self, exc: BaseException) -> None:
        """A request found the store failing: not ready until the next check succeeds."""
        with self._lock:
            first = self._store_error is None
            self._store_error = _one_line(exc)
        if first:
            log.warning("results store unavailable: %s", self._store_error)

    # ------------------------------------------------------------ checking
    def check(self) -> list[str]:
        """One pass over every dependency; returns `reasons()`."""
        try:
            self.store.ping()
        except Exception as exc:  # noqa: BLE001 - any failure to answer is "unavailable"
            self.store_failed(exc)
        else:
            with self._lock:
                was, self._store_error = self._store_error, None
            if was:
                log.warning("results store available again")
        errors = []
        built = 0
        for name in self.models.names:
            aliases = self.models.aliases(name)
            if not aliases:
                continue  # never registered (a matrix cell not trained yet): /models says so, 404
            built += 1
            version = aliases.get(self.alias)
            if version is None and self.models.no_skill(name) is not None:
                continue  # the gate found no skill: a state the service answers (409), not an outage
            if version is None:
                errors.append(f"{name} has no {self.alias} version")
                continue
            if (name, version) in self._verified:
                continue  # loaded once: not again every check (the LRU may hold fewer than are served)
            try:
                self.models.get(name, version)
            except Exception as exc:  # noqa: BLE001 - ModelUnavailable names version and back-off
                errors.append(_one_line(exc))
            else:
                self._verified.add((name, version))
        if not built and self.models.names:
            errors.append(f"no served model is registered yet ({', '.join(self.models.names[:3])}, ...)")
        with self._lock:
            self._model_errors = errors
        return self.reasons()

    def freeze_long_lived(self) -> float:
        """At start, before serving: collect, then hide every object alive now (the libraries,
        the champion, caches) from the cyclic collector (`gc.freeze`); returns the seconds spent.

        Why: a full collection walks every live object with the GIL held; in the service that
        took 100-300 ms, most of it the imported libraries, and it fell at random on a request
        or a stream push (issue 13's SSE tail). Frozen objects are still freed by reference
        counting. Not repeated when other versions load later: that full pass would itself be
        such a stall (a /livez probe saw 0.3 s), and a model adds few objects to walk."""
        started = time.perf_counter()
        gc.collect()
        gc.freeze()
        _GC_FREEZES.inc()
        spent = time.perf_counter() - started
        log.info("froze %d long-lived objects in %.0f ms", gc.get_freeze_count(), spent * 1000)
        return spent

    def start(self) -> None:
        if _time_collections not in gc.callbacks:
            gc.callbacks.append(_time_collections)
        self.check()
        self.freeze_long_lived()
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        trimmed = time.monotonic()
        while not self._stop.wait(self.interval):
            started = time.monotonic()
            flush_gc_pauses()
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the checker must outlive any one failure
                log.exception("health check failed")
            if started - trimmed >= TRIM_SECONDS:
                release_memory()
                trimmed = started
            if time.monotonic() - started > 5 * self.interval:
                log.warning("health check took %.1f s", time.monotonic() - started)


TRIM_SECONDS = 10.0


def release_memory() -> None:
    """Hand memory freed by finished requests back to the system (glibc ``malloc_trim``):
    every request thread has its own malloc arena, and a 10,000-row batch leaves tens of MB
    free but held in one; without this the service's RSS stays at its high-water mark."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _one_line(exc: BaseException, limit: int = 200) -> str:
    """`exc` as ``Type: message`` on one bounded line."""
    from serving.errors import bounded

    text = str(exc) or type(exc).__name__
    kind = type(exc).__name__
    return bounded(text if text.startswith(kind) else f"{kind}: {text}", limit)
