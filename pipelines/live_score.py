"""Live scoring: newly closed bars → features → probabilities → every tenant that follows them.

One cycle (`LiveScorer.cycle`):

1. reads the tenant directory (subscriptions, thresholds, pins — never keys) and resolves, per
   subscription, the registered model ``<prefix>-<group>-<timeframe>-<label kind>-h<horizon>``
   and its version: the tenant's pin, else the version ``serving.alias`` (``champion``) points
   at — aliases re-read each cycle, so a promotion or rollback between cycles is picked up by
   the next one; versions are loaded once into the scoring core's model cache
   (`pipelines.model_cache`, on ``serving.device``), the one the service uses;
2. per (symbol, timeframe), takes the stored bars that closed after that series' scoring
   watermark (at most ``live_score.max_bars_per_cycle``; with no watermark yet, the newest
   ``first_run_bars``), checks them and computes their features from the scoring core's
   trailing window (`features.window`: the same rows the full history gives, and the same
   rows ``/score_bars`` computes for the same bars);
3. scores once per distinct (symbol, timeframe, model version) — however many tenants follow
   it — with one model call per model version;
4. stores each probability once, as a typed `ScoreRow` (series, bar, model version, when the
   bar closed), *and* the moved watermarks in one transaction; every tenant that follows the
   series reads it through the store's ``tenant_results`` view, with its own signal under its
   thresholds (the same rule as `models.policy`) — the write does not grow with tenants.

Shadow scoring (`LiveScorer.shadow`, issue 18): the bars a cycle scored with a followed
(champion) version are also scored, later and off the path to the tenant, with that model's
``challenger`` version when it is another one; both probabilities go to the ``shadow_scores``
table, given to no tenant, where the monitor compares them on matured labels
(``live_score.shadow``; the live worker runs it once the close is quiet).

A crash anywhere leaves the store as it was; the next cycle scores the same bars again (a
score already stored is kept), so after a crash or an MT5 outage nothing is missed and nothing
is written twice. Bar times are bar open times, UTC; probabilities are P(label 1), or (P(down),
P(flat), P(up)) for three-class models.

    python -m pipelines.live_score [--cycles N] [--params params.yaml] [--profile fast]
"""

from __future__ import annotations

import gc
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from features.bars import Bars
from features.matrix import feature_columns
from features.spec import FeatureSpec
from features.window import BarCheckError, bar_fields, check_bars, trailing_window
from pipelines.bar_store import BarStore, SeriesKey, frame_times
from pipelines.config import Params
from pipelines.model_cache import LoadedModel, ModelCache
from pipelines.mt5.constants import timeframe_seconds
from pipelines.registry import Registry, subscription_model_name
from pipelines.store import ResultsStore, ScoreRow, ShadowRow, Tenant

log = logging.getLogger("mt5prob.live_score")


class LiveScoreError(RuntimeError):
    """A cycle cannot run (for example: no bars stored for a followed series)."""


def quantile_ms(seconds: Sequence[float], q: float) -> float | None:
    """Quantile `q` of durations given in seconds, in milliseconds (None when there are none)."""
    return float(np.quantile(seconds, q) * 1e3) if len(seconds) else None


@dataclass
class CycleReport:
    """What a cycle did. Seconds are wall time per phase."""

    scored: dict[tuple[str, str, str, str], int] = field(default_factory=dict)  # (sym, tf, model, ver) → bars
    watermarks: dict[tuple[str, str], datetime] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # features, scoring, writes, total
    new_scores: int = 0  # scores stored (once per series, model version and bar)
    lag: list[float] = field(default_factory=list)  # per new score: bar close → committed, seconds
    skipped: list[str] = field(default_factory=list)
    model_calls: int = 0
    idle: str = ""  # when nothing was written: why, in words an operator can act on
    # (sym, tf, model, ver) → tenant ids given it (counted lazily: a cycle's cost must not
    # grow with tenants)
    fanout: dict[tuple[str, str, str, str], tuple[str, ...]] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """Tenant results this cycle made available (scores × the tenants that follow them)."""
        return sum(len(self.fanout.get(k, ())) * n for k, n in self.scored.items())

    @property
    def rows_per_tenant(self) -> dict[str, int]:
        """Results made available per tenant id."""
        out: dict[str, int] = defaultdict(int)
        for k, n in self.scored.items():
            for tenant_id in self.fanout.get(k, ()):
                out[tenant_id] += n
        return dict(out)

    def lag_ms(self, q: float) -> float | None:
        """Quantile `q` of bar close → committed over this cycle's new scores, milliseconds."""
        return quantile_ms(self.lag, q)


@dataclass(frozen=True)
class _Need:
    """One thing to score for some tenants: a series with a model version and its audience."""

    symbol: str
    timeframe: str
    horizon: int
    label_kind: str
    model: str
    version: str
    pinned: bool  # the tenants' pins chose the version (else the followed alias did)
    tenants: tuple[str, ...]  # tenant ids


@dataclass(frozen=True)
class _ShadowWork:
    """A series a cycle scored with a followed version, to score again with its challenger:
    the bars after `after` (UTC epoch seconds of the bar open; None: first run) and the
    champion's probabilities by bar open time."""

    symbol: str
    timeframe: str
    horizon: int
    label_kind: str
    model: str
    champion: str
    after: int | None
    probabilities: dict[int, Any]  # float, or a three-class (down, flat, up) tuple


SHADOW_BACKLOG = 64  # cycles of shadow work kept when nobody runs `shadow` (benchmarks, the CLI)


class LiveScorer:
    """One instance per scoring process: loaded models (the scoring core's `ModelCache`, on
    ``serving.device``, following ``serving.alias``) and trailing bars persist across cycles."""

    def __init__(
        self,
        params: Params,
        store: ResultsStore,
        bars: BarStore | None = None,
        registry: Registry | None = None,
        max_cached_bars: int = 50_000,
        freeze_gc: bool = True,
        models: ModelCache | None = None,
        closed_at: Callable[[int], datetime] | None = None,
        refresh_seconds: float = 0.0,
    ) -> None:
        store.verify_keys()  # a wrong master key stops scoring here, before any row is written
        self.params = params
        self.store = store
        self.bars = bars or BarStore(params.data.root)
        self.models = models or ModelCache(
            registry or Registry(params.registry.tracking_uri),
            max_loaded=params.serving.max_loaded_versions,
            device=params.serving.device,
            default_alias=params.serving.alias,
        )
        # bar close (UTC epoch seconds of market time) → the wall-clock moment it closed: the
        # same instant for a terminal on real time; an accelerated simulator maps its clock
        self.closed_at = closed_at or (lambda t: datetime.fromtimestamp(t, UTC))
        self.max_cached_bars = max_cached_bars
        # directory and aliases re-read at most this often (0: every cycle); the live worker
        # sets live_score.directory_seconds, keeping each bar close's work independent of tenants
        self.refresh_seconds = refresh_seconds
        self._tenants: tuple[float, list[Tenant]] | None = None
        self._aliases: tuple[float, dict[str, str | None]] | None = None
        self._groups: tuple[list[Tenant], dict[tuple, tuple[str, ...]]] | None = None
        self._names: set[str] = set()
        self._marks: dict[SeriesKey, int | None] = {}
        # rows validated but not yet in the bar store (`offer`): series → (through, rows)
        self._pending: dict[SeriesKey, tuple[int, Any]] = {}
        self.freeze_gc = freeze_gc
        self._cycles = 0
        self._bars: dict[tuple[str, str], tuple[int, Bars]] = {}  # (symbol, tf) → (covered from, bars)
        # (symbol, spec) → higher-timeframe feature parts by (timeframe, closed bar open time)
        self._htf: dict[tuple[str, FeatureSpec], dict[tuple[str, int], list[float]]] = {}
        self._shadow: list[_ShadowWork] = []  # scored with the champion, for `shadow`
        self._shadow_pending: dict[SeriesKey, tuple[int, Any]] = {}  # the offers they were cut from
        self._challengers: tuple[float, dict[str, str | None]] = (-np.inf, {})

    # ----------------------------------------------------------------- models
    def model(self, name: str, version: str) -> LoadedModel:
        """A registered version from the shared model cache (loaded on first use)."""
        return self.models.get(name, version)

    def directory(self) -> list[Tenant]:
        """The tenant directory, re-read when older than `refresh_seconds` (0: every cycle)."""
        now = time.monotonic()
        if self._tenants is None or now - self._tenants[0] >= self.refresh_seconds:
            self._tenants = (now, self.store.directory())
        return self._tenants[1]

    def refresh(self, older_than: float = 0.0) -> bool:
        """Re-read the directory and the aliases now if they are older than `older_than`
        seconds; True when they were. A live worker calls this between bar closes, so that no
        bar close waits for a directory read (a cycle re-reads only what went stale anyway)."""
        now = time.monotonic()
        if self._tenants is not None and now - self._tenants[0] < older_than:
            return False
        self._tenants = (now, self.store.directory())
        self._needs(self._tenants[1], CycleReport(), fresh_aliases=True)
        return True

    def _needs(
        self, tenants: Sequence[Tenant], report: CycleReport, fresh_aliases: bool = False
    ) -> list[_Need]:
        """What to score: per followed (series, horizon, label kind), the version ``serving.alias``
        points at for the tenants without a pin, and each pinned version for the tenants pinned
        to it (aliases re-read every `refresh_seconds`, every cycle by default, so a promotion
        or rollback between cycles is picked up by the next one). The grouping by tenant is
        cached with the directory: a cycle's cost grows with distinct series, not tenants."""
        alias = self.params.serving.alias
        now = time.monotonic()
        if self._groups is None or self._groups[0] is not tenants:  # the directory was re-read
            subs = {s for t in tenants for s in t.follows}
            names = {s: subscription_model_name(self.params, s) for s in subs}  # the matrix cell's model
            groups: dict[tuple, list[str]] = defaultdict(list)
            for tenant in tenants:
                for sub in tenant.follows:
                    name = names[sub]
                    pin = tenant.pins.get(name) if tenant.pins else None
                    groups[(sub.symbol, sub.timeframe, sub.horizon, sub.label_kind, name, pin)].append(
                        tenant.tenant_id
                    )
            self._groups = (tenants, {k: tuple(v) for k, v in groups.items()})
            self._names = set(names.values())
            self._aliases = None
        if fresh_aliases or self._aliases is None or now - self._aliases[0] >= self.refresh_seconds:
            self.models.follow(self._names)
            self.models.refresh(default_only=True)
            self._aliases = (now, {name: self.models.aliases(name).get(alias) for name in self._names})
        current = self._aliases[1]
        needs = []
        for (symbol, tf, horizon, label_kind, name, pin), ids in self._groups[1].items():
            version = pin or current.get(name)
            if version is None:
                msg = f"{name}: no {alias} (and {len(ids)} tenant(s) following it have no pin): not scored"
                if msg not in report.skipped:
                    report.skipped.append(msg)
                    log.warning(msg)
                continue
            needs.append(_Need(symbol, tf, horizon, label_kind, name, version, pin is not None, ids))
        return needs

    # ----------------------------------------------------------------- bars and features
    def _load(self, symbol: str, spec: FeatureSpec, after: int | None) -> Any:
        """The trailing window (`features.window.trailing_window`) of the base bars that closed
        after `after` (at most ``live_score.max_bars_per_cycle``): enough history for every
        feature of the first of them to equal its full-history value, or all there is. None
        when no bar is new. Its bars pass the scoring core's bar checks or LiveScoreError."""
        cfg = self.params.live_score
        base_tf = spec.base_timeframe
        base_sec = timeframe_seconds(base_tf)
        last = self._watermark(SeriesKey("bars", symbol, base_tf))
        if last is None:
            raise LiveScoreError(
                f"no stored {symbol} {base_tf} bars under {self.bars.root}: ingest it first "
                "(python -m pipelines.ingest history|live)"
            )
        first_new = last - (cfg.first_run_bars - 1) * base_sec if after is None else after + base_sec
        if first_new > last:
            return None
        lookback = 6 * 86_400  # covers a weekend plus the previous trading day; widened below
        while True:
            base = self._read(symbol, base_tf, first_new - lookback)
            bars = {base_tf: base}
            for tf in spec.higher_timeframes:  # with the base's point, as featurize does
                scale = max(1, timeframe_seconds(tf) // base_sec)
                bars[tf] = self._read(
                    symbol, tf, first_new - lookback * scale, base.point if len(base) else None
                )
            new = np.flatnonzero(base.time >= first_new)[: cfg.max_bars_per_cycle]
            if new.size == 0:
                return None
            window = trailing_window(bars, spec, int(new[0]), int(new[-1]))
            # only a timeframe short of history can gain from a wider read, and none can once
            # it starts at its first stored bar (young series: D1 has months, M5 has plenty)
            if all(self._starts_at_beginning(symbol, tf, bars[tf]) for tf in window.short):
                break
            lookback *= 4
        return window

    def offer(self, key: SeriesKey, rows: Any, through: int) -> None:
        """Hand over a series' rows that passed the data contract and are about to be appended
        to the bar store (`rows`: the bar store's frame shape; `through`: the append's
        watermark, UTC epoch seconds). The next cycle scores them as if stored: the live worker
        scores a bar close before it writes the bars, so the write is not on the path from bar
        close to tenant. Offers are dropped after that cycle; the bar store has the rows by
        then, or the worker fetches them again (its watermark did not move)."""
        self._pending[key] = (through, rows)

    def _read(self, symbol: str, tf: str, start: int, point: float | None = None) -> Bars:
        """Stored (or offered) bars with open time ≥ `start`, from an in-memory tail kept across
        cycles: only bars committed or offered since the last cycle are read (a directory
        listing tells)."""
        key = SeriesKey("bars", symbol, tf)
        sec = timeframe_seconds(tf)
        cached = self._bars.get((symbol, tf))
        if cached is None or cached[0] > start:
            read = Bars.from_frame(self._with_pending(key, self.bars.read(key, start=start)), sec, point)
            cached = (start, self._checked(symbol, tf, read))
        else:
            have = cached[1]
            last = int(have.time[-1]) if len(have) else start - 1
            stored = self._watermark(key)
            if stored is not None and stored > last:
                newer = Bars.from_frame(self._newer(key, last), sec, have.point)
                fresh = self._checked(symbol, tf, newer)
                merged = have.append(fresh)
                keep = max(0, len(merged) - self.max_cached_bars)
                cached = (int(merged.time[keep]) if keep else cached[0], merged.slice(keep))
        self._bars[(symbol, tf)] = cached
        b = cached[1]
        return b.slice(int(np.searchsorted(b.time, start)))

    def _with_pending(self, key: SeriesKey, stored: Any | None) -> Any:
        """`stored` rows (None: none) followed by the offered rows of `key` newer than them."""
        pending = self._pending[key][1] if key in self._pending else None
        if stored is None or not len(stored):
            if pending is None:
                return stored if stored is not None else key.schema.empty_table().to_pandas()
            return pending.reset_index(drop=True)
        if pending is None:
            return stored
        rows = pending[frame_times(pending, key.unit) > int(frame_times(stored, key.unit)[-1])]
        return pd.concat([stored, rows], ignore_index=True) if len(rows) else stored

    def _newer(self, key: SeriesKey, last: int) -> Any:
        """Rows of `key` with open time after `last`: from the bar store up to its watermark
        (none in the live case: the new bars are offered, not yet stored), then the offered
        ones. The store's rows after `last` are at most (watermark − last) / bar length, so its
        last that many rows hold them all: a few, kept in memory by the bar store that appended
        them (the live worker's), are taken from there instead of reading Parquet parts; a long
        gap (a weekend, a backlog) reads from disk."""
        stored = self._disk_watermark(key)
        rows = None
        if stored is not None and stored > last:
            most = (stored - last) // timeframe_seconds(key.timeframe or "M1") + 1
            rows = self.bars.read(key, start=last + 1) if most > 64 else self.bars.tail(key, int(most))
        rows = self._with_pending(key, rows)
        return rows[frame_times(rows, key.unit) > last].reset_index(drop=True) if len(rows) else rows

    def _disk_watermark(self, key: SeriesKey) -> int | None:
        """The bar store's watermark of `key`, listed once per cycle (several specs and
        timeframes of a symbol ask for the same series)."""
        if key not in self._marks:
            self._marks[key] = self.bars.watermark(key)
        return self._marks[key]

    def _watermark(self, key: SeriesKey) -> int | None:
        """Where `key` stands: the bar store's watermark, or an offer's if that is newer."""
        disk = self._disk_watermark(key)
        if key in self._pending:
            through = self._pending[key][0]
            return through if disk is None else max(disk, through)
        return disk

    @staticmethod
    def _checked(symbol: str, tf: str, bars: Bars) -> Bars:
        """`bars` through the scoring core's bar checks (`features.window.check_bars`, as
        ``/score_bars``) once, when they come from disk into the in-memory tail: every bar a
        window is cut from has passed them, and none is checked again each cycle."""
        if len(bars):
            try:
                check_bars(tf, bars.seconds, bar_fields(bars))
            except BarCheckError as exc:
                raise LiveScoreError(f"{symbol} stored bars: {exc}") from exc
        return bars

    def _htf_part(self, symbol: str, spec: FeatureSpec) -> dict[tuple[str, int], list[float]]:
        """The cache of `symbol`'s higher-timeframe feature parts under `spec`
        (`TrailingWindow.features`): a part is computed once per closed bar of its timeframe,
        not at every base bar close. Bounded: emptied when it holds more than 64 parts."""
        cache = self._htf.setdefault((symbol, spec), {})
        if len(cache) > 64:
            cache.clear()
        return cache

    def _starts_at_beginning(self, symbol: str, tf: str, bars: Bars) -> bool:
        parts = self.bars.parts(SeriesKey("bars", symbol, tf))
        return not parts or (len(bars) > 0 and int(bars.time[0]) <= min(p.lo for p in parts))

    # ----------------------------------------------------------------- the cycle
    def cycle(
        self, fault: Callable[[str], None] | None = None, symbols: Collection[str] | None = None
    ) -> CycleReport:
        """Score every newly closed bar any tenant needs (of `symbols` only, when given: a
        live worker's leased share); write it all in one transaction. `fault(stage)` is a
        test hook called at "scored" and inside the write."""
        report = CycleReport()
        if self._cycles == 1 and self.freeze_gc:
            # everything alive after the first cycle (libraries, models, cached bars) is
            # long-lived: hide it from the cyclic collector, whose full passes over it took
            # ~0.4 s mid-cycle here; freed-by-refcount objects are unaffected
            gc.collect()
            gc.freeze()
        self._cycles += 1
        self._marks = {}  # bar-store watermarks, listed afresh each cycle
        t0 = time.perf_counter()
        directory = self.directory()
        needs = self._needs(directory, report)
        if symbols is not None:
            needs = [n for n in needs if n.symbol in symbols]
        watermarks = self.store.watermarks()
        series: dict[tuple[str, str], list[_Need]] = defaultdict(list)
        for need in needs:
            series[(need.symbol, need.timeframe)].append(need)

        # features: per (symbol, timeframe, feature spec) of the model versions it needs
        rows_by_model: dict[tuple[str, str], list[tuple[str, str, np.ndarray, np.ndarray]]] = defaultdict(
            list
        )
        new_watermarks: dict[tuple[str, str], datetime] = {}
        for (symbol, tf), group in series.items():
            after_dt = watermarks.get((symbol, tf))
            after = None if after_dt is None else int(after_dt.timestamp())
            by_spec: dict[FeatureSpec, list[tuple[str, str]]] = defaultdict(list)
            for name, version in sorted({(n.model, n.version) for n in group}):
                spec = self.model(name, version).feature_spec
                if spec is None:
                    report.skipped.append(
                        f"{name} v{version}: registered without its feature spec; re-register"
                    )
                    continue
                if spec.base_timeframe != tf:
                    report.skipped.append(f"{name} v{version}: trained on {spec.base_timeframe}, not {tf}")
                    continue
                by_spec[spec].append((name, version))
            for spec, models in by_spec.items():
                try:
                    window = self._load(symbol, spec, after)
                except LiveScoreError as exc:  # one missing or broken series must not stop the others
                    report.skipped.append(str(exc))
                    log.warning("%s", exc)
                    continue
                if window is None:
                    continue
                X, times = window.features(spec, self._htf_part(symbol, spec))
                columns = feature_columns(spec)
                for name, version in models:
                    if self.model(name, version).columns != columns:
                        report.skipped.append(f"{name} v{version}: feature columns differ from its spec")
                        continue
                    rows_by_model[(name, version)].append((symbol, tf, X, times))
                new_watermarks[(symbol, tf)] = datetime.fromtimestamp(int(times[-1]), UTC)
        t1 = time.perf_counter()

        # scoring: one call per model version over every symbol's new rows
        probs: dict[tuple[str, str, str, str], dict[int, Any]] = {}
        for (name, version), chunks in rows_by_model.items():
            X = np.concatenate([c[2] for c in chunks])
            P = self.model(name, version).predict(X)
            report.model_calls += 1
            start = 0
            for symbol, tf, Xc, times in chunks:
                part = P[start : start + len(Xc)]
                start += len(Xc)
                probs[(symbol, tf, name, version)] = dict(zip(times.tolist(), _values(part), strict=True))
                report.scored[(symbol, tf, name, version)] = len(Xc)
        if fault:
            fault("scored")
        t2 = time.perf_counter()

        # store each score once (tenants read them through the store's view) with the
        # watermarks, in one transaction; count what each tenant was given
        sec = {tf: timeframe_seconds(tf) for tf in {n.timeframe for n in needs}}
        kinds = {n.model: (n.horizon, n.label_kind) for n in needs}
        # audiences per score: followers (no pin) and/or tenants pinned to that version
        audiences = {(n.symbol, n.timeframe, n.model, n.version, not n.pinned) for n in needs}
        rows: list[ScoreRow] = []
        stamps: dict[int, datetime] = {}
        for symbol, tf, name, version, followed in sorted(audiences):
            scored = probs.get((symbol, tf, name, version))
            if not scored:
                continue
            horizon, label_kind = kinds[name]
            for t, p in scored.items():
                bar_time = stamps.get(t) or stamps.setdefault(t, datetime.fromtimestamp(t, UTC))
                closed = self.closed_at(t + sec[tf])
                rows.append(
                    ScoreRow(symbol, tf, bar_time, horizon, label_kind, name, version, p, followed, closed)
                )
        report.new_scores = self.store.write_scores(rows, watermark=new_watermarks, fault=fault)
        committed = datetime.now(UTC)
        report.lag = [(committed - r.bar_closed_at).total_seconds() for r in rows]
        for need in needs:
            key = (need.symbol, need.timeframe, need.model, need.version)
            if key in probs:
                report.fanout[key] = report.fanout.get(key, ()) + need.tenants
        report.watermarks = new_watermarks
        if self.params.live_score.shadow:
            self._keep_for_shadow(needs, probs, watermarks)
        if not report.rows:
            report.idle = _idle_reason(directory, needs, watermarks, report)
        t3 = time.perf_counter()
        report.seconds = {"features": t1 - t0, "scoring": t2 - t1, "writes": t3 - t2, "total": t3 - t0}
        self._pending.clear()  # in the cache now where needed; the bar store has them next
        return report

    # ----------------------------------------------------------------- shadow scoring
    def _keep_for_shadow(
        self,
        needs: Sequence[_Need],
        probs: dict[tuple[str, str, str, str], dict[int, Any]],
        watermarks: dict[tuple[str, str], datetime],
    ) -> None:
        """Remember what this cycle scored with followed versions, for `shadow` (cheap: no
        scoring here, the cycle is on the path to the tenant)."""
        kept = False
        for n in needs:
            scored = probs.get((n.symbol, n.timeframe, n.model, n.version))
            if n.pinned or not scored:
                continue
            after_dt = watermarks.get((n.symbol, n.timeframe))
            after = None if after_dt is None else int(after_dt.timestamp())
            work = _ShadowWork(
                n.symbol, n.timeframe, n.horizon, n.label_kind, n.model, n.version, after, scored
            )
            self._shadow.append(work)
            kept = True
        if kept:
            self._shadow_pending = dict(self._pending)
        del self._shadow[: max(0, len(self._shadow) - SHADOW_BACKLOG * max(1, len(needs)))]

    def challengers(self, names: Collection[str]) -> dict[str, str | None]:
        """Each model's ``challenger`` version (None: none), read from the registry at most
        every ``live_score.directory_seconds`` (a light query per model)."""
        now = time.monotonic()
        at, known = self._challengers
        if now - at >= self.params.live_score.directory_seconds or not set(names) <= set(known):
            known = {name: self.models.registry.alias_version(name, "challenger") for name in sorted(names)}
            self._challengers = (now, known)
        return known

    def shadow(self) -> int:
        """Score the bars the last cycles scored with a followed (champion) version with that
        model's ``challenger`` version too, when it is another one, and store both
        probabilities (`ResultsStore.write_shadow`; given to no tenant). Off the path to the
        tenant: the live worker calls this once a close is quiet. Whatever fails here (a
        challenger that cannot score, the registry or the store unreachable) is logged and that
        work dropped — shadow scoring never holds live scoring back. Returns the rows stored."""
        work, self._shadow = self._shadow, []
        if not work:
            return 0
        saved, self._pending = self._pending, {**self._shadow_pending, **self._pending}
        self._marks = {}
        rows: list[ShadowRow] = []
        try:
            challengers = self.challengers({w.model for w in work})
            for w in work:
                version = challengers.get(w.model)
                if version is None or version == w.champion:
                    continue
                try:
                    rows += self._shadow_rows(w, version)
                except Exception as exc:  # noqa: BLE001 - a challenger that cannot score is skipped
                    log.warning(
                        "shadow scoring %s v%s on %s %s failed: %s",
                        w.model,
                        version,
                        w.symbol,
                        w.timeframe,
                        exc,
                    )
        except Exception as exc:  # noqa: BLE001 - the registry unreachable: this close is not shadowed
            log.warning("shadow scoring skipped: %s", exc)
        finally:
            self._pending, self._shadow_pending = saved, {}
            self._marks = {}
        try:
            return self.store.write_shadow(rows) if rows else 0
        except Exception as exc:  # noqa: BLE001 - the store down: the tenants' rows are committed already
            log.warning("shadow scores of %d bars not stored: %s", len(rows), exc)
            return 0

    def _shadow_rows(self, w: _ShadowWork, version: str) -> list[ShadowRow]:
        model = self.model(w.model, version)
        spec = model.feature_spec
        if spec is None or spec.base_timeframe != w.timeframe or model.columns != feature_columns(spec):
            raise LiveScoreError(
                "its feature spec is missing, for another timeframe, or differs from its columns"
            )
        window = self._load(w.symbol, spec, w.after)
        if window is None:
            return []
        X, times = window.features(spec, self._htf_part(w.symbol, spec))
        keep = np.array([int(t) in w.probabilities for t in times.tolist()], dtype=bool)
        if not keep.any():
            return []
        P = model.predict(X[keep])
        sec = timeframe_seconds(w.timeframe)
        out = []
        for t, p in zip(times[keep].tolist(), _values(P), strict=True):
            t = int(t)
            out.append(
                ShadowRow(
                    w.symbol,
                    w.timeframe,
                    datetime.fromtimestamp(t, UTC),
                    w.horizon,
                    w.label_kind,
                    w.model,
                    version,
                    w.champion,
                    p,
                    w.probabilities[t],
                    self.closed_at(t + sec),
                )
            )
        return out


def _values(P: np.ndarray) -> list[Any]:
    """A model's probabilities as stored: P(label 1) floats, or (down, flat, up) tuples of a
    three-class model."""
    return P.tolist() if P.ndim == 1 else [tuple(row) for row in P.tolist()]


def _idle_reason(
    directory: Sequence[Tenant],
    needs: Sequence[_Need],
    watermarks: dict[tuple[str, str], datetime],
    report: CycleReport,
) -> str:
    """Why a cycle wrote nothing."""
    if not directory:
        return "no tenants: add one with python -m pipelines.tenants add NAME --follow SYMBOL:TF:HORIZON"
    if not any(t.follows for t in directory):
        return "no tenant follows anything: add a subscription (SYMBOL:TF:HORIZON) with pipelines.tenants"
    if not needs:
        return "nothing followed can be scored: " + "; ".join(report.skipped)
    scored = ", ".join(
        f"{s} {tf} {t:%Y-%m-%d %H:%M}"
        for (s, tf), t in sorted(watermarks.items())
        if (s, tf) in {(n.symbol, n.timeframe) for n in needs}
    )
    return (
        f"no bar closed after the last scored ones ({scored or 'none yet'} UTC): new bars come from "
        "live ingestion (ingest-live); on history data, replay the newest bars with replay=N"
        + (f"; skipped: {'; '.join(report.skipped)}" if report.skipped else "")
    )


def rewind(store: ResultsStore, params: Params, bars: int) -> None:
    """Move every scoring watermark back `bars` base bars, so the next cycles re-score the
    newest bars one by one as if each had just closed (demo and benchmark replays). Rows are
    upserts: replaying never duplicates."""
    back = {
        (symbol, tf): t - timedelta(seconds=timeframe_seconds(tf) * bars)
        for (symbol, tf), t in store.watermarks().items()
    }
    store.move_watermarks(back)


def replaying(params: Params, store: ResultsStore, bars: int) -> LiveScorer:
    """A scorer set up to re-score the newest `bars` closed bars one per cycle (run `bars`
    cycles): a first cycle sets the watermarks of series never scored, then they move back."""
    live = params.live_score.model_copy(update={"max_bars_per_cycle": 1})
    params = params.model_copy(update={"live_score": live})
    LiveScorer(params, store).cycle()
    rewind(store, params, bars)
    return LiveScorer(params, store)


def main(argv: Sequence[str] | None = None) -> int:

    from pipelines.config import cli_parser, load_params

    parser = cli_parser("python -m pipelines.live_score", __doc__)
    parser.add_argument("--cycles", type=int, default=1, help="cycles to run (0 = forever)")
    parser.add_argument(
        "--replay",
        type=int,
        default=0,
        metavar="N",
        help="re-score the newest N closed bars, one per cycle, as if each had just closed (N cycles)",
    )
    args = parser.parse_args(argv)
    params = load_params(args.params, args.profile)
    store = ResultsStore.from_params(params.store)
    if store.dialect == "sqlite":
        store.migrate()
    interval = params.live_score.interval_seconds or timeframe_seconds(params.features.base_timeframe)
    cycles = args.cycles
    if args.replay:
        scorer = replaying(params, store, args.replay)
        cycles, interval = args.replay, 0.0
    else:
        scorer = LiveScorer(params, store)
    n = 0
    while cycles == 0 or n < cycles:
        report = scorer.cycle()
        scorer.shadow()
        newest = max(report.watermarks.values(), default=None)
        print(
            f"cycle {n + 1}: {report.rows} rows for {len(report.rows_per_tenant)} tenants"
            + (f" (bars up to {newest:%Y-%m-%d %H:%M} UTC)" if newest else "")
            + f", {report.model_calls} model calls, {report.seconds['total'] * 1e3:.0f} ms"
            + (f"; skipped: {report.skipped}" if report.skipped else "")
        )
        n += 1
        if cycles == 0 or n < cycles:
            time.sleep(interval)
    store.close()
    return 0


if __name__ == "__main__":
    from pipelines.config import run_cli

    raise SystemExit(run_cli(main))
