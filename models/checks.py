"""Operational checks as pure decisions (issue 18): each takes measurements and thresholds and
returns `Finding`s — one per checked thing, healthy or breached — and `transitions` turns two
successive sets of findings into the notifications an operator should get.

Checks (units in each docstring; times UTC epoch seconds):

* `stale_series` — a series' newest bar is older than ``max_bars`` bars *of open market*
  (weekends, daily breaks and holidays do not count: `features.gaps.MarketHours`).
* `lag_check` — the p99 of bar close → committed over recent results, milliseconds.
* `skill_check` — live log loss against the base rate, with a block-bootstrap interval: a breach
  when the interval does not show skill (its lower bound is not above zero — the promotion
  gate's own rule, applied to matured live probabilities).
* `shadow_check` — the challenger scored in the shadow of the champion on the same live bars:
  the paired log-loss difference with a block-bootstrap interval; a breach when the challenger
  is shown worse live (the interval's upper bound is below zero), so promoting it would be a
  mistake whatever its holdout said.
* `api_check` — the scoring service's error rate (5xx share of requests) and p99 latency
  between two scrapes of its Prometheus metrics.
* `drift_check` — PSI of the features against the training window (computed elsewhere).
* `cells_to_retrain` — which matrix cells a set of breached findings calls to be retrained.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from features.gaps import MarketHours, is_open
from models.metrics import base_rate, constant, is_multiclass, row_log_loss
from models.uncertainty import Interval, block_ids, bootstrap_mean


@dataclass(frozen=True)
class Finding:
    """One checked thing. `check` is a stable id (``stale:EURUSD:M5``): notifications are keyed
    by it. `value` and `threshold` are in the check's unit; `message` says it in one line."""

    check: str
    breached: bool
    value: float
    threshold: float
    message: str
    judged: bool = True  # False: too little to judge (too few rows): an open alert stays open

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def open_bars_between(start: int, end: int, seconds: int, hours: MarketHours) -> int:
    """Bar slots of `seconds` opening in [start, end) while the market is open."""
    if end <= start:
        return 0
    slots = np.arange(start, end, seconds, dtype=np.int64)
    return int(is_open(slots, hours).sum())


def stale_series(
    newest: dict[str, int], seconds: dict[str, int], now: int, hours: MarketHours, max_bars: int
) -> list[Finding]:
    """Per series (``"EURUSD M5"`` → its newest bar's open time): stale when more than
    `max_bars` bars of open market should have closed since that bar closed."""
    out = []
    for key, opened in sorted(newest.items()):
        sec = seconds[key]
        closed = opened + sec
        # bars that opened at or after `closed` and have themselves closed by now
        missing = open_bars_between(closed, now - sec + 1, sec, hours)
        out.append(
            Finding(
                f"stale:{key.replace(' ', ':')}",
                missing > max_bars,
                float(missing),
                float(max_bars),
                f"{key}: newest bar opened {_iso(opened)} UTC; {missing} bar(s) of open market missing "
                f"since (limit {max_bars})",
            )
        )
    return out


def lag_check(lags_ms: np.ndarray, p99_max_ms: float, min_rows: int, what: str = "live") -> Finding:
    """The p99 of bar close → committed (milliseconds) over `lags_ms`; not judged below
    `min_rows` results."""
    lags = np.asarray(lags_ms, dtype=float)
    lags = lags[np.isfinite(lags)]
    if lags.size < min_rows:
        return Finding(
            f"lag:{what}", False, float("nan"), p99_max_ms, f"{what} lag: {lags.size} results, too few", False
        )
    p50, p99 = (float(np.percentile(lags, q)) for q in (50, 99))
    return Finding(
        f"lag:{what}",
        p99 > p99_max_ms,
        p99,
        p99_max_ms,
        f"{what} lag bar close → committed: p50 {p50:.0f} ms, p99 {p99:.0f} ms over {lags.size} results "
        f"(limit p99 {p99_max_ms:.0f} ms)",
    )


def skill_check(
    key: str,
    y: np.ndarray,
    p: np.ndarray,
    times: np.ndarray,
    block_s: int,
    min_rows: int,
    level: float = 0.95,
) -> tuple[Finding, Interval | None]:
    """Live skill of `key` (``model NAME VERSION`` or ``tenant ID NAME``): the log-loss
    improvement of probabilities `p` over the base rate (the rows' own frequency, as the gate)
    on matured labels `y`, nats per row, with its `level` block-bootstrap interval (blocks of
    `block_s` seconds of bar time `times`). Three-class probabilities ((n, 3), labels 0/1/2)
    against each class's frequency. A breach when the lower bound is not above zero; not
    judged below `min_rows` rows."""
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    check = f"skill:{key.replace(' ', ':')}"
    if y.size < min_rows:
        return Finding(check, False, float("nan"), 0.0, f"{key}: {y.size} matured rows, too few", False), None
    rate = base_rate(y, p.shape[1] if is_multiclass(p) else None)
    diff = row_log_loss(y, constant(y, rate)) - row_log_loss(y, p)
    edge = bootstrap_mean(diff, block_ids(np.asarray(times), y.size, block_s), level)
    breached = not edge.low > 0
    return (
        Finding(
            check,
            breached,
            edge.estimate,
            0.0,
            f"{key}: live log-loss improvement over the base rate {edge.text(5)} nats/row on {y.size} "
            f"matured rows ({edge.level:.0%}, {edge.blocks} blocks)"
            + (" — no demonstrated skill" if breached else ""),
        ),
        edge,
    )


def shadow_check(
    key: str,
    y: np.ndarray,
    p_challenger: np.ndarray,
    p_champion: np.ndarray,
    times: np.ndarray,
    block_s: int,
    min_rows: int,
    level: float = 0.95,
) -> tuple[Finding, Interval | None]:
    """Challenger against champion on the same matured live bars (`key`: ``NAME vC vs vK``):
    the champion's log loss minus the challenger's, nats per row (> 0: the challenger is
    better), with its `level` block-bootstrap interval (blocks of `block_s` seconds of bar time
    `times`, pairs kept together). A breach when the upper bound is below zero — the challenger
    is shown worse live; not judged below `min_rows` rows."""
    y = np.asarray(y, dtype=float)
    check = f"shadow:{key.replace(' ', ':')}"
    if y.size < min_rows:
        msg = f"{key}: {y.size} matured shadow rows, too few"
        return Finding(check, False, float("nan"), 0.0, msg, False), None
    diff = row_log_loss(y, np.asarray(p_champion, dtype=float)) - row_log_loss(
        y, np.asarray(p_challenger, dtype=float)
    )
    edge = bootstrap_mean(diff, block_ids(np.asarray(times), y.size, block_s), level)
    breached = edge.high < 0
    verdict = (
        " — the challenger is worse live: do not promote it"
        if breached
        else " — the challenger is better live"
        if edge.low > 0
        else " — no difference shown yet"
    )
    return (
        Finding(
            check,
            bool(breached),
            edge.estimate,
            0.0,
            f"{key}: champion minus challenger live log loss {edge.text(5)} nats/row on {y.size} matured "
            f"bars ({edge.level:.0%}, {edge.blocks} blocks){verdict}",
        ),
        edge,
    )


def api_check(
    before: dict[str, object],
    after: dict[str, object],
    max_error_rate: float,
    p99_max_ms: float,
    min_requests: int,
) -> list[Finding]:
    """Error rate and p99 latency of the scoring API between two scrapes (`prometheus_summary`
    of each): error rate = 5xx responses / requests; p99 from the latency histogram's bucket
    increments (the upper edge of the bucket holding the 99th percentile), milliseconds."""
    requests = float(after["requests"]) - float(before["requests"])
    errors = float(after["errors"]) - float(before["errors"])
    if requests < min_requests:
        msg = f"scoring API: {requests:.0f} requests since the last check, too few to judge"
        return [
            Finding("api:error_rate", False, float("nan"), max_error_rate, msg, False),
            Finding("api:p99", False, float("nan"), p99_max_ms, msg, False),
        ]
    rate = errors / requests
    edges = list(after["buckets"])  # type: ignore[call-overload]
    counts = np.array(after["counts"], dtype=float) - np.array(before.get("counts") or [0.0] * len(edges))
    p99 = _histogram_quantile(edges, counts, 0.99) * 1000.0
    return [
        Finding(
            "api:error_rate",
            rate > max_error_rate,
            rate,
            max_error_rate,
            f"scoring API: {errors:.0f} server errors in {requests:.0f} requests ({rate:.2%}; limit "
            f"{max_error_rate:.2%})",
        ),
        Finding(
            "api:p99",
            p99 > p99_max_ms,
            p99,
            p99_max_ms,
            f"scoring API: p99 latency ≤ {p99:.0f} ms over {requests:.0f} requests "
            f"(limit {p99_max_ms:.0f} ms)",
        ),
    ]


def _histogram_quantile(edges: Sequence[float], cumulative: np.ndarray, q: float) -> float:
    """The upper edge of the first bucket whose cumulative count reaches q of the total
    (``inf`` when only the overflow bucket does)."""
    total = cumulative[-1] if cumulative.size else 0.0
    if total <= 0:
        return 0.0
    i = int(np.searchsorted(cumulative, q * total, side="left"))
    return float(edges[min(i, len(edges) - 1)])


def calibration_check(key: str, ece_value: float, rows: int, ece_max: float, min_rows: int) -> Finding:
    """Live calibration of `key` (``model NAME VERSION`` or ``tenant ID NAME``): ECE above
    `ece_max` on at least `min_rows` matured rows is a breach."""
    return Finding(
        f"calibration:{key.replace(' ', ':')}",
        rows >= min_rows and ece_value > ece_max,
        ece_value,
        ece_max,
        f"live calibration of {key}: ECE {ece_value:.3f} (limit {ece_max}) on {rows} matured rows",
        rows >= min_rows,
    )


def drift_check(symbol: str, max_psi: float, worst: str, psi_max: float) -> Finding:
    """Feature drift of `symbol`: its largest feature PSI against `psi_max`."""
    return Finding(
        f"drift:{symbol}",
        max_psi > psi_max,
        max_psi,
        psi_max,
        f"feature drift on {symbol}: max PSI {max_psi:.2f} (limit {psi_max}; worst {worst})",
    )


LIVE_WINDOW_CHECKS = ("skill:", "calibration:", "shadow:")


def left_the_window(
    open_alerts: Iterable[str],
    findings: Iterable[Finding],
    since: str,
    prefixes: tuple[str, ...] = LIVE_WINDOW_CHECKS,
) -> list[Finding]:
    """Healthy, judged findings closing the open alerts of live-window checks (`prefixes`)
    that nothing judged in this window: their model version, tenant or challenger has no
    live rows opened since `since` (text, UTC) — no longer scored — so its breach is over.
    Without this an alert of a retired version would stay open for ever."""
    seen = {f.check for f in findings}
    return [
        Finding(c, False, float("nan"), 0.0, f"{c}: no live rows since {since} — no longer scored")
        for c in sorted(open_alerts)
        if c.startswith(prefixes) and c not in seen
    ]


@dataclass(frozen=True)
class Notification:
    """What an operator is told: `kind` is ``breached`` or ``resolved``."""

    check: str
    kind: str
    message: str


def transitions(
    open_alerts: dict[str, str],
    findings: Iterable[Finding],
    silenced: dict[str, float],
    now: float,
) -> tuple[dict[str, str], list[Notification]]:
    """The alerts open after `findings` and the notifications due.

    `open_alerts` maps a check to the message of its open breach. A breach opens an alert
    once (``breached``: no repeat while it stays breached); a check that was breached and is
    now healthy is ``resolved`` (announced once). A check silenced until a time after `now`
    (`silenced`: check → epoch seconds; a trailing ``*`` matches a prefix, ``stale:*``) still
    opens and closes alerts but notifies nobody. Checks not among `findings`, and findings not
    judged (too few rows to say), keep their state."""
    state = dict(open_alerts)
    out = []
    for f in findings:
        if not f.judged:
            continue
        was = f.check in state
        if f.breached and not was:
            state[f.check] = f.message
            out.append(Notification(f.check, "breached", f.message))
        elif f.breached:
            state[f.check] = f.message
        elif was:
            del state[f.check]
            out.append(Notification(f.check, "resolved", f.message))
    return state, [n for n in out if not _silenced(n.check, silenced, now)]


def _silenced(check: str, silenced: dict[str, float], now: float) -> bool:
    for pattern, until in silenced.items():
        if until > now and (check == pattern or (pattern.endswith("*") and check.startswith(pattern[:-1]))):
            return True
    return False


def _iso(t: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")


def cells_to_retrain(
    findings: Iterable[Finding],
    cell_of_model: dict[str, str],
    cells_of_symbol: dict[str, Sequence[str]],
    order: Sequence[str],
) -> list[str]:
    """The cells (ids, in `order`) that breached `findings` call to be retrained: the cell of
    every model named by a breached live calibration or skill check (per version,
    ``…:model:NAME:VERSION``, or per tenant, ``…:tenant:ID:NAME``; `cell_of_model` maps a
    registered model name to its cell), and every cell listed for a symbol whose features
    drifted (``drift:SYMBOL``; `cells_of_symbol`). Stale data, lag, the API and a challenger
    shown worse live (``shadow:``: the champion keeps serving) are not fixed by retraining a
    model: they call for none. Models and symbols outside the maps are ignored."""
    wanted: set[str] = set()
    for f in findings:
        if not f.breached:
            continue
        kind, _, rest = f.check.partition(":")
        if kind in ("calibration", "skill"):
            by, _, key = rest.partition(":")
            name = key.rsplit(":", 1)[0] if by == "model" else key.split(":", 1)[-1]
            if name in cell_of_model:
                wanted.add(cell_of_model[name])
        elif kind == "drift":
            wanted.update(cells_of_symbol.get(rest, ()))
    return [c for c in order if c in wanted]
