"""Benchmark: bar close → committed for every tenant, and → received by SSE clients (issue 13),
for the live worker and for the timer-driven deployments it replaces, with faults mid-run.

Setup (not timed): the world of `live_score_cycle.py` (10 symbols, M5/M15 base × horizons 12
and 24, four registered models), a PostgreSQL results store with N tenants (default 1,000)
each following 10 symbols × 2 timeframes × 2 horizons (40,000 tenant-results per close of all
40), the scoring service started for real (`bentoml serve`) and a few SSE clients on `/stream`
that reconnect with `Last-Event-ID` whenever their connection drops. ``--world matrix``: the
probability matrix's instead (`matrix.py`: the default matrix's 14 cells — M5, M15 and H1 ×
two horizons × direction and triple barrier, and two up/flat/down cells — over the fx group's
4 symbols, one model per cell, the tenants spread over all 56 (symbol, cell) subscriptions).

Phase 1, the timers (``--baseline-seconds``): today's ``ingest-live`` and ``live-score``
deployments, emulated in this process with their own code: every base bar length (M5) an
ingestion run (`ingest_history`, a fresh terminal and bar store) and a scoring run (a fresh
`LiveScorer`, as each deployment run builds one), on two timers at random phases, as interval
schedules are (not aligned to bar closes). The contract engine is the live worker's (numpy):
the deployed ``ingest-live`` runs the great-expectations engine, slower still.

Phase 2, the live worker (``--seconds``): ``--workers`` processes of ``python -m pipelines.live``
(two by default: one per core, each scoring half the symbols; ``--workers 1`` measures one
alone) share the symbols through leases, on the same accelerated simulator clock. Mid-run:

* a SIGKILL of one worker (restarted at once, as the deployment would within a minute; the
  killed worker's leases expire after ``live_score.lease_seconds``),
* a 30 s terminal outage (the simulator's scheduled outage, felt by every worker at once),
* a restart of the scoring service (SSE clients reconnect with their last event id).

Every score's bar close (the wall-clock moment the simulator's clock crossed it) → committed
is read back from the store; every SSE event's bar close → received is taken where the client
read it. Latency targets are checked on bars that closed in steady state; bars that closed
while a worker was dead or the terminal was down, while the workers' membership changed (a
kill, the end of the run) or while the service restarted (the streams until they caught up;
its start-up takes a core of the two the workers use) — and the next few seconds — are
recovery, reported apart, with their own figures. Completeness is checked on everything:
every bar in the bar store after the start has exactly one score per model, and every stream
got every result once. RSS of a surviving worker is sampled from /proc.

Targets (issue 13, 2 cores): committed p50 ≤ 100 ms, p99 ≤ 250 ms; SSE received p99 ≤ 300 ms;
no bar missed or duplicated (store and streams) across the faults; worker memory flat.

    python benchmarks/live_latency.py [--tenants 1000] [--seconds 150] [--baseline-seconds 40]
                                      [--speed 300] [--clients 5] [--workers 2] [--world matrix]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
REPO = Path(__file__).resolve().parents[1]
KILL_AT, OUTAGE_AT, OUTAGE_SECONDS, RESTART_AT = 0.2, 0.45, 30.0, 0.8  # fractions of --seconds
RECOVERY_SECONDS = 5.0  # after a fault ends, bars closing this soon still count as recovery
WARMUP_SECONDS = 15.0  # a worker process's start-up (imports, models, caches)
MEMORY_FROM = 30.0  # RSS is compared from this long after a worker's start (caches filled)


def _world(world: str = "default"):
    """The world scored: a module with SYMBOLS, TIMEFRAMES, setup_world(work) → (params,
    registry), add_tenants(store, n), subscriptions() (every followed subscription) and
    model_names()."""
    file = {"default": "live_score_cycle", "matrix": "matrix"}[world]
    spec = importlib.util.spec_from_file_location(file, REPO / f"benchmarks/{file}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Sse(threading.Thread):
    """One SSE client that resumes after every drop: (event id, bar_closed_at, received)."""

    def __init__(self, key: str, after: int) -> None:
        super().__init__(daemon=True)
        self.key = key
        self.last = after
        self.url: str | None = None
        self.got: list[tuple[int, float, float]] = []
        self.committed: dict[int, float] = {}  # event id → its committed_at (epoch s)
        self.reconnects = 0
        self.drops: list[tuple[float, str]] = []  # (when, why) a connection ended
        self._stop = threading.Event()
        self._response = None

    def run(self) -> None:
        import httpx

        with httpx.Client(timeout=httpx.Timeout(5.0, read=None)) as client:
            while not self._stop.is_set():
                if self.url is None:
                    time.sleep(0.05)
                    continue
                try:
                    headers = {"X-API-Key": self.key, "Last-Event-ID": str(self.last)}
                    with client.stream("GET", self.url + "/stream", headers=headers) as response:
                        self._response = response
                        if response.status_code != 200:
                            raise RuntimeError(f"HTTP {response.status_code}")
                        for line in response.iter_lines():
                            if line.startswith("data: "):
                                now = time.time()
                                d = json.loads(line[6:])
                                closed = datetime.fromisoformat(d["bar_closed_at"]).timestamp()
                                self.got.append((d["event_id"], closed, now))
                                self.committed[d["event_id"]] = datetime.fromisoformat(
                                    d["committed_at"]
                                ).timestamp()
                                self.last = d["event_id"]
                    why = "closed by the server"
                except Exception as exc:  # noqa: BLE001 — the service restarts: resume from the last id
                    why = f"{type(exc).__name__}: {str(exc)[:80]}"
                if not self._stop.is_set():
                    self.drops.append((time.time(), why))
                    self.reconnects += 1
                    time.sleep(0.2)

    def close(self) -> None:
        self._stop.set()
        if self._response is not None:
            try:
                self._response.close()
            except Exception:  # noqa: BLE001
                pass


def q(values: list[float], p: float) -> float:
    from pipelines.live_score import quantile_ms

    ms = quantile_ms(values, p)
    return float("nan") if ms is None else ms


def rss_of(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return float("nan")


def timers(live, store, registry, seconds: float, speed: float) -> dict:
    """Phase 1: the ingest-live and live-score deployments' code on two interval timers."""
    from pipelines.bar_store import BarStore
    from pipelines.ingest import connect, ingest_history, make_contract
    from pipelines.live_score import LiveScorer
    from pipelines.terminal import initialize_kwargs, open_terminal

    interval = 300 / speed  # both deployments run once per base bar length (M5)
    rng = random.Random(13)
    clock = open_terminal(live.data)
    end = time.time() + seconds
    runs = {"ingest": [], "score": []}

    def ingest_run() -> None:
        client = open_terminal(live.data)
        connect(client, **initialize_kwargs(live.data))
        try:
            ingest_history(
                client, BarStore(live.data.root), make_contract(live.data, engine="numpy"), live.data
            )
        finally:
            client.shutdown()

    def score_run() -> None:
        closed_at = lambda t: datetime.fromtimestamp(clock.wall_time_of(t), UTC)  # noqa: E731
        LiveScorer(live, store, registry=registry, closed_at=closed_at, freeze_gc=False).cycle()

    def timer(name: str, run) -> None:
        next_at = time.time() + rng.uniform(0, interval)
        while next_at < end:
            time.sleep(max(0.0, next_at - time.time()))
            t0 = time.perf_counter()
            run()
            runs[name].append(time.perf_counter() - t0)
            next_at += interval
            while next_at < time.time():  # an interval schedule skips runs it missed
                next_at += interval

    threads = [threading.Thread(target=timer, args=a) for a in (("ingest", ingest_run), ("score", score_run))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--baseline-seconds", type=float, default=40.0)
    parser.add_argument("--speed", type=float, default=300.0)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--keep-logs", default=None, metavar="DIR", help="keep the logs here")
    parser.add_argument("--world", choices=["default", "matrix"], default="default")
    args = parser.parse_args()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    # tenant data is sealed (issue 15): a master key of this run's own unless one is given
    from pipelines.store.crypto import new_master_key_text

    os.environ.setdefault("MT5PROB_MASTER_KEY", new_master_key_text())
    os.environ.setdefault("MT5PROB_ALLOW_PASSWORDLESS", "1")  # the local server trusts its clients
    from pipelines.bar_store import BarStore, SeriesKey, frame_times
    from pipelines.mt5.constants import timeframe_seconds
    from pipelines.store import ResultsStore, app_url
    from serving.devserver import free_port, running_service

    bench = _world(args.world)
    followed = bench.subscriptions()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        params, registry = bench.setup_world(work)
        print(
            f"setup: {len(bench.SYMBOLS)} symbols ingested, {len(bench.model_names())} models registered "
            f"in {time.perf_counter() - t0:.0f} s"
        )
        name = f"mt5prob_latency_{uuid.uuid4().hex[:8]}"
        server = sa.create_engine(args.pg, isolation_level="AUTOCOMMIT")
        with server.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        admin = sa.make_url(args.pg).set(database=name).render_as_string(hide_password=False)
        store = ResultsStore(app_url(admin), admin)
        procs: list[subprocess.Popen] = []
        try:
            store.migrate()
            t0 = time.perf_counter()
            bench.add_tenants(store, args.tenants)
            watched = store.list_tenants()[: args.clients]  # the SSE clients' tenants
            keys = [store.rotate_key(t.name) for t in watched]
            # what each client's stream must carry: the results of the subscriptions it follows
            streams_follow = [
                {(f.symbol, f.timeframe, f.horizon, f.label_kind) for f in t.follows} for t in watched
            ]
            end = params.data.simulator.end
            last = {
                (s, tf): end - timedelta(seconds=timeframe_seconds(tf))
                for s in bench.SYMBOLS
                for tf in bench.TIMEFRAMES
            }
            store.move_watermarks(last)
            print(f"{args.tenants:,} tenants added in {time.perf_counter() - t0:.0f} s")
            anchor = datetime.now(UTC) + timedelta(seconds=5)
            start_b = args.baseline_seconds + 10  # wall seconds after the anchor
            outage = (start_b + OUTAGE_AT * args.seconds, OUTAGE_SECONDS)
            sim = params.data.simulator.model_copy(
                update={
                    "live": True,
                    "live_start": end,
                    "speed": args.speed,
                    "live_anchor": anchor,
                    "end": None,
                    "outages": (outage,),
                }
            )
            live = params.model_copy(update={"data": params.data.model_copy(update={"simulator": sim})})
            models = bench.model_names()
            overrides = {
                "data": json.loads(live.data.model_dump_json()),
                "matrix": json.loads(params.matrix.model_dump_json()),
                "registry": {"tracking_uri": params.registry.tracking_uri},
                "store": {"url": app_url(admin), "admin_url": admin},
                "serving": {"models": models},
            }
            params_file = work / "live.yaml"
            params_file.write_text(yaml.safe_dump(overrides))
            port = free_port()
            clients = [Sse(k, 0) for k in keys]
            for c in clients:
                c.start()
            time.sleep(max(0.0, anchor.timestamp() - time.time()))

            # ---- phase 1: the timers
            print(f"phase 1: timer-driven ingest-live + live-score for {args.baseline_seconds:.0f} s")
            runs = timers(live, store, registry, args.baseline_seconds, args.speed)
            boundary = store.last_score_id()
            for c in clients:
                c.last = boundary
            time.sleep(max(0.0, anchor.timestamp() + start_b - time.time()))

            # ---- phase 2: the live worker(s), with faults
            print(f"phase 2: {args.workers} live worker(s) for {args.seconds:.0f} s")
            t_b = time.time()
            service_cm = running_service(params_file, port=port, log=work / "serve.log")
            service_cm.__enter__()
            for c in clients:
                c.url = f"http://127.0.0.1:{port}"

            def worker(seconds: float) -> subprocess.Popen:
                cmd = [
                    sys.executable,
                    "-m",
                    "pipelines.live",
                    "--params",
                    str(params_file),
                    "--seconds",
                    f"{seconds:.1f}",
                ]
                log = open(work / f"worker-{len(procs)}.log", "wb")  # noqa: SIM115 — closed with the process
                p = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
                procs.append(p)
                return p

            for _ in range(args.workers):
                worker(args.seconds)
            started = {p.pid: t_b for p in procs}
            # (what, from, to, whether the workers felt it): bars closing then are recovery
            # every bar that closed before the worker started (the timers' unfinished backlog and
            # the gap between the phases) is the worker's backfill, not a bar it was awake for
            events = [("worker start: backfill and start-up", anchor.timestamp(), t_b + WARMUP_SECONDS, True)]
            rss: list[tuple[int, float, float]] = []  # (pid, seconds since phase 2 began, MB)
            stop_sampling = threading.Event()

            exited: dict[int, float] = {}  # pid → when it was seen gone

            def sample() -> None:
                while not stop_sampling.wait(0.5):
                    for p in list(procs):
                        mb = rss_of(p.pid) if p.poll() is None else float("nan")
                        if mb > 0:  # alive (an exited process reads as 0 or not at all)
                            rss.append((p.pid, time.time() - started[p.pid], mb))
                        else:
                            exited.setdefault(p.pid, time.time())

            threading.Thread(target=sample, daemon=True).start()
            time.sleep(max(0.0, t_b + KILL_AT * args.seconds - time.time()))
            victim = procs[0]
            victim.send_signal(signal.SIGKILL)
            killed_at = time.time()
            over = killed_at + max(live.live_score.lease_seconds, WARMUP_SECONDS)
            events.append(("SIGKILL of worker 0, restarted at once", killed_at, over, True))
            started[worker(t_b + args.seconds - time.time()).pid] = time.time()
            o0 = anchor.timestamp() + outage[0]
            events.append(("terminal outage", o0, o0 + outage[1], True))
            time.sleep(max(0.0, t_b + RESTART_AT * args.seconds - time.time()))
            r0 = time.time()
            service_cm.__exit__(None, None, None)
            service_cm = running_service(params_file, port=port, log=work / "serve2.log")
            service_cm.__enter__()
            # results committed just before the stop are in flight to streams that drop
            events.append(("scoring service restart", r0 - RECOVERY_SECONDS, time.time(), False))
            for p in procs:
                if p is not victim:
                    p.wait()
            stop_sampling.set()
            # the end of the run: workers stop one by one (each counts --seconds from the end of
            # its own start-up), and the last takes over the symbols of those gone, caches cold
            # — a handover, like the kill, not steady state
            stops = [t for pid, t in exited.items() if pid != victim.pid]
            if len(procs) > 2 and stops:
                # (from a few seconds before the first was seen gone: its last step, its leases
                # given back, its interpreter torn down)
                events.append(("workers stop at the end of the run", min(stops) - 3.0, time.time(), True))
            time.sleep(3.0)  # streams catch up
            for c in clients:
                c.close()
            service_cm.__exit__(None, None, None)
            with store.admin_engine.connect() as conn:
                rows = conn.execute(
                    sa.text(
                        "SELECT id, symbol, timeframe, bar_time, horizon, label_kind, model_version, "
                        "followed, extract(epoch FROM bar_closed_at) AS closed, "
                        "extract(epoch FROM committed_at - bar_closed_at) AS lag FROM scores ORDER BY id"
                    )
                ).all()
            stored = {
                (s, tf): frame_times(BarStore(params.data.root).read(SeriesKey("bars", s, tf)), "s")
                for s in bench.SYMBOLS
                for tf in bench.TIMEFRAMES
            }
            logs = {p.name: p.read_text(errors="replace")[-600:] for p in work.glob("worker-*.log")}
            if args.keep_logs:
                Path(args.keep_logs).mkdir(parents=True, exist_ok=True)
                for p in [*work.glob("worker-*.log"), *work.glob("serve*.log")]:
                    (Path(args.keep_logs) / p.name).write_bytes(p.read_bytes())
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            store.close()
            with server.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}_keys" WITH (FORCE)'))
            server.dispose()

    timer_rows = [r for r in rows if r.id <= boundary]
    live_rows = [r for r in rows if r.id > boundary]

    # a fault's recovery lasts until the first bar close after it whose every score was
    # committed within a second (the backlog is cleared), plus RECOVERY_SECONDS
    by_close: dict[float, float] = {}
    for r in live_rows:
        by_close[float(r.closed)] = max(by_close.get(float(r.closed), 0.0), float(r.lag))

    # a restart of the service is over for the streams when their backlog is delivered: the
    # first close after it whose every event reached every client within a second
    by_close_sse: dict[float, float] = {}
    for c in clients:
        for _, closed, now in c.got:
            by_close_sse[closed] = max(by_close_sse.get(closed, 0.0), now - closed)

    def caught_up(after: float, lags: dict[float, float]) -> float:
        order = sorted(lags)
        return next((c for c in order if c >= after and lags[c] < 1.0), order[-1] if order else after)

    windows = [
        (label, a, caught_up(b, by_close if w else by_close_sse) + RECOVERY_SECONDS, w)
        for label, a, b, w in events
    ]

    def disrupted(closed: float, workers_only: bool = False) -> bool:
        # a close at the very instant a fault begins is the fault's (the stream's times are
        # rounded differently from the store's: 0.1 s of slack)
        return any(a - 0.1 <= closed <= b for _, a, b, w in windows if w or not workers_only)

    # the service's restart shares the 2 cores with the workers (its start-up takes a core for
    # ~10 s): closes then are recovery for the commit figures too, reported on their own
    restart = [(a, b) for label, a, b, _ in windows if label.startswith("scoring service restart")]
    during_restart = [float(r.lag) for r in live_rows if any(a <= float(r.closed) <= b for a, b in restart)]
    steady = [float(r.lag) for r in live_rows if not disrupted(float(r.closed))]
    recovery = [float(r.lag) for r in live_rows if disrupted(float(r.closed), workers_only=True)]
    base = [float(r.lag) for r in timer_rows]
    keyset = [
        (r.symbol, r.timeframe, r.bar_time, r.horizon, r.label_kind, r.model_version, r.followed)
        for r in rows
    ]
    # completeness: every stored bar after the history's end has one score per followed
    # (horizon, label kind) of its series
    first = int(end.timestamp())
    want = {
        (f.symbol, f.timeframe, int(t), f.horizon, f.label_kind)
        for f in followed
        for t in stored[(f.symbol, f.timeframe)]
        if t >= first
    }
    have = {(r.symbol, r.timeframe, int(r.bar_time.timestamp()), r.horizon, r.label_kind) for r in rows}
    missed = want - have
    received = [now - closed for c in clients for i, closed, now in c.got if not disrupted(closed)]
    # the delivery part alone: committed (the worker's stamp) → received by the client
    delivery = [now - c.committed[i] for c in clients for i, closed, now in c.got if not disrupted(closed)]
    late = [now - closed for c in clients for i, closed, now in c.got if disrupted(closed)]
    dup_stream = sum(len(c.got) - len({i for i, _, _ in c.got}) for c in clients)
    owed = [  # per client: the live-phase results of what its tenant follows
        {r.id for r in live_rows if (r.symbol, r.timeframe, r.horizon, r.label_kind) in follows}
        for follows in streams_follow
    ]
    complete_streams = [ids <= {i for i, _, _ in c.got} for c, ids in zip(clients, owed, strict=True)]

    print(
        f"\nlive latency — world {args.world}: {args.tenants:,} tenants, {len(followed)} subscriptions "
        f"over {len(stored)} series at {args.speed:.0f}× "
        f"(an M5 close every {300 / args.speed:.1f} s), {os.cpu_count()} cores, PostgreSQL"
    )
    print(
        f"  timers ({args.baseline_seconds:.0f} s): {len(base):,} scores; bar close → committed "
        f"p50 {q(base, 0.5):.0f} ms, p99 {q(base, 0.99):.0f} ms "
        f"(ingest runs {len(runs['ingest'])}, median {q(runs['ingest'], 0.5):.0f} ms; "
        f"score runs {len(runs['score'])}, median {q(runs['score'], 0.5):.0f} ms)"
    )
    print(
        f"  live worker ×{args.workers} ({args.seconds:.0f} s): {len(live_rows):,} scores, "
        f"{len(steady):,} in steady state: bar close → committed p50 {q(steady, 0.5):.0f} ms, "
        f"p99 {q(steady, 0.99):.0f} ms, max {q(steady, 1.0):.0f} ms"
    )
    worst = sorted(
        {
            (float(r.closed), r.timeframe): float(r.lag) for r in live_rows if not disrupted(float(r.closed))
        }.items(),
        key=lambda kv: -kv[1],
    )[:5]
    print(
        "  slowest steady-state closes: "
        + ", ".join(
            f"{tf} at +{c - t_b:.1f} s ({datetime.fromtimestamp(c, UTC):%H:%M:%S} UTC) {lag * 1e3:.0f} ms"
            for (c, tf), lag in worst
        )
    )
    print(
        f"  ratio timers / live worker: p50 {q(base, 0.5) / q(steady, 0.5):.1f}×, "
        f"p99 {q(base, 0.99) / q(steady, 0.99):.1f}×"
    )
    for (label, a, b, _), (_, _, back, _) in zip(events, windows, strict=True):
        print(
            f"  fault: {label} at +{a - t_b:.0f} s, over at +{b - t_b:.0f} s, "
            f"results on time again from +{back - RECOVERY_SECONDS - t_b:.0f} s"
        )
    print(
        f"  during the scoring service's restart (shared cores): {len(during_restart):,} scores, "
        f"bar close → committed p50 {q(during_restart, 0.5):.0f} ms, p99 {q(during_restart, 0.99):.0f} ms"
    )
    print(
        f"  recovery: {len(recovery):,} scores of bars that closed during a fault "
        f"(or ≤ {RECOVERY_SECONDS:.0f} s after): lag p50 {q(recovery, 0.5) / 1e3:.1f} s, "
        f"max {q(recovery, 1.0) / 1e3:.1f} s"
    )
    print(
        f"  SSE ({len(clients)} clients, reconnects {[c.reconnects for c in clients]}, "
        f"events {[len(c.got) for c in clients]} of {[len(ids) for ids in owed]} owed): "
        f"steady-state bar close → received "
        f"p50 {q(received, 0.5):.0f} ms, p99 {q(received, 0.99):.0f} ms; during faults "
        f"{len(late):,} events, max {q(late, 1.0) / 1e3:.1f} s"
    )
    print(
        f"  of which committed → received (bus, read, send): p50 {q(delivery, 0.5):.0f} ms, "
        f"p99 {q(delivery, 0.99):.0f} ms"
    )
    slow_sse = sorted(
        ((now - closed, closed) for c in clients for i, closed, now in c.got if not disrupted(closed)),
        reverse=True,
    )[:5]
    print(
        "  slowest steady-state SSE events: "
        + ", ".join(f"bar closed +{closed - t_b:.1f} s: {lag * 1e3:.0f} ms" for lag, closed in slow_sse)
    )
    drops = [f"+{t - t_b:.0f} s {why}" for t, why in clients[0].drops] if clients else []
    print(f"  stream 0 connection drops: {drops}")
    last_pid = rss[-1][0] if rss else None
    trace = [f"{t:.0f}s:{v:.0f}" for pid, t, v in rss if pid == last_pid][::10]
    print(f"  RSS trace of that worker (s since its start: MB): {' '.join(trace)}")
    end_of_run = min((a for label, a, _, _ in events if label.startswith("workers stop")), default=math.inf)
    flat = [v for pid, t, v in rss if pid == last_pid and t > MEMORY_FROM and started[pid] + t < end_of_run]
    mid = flat[len(flat) // 2] if flat else float("nan")
    print(
        f"  a surviving worker's RSS: {flat[0] if flat else float('nan'):.0f} MB {MEMORY_FROM:.0f} s "
        f"after its start, {mid:.0f} MB half-way, {flat[-1] if flat else float('nan'):.0f} MB at the end, "
        f"peak {max(flat, default=float('nan')):.0f} MB"
    )
    checks = {
        f"committed p50 ≤ 100 ms ({q(steady, 0.5):.0f})": q(steady, 0.5) <= 100,
        f"committed p99 ≤ 250 ms ({q(steady, 0.99):.0f})": q(steady, 0.99) <= 250,
        f"SSE received p99 ≤ 300 ms ({q(received, 0.99):.0f})": bool(received) and q(received, 0.99) <= 300,
        f"no bar missed across SIGKILL, outage, restart ({len(missed)} of {len(want)})": not missed,
        f"no score duplicated ({len(keyset) - len(set(keyset))})": len(keyset) == len(set(keyset)),
        f"no event repeated on a stream ({dup_stream})": dup_stream == 0,
        f"every stream got every live-phase result ({complete_streams})": all(complete_streams),
        # a leak shows as a slope: the second half of the run must not grow (the first half
        # includes the allocator's high-water mark of the outage's backlog)
        f"worker memory flat over the second half (≤ +25 MB: {mid:.0f} → "
        f"{flat[-1] if flat else float('nan'):.0f} MB)": bool(flat) and flat[-1] - mid <= 25,
    }
    for label, ok in checks.items():
        print(f"  [{'PASS' if ok else 'FAIL'}] {label}")
    if missed:
        print(f"  missed (first 5): {sorted(missed)[:5]}")
        for name, text in logs.items():
            print(f"--- {name} (tail)\n{text}")


if __name__ == "__main__":
    main()
