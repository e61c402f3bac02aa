"""History and live ingestion end to end on the simulator and on export files."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.bar_store import BarStore, SeriesKey
from pipelines.config import DataParams
from pipelines.ingest import IngestError, TerminalError, connect, ingest_history, ingest_live, main
from pipelines.mt5 import constants as C
from pipelines.mt5.export_files import write_bar_export
from pipelines.mt5.simulator import MarketSimulator, SimulatorConfig
from pipelines.terminal import open_terminal
from pipelines.validate import ContractError


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def _params(base: DataParams, **changes) -> DataParams:
    return DataParams.model_validate({**base.model_dump(), **changes})


def _run(params: DataParams, contract, store: BarStore | None = None):
    client = open_terminal(params)
    connect(client)
    return ingest_history(client, store or BarStore(params.root), contract, params)


def _files(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*.parquet")}


def test_history_ingest_then_nothing_new(data_params, contract):
    reports = _run(data_params, contract)
    by_series = {r.series: r for r in reports}
    assert set(by_series) == {"EURUSD M5", "EURUSD H1", "XAUUSD M5", "XAUUSD H1"}
    assert all(r.written > 0 and r.quarantined == 0 for r in reports)
    store = BarStore(data_params.root)
    h1 = store.read(SeriesKey("bars", "EURUSD", "H1"))
    # every closed H1 bar up to the simulator's now (2024-01-10 00:00 UTC), in UTC
    assert h1["time"].iloc[-1] == pd.Timestamp("2024-01-09 23:00", tz="UTC")
    assert h1["time"].is_unique and h1["time"].is_monotonic_increasing
    before = _files(Path(data_params.root))
    again = _run(data_params, contract)
    assert all(r.written == 0 and r.fetched == 0 for r in again)
    assert _files(Path(data_params.root)) == before  # nothing rewritten


def test_incremental_equals_one_shot(data_params, contract, tmp_path):
    _run(data_params, contract)
    later = _params(data_params, simulator={**data_params.simulator.model_dump(), "end": utc(2024, 1, 12)})
    _run(later, contract)
    one_shot = _params(later, root=tmp_path / "one-shot")
    _run(one_shot, contract)
    for tf in ("M5", "H1"):
        key = SeriesKey("bars", "XAUUSD", tf)
        pd.testing.assert_frame_equal(BarStore(later.root).read(key), BarStore(one_shot.root).read(key))


def test_broker_server_time_is_stored_as_utc(data_params, contract, tmp_path):
    broker = _params(
        data_params, root=tmp_path / "broker", server_time={"offset_hours": 2, "dst": "us"}, timeframes=["M5"]
    )
    _run(broker, contract)
    _run(_params(data_params, timeframes=["M5"]), contract)
    key = SeriesKey("bars", "EURUSD", "M5")
    a, b = BarStore(data_params.root).read(key), BarStore(broker.root).read(key)
    common = a.merge(b, on="time", suffixes=("", "_broker"))
    assert len(common) > 0.95 * len(a)
    assert np.array_equal(common["close"], common["close_broker"])


def test_ticks_are_ingested_and_validated(data_params, contract):
    params = _params(
        data_params,
        ticks=True,
        symbols=["EURUSD"],
        timeframes=["H1"],
        history_start=utc(2024, 1, 9, 20),
        simulator={**data_params.simulator.model_dump(), "end": utc(2024, 1, 9, 23)},
    )
    reports = {r.series: r for r in _run(params, contract)}
    ticks = BarStore(params.root).read(
        SeriesKey("ticks", "EURUSD"),
    )
    assert reports["EURUSD ticks"].written == len(ticks) > 100
    assert ticks["time"].is_monotonic_increasing and (ticks["ask"] > ticks["bid"]).all()


def _no_data_written(root: Path) -> bool:
    return not list(Path(root).rglob("*.parquet"))


def test_unknown_symbol_is_one_clear_error(data_params, contract):
    params = _params(data_params, symbols=["EURUSD", "EURUSX"])
    with pytest.raises(IngestError, match=r"unknown symbol\(s\) \['EURUSX'\]"):
        _run(params, contract)
    assert _no_data_written(params.root)


def test_terminal_that_will_not_initialize(data_params, tmp_path):
    params = _params(data_params, backend="export", export={"directory": tmp_path / "missing"})
    with pytest.raises(IngestError, match="will not initialize.*does not exist"):
        connect(open_terminal(params))
    assert main(["history", "--params", str(_write_params(tmp_path, params))]) == 2
    assert _no_data_written(params.root)


def test_empty_range(data_params, contract):
    params = _params(data_params, history_start=utc(2024, 2, 1))
    with pytest.raises(IngestError, match="empty range"):
        _run(params, contract)
    assert _no_data_written(params.root)


def _export_dir(tmp_path: Path, sim: MarketSimulator, corrupt: list[int] | None = None) -> Path:
    folder = tmp_path / "exports"
    folder.mkdir(exist_ok=True)
    rates = sim.copy_rates_range("EURUSD", C.TIMEFRAME_M5, utc(2024, 1, 2), utc(2024, 1, 9))
    for i in corrupt or []:
        rates[i]["low"] = rates[i]["high"] + 0.001
    write_bar_export(folder / "EURUSD_M5_export.csv", rates, 5)
    return folder


def _export_params(data_params: DataParams, folder: Path) -> DataParams:
    return _params(
        data_params, backend="export", export={"directory": folder}, symbols=["EURUSD"], timeframes=["M5"]
    )


def test_export_files_ingest_with_quarantine(data_params, contract, tmp_path, sim):
    params = _export_params(data_params, _export_dir(tmp_path, sim, corrupt=[100, 900]))
    (report,) = _run(params, contract)
    assert report.quarantined == 2 and report.rules == {"low<=open": 2, "low<=close": 2}
    store = BarStore(params.root)
    key = SeriesKey("bars", "EURUSD", "M5")
    assert len(store.read(key)) == report.written == report.fetched - 2
    assert len(store.read(key, quarantine=True)) == 2
    (again,) = _run(params, contract)
    assert again.written == 0 and again.quarantined == 0


def test_an_export_without_spread_is_reported_once_per_series(data_params, tmp_path, sim, capsys):
    folder = tmp_path / "export"
    folder.mkdir()
    rates = sim.copy_rates_range("EURUSD", C.TIMEFRAME_M5, utc(2024, 1, 2), utc(2024, 1, 9))
    rates["spread"] = 0  # as many real exports carry it
    write_bar_export(folder / "EURUSD_M5_export.csv", rates, 5)
    params = _params(_export_params(data_params, folder), timeframes=["M5", "H1"])
    assert main(["history", "--params", str(_write_params(tmp_path, params))]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert len(notes) == 2 and all("assumed_spread_pips" in n for n in notes)  # M5, and H1 built from it
    assert notes[0].startswith(f"note: EURUSD M5: spread is 0 on {len(rates):,} of {len(rates):,} bars")


def test_too_many_bad_rows_write_nothing(data_params, contract, tmp_path, sim):
    params = _export_params(data_params, _export_dir(tmp_path, sim, corrupt=list(range(50, 90))))
    with pytest.raises(ContractError, match=r"EURUSD M5: 40 bad rows .* first at 2024-01-02 04:10:00 UTC"):
        _run(params, contract)
    assert _no_data_written(params.root)


def test_malformed_export_is_one_clear_error(data_params, contract, tmp_path, sim):
    folder = _export_dir(tmp_path, sim)
    (folder / "EURUSD_M5_export.csv").write_text(
        "<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<VOL>\t<SPREAD>\n"
        "2024.01.02\t00:00:00\t1.1\t1.2\t1.0\t1.1\t5\t0\t3\n2024.01.02\t00:05:00\t1.1\n"
    )
    params = _export_params(data_params, folder)
    with pytest.raises(IngestError, match="EURUSD_M5_export.csv line 3: expected 9"):
        _run(params, contract)
    assert _no_data_written(params.root)


def _write_params(tmp_path: Path, params: DataParams) -> Path:
    import yaml

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"data": params.model_dump(mode="json")}))
    return path


def test_cli_entry(data_params, tmp_path, capsys):
    path = _write_params(tmp_path, _params(data_params, timeframes=["H1"]))
    assert main(["history", "--params", str(path), "--symbols", "EURUSD"]) == 0
    out = capsys.readouterr().out
    assert "EURUSD H1" in out and "XAUUSD" not in out


def test_cli_history_window_overrides_start_and_stops_at_end(data_params, tmp_path, capsys):
    path = _write_params(tmp_path, _params(data_params, timeframes=["H1"]))
    argv = ["history", "--params", str(path), "--symbols", "EURUSD"]
    assert main([*argv, "--start", "2024-01-03", "--end", "2024-01-05T06:00"]) == 0
    store = BarStore(data_params.root)
    bars = store.read(SeriesKey("bars", "EURUSD", "H1"))
    first, last = bars["time"].min(), bars["time"].max()
    assert first >= pd.Timestamp("2024-01-03", tz="UTC") and first < pd.Timestamp(
        "2024-01-03 02:00", tz="UTC"
    )
    assert last == pd.Timestamp("2024-01-05 05:00", tz="UTC")  # the last bar closed by 06:00
    capsys.readouterr()
    # a stored series keeps appending from its watermark: --start says it does not apply
    assert main([*argv, "--start", "2024-01-02", "--end", "2024-01-08"]) == 0
    assert "already holds bars through 2024-01-05T05:00:00+00:00" in capsys.readouterr().out
    assert store.read(SeriesKey("bars", "EURUSD", "H1"))["time"].min() == first
    with pytest.raises(SystemExit):
        main([*argv, "--start", "January"])
    assert "is not a date" in capsys.readouterr().err
    assert main([*argv, "--start", "2024-01-06", "--end", "2024-01-05"]) == 2
    assert "is not after the start" in capsys.readouterr().out


@pytest.mark.slow
def test_live_ingest_survives_an_outage_without_gaps(tmp_path, contract):
    params = DataParams.model_validate(
        {
            "root": str(tmp_path / "live"),
            "symbols": ["EURUSD"],
            "timeframes": ["M1", "M5"],
            "history_start": "2024-01-03T08:00:00",
            "simulator": {"live": True, "speed": 1200, "end": None, "live_start": "2024-01-03T10:00:00"},
            "live": {
                "poll_seconds": 0.1,
                "backoff_initial_seconds": 0.1,
                "backoff_max_seconds": 0.4,
                "max_attempts": 20,
            },
        }
    )
    client = open_terminal(params)
    assert isinstance(client, MarketSimulator)
    polls = {"n": 0}

    def sleep(seconds: float) -> None:
        polls["n"] += 1
        if polls["n"] == 3:
            client.simulate_outage(0.6)  # ~12 simulated minutes without a terminal
        import time

        time.sleep(seconds)

    stats = ingest_live(client, BarStore(params.root), contract, params, polls=12, sleep=sleep)
    assert stats.errors >= 1 and stats.reconnects >= 1 and stats.polls == 12
    store = BarStore(params.root)
    m1 = store.read(SeriesKey("bars", "EURUSD", "M1"))
    steps = m1["time"].diff().dropna().dt.total_seconds()
    assert (steps == 60).all(), "a gap survived the outage"
    assert m1["time"].iloc[-1] > pd.Timestamp("2024-01-03 10:15", tz="UTC")  # past the outage
    # and the bars are exactly what a history ingest of the same span stores
    history = MarketSimulator(SimulatorConfig(end=utc(2024, 1, 4)))
    history.initialize()
    rates = history.copy_rates_range(
        "EURUSD", C.TIMEFRAME_M1, utc(2024, 1, 3, 8), int(m1["time"].iloc[-1].timestamp())
    )
    assert np.array_equal(rates["close"], m1["close"].to_numpy())
    assert np.array_equal(rates["tick_volume"], m1["tick_volume"].to_numpy())


def test_live_gives_up_after_max_attempts(tmp_path, contract):
    params = DataParams.model_validate(
        {
            "root": str(tmp_path / "live"),
            "symbols": ["EURUSD"],
            "timeframes": ["M5"],
            "history_start": "2024-01-03T08:00:00",
            "simulator": {"live": True, "speed": 60, "end": None, "live_start": "2024-01-03T10:00:00"},
            "live": {"poll_seconds": 0.01, "backoff_initial_seconds": 0.01, "max_attempts": 3},
        }
    )
    client = open_terminal(params)
    client.simulate_outage(60)
    delays: list[float] = []
    with pytest.raises(TerminalError, match="will not initialize"):
        ingest_live(client, BarStore(params.root), contract, params, polls=5, sleep=delays.append)
    assert delays == [0.01, 0.02]  # exponential backoff between the attempts
