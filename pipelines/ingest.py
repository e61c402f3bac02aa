"""Ingest step: MT5 terminal → validated bars (and ticks) in the store under ``data/``.

History: for each configured (symbol, timeframe), fetch from the stored watermark to the
terminal's now, keep closed bars only, convert server time to UTC, validate, and append.
All series are fetched and validated first; only when every series passes are they written,
so bad input (unknown symbol, a terminal that will not initialise, an empty range, a malformed
export, too many bad rows) raises one clear error and writes nothing. Re-running with nothing
new writes nothing; a crash at any point loses and duplicates nothing (see `BarStore`).

Live: the same step in a loop. Terminal errors are retried with exponential backoff and a
reconnect; since every poll starts from the watermark, the gap left by an outage is
backfilled by the first successful poll.

Entry points::

    python -m pipelines.ingest history [--params params.yaml] [--profile fast]
    python -m pipelines.ingest live --polls 10
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import pandas as pd

from pipelines.bar_store import BarStore, SeriesKey, rates_to_frame, ticks_to_frame
from pipelines.config import DataParams
from pipelines.mt5.bars import bar_close_times
from pipelines.mt5.client import Mt5Client
from pipelines.mt5.constants import (
    COPY_TICKS_ALL,
    RES_E_FAIL,
    RES_E_INTERNAL_FAIL,
    RES_E_NOT_FOUND,
    timeframe_value,
)
from pipelines.mt5.server_time import ServerClock
from pipelines.retry import retry_after
from pipelines.validate import ContractError, DataContract, Engine, ValidationResult, ValidationRules

log = logging.getLogger(__name__)


class IngestError(RuntimeError):
    """Bad input or request: retrying will not help. Nothing was written."""


class TerminalError(IngestError):
    """The terminal failed a call (`code`, `message` from last_error); worth retrying."""

    def __init__(self, what: str, error: tuple[int, str]) -> None:
        super().__init__(f"{what}: terminal error {error[0]} ({error[1]})")
        self.code, self.message = error


def terminal_failure(what: str, error: tuple[int, str]) -> IngestError:
    """The exception for a failed terminal call: retryable for connection-class errors and
    MT5's generic failure, final for bad requests (unknown symbol, invalid parameters such as
    a malformed export file)."""
    code = error[0]
    if code <= RES_E_INTERNAL_FAIL or code == RES_E_FAIL:
        return TerminalError(what, error)
    return IngestError(f"{what}: {error[1]} (terminal error {code})")


@dataclass
class SeriesReport:
    """What one ingest did for one series. Times are UTC ISO strings."""

    series: str
    fetched: int = 0
    written: int = 0
    quarantined: int = 0
    flagged: int = 0  # stored bars that broke only soft rules (spikes), in the bar store's flag log
    watermark_before: str | None = None
    watermark_after: str | None = None
    rules: dict[str, int] = field(default_factory=dict)
    zero_spread: int = 0  # good bars whose spread is 0 (exports often carry none)


@dataclass
class Batch:
    """One series' fetched and validated rows, not yet written: rows up to `through` (the last
    fetched row's time, UTC epoch units of the series; None when nothing new) are accounted
    for — good ones stored, bad ones quarantined — once the batch is appended."""

    key: SeriesKey
    result: ValidationResult
    through: int | None
    report: SeriesReport


def _iso(value: int | None, unit: str = "s") -> str | None:
    if value is None:
        return None
    secs = value / 1000 if unit == "ms" else value
    return datetime.fromtimestamp(secs, UTC).isoformat()


def _contract_rules(params: DataParams) -> ValidationRules:
    v = params.validation
    return ValidationRules(v.max_bad_ratio, v.ratio_min_rows, v.spike_atr_multiple, v.atr_window)


def make_contract(params: DataParams, engine: Engine = "gx") -> DataContract:
    """The data contract configured by ``data.validation`` (build once per process); the live
    worker asks for the ``numpy`` engine (same suite, no per-batch GX cost)."""
    return DataContract(_contract_rules(params), engine)


def connect(client: Mt5Client, **kwargs: object) -> None:
    """Initialise the terminal or raise (see `terminal_failure`) with its last_error."""
    if not client.initialize(**kwargs):  # type: ignore[arg-type]
        raise terminal_failure("the terminal will not initialize", client.last_error())


def check_symbols(client: Mt5Client, symbols: Sequence[str]) -> None:
    """Raise `IngestError` naming every symbol the terminal does not know."""
    unknown = []
    for symbol in symbols:
        if client.symbol_info(symbol) is None:
            code, message = client.last_error()
            if code != RES_E_NOT_FOUND:
                raise terminal_failure(f"symbol_info({symbol!r})", (code, message))
            unknown.append(symbol)
    if unknown:
        known = client.symbols_get() or ()
        raise IngestError(
            f"unknown symbol(s) {unknown}: the terminal has "
            f"{sorted(s.name for s in known)[:30]}; fix data.symbols"
        )


def _fetch_bars(
    client: Mt5Client, key: SeriesKey, clock: ServerClock, start: int, now: int
) -> tuple[pd.DataFrame, int | None]:
    """Closed bars with UTC open time in [start, now) and the last one's open time."""
    tf = timeframe_value(key.timeframe or "M1")
    server_now = int(clock.to_server(now))
    rates = client.copy_rates_range(key.symbol, tf, int(clock.to_server(start)), server_now)
    if rates is None:
        raise terminal_failure(f"copy_rates_range({key})", client.last_error())
    closed = rates[bar_close_times(rates["time"], tf) <= server_now]
    utc = clock.to_utc(closed["time"])
    keep = utc >= start
    closed, utc = closed[keep], utc[keep]
    return rates_to_frame(closed, utc), (int(utc[-1]) if utc.size else None)


def _fetch_ticks(
    client: Mt5Client, key: SeriesKey, clock: ServerClock, start_ms: int, now: int
) -> tuple[pd.DataFrame, int | None]:
    """Ticks with UTC time in [start_ms, now − 1 s] and the last one's time (ms)."""
    server_from = int(clock.to_server(start_ms // 1000))
    ticks = client.copy_ticks_range(key.symbol, server_from, int(clock.to_server(now - 1)), COPY_TICKS_ALL)
    if ticks is None:
        raise terminal_failure(f"copy_ticks_range({key})", client.last_error())
    secs = ticks["time_msc"] // 1000
    utc_ms = clock.to_utc(secs) * 1000 + ticks["time_msc"] % 1000
    keep = utc_ms >= start_ms
    ticks, utc_ms = ticks[keep], utc_ms[keep]
    return ticks_to_frame(ticks, utc_ms), (int(utc_ms[-1]) if utc_ms.size else None)


def _prepare(
    client: Mt5Client, store: BarStore, contract: DataContract, key: SeriesKey, params: DataParams, now: int
) -> Batch:
    clock = params.server_time.clock()
    mark = store.watermark(key)
    unit_scale = 1 if key.unit == "s" else 1000
    history_start = int(params.history_start.timestamp())
    if mark is None and history_start >= now:
        raise IngestError(
            f"{key}: empty range — data.history_start "
            f"{params.history_start:%Y-%m-%d %H:%M} UTC is not before the terminal's "
            f"now {_iso(now)}"
        )
    start = mark + 1 if mark is not None else history_start * unit_scale
    if key.kind == "bars":
        frame, last = _fetch_bars(client, key, clock, start, now)
        context = store.tail(key, params.validation.atr_window + 1)
        result = contract.validate_bars(key, frame, clock, context)
    else:
        frame, last = _fetch_ticks(client, key, clock, start, now)
        result = contract.validate_ticks(key, frame, store.tail(key, 1))
    if mark is None and last is None:
        raise IngestError(
            f"{key}: no data between {_iso(start // unit_scale)} and {_iso(now)} UTC; "
            "the terminal has no history there (check data.history_start, the "
            "symbol's history in the terminal, or the export files)"
        )
    report = SeriesReport(
        str(key),
        fetched=len(frame),
        quarantined=result.n_bad,
        flagged=result.n_flagged,
        watermark_before=_iso(mark, key.unit),
        rules=dict(result.rule_counts),
        zero_spread=int((result.good["spread"] == 0).sum()) if key.kind == "bars" and len(result.good) else 0,
    )
    return Batch(key, result, last, report)


def ingest_history(
    client: Mt5Client,
    store: BarStore,
    contract: DataContract,
    params: DataParams,
    symbols: Sequence[str] | None = None,
    timeframes: Sequence[str] | None = None,
    check: bool = True,
    end: datetime | None = None,
) -> list[SeriesReport]:
    """Fetch, validate and append every configured series (see module docstring).

    `client` must be initialised. Raises `IngestError`/`TerminalError`/`ContractError` before
    writing anything if any series fails. `check` = False skips asking the terminal whether
    the symbols exist (a caller that checked them once since connecting). `end` (UTC): take
    only bars that closed by then (default: the terminal's now).
    """
    batches = fetch_validated(client, store, contract, params, symbols, timeframes, check, end)
    return append_validated(store, batches)


def fetch_validated(
    client: Mt5Client,
    store: BarStore,
    contract: DataContract,
    params: DataParams,
    symbols: Sequence[str] | None = None,
    timeframes: Sequence[str] | None = None,
    check: bool = True,
    end: datetime | None = None,
) -> list[Batch]:
    """The first half of `ingest_history`: every series' new rows fetched and run through the
    data contract (`Batch.result`: good rows, quarantined rows), nothing written. Raises
    before anything is written if any series fails, or if a series' bad-row ratio is over
    ``data.validation.max_bad_ratio``. The live worker scores the good rows first and appends
    them (`append_validated`) after its commit."""
    symbols = list(symbols or params.symbols)
    timeframes = list(timeframes or params.timeframes)
    if check:
        check_symbols(client, symbols)
    now = int(client.now_utc().timestamp())
    if end is not None:
        if end.timestamp() <= params.history_start.timestamp():
            raise IngestError(
                f"--end {end:%Y-%m-%d %H:%M} UTC is not after the start "
                f"{params.history_start:%Y-%m-%d %H:%M} UTC"
            )
        now = min(now, int(end.timestamp()))
    keys = [SeriesKey("bars", s, tf) for s in symbols for tf in timeframes]
    if params.ticks:
        keys += [SeriesKey("ticks", s) for s in symbols]
    batches = [_prepare(client, store, contract, key, params, now) for key in keys]
    for batch in batches:
        batch.result.check_ratio(contract.rules)
    return batches


def append_validated(store: BarStore, batches: Sequence[Batch]) -> list[SeriesReport]:
    """The second half of `ingest_history`: each batch appended atomically (good rows, and
    quarantined rows to the quarantine), its report completed. Repeating it is harmless:
    rows at or before a series' watermark are ignored."""
    reports = []
    for batch in batches:
        if batch.through is not None:
            batch.report.written = store.append(
                batch.key, batch.result.good, batch.through, batch.result.quarantined, batch.result.flagged
            )
            if batch.result.n_bad:
                log.warning("quarantined %s", batch.result.describe_bad())
            if batch.result.n_flagged:
                log.info("%s", batch.result.describe_flagged())
        batch.report.watermark_after = _iso(store.watermark(batch.key), batch.key.unit)
        reports.append(batch.report)
    return reports


@dataclass
class LiveStats:
    polls: int = 0
    errors: int = 0
    reconnects: int = 0
    written: int = 0
    quarantined: int = 0
    reports: list[SeriesReport] = field(default_factory=list)


def history(params: DataParams, symbols: Sequence[str] | None = None) -> list[SeriesReport]:
    """Open the configured terminal, run `ingest_history` for every configured series (or only
    `symbols`), and disconnect: the whole history step from its params."""
    from pipelines.terminal import initialize_kwargs, open_terminal

    client = open_terminal(params)
    try:
        connect(client, **initialize_kwargs(params))
        return ingest_history(client, BarStore(params.root), make_contract(params), params, symbols=symbols)
    finally:
        client.shutdown()


def ingest_live(
    client: Mt5Client,
    store: BarStore,
    contract: DataContract,
    params: DataParams,
    polls: int | None = None,
    duration_seconds: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    init_kwargs: dict[str, object] | None = None,
) -> LiveStats:
    """Poll the terminal for newly closed bars until `polls` or `duration_seconds` is reached.

    Terminal errors: disconnect, wait (exponential backoff from ``backoff_initial_seconds`` up
    to ``backoff_max_seconds``), reconnect and continue; after ``max_attempts`` consecutive
    failures the last `TerminalError` is raised. Bad input (`IngestError` other than terminal
    errors, `ContractError`) is raised at once.
    """
    if polls is None and duration_seconds is None:
        raise ValueError("give polls or duration_seconds (live ingestion would never end)")
    cfg = params.live
    stats = LiveStats()
    started = time.monotonic()
    failures, connected = 0, False
    while True:
        if polls is not None and stats.polls >= polls:
            break
        if duration_seconds is not None and time.monotonic() - started >= duration_seconds:
            break
        try:
            if not connected:
                connect(client, **(init_kwargs or {}))
                connected = True
            reports = ingest_history(client, store, contract, params)
        except TerminalError as exc:
            failures += 1
            stats.errors += 1
            if failures >= cfg.max_attempts:
                raise
            backoff = retry_after(failures, cfg.backoff_initial_seconds, cfg.backoff_max_seconds)
            log.warning(
                "live ingest: %s; reconnecting in %.1fs (attempt %d/%d)",
                exc,
                backoff,
                failures,
                cfg.max_attempts,
            )
            client.shutdown()
            connected = False
            stats.reconnects += 1
            sleep(backoff)
            continue
        failures = 0
        stats.polls += 1
        stats.written += sum(r.written for r in reports)
        stats.quarantined += sum(r.quarantined for r in reports)
        stats.reports = reports
        sleep(cfg.poll_seconds)
    return stats


def _print_reports(reports: Sequence[SeriesReport]) -> None:
    frame = pd.DataFrame([asdict(r) for r in reports])
    if frame.empty:
        print("nothing to ingest")
        return
    frame["rules"] = frame["rules"].map(lambda d: ", ".join(f"{k}={v}" for k, v in d.items()) or "-")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(frame.drop(columns="zero_spread").to_string(index=False))
    for line in spread_notes(reports):
        print(line)


def spread_notes(reports: Sequence[SeriesReport]) -> list[str]:
    """One note per series whose new bars carry a zero spread: costs would be understated, so
    the backtest charges ``models.backtest.assumed_spread_pips`` on those bars instead."""
    return [
        f"note: {r.series}: spread is 0 on {r.zero_spread:,} of {r.written or r.fetched:,} bars (the export "
        "carries none?); the backtest charges models.backtest.assumed_spread_pips there"
        for r in reports
        if r.zero_spread
    ]


def _utc_arg(text: str) -> datetime:
    """A command-line time: ISO 8601 date or date-time; without an offset it is UTC."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(  # noqa: B904 — argparse shows only this message
            f"{text!r} is not a date or date-time (2024-01-01 or 2024-01-01T06:00)"
        )
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _already_stored(store: BarStore, params: DataParams) -> list[str]:
    """Series that already hold bars: --start does not apply to them (ingestion appends)."""
    out = []
    for symbol in params.symbols:
        for tf in params.timeframes:
            key = SeriesKey("bars", symbol, tf)
            mark = store.watermark(key)
            if mark is not None:
                out.append(
                    f"note: {key} already holds bars through {_iso(mark)} UTC: --start applies only to "
                    f"series not stored yet (ingestion appends after the watermark; remove {params.root} "
                    "to start over)"
                )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from pipelines.config import load_params
    from pipelines.terminal import initialize_kwargs, open_terminal

    parser = argparse.ArgumentParser(
        prog="python -m pipelines.ingest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("mode", choices=["history", "live"])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default=None, help="a profile from params.yaml (e.g. fast)")
    parser.add_argument("--symbols", nargs="*", help="override data.symbols")
    parser.add_argument("--timeframes", nargs="*", help="override data.timeframes")
    parser.add_argument(
        "--start",
        type=_utc_arg,
        help="history: first bar time, UTC (2024-01-01 or 2024-01-01T06:00), overriding data.history_start "
        "for series not stored yet",
    )
    parser.add_argument("--end", type=_utc_arg, help="history: take only bars closed by this UTC time")
    parser.add_argument("--polls", type=int, help="live: stop after this many polls")
    parser.add_argument("--duration", type=float, help="live: stop after this many seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("pipelines").setLevel(logging.INFO)
    overrides: dict[str, object] = {}
    if args.symbols:
        overrides["symbols"] = args.symbols
    if args.timeframes:
        overrides["timeframes"] = args.timeframes
    if args.start is not None:
        overrides["history_start"] = args.start.isoformat()
    if args.mode == "live" and (args.start or args.end):
        parser.error("--start/--end apply to `history`; live follows the terminal from the stored watermark")
    params = load_params(args.params, args.profile, {"data": overrides} if overrides else None).data
    client = open_terminal(params)
    store = BarStore(params.root)
    contract = make_contract(params)
    try:
        if args.mode == "history":
            connect(client, **initialize_kwargs(params))
            if args.start is not None:
                for line in _already_stored(store, params):
                    print(line)
            _print_reports(ingest_history(client, store, contract, params, end=args.end))
        else:
            stats = ingest_live(
                client,
                store,
                contract,
                params,
                polls=args.polls,
                duration_seconds=args.duration,
                init_kwargs=initialize_kwargs(params),
            )
            print(
                f"live: {stats.polls} polls, {stats.written} rows written, "
                f"{stats.quarantined} quarantined, {stats.errors} terminal errors, "
                f"{stats.reconnects} reconnects"
            )
            _print_reports(stats.reports)
    except (IngestError, ContractError) as exc:
        print(f"error: {exc}")
        return 2
    finally:
        client.shutdown()
    return 0


if __name__ == "__main__":
    from pipelines.config import run_cli

    raise SystemExit(run_cli(main))
