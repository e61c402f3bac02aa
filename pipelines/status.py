"""One status view for operators (issue 18): every series' freshness, every served model's
champion and challenger with the gate's verdict, live skill and lag, open alerts and silences.

    python -m pipelines.status                                  # one screen, now
    python -m pipelines.status silence 'stale:XAUUSD:*' --hours 2   # no notifications for 2 h
    python -m pipelines.status unsilence 'stale:XAUUSD:*'

Runs every check (`pipelines.monitor.check`) without changing the alert state (the monitor flow
owns it: only it notifies). The same view is the monitor flow's ``monitor-status`` artifact.
Times UTC.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pipelines.monitor import Alerts, MonitorReport, check


def served_models(params: Any) -> list[dict[str, str]]:
    """Per served model: champion and challenger versions and the gate's verdict on each."""
    from pipelines.registry import Registry, served_model_names

    registry = Registry(params.registry.tracking_uri)
    out = []
    for name in served_model_names(params):
        try:
            aliases = registry.aliases(name)
        except Exception as exc:  # noqa: BLE001 - registry unreachable or model unknown: say so
            out.append({"model": name, "champion": "?", "challenger": "?", "gate": f"unreadable: {exc}"[:80]})
            continue
        row = {
            "model": name,
            "champion": aliases.get("champion", "-"),
            "challenger": aliases.get("challenger", "-"),
        }
        gate = []
        for alias in ("champion", "challenger"):
            version = aliases.get(alias)
            if version is None:
                continue
            tags = registry.version_tags(name, version)
            edge = tags.get("gate_edge")
            low, high = tags.get("gate_edge_low"), tags.get("gate_edge_high")
            skill = tags.get("gate_skill", "unknown")
            gate.append(f"v{version} skill {skill}" + (f" {edge} [{low}, {high}]" if edge else ""))
        row["gate"] = "; ".join(gate) or ("never gated" if aliases else "not built yet")
        out.append(row)
    return out


def status_lines(
    report: MonitorReport, alerts: Alerts, models: list[dict[str, str]] | None = None
) -> list[str]:
    """The status view as lines of text (see module docstring)."""
    now = datetime.now(UTC).timestamp()
    lines = ["SERIES"]
    for r in report.freshness:
        mark = "STALE" if r["stale"] else "ok"
        lines.append(
            f"  {mark:5} {r['series']:<12} newest bar {r['newest_bar_utc']} UTC, "
            f"{r['missing_open_bars']} open-market bar(s) missing"
        )
    if models is not None:
        lines.append("MODELS")
        for m in models:
            lines.append(
                f"  {m['model']}: champion {m['champion']}, challenger {m['challenger']} — {m['gate']}"
            )
    lines.append(
        "LIVE" + (f" (bars opened since {report.live_since:%Y-%m-%d %H:%M} UTC)" if report.live_since else "")
    )
    for r in report.calibration:
        lines.append(
            f"  {r['by']} {r['key']}: {r['rows']} matured rows, ECE {r['ece']:.4f}, edge over the base rate "
            f"{r['edge']:.5f} [{r['edge_low']:.5f}, {r['edge_high']:.5f}]"
        )
    if not report.calibration:
        lines.append("  no matured live probabilities")
    for r in report.shadow:
        lines.append(
            f"  shadow {r['model']} v{r['challenger']} vs v{r['champion']}: {r['rows']} matured bars, "
            f"log loss {r['challenger_log_loss']:.5f} vs {r['champion_log_loss']:.5f}, champion − challenger "
            f"{r['edge']:.5f} [{r['edge_low']:.5f}, {r['edge_high']:.5f}]"
        )
    if report.lags:
        lines.append(
            f"  lag bar close → committed: p50 {report.lags['p50_ms']:.0f} ms, "
            f"p99 {report.lags['p99_ms']:.0f} ms ({report.lags['results']:.0f} results)"
        )
    if report.api:
        lines.append(
            f"  scoring API: {report.api['requests']:.0f} requests, "
            f"{report.api['errors']:.0f} 5xx since it started"
        )
    lines.append("ALERTS")
    breached = {f.check: f.message for f in report.findings if f.breached}
    for check_id, message in sorted({**alerts.open, **breached}.items()):
        lines.append(f"  OPEN  {check_id}: {message}")
    for pattern, until in sorted(alerts.silenced.items()):
        if until > now:
            lines.append(
                f"  SILENCED {pattern} until {datetime.fromtimestamp(until, UTC):%Y-%m-%d %H:%M} UTC"
            )
    if len(lines) and lines[-1] == "ALERTS":
        lines.append("  none")
    return lines


def status_markdown(report: MonitorReport, alerts: Alerts) -> str:
    """The status view as a Prefect markdown artifact, with its plots (`status_plots`)."""
    import base64

    body = "\n".join(status_lines(report, alerts))
    head = "BREACHED" if report.breaches else "healthy"
    images = "".join(
        f"\n\n## {title}\n\n![{title}](data:image/png;base64,{base64.b64encode(png).decode()})"
        for title, png in status_plots(report).items()
    )
    return f"# mt5prob status: {head}\n\n```\n{body}\n```{images}\n"


def status_plots(report: MonitorReport) -> dict[str, bytes]:
    """PNG plots of what the report measured (only those with data): the live lag histogram,
    the PSI of every feature per symbol, and live reliability over time (ECE and log-loss
    improvement over the base rate per UTC day, per model version)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    def png(fig: Any) -> bytes:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        return buf.getvalue()

    out: dict[str, bytes] = {}
    lags = np.asarray(report.lag_values, dtype=float)
    if lags.size:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.hist(lags, bins=40, color="C0")
        for q, style in ((50, "--"), (99, ":")):
            ax.axvline(
                np.percentile(lags, q), color="k", ls=style, label=f"p{q} {np.percentile(lags, q):.0f} ms"
            )
        ax.set_xlabel("bar close → committed (ms)")
        ax.set_ylabel("results")
        ax.legend()
        out["Live lag"] = png(fig)
    if report.psi:
        fig, axes = plt.subplots(1, len(report.psi), figsize=(4.5 * len(report.psi), 4), squeeze=False)
        for ax, (symbol, values) in zip(axes[0], sorted(report.psi.items()), strict=True):
            top = sorted(values.items(), key=lambda kv: kv[1])[-15:]
            ax.barh([k for k, _ in top], [v for _, v in top], color="C1")
            ax.axvline(0.25, color="k", ls=":", lw=1)
            ax.set_title(f"{symbol}: PSI, 15 highest")
            ax.tick_params(axis="y", labelsize=7)
        out["Feature drift (PSI)"] = png(fig)
    m = report.matured
    if len(m):  # each score once per model version (every tenant given it holds a copy)
        m = m.drop_duplicates(["symbol", "timeframe", "bar_time", "model_name", "model_version"])
        fig, (a1, a2) = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
        day = m.bar_time.dt.floor("D")
        for (name, version), g in m.groupby(["model_name", "model_version"]):
            daily = [_daily(d, x) for d, x in g.groupby(day[g.index]) if len(x) >= 20]
            if daily:
                days, eces, edges = zip(*daily, strict=True)
                a1.plot(days, eces, marker=".", label=f"{name} v{version}")
                a2.plot(days, edges, marker=".", label=f"{name} v{version}")
        a1.set_ylabel("ECE per day")
        a2.set_ylabel("edge over base rate")
        a2.axhline(0, color="k", lw=1)
        a1.legend(fontsize=7)
        out["Live reliability over time"] = png(fig)
    return out


def _daily(day: Any, x: Any) -> tuple[Any, float, float]:
    """One day's ECE and edge over its own base rate (class rates for three-class scores) of
    matured result rows `x` of one model version."""
    from models.metrics import base_rate_log_loss, ece, log_loss
    from pipelines.store.results import frame_probabilities

    y, p = x.y.to_numpy(), frame_probabilities(x)
    return day, ece(y, p), base_rate_log_loss(y, classes=p.shape[1] if p.ndim == 2 else None) - log_loss(y, p)


def main(argv: Sequence[str] | None = None) -> int:
    from pipelines.config import load_params
    from pipelines.store import ResultsStore

    parser = argparse.ArgumentParser(prog="python -m pipelines.status", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default=None)
    sub = parser.add_subparsers(dest="command")
    s = sub.add_parser("silence", help="no notifications for a check (or a prefix ending in *) for a while")
    s.add_argument("check")
    s.add_argument("--hours", type=float, required=True)
    u = sub.add_parser("unsilence", help="notify for a silenced check again")
    u.add_argument("check")
    args = parser.parse_args(argv)
    params = load_params(args.params, args.profile)
    alerts = Alerts(params.monitor.state_path)
    if args.command == "silence":
        if args.hours <= 0:
            print("error: --hours must be > 0", file=sys.stderr)
            return 2
        until = datetime.now(UTC) + timedelta(hours=args.hours)
        alerts.silence(args.check, until.timestamp())
        alerts.save()
        print(f"silenced {args.check} until {until:%Y-%m-%d %H:%M} UTC")
        return 0
    if args.command == "unsilence":
        if alerts.silenced.pop(args.check, None) is None:
            print(f"error: {args.check} is not silenced (silenced: {sorted(alerts.silenced) or 'none'})")
            return 2
        alerts.save()
        print(f"{args.check} notifies again")
        return 0
    results = ResultsStore.from_params(params.store)
    try:
        report = check(params, results, alerts=None)
    finally:
        results.close()
    print("\n".join(status_lines(report, alerts, served_models(params))))
    return 0 if report.ok else 1


if __name__ == "__main__":
    from pipelines.config import run_cli

    raise SystemExit(run_cli(main))
