"""The live worker: each bar close → bar store → features → one score per (series, model
version) → commit → event. Ingestion and scoring of live bars are one path, driven by the bar
grid, not by timers.

One long-running process (`LiveWorker.run`):

1. knows, per timeframe, the next bar close on the broker's grid (server time, so H4 and D1
   close when the broker's bars do) and sleeps until the terminal's clock crosses the earliest
   one (`Mt5Client.wall_time_of`: the same instant for a real terminal, earlier for the
   accelerated simulator) — no sleeping a bar length after the work;
2. fetches the closed bars of every due timeframe of the followed symbols from the terminal
   and runs them through ingestion's data contract (`fetch_validated`: bad rows quarantined);
3. runs one `LiveScorer` cycle on them (warm: loaded models and trailing bars persist across
   cycles; the good bars are handed over in memory, `LiveScorer.offer`), which scores each new
   bar once per (symbol, timeframe, model version) and commits the scores and watermarks in
   one transaction, stamped with when each bar closed;
4. publishes an event (pipelines.events) so the service's replicas push the new results to
   their stream clients;
5. appends the bars to the bar store through ingestion's own path (`append_validated`: atomic
   parts, quarantine) once the close is quiet — ``live_score.quiet_seconds`` after it, so
   neither this write nor re-reading the directory takes CPU from the scoring of that close
   (its own, or another worker's on the same machine) — and in any case before the next
   fetch; at once when scoring failed. A crash between 3 and 5 loses nothing: the next step
   fetches the bars again from the bar store's watermark and stores them; their scores are
   already committed, and unique.

Several workers (processes or machines) share the followed symbols through leases in the
results store (`ResultsStore.claim_symbols`, renewed every third of ``live_score.lease_seconds``):
each takes a fair share, and a killed worker's symbols pass to the others once its leases
expire.

Restarts and outages: the bar store's and the scores' watermarks say where each series stands,
so the first step after a restart or a terminal outage fetches every missed bar and scores
each exactly once (scores are unique; a replay after a crash between commit and event only
re-publishes). Terminal errors back off and reconnect, results-store outages back off and
retry (``data.live`` backoff settings); after ``max_attempts`` failures in a row the worker
stops with the error (its deployment starts it again).

    python -m pipelines.live [--params params.yaml] [--profile fast] [--seconds N]
"""

from __future__ import annotations

import logging
import math
import os
import resource
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import sqlalchemy as sa

from pipelines.bar_store import BarStore
from pipelines.config import Params
from pipelines.events import NullBus, RedisBus, open_bus
from pipelines.ingest import (
    Batch,
    TerminalError,
    append_validated,
    connect,
    fetch_validated,
    make_contract,
)
from pipelines.live_score import CycleReport, LiveScorer, quantile_ms
from pipelines.mt5.bars import bar_close_times, bar_open_times
from pipelines.mt5.client import Mt5Client
from pipelines.registry import Registry
from pipelines.retry import retry_after
from pipelines.store import ResultsStore

log = logging.getLogger("mt5prob.live")

# The results store unreachable (connection refused or dropped, database not accepting
# connections): retried with the terminal's back-off, nothing lost (scores and watermarks are
# one transaction; the next step scores from the watermarks)
STORE_DOWN = (sa.exc.OperationalError, sa.exc.InterfaceError)
# the tenant directory and the aliases are re-read between bar closes; a close re-reads them
# on its own path only when they are this many times ``live_score.directory_seconds`` old
STALE_DIRECTORIES = 4


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def rss_mb() -> float:
    """This process's resident memory now (MB), from /proc (peak from getrusage elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class StepReport:
    """What one step did: bars appended per series, the scoring cycle, wall seconds per phase."""

    due: list[str] = field(default_factory=list)  # timeframes whose bars closed
    bars_written: int = 0
    quarantined: int = 0
    cycles: list[CycleReport] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # ingest, score, publish

    @property
    def new_scores(self) -> int:
        return sum(c.new_scores for c in self.cycles)

    @property
    def lag(self) -> list[float]:
        """Bar close → committed per new score, seconds."""
        return [x for c in self.cycles for x in c.lag]


@dataclass
class WorkerStats:
    steps: int = 0
    bars_written: int = 0
    new_scores: int = 0
    errors: int = 0
    reconnects: int = 0
    store_outages: int = 0  # steps that failed on the results store and were retried
    rss_start_mb: float = 0.0
    rss_end_mb: float = 0.0
    lag: list[float] = field(default_factory=list)  # every new score's bar close → committed, s

    def lag_ms(self, q: float) -> float | None:
        return quantile_ms(self.lag, q)


class LiveWorker:
    """Follows the terminal and scores each bar close (see module docstring). Not thread-safe:
    one worker per process; `stop()` may be called from another thread."""

    def __init__(
        self,
        params: Params,
        store: ResultsStore,
        client: Mt5Client | None = None,
        bars: BarStore | None = None,
        registry: Registry | None = None,
        bus: NullBus | RedisBus | None = None,
        on_step: Callable[[StepReport], None] | None = None,
    ) -> None:
        from pipelines.terminal import initialize_kwargs, open_terminal

        self.params = params
        self.store = store
        self.client = client or open_terminal(params.data)
        self._init_kwargs = initialize_kwargs(params.data)
        self.bars = bars or BarStore(params.data.root)
        self.contract = make_contract(params.data, engine="numpy")  # same suite, no GX cost per close
        self.clock = params.data.server_time.clock()
        self.bus = bus if bus is not None else open_bus(params.events.url)
        self.scorer = LiveScorer(
            params,
            store,
            self.bars,
            registry=registry,
            closed_at=self._closed_at,
            # re-read between closes (`_maintain`, every directory_seconds / 2); a close does
            # it itself only when no quiet moment came for this long (an overloaded machine)
            refresh_seconds=STALE_DIRECTORIES * params.live_score.directory_seconds,
        )
        self.on_step = on_step
        self._stop = threading.Event()
        self._connected = False
        self._checked: set[str] = set()  # symbols the terminal confirmed since connecting
        self._due: dict[str, int] = {}  # timeframe → next bar close, server epoch seconds
        self._followed: list[str] = []
        self._followed_from: object = None  # the directory snapshot `_followed` was read from
        self._refresh_cost = 0.0  # seconds the last directory re-read took
        self._owned: list[str] = []  # the symbols this worker holds leases on
        self._renewed = -np.inf
        self._unstored: list[Batch] = []  # fetched and scored, not yet in the bar store
        self._quiet_until = 0.0  # wall time after which deferred work may run (see quiet_seconds)
        self.holder = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.stats = WorkerStats(rss_start_mb=rss_mb())

    # ----------------------------------------------------------------- clocks
    def _closed_at(self, utc_seconds: int) -> datetime:
        """When the bar closing at `utc_seconds` (terminal UTC) closed, on the wall clock."""
        return datetime.fromtimestamp(self.client.wall_time_of(utc_seconds), UTC)

    def _server_now(self) -> int:
        return int(self.clock.to_server(int(self.client.now_utc().timestamp())))

    @staticmethod
    def next_close(server_now: int, timeframe: str) -> int:
        """The first close of a `timeframe` bar after `server_now` (server epoch seconds):
        the close of the bar that contains `server_now`."""
        opened = bar_open_times(np.array([server_now]), timeframe)
        return int(bar_close_times(opened, timeframe)[0])

    def next_wake(self) -> float:
        """Wall-clock epoch seconds of the earliest due bar close (now when none is known)."""
        if not self._due:
            return time.time()
        earliest = min(self._due.values())
        return self.client.wall_time_of(float(self.clock.to_utc(earliest)))

    # ----------------------------------------------------------------- what to follow
    def followed(self) -> list[str]:
        """Symbols any tenant follows (re-read every ``live_score.directory_seconds``)."""
        tenants = self.scorer.directory()  # the scorer's snapshot: one directory read for both
        if tenants is not self._followed_from:
            followed = {s.symbol for t in tenants for s in t.follows}
            self._followed = sorted(followed & set(self.params.data.symbols))
            self._followed_from = tenants
        return self._followed

    def symbols(self, renew: bool = False) -> list[str]:
        """This worker's share of the followed symbols: leases (`ResultsStore.claim_symbols`)
        renewed at least every third of ``live_score.lease_seconds``, so a live worker never
        loses them and a dead one's are taken over once they expire. A symbol newly held is
        fetched and scored at once (its backlog since the last holder's watermark included)."""
        now = time.monotonic()
        ttl = self.params.live_score.lease_seconds
        if renew or now - self._renewed >= ttl / 3:
            owned = self.store.claim_symbols(self.holder, self.followed(), ttl)
            if set(owned) - set(self._owned):
                self._due.clear()  # newly held: every timeframe is due now
                log.info("live worker %s now holds %s", self.holder, owned)
            self._owned = owned
            self._renewed = now
        return self._owned

    # ----------------------------------------------------------------- one step
    def step(self) -> StepReport:
        """Fetch and check every timeframe whose bar closed since the last step (all of them
        on the first step: the backfill), score, publish, then store the bars (module
        docstring). Raises TerminalError on terminal failure."""
        report = StepReport()
        t0, started = time.perf_counter(), time.time()
        if not self._connected:
            connect(self.client, **self._init_kwargs)
            self._connected = True
            self._checked = set()
        symbols = self.symbols()
        server_now = self._server_now()
        timeframes = list(self.params.data.timeframes)
        due = [tf for tf in timeframes if self._due.get(tf, -1) <= server_now]
        batches: list[Batch] = []
        self.store_bars()  # what the last close fetched, if not stored yet: fetching starts after it
        if due and symbols:
            check = set(symbols) != self._checked  # ask the terminal once per connection
            batches = fetch_validated(
                self.client, self.bars, self.contract, self.params.data, symbols, due, check=check
            )
            self._checked = set(symbols)
            for batch in batches:  # scored from memory now, stored after the commit
                if batch.through is not None:
                    report.bars_written += len(batch.result.good)
                    report.quarantined += batch.result.n_bad
                    if batch.key.kind == "bars":
                        self.scorer.offer(batch.key, batch.result.good, batch.through)
        t1 = time.perf_counter()
        failed = True
        try:
            while True:  # a backlog (after an outage) spreads over cycles of max_bars_per_cycle
                cycle = self.scorer.cycle(symbols=set(symbols))
                report.cycles.append(cycle)
                if not cycle.new_scores or cycle.rows == 0:
                    break
                if max(cycle.scored.values(), default=0) < self.params.live_score.max_bars_per_cycle:
                    break
            t2 = time.perf_counter()
            if report.new_scores:
                self.bus.publish(
                    {
                        "scores": report.new_scores,
                        "series": sorted({f"{k[0]} {k[1]}" for c in report.cycles for k in c.scored}),
                        "committed_at": datetime.now(UTC).isoformat(),
                    }
                )
            failed = False
        finally:
            for tf in due:
                self._due[tf] = self.next_close(server_now, tf)
            report.due = due
            self._unstored += batches
            # the bars are stored ``live_score.quiet_seconds`` after the close (`store_bars`), off
            # the path to the tenant — at once when scoring failed (a results-store outage must
            # not hold back ingestion). After a crash before they are stored, the next step
            # fetches them again from the bar store's watermark; their scores stay unique.
            quiet = started + self.params.live_score.quiet_seconds  # the step starts at the close
            self._quiet_until = time.time() if failed else max(time.time(), quiet)
            if failed:
                self._store_quietly()  # never masks the failure being raised
        report.seconds = {"ingest": t1 - t0, "score": t2 - t1, "publish": time.perf_counter() - t2}
        return report

    def store_bars(self) -> int:
        """Append the bars fetched and scored since the last call to the bar store (ingestion's
        own path: atomic parts, quarantine); returns the good rows written. The worker calls
        it once the close is quiet, before fetching again, and when it stops."""
        if not self._unstored:
            return 0
        t0 = time.perf_counter()
        batches, self._unstored = self._unstored, []
        try:
            reports = append_validated(self.bars, batches)
        except BaseException:
            self._unstored = batches + self._unstored  # retried (appends are idempotent)
            raise
        written = sum(r.written for r in reports)
        log.debug("stored %d bars in %.0f ms", written, (time.perf_counter() - t0) * 1e3)
        return written

    # ----------------------------------------------------------------- the loop
    def stop(self) -> None:
        self._stop.set()

    def run(self, seconds: float | None = None) -> WorkerStats:
        """Step at every bar close until `stop()` or `seconds` of wall time. Terminal errors
        back off (``data.live``) and reconnect; after ``max_attempts`` in a row they raise."""
        cfg = self.params.data.live
        end = None if seconds is None else time.time() + seconds
        failures = 0
        while not self._stop.is_set() and (end is None or time.time() < end):
            wake = self.next_wake()
            if end is not None:
                wake = min(wake, end)
            self._maintain(wake)
            # wake at the close, or earlier to renew the leases (a third of their time to live),
            # or to store the last close's bars once it is quiet
            renew_at = time.time() + self.params.live_score.lease_seconds / 3
            store_at = self._quiet_until if self._unstored else math.inf
            if self._stop.wait(max(0.0, min(wake, renew_at, store_at) - time.time())):
                break
            if self._unstored and time.time() >= self._quiet_until:
                self._store_quietly()
                continue
            if end is not None and time.time() >= end and wake >= end:
                break
            if time.time() < wake:
                continue
            try:
                report = self.step()
            except (TerminalError, *STORE_DOWN) as exc:
                failures += 1
                self.stats.errors += 1
                if failures >= cfg.max_attempts:
                    raise
                terminal = isinstance(exc, TerminalError)
                backoff = retry_after(failures, cfg.backoff_initial_seconds, cfg.backoff_max_seconds)
                log.warning(
                    "live worker: %s unavailable (%s); retrying in %.1fs (%d/%d)",
                    "the terminal" if terminal else "the results store",
                    _first_line(exc),
                    backoff,
                    failures,
                    cfg.max_attempts,
                )
                if terminal:
                    self.client.shutdown()
                    self._connected = False
                    self.stats.reconnects += 1
                else:
                    self.stats.store_outages += 1
                self._back_off(backoff)
                continue
            failures = 0
            self._record(report)
        self._store_quietly()
        self.stats.rss_end_mb = rss_mb()
        return self.stats

    def _store_quietly(self) -> None:
        """Shadow scoring (`LiveScorer.shadow`), then `store_bars`; a failure logged (the next
        step stores them before it fetches, or fetches them again; shadow rows of a failed
        pass are not retried)."""
        try:
            self.scorer.shadow()
        except Exception as exc:  # noqa: BLE001 — never holds live scoring back
            log.warning("live worker %s: shadow scoring failed: %s", self.holder, _first_line(exc))
        try:
            self.store_bars()
        except Exception as exc:  # noqa: BLE001 — retried; the step reports a lasting failure
            log.warning("live worker %s: storing bars failed: %s", self.holder, _first_line(exc))

    def _back_off(self, seconds: float) -> None:
        """Wait `seconds` after a failure, renewing the leases meanwhile: a terminal outage
        (the back-off grows to ``data.live.backoff_max_seconds``) must not let them expire and
        pass the symbols to another worker that cannot reach the terminal either — and then
        back, with a gap and cold caches at each move."""
        deadline = time.time() + seconds
        step = self.params.live_score.lease_seconds / 3
        while not self._stop.is_set() and (left := deadline - time.time()) > 0:
            self._maintain(deadline)
            self._stop.wait(min(step, left))

    def _maintain(self, wake: float) -> None:
        """Between bar closes (and during a back-off): renew the leases when due, and re-read
        the tenant directory and the aliases once they are half as old as
        ``live_score.directory_seconds`` allows — if that fits before the close at wall time
        `wake`, so that no close waits for it (a step re-reads them itself only when they went
        stale without a quiet moment). Neither needs the terminal."""
        if self._renewed == -np.inf:
            return  # the first step connects, claims and reads everything
        try:
            self.symbols()  # renews when due
            if time.time() >= self._quiet_until and wake - time.time() > 2 * self._refresh_cost + 0.01:
                t0 = time.perf_counter()
                if self.scorer.refresh(older_than=self.params.live_score.directory_seconds / 2):
                    self._refresh_cost = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 — the step retries, backs off and reports it
            log.warning(
                "live worker %s: refreshing leases or the directory failed: %s", self.holder, _first_line(exc)
            )

    def _record(self, report: StepReport) -> None:
        s = self.stats
        s.steps += 1
        s.bars_written += report.bars_written
        s.new_scores += report.new_scores
        s.lag.extend(report.lag)
        if len(s.lag) > 100_000:  # memory flat over a long run: keep the newest
            del s.lag[: len(s.lag) - 100_000]
        if report.new_scores:
            lag = sorted(report.lag)
            sec = report.seconds
            log.info(
                "bar close %s: %d bars, %d scores; bar close → committed p50 %.0f ms, max %.0f ms "
                "(fetch %.0f ms, score %.0f ms, publish %.0f ms)",
                ",".join(report.due) or "-",
                report.bars_written,
                report.new_scores,
                lag[len(lag) // 2] * 1e3,
                lag[-1] * 1e3,
                *(sec.get(k, 0.0) * 1e3 for k in ("ingest", "score", "publish")),
            )
        if self.on_step:
            self.on_step(report)

    def close(self, release: bool = True) -> None:
        """Disconnect; give back the leases (`release` = False leaves them to expire, as a
        killed worker would, and the bars of the last close unstored, as a crash would)."""
        if release:
            self._store_quietly()
            try:
                self.store.release_symbols(self.holder)
            except Exception:  # noqa: BLE001 — they expire anyway
                log.exception("live worker %s: releasing leases failed", self.holder)
        self.client.shutdown()
        self.bus.close()


def main(argv: Sequence[str] | None = None) -> int:
    from pipelines.config import cli_parser, load_params

    parser = cli_parser("python -m pipelines.live", __doc__)
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long (default: run)")
    args = parser.parse_args(argv)
    params = load_params(args.params, args.profile)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    store = ResultsStore.from_params(params.store)
    if store.dialect == "sqlite":
        store.migrate()
    worker = LiveWorker(params, store)
    try:
        stats = worker.run(args.seconds)
    except KeyboardInterrupt:
        stats = worker.stats
    finally:
        worker.close()
        store.close()
    print(
        f"live worker: {stats.steps} steps, {stats.bars_written} bars, {stats.new_scores} scores; "
        f"bar close → committed p50 {stats.lag_ms(0.5) or 0:.0f} ms, p99 {stats.lag_ms(0.99) or 0:.0f} ms; "
        f"RSS {stats.rss_start_mb:.0f} → {stats.rss_end_mb:.0f} MB"
    )
    return 0


if __name__ == "__main__":
    from pipelines.config import run_cli

    raise SystemExit(run_cli(main))
