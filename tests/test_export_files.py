"""Files exported from MT5/MT4 terminals: real formats, both encodings, strict errors."""

from __future__ import annotations

import codecs
from datetime import UTC, datetime

import numpy as np
import pytest

from pipelines.mt5 import constants as C
from pipelines.mt5.bars import aggregate_rates
from pipelines.mt5.export_files import (
    BAR_HEADER,
    ExportFileClient,
    ExportFormatError,
    read_bar_export,
    read_tick_export,
    write_bar_export,
    write_mt4_csv,
    write_tick_export,
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
def m1(sim):
    return sim.copy_rates_range("EURUSD", C.TIMEFRAME_M1, utc(2024, 1, 2), utc(2024, 1, 4))


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8", "utf-8-sig"])
def test_bar_export_round_trip(tmp_path, m1, encoding):
    path = write_bar_export(tmp_path / "EURUSD_M1_202401020000_202401040000.csv", m1, 5, encoding=encoding)
    head = path.read_bytes()[:3]
    assert head.startswith(codecs.BOM_UTF16_LE) == (encoding == "utf-16")
    assert head.startswith(codecs.BOM_UTF8) == (encoding == "utf-8-sig")
    assert np.array_equal(read_bar_export(path), m1)


def test_daily_export_without_time_column(tmp_path, sim):
    d1 = sim.copy_rates_range("EURUSD", C.TIMEFRAME_D1, utc(2024, 1, 1), utc(2024, 1, 14))
    path = write_bar_export(tmp_path / "EURUSD_D1.csv", d1, 5, daily=True)
    assert path.read_text(encoding="utf-16").splitlines()[0] == "\t".join(
        h for h in BAR_HEADER if h != "<TIME>"
    )
    assert np.array_equal(read_bar_export(path), d1)


def test_hand_written_mt5_file_is_read_exactly(tmp_path):
    text = (
        "<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<VOL>\t<SPREAD>\r\n"
        "2024.03.01\t00:00:00\t1.08012\t1.08020\t1.08005\t1.08016\t57\t0\t7\r\n"
        "2024.03.01\t00:01:00\t1.08016\t1.08030\t1.08010\t1.08029\t61\t0\t6\r\n"
    )
    path = tmp_path / "EURUSD_M1.csv"
    path.write_bytes(codecs.BOM_UTF16_LE + text.encode("utf-16-le"))
    rates = read_bar_export(path)
    assert rates.dtype == C.RATES_DTYPE
    assert rates["time"].tolist() == [
        int(utc(2024, 3, 1).timestamp()),
        int(utc(2024, 3, 1, 0, 1).timestamp()),
    ]
    assert rates[0]["open"] == 1.08012 and rates[1]["tick_volume"] == 61 and rates[1]["spread"] == 6


def test_tick_export_with_empty_fields(tmp_path, sim):
    ticks = sim.copy_ticks_range("EURUSD", utc(2024, 1, 2, 8), utc(2024, 1, 2, 9), C.COPY_TICKS_ALL)
    path = write_tick_export(tmp_path / "EURUSD_TICKS.csv", ticks, 5)
    lines = path.read_text(encoding="utf-16").splitlines()
    assert lines[0] == "<DATE>\t<TIME>\t<BID>\t<ASK>\t<LAST>\t<VOLUME>\t<FLAGS>"
    assert any("\t\t" in line for line in lines[1:])  # unchanged prices are left empty
    assert len(lines[1].split("\t")[1]) == 12  # HH:MM:SS.mmm
    assert np.array_equal(read_tick_export(path), ticks)


def test_mt4_headerless_csv(tmp_path):
    path = tmp_path / "EURUSD60.csv"
    path.write_text(
        "2012.02.01,00:00,1.3000,1.3010,1.2990,1.3005,123\n2012.02.01,01:00,1.3005,1.3020,1.3001,1.3018,98\n"
    )
    rates = read_bar_export(path)
    assert rates["time"][1] - rates["time"][0] == 3600
    assert rates["time"][0] == int(utc(2012, 2, 1).timestamp())
    assert rates["close"].tolist() == [1.3005, 1.3018] and rates["tick_volume"].tolist() == [123, 98]


GOOD = "2024.03.01\t00:00:00\t1.08012\t1.08020\t1.08005\t1.08016\t57\t0\t7"
HEADER = "\t".join(BAR_HEADER)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "<DATE>;<TIME>;<OPEN>;<HIGH>;<LOW>;<CLOSE>;<TICKVOL>;<VOL>;<SPREAD>\n" + GOOD.replace("\t", ";"),
            "wrong separator ';'",
        ),
        ("<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\n" + GOOD, "unexpected header"),
        (
            f"{HEADER}\n{GOOD}\n2024.03.01\t00:01:00\t1.08016\t1.08030\n",
            "line 3: expected 9 tab-separated fields, got 4",
        ),
        (
            f"{HEADER}\n{GOOD}\n" + GOOD.replace("1.08020", "1,0802O"),
            "line 3 column <HIGH>: cannot parse '1,0802O'",
        ),
        (f"{HEADER}\n" + GOOD.replace("2024.03.01", "01/03/2024"), "line 2 column <DATE>"),
        (f"{HEADER}\n" + GOOD.replace("00:00:00", "0:00"), "line 2"),
        (f"{HEADER}\n" + GOOD.replace("\t57\t", "\t\t"), "line 2"),
        ("", "empty"),
        ("hello world\n", "neither an MT5 export header"),
    ],
)
def test_malformed_bar_files_raise_one_clear_error(tmp_path, content, message):
    path = tmp_path / "EURUSD_M1.csv"
    path.write_text(content)
    with pytest.raises(ExportFormatError, match=message.replace("(", r"\(").replace("[", r"\[")):
        read_bar_export(path)


def test_non_utf8_without_bom_is_refused(tmp_path):
    path = tmp_path / "EURUSD_M1.csv"
    path.write_bytes(f"{HEADER}\n{GOOD}\n".encode("utf-16-le"))  # UTF-16 without its BOM
    with pytest.raises(ExportFormatError, match="UTF-16 without a byte-order mark"):
        read_bar_export(path)


def test_export_client_serves_the_mt5_api(tmp_path, sim, m1):
    write_bar_export(tmp_path / "EURUSD_M1_2024.csv", m1[: len(m1) // 2], 5)
    write_bar_export(tmp_path / "EURUSD_M1_2024b.csv", m1[len(m1) // 2 - 10 :], 5, encoding="utf-8")
    h1 = sim.copy_rates_range("GBPUSD", C.TIMEFRAME_H1, utc(2024, 1, 2), utc(2024, 1, 4))
    write_mt4_csv(tmp_path / "GBPUSD60.csv", h1, 5)
    client = ExportFileClient(tmp_path)
    assert client.initialize()
    assert [s.name for s in client.symbols_get()] == ["EURUSD", "GBPUSD"]
    assert client.symbol_info("EURUSD").digits == 5
    # overlapping files merge; a missing timeframe is aggregated from M1
    got = client.copy_rates_range("EURUSD", C.TIMEFRAME_M1, utc(2024, 1, 1), utc(2024, 1, 5))
    assert np.array_equal(got, m1)
    m15 = client.copy_rates_range("EURUSD", C.TIMEFRAME_M15, utc(2024, 1, 2), utc(2024, 1, 3))
    assert np.array_equal(m15, aggregate_rates(m1, C.TIMEFRAME_M15)[: len(m15)])
    gb = client.copy_rates_from_pos("GBPUSD", C.TIMEFRAME_H1, 0, 3)
    assert np.array_equal(gb["close"], h1["close"][-3:])
    assert client.copy_rates_range("GBPUSD", C.TIMEFRAME_M5, utc(2024, 1, 2), utc(2024, 1, 3)) is None
    assert client.last_error()[0] == C.RES_E_NOT_FOUND
    assert client.copy_rates_range("USDCHF", C.TIMEFRAME_H1, utc(2024, 1, 2), utc(2024, 1, 3)) is None


def test_export_client_reports_malformed_file_as_mt5_error(tmp_path):
    (tmp_path / "EURUSD_M1.csv").write_text(f"{HEADER}\n{GOOD}\n2024.03.01\t00:01:00\t1.0\n")
    client = ExportFileClient(tmp_path)
    assert client.initialize()
    assert client.copy_rates_range("EURUSD", C.TIMEFRAME_M1, 0, 2**40) is None
    code, message = client.last_error()
    assert code == C.RES_E_INVALID_PARAMS and "EURUSD_M1.csv line 3" in message


def test_export_client_refuses_missing_or_empty_folder(tmp_path):
    missing = ExportFileClient(tmp_path / "nope")
    assert not missing.initialize() and "does not exist" in missing.last_error()[1]
    empty = ExportFileClient(tmp_path)
    assert not empty.initialize() and "no MT5/MT4 export files" in empty.last_error()[1]


def test_irregular_time_widths_take_the_general_parser(tmp_path):
    """Fixed-width rows use a fast path; mixed widths must give the same instants."""
    regular = tmp_path / "EURUSD_M1.csv"
    mixed = tmp_path / "GBPUSD_M1.csv"
    rows = [
        "2024.02.29\t23:59:00\t1.1\t1.2\t1.0\t1.1\t5\t0\t3",
        "2024.03.01\t00:00:00\t1.1\t1.2\t1.0\t1.1\t5\t0\t3",
    ]
    regular.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    mixed.write_text(HEADER + "\n" + rows[0] + "\n" + rows[1].replace("00:00:00", "00:00") + "\n")
    a, b = read_bar_export(regular), read_bar_export(mixed)
    assert np.array_equal(a, b)
    assert a["time"].tolist() == [int(utc(2024, 2, 29, 23, 59).timestamp()), int(utc(2024, 3, 1).timestamp())]
    bad_day = tmp_path / "AUDUSD_M1.csv"
    bad_day.write_text(HEADER + "\n" + rows[0].replace("2024.02.29", "2023.02.29") + "\n")
    with pytest.raises(ExportFormatError, match="line 2 column <DATE>: cannot parse '2023.02.29'"):
        read_bar_export(bad_day)


def test_higher_timeframes_are_built_from_any_lower_export_on_the_broker_grid(tmp_path, sim):
    """An H1 export gives H4 and D1, an M5 export gives M15 and H1, exactly the terminal's
    own bars (the simulator's broker runs on server time, UTC+2/+3): prices and volumes."""
    window = (utc(2024, 1, 8), utc(2024, 1, 20))
    write_bar_export(tmp_path / "EURUSD_H1.csv", sim.copy_rates_range("EURUSD", C.TIMEFRAME_H1, *window), 5)
    write_bar_export(tmp_path / "GBPUSD_M5.csv", sim.copy_rates_range("GBPUSD", C.TIMEFRAME_M5, *window), 5)
    client = ExportFileClient(tmp_path)
    assert client.initialize()
    inside = (utc(2024, 1, 9), utc(2024, 1, 18))  # whole bars of every timeframe on both sides
    for symbol, tf, source in (
        ("EURUSD", "H4", "H1"),
        ("EURUSD", "D1", "H1"),
        ("GBPUSD", "M15", "M5"),
        ("GBPUSD", "H1", "M5"),
        ("GBPUSD", "D1", "M5"),
    ):
        assert client.source(symbol, tf) == source
        built = client.copy_rates_range(symbol, C.TIMEFRAMES[tf], *inside)
        truth = sim.copy_rates_range(symbol, C.TIMEFRAMES[tf], *inside)
        assert len(built) == len(truth) > 0, (symbol, tf)
        for field in ("time", "open", "high", "low", "close", "tick_volume"):
            np.testing.assert_allclose(
                built[field], truth[field], rtol=1e-9, err_msg=f"{symbol} {tf} {field}"
            )
    # nothing lower than H1 for EURUSD: M15 cannot be built, and the error says what would fix it
    assert client.copy_rates_range("EURUSD", C.TIMEFRAME_M15, *inside) is None
    code, message = client.last_error()
    assert code == C.RES_E_NOT_FOUND
    assert "no M15 bar export for EURUSD" in message and "EURUSD has H1" in message
    assert "EURUSD_M5.csv" in message and "data.timeframes" in message
