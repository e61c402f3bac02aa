"""Monitoring: is the data arriving, is the world still the one the champion was trained on,
are its live probabilities still calibrated and skilful, is the service healthy?

* Freshness — every configured series' newest stored bar against the clock, counted in bars
  of *open market* (``features.market_hours``: weekends, breaks and holidays do not count);
  stale past ``monitor.stale_bars``.
* Live lag — bar close → committed of the results of the last ``monitor.lag_window_minutes``;
  a breach when its p99 is over ``monitor.lag_p99_ms``.
* Live skill — per model version and per tenant, the log-loss improvement of matured live
  probabilities over the base rate with a block-bootstrap interval (`models.checks.skill_check`);
  a breach when it does not show skill, from ``monitor.skill_min_rows`` rows up.
* The scoring API — its own Prometheus metrics (``monitor.service_url``/metrics) scraped at each
  check: 5xx share and p99 latency since the previous check (`models.checks.api_check`).

* Shadow scores — the challenger scored on the champion's live bars (``shadow_scores``,
  `pipelines.live_score.LiveScorer.shadow`): the paired log-loss difference on matured labels
  with its interval; a breach when the challenger is shown worse live
  (`models.checks.shadow_check`), from ``monitor.skill_min_rows`` rows up.

* Feature drift — population stability index (`models.metrics.psi`) of each market feature
  (calendar and session columns, functions of the clock, are left out) over the
  newest ``monitor.live_bars`` base bars of every trained symbol (from the bar store, computed
  with features/) against the training window (featurize outputs before the holdout).
* Live calibration — for every probability in the results store whose label has matured
  (its horizon has passed in the stored bars), the realised label of its kind (direction or
  triple barrier, `features.labels.model_target`); ECE and log loss
  per model version and per tenant, from ``monitor.min_rows`` rows up.

Past ``monitor.psi_max`` / ``monitor.ece_max`` a check is a breach. Every check yields
`models.checks.Finding`s; `Alerts` keeps which are open (``monitor.state_path``) so an operator
is told once when a check breaches and once when it resolves (`models.checks.transitions`), and
can silence a check for a while (``python -m pipelines.status silence CHECK --hours 2``). The
``monitor`` flow sends those notifications through Prefect (`flows.alerts`). Times UTC.

    python -m pipelines.monitor [--params params.yaml] [--profile fast]
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.bars import Bars
from features.labels import direction_labels, model_target, triple_barrier_labels, up_flat_down_labels
from features.matrix import build_features, family_columns
from models.checks import (
    Finding,
    Notification,
    api_check,
    calibration_check,
    drift_check,
    lag_check,
    left_the_window,
    shadow_check,
    skill_check,
    stale_series,
    transitions,
)
from models.checks import cells_to_retrain as retrain_decision
from models.metrics import ece, log_loss, psi
from models.uncertainty import block_seconds
from pipelines.bar_store import BarStore, SeriesKey
from pipelines.config import Params
from pipelines.featurize import load_bars
from pipelines.mt5.constants import timeframe_seconds
from pipelines.store import ResultsStore
from pipelines.store.results import frame_probabilities, probability_array
from pipelines.train import load_training_data, splits


@dataclass
class MonitorReport:
    drift: list[dict[str, Any]] = field(default_factory=list)  # per symbol: max/mean PSI, worst features
    calibration: list[dict[str, Any]] = field(default_factory=list)  # per model version and per tenant
    findings: list[Finding] = field(default_factory=list)  # every check, healthy or breached
    freshness: list[dict[str, Any]] = field(default_factory=list)  # per series: newest bar, missing bars
    lag_values: np.ndarray = field(default_factory=lambda: np.zeros(0))  # every result's lag, ms
    psi: dict[str, dict[str, float]] = field(default_factory=dict)  # symbol → feature → PSI
    matured: pd.DataFrame = field(default_factory=pd.DataFrame)  # matured live rows (y, probability)
    api: dict[str, Any] = field(default_factory=dict)  # this scrape of the service's metrics
    shadow: list[dict[str, Any]] = field(default_factory=list)  # challenger vs champion, live
    live_since: datetime | None = None  # live checks judged bars opened from here (UTC) to now

    @property
    def lags(self) -> dict[str, float]:
        """p50/p99 (ms) and count of `lag_values`; empty when there are none."""
        if not self.lag_values.size:
            return {}
        p50, p99 = np.percentile(self.lag_values, [50, 99])
        return {"results": float(self.lag_values.size), "p50_ms": float(p50), "p99_ms": float(p99)}

    @property
    def breaches(self) -> list[str]:
        return [f.message for f in self.findings if f.breached]

    @property
    def ok(self) -> bool:
        return not self.breaches


def feature_drift(params: Params) -> list[dict[str, Any]]:
    """PSI of every feature, newest `live_bars` bars vs the training window, per symbol."""
    cfg = params.monitor
    data = load_training_data(params.outputs / "featurize", params.labels.kind)
    holdout, _ = splits(data, params.models)
    spec = params.features.spec()
    store = BarStore(params.data.root)
    # calendar and session columns are functions of the clock: a one-day window "drifts" in
    # day-of-week by construction, which says nothing about the market — they are left out
    clock = {c for f in ("calendar", "session") if f in spec.families for c in family_columns(f, spec)}
    rows = []
    for symbol in data.manifest["symbols"]:
        train_rows = holdout.train[data.symbol[holdout.train] == symbol]
        reference = data.X[train_rows]
        bars = load_bars(store, symbol, [spec.base_timeframe, *spec.higher_timeframes])
        live = build_features(bars, spec).values[-cfg.live_bars :]
        values = {c: psi(reference[:, j], live[:, j]) for j, c in enumerate(data.columns) if c not in clock}
        worst = sorted(values.items(), key=lambda kv: -kv[1])[:5]
        rows.append(
            {
                "symbol": symbol,
                "live_bars": len(live),
                "train_rows": len(reference),
                "max_psi": max(values.values()),
                "mean_psi": float(np.mean(list(values.values()))),
                "worst": ", ".join(f"{c} {v:.2f}" for c, v in worst),
                "psi": values,  # every feature (check() moves it to MonitorReport.psi)
            }
        )
    return rows


def _realised(
    store: BarStore, symbol: str, timeframe: str, horizon: int, label_kind: str, params: Params
) -> pd.Series:
    """Realised label of `label_kind` (`features.labels.model_target`: direction 1 up, 0 down,
    NaN flat; triple barrier 1 when the take-profit was touched first, else 0; up/flat/down
    0, 1, 2; NaN
    where not matured or across a hole) by bar open time (UTC epoch seconds), under the
    ``labels:`` settings of `params` with the model's horizon."""
    frame = store.read(SeriesKey("bars", symbol, timeframe))
    bars = Bars.from_frame(frame, timeframe_seconds(timeframe))
    hours = params.features.market_hours.hours()
    if label_kind == "triple_barrier":
        tb = dataclasses.replace(params.labels.triple_barrier_spec(), horizon=horizon)
        labels = triple_barrier_labels(bars, tb, hours=hours)
    elif label_kind == "up_flat_down":
        u = params.labels
        labels = up_flat_down_labels(bars, horizon, u.up_flat_down.flat_within, u.atr_window, hours)
    else:
        spec = dataclasses.replace(params.labels.direction_spec(), horizon=horizon, neutral="drop")
        labels = direction_labels(bars, spec, hours)
    return pd.Series(model_target(label_kind, labels["label"]), index=bars.time)


def _with_realised(rows: pd.DataFrame, params: Params) -> pd.DataFrame:
    """`rows` (symbol, timeframe, horizon, label_kind, bar_time) with the realised label ``y``
    (`_realised`), only those whose label has matured."""
    if not len(rows):
        return rows.assign(y=pd.Series(dtype=float))
    bar_store = BarStore(params.data.root)
    realised = {
        key: _realised(bar_store, key[0], key[1], int(key[2]), key[3], params)
        for key, _ in rows.groupby(["symbol", "timeframe", "horizon", "label_kind"])
    }
    t = rows.bar_time.map(lambda x: int(x.timestamp()))
    keys = zip(rows.symbol, rows.timeframe, rows.horizon, rows.label_kind, t, strict=True)
    rows = rows.assign(y=[realised[(s, tf, h, k)].get(ts, np.nan) for s, tf, h, k, ts in keys])
    return rows[rows.y.notna()]


def _blocks(g: pd.DataFrame) -> tuple[np.ndarray, int]:
    """Bar open times (UTC epoch seconds) of matured rows `g` of one model, and the length of
    the bootstrap blocks their labels need (`models.uncertainty.block_seconds`)."""
    span = block_seconds(int(g.horizon.max()), timeframe_seconds(str(g.timeframe.iloc[0])))
    return g.bar_time.map(lambda x: int(x.timestamp())).to_numpy(), span


def live_calibration(
    params: Params, results: ResultsStore, since: datetime | None = None, until: datetime | None = None
) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """ECE, log loss and skill of matured live probabilities of bars opened in [`since`,
    `until`) (UTC; None: unbounded), per model version and per tenant (each model against its
    own label kind: direction, triple barrier or up/flat/down; read through each tenant's own session); and
    the matured rows themselves (bar_time, y, probability, model, tenant)."""
    frames = []
    for tenant in results.directory():
        with results.tenant(tenant.tenant_id, actor="monitor") as session:
            f = session.probabilities(start=since, end=until)
        if len(f):
            f["tenant"] = tenant.tenant_id  # ids only: names are the tenants' own (sealed)
            frames.append(f)
    if not frames:
        return [], pd.DataFrame()
    matured = _with_realised(pd.concat(frames, ignore_index=True), params)
    out = []
    cfg = params.monitor
    for key, label in ((["model_name", "model_version"], "model"), (["tenant", "model_name"], "tenant")):
        for k, g in matured.groupby(key):
            y, p = g.y.to_numpy(), frame_probabilities(g)
            name = f"{label} {' '.join(map(str, k))}"
            times, span = _blocks(g)
            finding, edge = skill_check(name, y, p, times, span, cfg.skill_min_rows, cfg.level)
            out.append(
                {
                    "by": label,
                    "key": " ".join(map(str, k)),
                    "rows": len(g),
                    "ece": ece(y, p),
                    "log_loss": log_loss(y, p),
                    "edge": edge.estimate if edge else float("nan"),
                    "edge_low": edge.low if edge else float("nan"),
                    "edge_high": edge.high if edge else float("nan"),
                    "skill": finding,
                }
            )
    return out, matured


def shadow_comparison(
    params: Params, results: ResultsStore, since: datetime | None = None, until: datetime | None = None
) -> list[dict[str, Any]]:
    """The challenger against the champion on the live bars both scored (``shadow_scores``)
    opened in [`since`, `until`) (UTC; None: unbounded), on matured labels: per (model,
    challenger version, champion version), rows and both log losses, and
    `models.checks.shadow_check`'s finding and paired interval."""
    rows = results.shadow_scores(since)
    if until is not None:
        rows = rows[rows.bar_time < pd.Timestamp(until)]
    rows = _with_realised(rows, params)
    cfg = params.monitor
    out = []
    for (name, challenger, champion), g in rows.groupby(
        ["model_name", "challenger_version", "champion_version"]
    ):
        y = g.y.to_numpy()
        times, span = _blocks(g)
        key = f"{name} v{challenger} vs v{champion}"
        challenger_p, champion_p = probability_array(g.challenger), probability_array(g.champion)
        finding, edge = shadow_check(
            key, y, challenger_p, champion_p, times, span, cfg.skill_min_rows, cfg.level
        )
        out.append(
            {
                "model": name,
                "challenger": str(challenger),
                "champion": str(champion),
                "rows": len(g),
                "challenger_log_loss": log_loss(y, challenger_p),
                "champion_log_loss": log_loss(y, champion_p),
                "edge": edge.estimate if edge else float("nan"),
                "edge_low": edge.low if edge else float("nan"),
                "edge_high": edge.high if edge else float("nan"),
                "finding": finding,
            }
        )
    return out


def freshness(params: Params, now: int) -> tuple[list[dict[str, Any]], list[Finding]]:
    """Newest stored bar of every configured series against `now` (UTC epoch seconds)."""
    store = BarStore(params.data.root)
    newest, seconds = {}, {}
    for symbol in params.data.symbols:
        for tf in params.data.timeframes:
            mark = store.watermark(SeriesKey("bars", symbol, tf))
            if mark is not None:
                newest[f"{symbol} {tf}"] = mark
                seconds[f"{symbol} {tf}"] = timeframe_seconds(tf)
    findings = stale_series(
        newest, seconds, now, params.features.spec().market_hours, params.monitor.stale_bars
    )
    table = [
        {
            "series": k,
            "newest_bar_utc": _iso(newest[k]),
            "missing_open_bars": int(f.value),
            "stale": f.breached,
        }
        for k, f in zip(sorted(newest), findings, strict=True)
    ]
    return table, findings


def live_lags(results: ResultsStore, since: datetime, until: datetime) -> np.ndarray:
    """Bar close → committed (milliseconds) of every result committed in (`since`, `until`]
    (UTC), once per (series, model version, bar), read through each tenant's own session."""
    seen: dict[tuple, float] = {}
    for tenant in results.directory():
        with results.tenant(tenant.tenant_id, actor="monitor") as session:
            f = session.probabilities(start=since - pd.Timedelta(days=2))
        if not len(f):
            continue
        # the tenant view's ``scored_at`` is the score's commit time (the ``scores`` table's committed_at)
        f = f[(f.scored_at > pd.Timestamp(since)) & (f.scored_at <= pd.Timestamp(until))]
        lag = (f.scored_at - f.bar_closed_at).dt.total_seconds().to_numpy() * 1000.0
        for key, value in zip(
            zip(f.symbol, f.timeframe, f.model_name, f.model_version, f.bar_time, strict=True),
            lag,
            strict=True,
        ):
            seen[key] = float(value)
    return np.array(list(seen.values()), dtype=float)


def scrape_api(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """The scoring service's request counters and latency histogram from its Prometheus
    ``/metrics`` (`prometheus_summary`); raises OSError when it does not answer."""
    import httpx

    try:
        r = httpx.get(f"{url.rstrip('/')}/metrics", timeout=timeout, verify=False)  # noqa: S501 - own service
        r.raise_for_status()
    except httpx.HTTPError as exc:
        raise OSError(f"scoring service metrics at {url} did not answer: {exc}") from exc
    return prometheus_summary(r.text)


def prometheus_summary(text: str) -> dict[str, Any]:
    """From the service's metrics text: ``requests`` and ``errors`` (5xx) — totals of
    ``mt5prob_requests`` — and the latency histogram ``mt5prob_request_seconds`` summed over
    endpoints and models (``buckets``: upper edges in seconds, ``counts``: cumulative)."""
    from prometheus_client.parser import text_string_to_metric_families

    requests = errors = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "mt5prob_requests_total":
                requests += sample.value
                if str(sample.labels.get("status", "")).startswith("5"):
                    errors += sample.value
            elif sample.name == "mt5prob_request_seconds_bucket":
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
    edges = sorted(buckets)
    return {"requests": requests, "errors": errors, "buckets": edges, "counts": [buckets[e] for e in edges]}


class Alerts:
    """Open alerts, silences and the last API scrape, kept in a JSON file written atomically
    (``monitor.state_path``) between monitor runs."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        raw = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.open: dict[str, str] = raw.get("open", {})
        self.silenced: dict[str, float] = raw.get("silenced", {})
        self.api: dict[str, Any] = raw.get("api", {})
        self.sent: list[dict[str, Any]] = raw.get("sent", [])

    def update(self, findings: list[Finding], now: float) -> list[Notification]:
        """Apply `findings` (`models.checks.transitions`); returns the notifications due."""
        self.open, due = transitions(self.open, findings, self.silenced, now)
        self.silenced = {k: v for k, v in self.silenced.items() if v > now}
        self.sent = (self.sent + [{"at": now, **dataclasses.asdict(n)} for n in due])[-200:]
        return due

    def silence(self, check: str, until: float) -> None:
        self.silenced[check] = until

    def save(self) -> None:
        from pipelines.atomic_files import write_text_atomic

        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {"open": self.open, "silenced": self.silenced, "api": self.api, "sent": self.sent}
        write_text_atomic(json.dumps(state, indent=1, sort_keys=True) + "\n", self.path)


def check(
    params: Params,
    results: ResultsStore | None = None,
    since: datetime | None = None,
    now: datetime | None = None,
    alerts: Alerts | None = None,
) -> MonitorReport:
    """Every check with the ``monitor:`` thresholds (`MonitorReport.findings`). `now` (UTC,
    default the wall clock) is the moment judged; live skill, calibration and shadow scores are
    judged on bars opened in [`since`, `now`), `since` by default ``monitor.live_window_days``
    before `now`. `alerts` holds the previous API scrape and the open alerts: an open live
    alert whose version, tenant or challenger has no rows in the window is closed
    (`models.checks.left_the_window`)."""
    cfg = params.monitor
    report = MonitorReport()
    now = now or datetime.now(UTC)
    since = since or now - timedelta(days=cfg.live_window_days)
    report.live_since = since
    report.freshness, stale = freshness(params, int(now.timestamp()))
    report.findings += stale
    if (params.outputs / "featurize" / "columns.json").is_file():
        report.drift = feature_drift(params)
        report.psi = {r["symbol"]: r.pop("psi") for r in report.drift}
        report.findings += [
            drift_check(r["symbol"], r["max_psi"], r["worst"], cfg.psi_max) for r in report.drift
        ]
    if results is not None:
        report.calibration, report.matured = live_calibration(params, results, since, now)
        for row in report.calibration:
            report.findings.append(row.pop("skill"))
            report.findings.append(
                calibration_check(
                    f"{row['by']} {row['key']}", row["ece"], row["rows"], cfg.ece_max, cfg.min_rows
                )
            )
        report.shadow = shadow_comparison(params, results, since, now)
        report.findings += [row.pop("finding") for row in report.shadow]
        if alerts is not None:
            report.findings += left_the_window(alerts.open, report.findings, _iso(int(since.timestamp())))
        lags = live_lags(results, now - timedelta(minutes=cfg.lag_window_minutes), now)
        finding = lag_check(lags, cfg.lag_p99_ms, cfg.lag_min_results)
        report.findings.append(finding)
        report.lag_values = lags
    if cfg.service_url:
        try:
            report.api = scrape_api(cfg.service_url)
        except OSError as exc:
            report.findings.append(Finding("api:up", True, 0.0, 1.0, str(exc)))
        else:
            report.findings.append(
                Finding("api:up", False, 1.0, 1.0, f"scoring service at {cfg.service_url} answers")
            )
            if alerts is not None and alerts.api:
                report.findings += api_check(
                    alerts.api, report.api, cfg.api_error_rate_max, cfg.api_p99_ms, cfg.api_min_requests
                )
            if alerts is not None:
                alerts.api = report.api
    return report


def cells_to_retrain(findings: Sequence[Finding], params: Params) -> list[str]:
    """The matrix cells (ids, in ``matrix.cells`` order) that breached `findings` call to be
    retrained — the decision is `models.checks.cells_to_retrain`; this names each cell's
    registered model (`pipelines.registry.model_name`) and each symbol's cells (every cell of
    a group holding it) from `params`."""
    from pipelines.registry import model_name

    cells = params.matrix.all()
    prefix = params.registry.name_prefix
    cell_of_model = {model_name(prefix, c.group, c.timeframe, c.label_kind, c.horizon): c.id for c in cells}
    cells_of_symbol: dict[str, list[str]] = {}
    for group, symbols in params.matrix.groups.items():
        for symbol in symbols:
            cells_of_symbol.setdefault(symbol, []).extend(c.id for c in cells if c.group == group)
    return retrain_decision(findings, cell_of_model, cells_of_symbol, [c.id for c in cells])


def _iso(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")


def main(argv: Sequence[str] | None = None) -> int:
    from pipelines.config import params_from_cli

    params = params_from_cli("python -m pipelines.monitor", __doc__, argv)
    results = ResultsStore.from_params(params.store)
    alerts = Alerts(params.monitor.state_path)
    try:
        report = check(params, results, alerts=alerts)
    finally:
        results.close()
    due = alerts.update(report.findings, datetime.now(UTC).timestamp())
    alerts.save()
    print(render(report))
    for n in due:
        print(f"{n.kind.upper()}: {n.message}")
    return 0 if report.ok else 1


def render(report: MonitorReport) -> str:
    """The report as an operator reads it: one line per check, breaches marked."""
    lines = []
    for row in report.freshness:
        mark = "STALE" if row["stale"] else "ok"
        lines.append(
            f"{mark:6} {row['series']}: newest bar {row['newest_bar_utc']} UTC, "
            f"{row['missing_open_bars']} missing"
        )
    for row in report.drift:
        lines.append(
            f"drift  {row['symbol']}: max PSI {row['max_psi']:.3f}, mean {row['mean_psi']:.3f} "
            f"({row['worst']})"
        )
    if report.live_since is not None:
        lines.append(f"live   judged on bars opened since {report.live_since:%Y-%m-%d %H:%M} UTC")
    for row in report.calibration:
        lines.append(
            f"live   {row['by']} {row['key']}: {row['rows']} matured rows, ECE {row['ece']:.4f}, log loss "
            f"{row['log_loss']:.4f}, edge {row['edge']:.5f} [{row['edge_low']:.5f}, {row['edge_high']:.5f}]"
        )
    for row in report.shadow:
        lines.append(
            f"shadow {row['model']} v{row['challenger']} vs v{row['champion']}: {row['rows']} matured bars, "
            f"log loss {row['challenger_log_loss']:.5f} vs {row['champion_log_loss']:.5f}, champion − "
            f"challenger {row['edge']:.5f} [{row['edge_low']:.5f}, {row['edge_high']:.5f}]"
        )
    if report.lags:
        lines.append(
            f"lag    bar close → committed: p50 {report.lags['p50_ms']:.0f} ms, "
            f"p99 {report.lags['p99_ms']:.0f} ms ({report.lags['results']:.0f} results)"
        )
    lines += [f"BREACH {b}" for b in report.breaches]
    return "\n".join(lines)


if __name__ == "__main__":
    from pipelines.config import run_cli

    raise SystemExit(run_cli(main))
