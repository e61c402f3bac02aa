"""Files exported from an MT5 (or MT4) terminal: parsing, writing, and a client over a folder.

Formats read (UTF-8, UTF-8 with BOM, or UTF-16 LE/BE with BOM, as the terminal writes them):

* MT5 bars (History Center / "Export Bars"), tab separated::

      <DATE>	<TIME>	<OPEN>	<HIGH>	<LOW>	<CLOSE>	<TICKVOL>	<VOL>	<SPREAD>
      2024.03.01	00:00:00	1.08012	1.08020	1.08005	1.08016	57	0	7

  Daily and longer bars come without the ``<TIME>`` column.
* MT5 ticks ("Export Ticks"), tab separated, millisecond times; a field is empty when that
  price did not change in the tick (the last known value carries forward)::

      <DATE>	<TIME>	<BID>	<ASK>	<LAST>	<VOLUME>	<FLAGS>
      2024.03.01	00:00:00.125	1.08012	1.08019			6

* MT4-style headerless CSV: ``2012.02.01,00:00,1.3000,1.3010,1.2990,1.3005,123``
  (open, high, low, close, tick volume).

Times in the files are the broker's server time and stay so here (the ingest step converts
them to UTC). Any malformed content raises `ExportFormatError` naming the file, line and
problem; nothing is returned for a file that does not parse completely.
"""

from __future__ import annotations

import codecs
import io
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from pipelines.mt5.bars import aggregate_rates
from pipelines.mt5.client import LocalTerminal, SymbolInfo
from pipelines.mt5.constants import (
    RATES_DTYPE,
    RES_E_INVALID_PARAMS,
    RES_E_NOT_FOUND,
    TICKS_DTYPE,
    TIMEFRAMES,
    timeframe_name,
    timeframe_seconds,
    timeframe_value,
)

BAR_HEADER = ["<DATE>", "<TIME>", "<OPEN>", "<HIGH>", "<LOW>", "<CLOSE>", "<TICKVOL>", "<VOL>", "<SPREAD>"]
DAILY_BAR_HEADER = [h for h in BAR_HEADER if h != "<TIME>"]
TICK_HEADER = ["<DATE>", "<TIME>", "<BID>", "<ASK>", "<LAST>", "<VOLUME>", "<FLAGS>"]
MT4_FIELDS = ["date", "time", "open", "high", "low", "close", "volume"]

_BOMS = [
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
]


class ExportFormatError(ValueError):
    """An export file does not have the expected format; the message names file and line."""


def _decode(path: Path) -> bytes:
    """File content as UTF-8 bytes without BOM (UTF-16 files are transcoded)."""
    raw = path.read_bytes()
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            try:
                return raw.decode(encoding).encode("utf-8")
            except UnicodeDecodeError as exc:
                raise ExportFormatError(f"{path.name}: not valid {encoding} text ({exc})") from exc
    if b"\x00" in raw[:4096]:
        raise ExportFormatError(
            f"{path.name}: looks like UTF-16 without a byte-order mark; re-export from the "
            "terminal (which writes the mark) or save the file as UTF-8"
        )
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ExportFormatError(
            f"{path.name}: not UTF-8 and no UTF-16 byte-order mark; re-export from the terminal "
            f"or save as UTF-8 ({exc})"
        ) from exc
    return raw


def _diagnose(
    path: Path, lines: list[str], names: list[str], sep: str, first_line: int, optional: set[str]
) -> str:
    """Find the first bad line with a slow, exact pass; return a message for it."""
    sep_name = "tab" if sep == "\t" else repr(sep)
    for i, line in enumerate(lines, start=first_line):
        if not line.strip():
            continue
        fields = line.split(sep)
        if len(fields) != len(names):
            hint = " (truncated line?)" if len(fields) < len(names) else ""
            return (
                f"{path.name} line {i}: expected {len(names)} {sep_name}-separated fields, "
                f"got {len(fields)}{hint}: {line[:80]!r}"
            )
        for name, value in zip(names, fields, strict=True):
            value = value.strip()
            if name in ("date", "<DATE>"):
                try:
                    datetime.strptime(value, "%Y.%m.%d")
                except ValueError:
                    return f"{path.name} line {i} column {name}: cannot parse {value!r} as a date YYYY.MM.DD"
            elif name in ("time", "<TIME>"):
                if not re.fullmatch(r"\d\d:\d\d(:\d\d(\.\d{1,3})?)?", value):
                    return (
                        f"{path.name} line {i} column {name}: cannot parse {value!r} "
                        "as a time HH:MM[:SS[.mmm]]"
                    )
            elif value == "" and name in optional:
                continue
            else:
                try:
                    float(value)
                except ValueError:
                    return f"{path.name} line {i} column {name}: cannot parse {value!r} as a number"
    return ""


def _read_table(
    path: Path,
    text: bytes,
    names: list[str],
    sep: str,
    skip_header: bool,
    types: dict[str, pa.DataType],
    optional: set[str],
) -> pa.Table:
    try:
        return pacsv.read_csv(
            io.BytesIO(text),
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1 if skip_header else 0),
            parse_options=pacsv.ParseOptions(delimiter=sep),
            convert_options=pacsv.ConvertOptions(
                column_types=types,
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
                null_values=[""],
                include_columns=names,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        lines = text.decode("utf-8").splitlines()
        body = lines[1:] if skip_header else lines
        msg = _diagnose(path, body, names, sep, 2 if skip_header else 1, optional)
        raise ExportFormatError(msg or f"{path.name}: unreadable ({exc})") from exc


def _check_no_missing(
    path: Path, table: pa.Table, required: list[str], first_line: int, lines: bytes
) -> None:
    for name in required:
        col = table.column(name)
        if col.null_count:
            row = int(pc.index(pc.is_null(col), True).as_py())
            text = lines.decode("utf-8").splitlines()
            line = text[row + first_line - 1] if row + first_line - 1 < len(text) else ""
            raise ExportFormatError(
                f"{path.name} line {row + first_line}: empty value in column {name} "
                f"(truncated line?): {line[:80]!r}"
            )


def _parse_times(
    path: Path, date: pa.ChunkedArray, tod: pa.ChunkedArray | None, first_line: int
) -> tuple[np.ndarray, np.ndarray]:
    """(epoch seconds, milliseconds within the second) from DATE and optional TIME strings."""
    fast = _fixed_width_times(date, tod)
    if fast is not None:
        return fast
    day = pc.strptime(date, format="%Y.%m.%d", unit="s", error_is_null=True)
    # strptime normalises impossible days (2023.02.29 → 03.01): formatting back catches them
    invalid = pc.or_kleene(pc.is_null(day), pc.not_equal(pc.strftime(day, format="%Y.%m.%d"), date))
    if pc.any(invalid).as_py():
        row = int(pc.index(pc.fill_null(invalid, True), True).as_py())
        raise ExportFormatError(
            f"{path.name} line {row + first_line} column <DATE>: cannot parse "
            f"{date[row].as_py()!r} as a date YYYY.MM.DD"
        )
    secs = day.cast(pa.int64()).to_numpy()
    ms = np.zeros(secs.size, dtype=np.int64)
    if tod is None:
        return secs, ms
    lengths = pc.utf8_length(tod).to_numpy()
    bad = ~np.isin(lengths, (5, 8, 10, 11, 12))
    if bad.any():
        row = int(np.argmax(bad))
        raise ExportFormatError(
            f"{path.name} line {row + first_line}: cannot parse time "
            f"{tod[row].as_py()!r}; expected HH:MM[:SS[.mmm]]"
        )
    try:
        hh = pc.cast(pc.utf8_slice_codeunits(tod, 0, 2), pa.int64()).to_numpy()
        mm = pc.cast(pc.utf8_slice_codeunits(tod, 3, 5), pa.int64()).to_numpy()
        ss_raw = pc.utf8_slice_codeunits(tod, 6, 8)
        ss = pc.cast(pc.if_else(pc.equal(ss_raw, ""), "0", ss_raw), pa.int64()).to_numpy()
        frac = pc.utf8_slice_codeunits(tod, 9, 12)
        frac = pc.utf8_rpad(frac, 3, "0")
        ms = pc.cast(frac, pa.int64()).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ExportFormatError(f"{path.name}: a time is not HH:MM[:SS[.mmm]] ({exc})") from exc
    if (hh > 23).any() or (mm > 59).any() or (ss > 59).any():
        row = int(np.argmax((hh > 23) | (mm > 59) | (ss > 59)))
        raise ExportFormatError(
            f"{path.name} line {row + first_line}: time {tod[row].as_py()!r} is out of range"
        )
    return secs + hh * 3600 + mm * 60 + ss, ms


def _fixed_chars(values: pa.ChunkedArray, widths: tuple[int, ...]) -> np.ndarray | None:
    """The strings as an (n, width) uint8 matrix when all share one of `widths`, else None."""
    array = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if array.null_count or len(array) == 0 or array.type != pa.string():
        return None
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32, count=len(array) + 1, offset=array.offset * 4)
    width = int(offsets[1] - offsets[0])
    if width not in widths or int(offsets[-1] - offsets[0]) != width * len(array):
        return None
    if not np.all(np.diff(offsets) == width):
        return None
    data = np.frombuffer(array.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    return data.reshape(-1, width)


def _digits(chars: np.ndarray, cols: list[int]) -> np.ndarray | None:
    """The decimal number in columns `cols` of each row, or None if any is not a digit."""
    digits = chars[:, cols].astype(np.int64) - 48
    if digits.min() < 0 or digits.max() > 9:
        return None
    return digits @ (10 ** np.arange(len(cols) - 1, -1, -1))


def _fixed_width_times(
    date: pa.ChunkedArray, tod: pa.ChunkedArray | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Fast path for the terminal's fixed-width ``YYYY.MM.DD`` and ``HH:MM[:SS[.mmm]]``.

    Returns None whenever anything is irregular, so the general path can report it exactly.
    """
    d = _fixed_chars(date, (10,))
    if d is None or not (np.all(d[:, 4] == 46) and np.all(d[:, 7] == 46)):
        return None
    year, month, day = _digits(d, [0, 1, 2, 3]), _digits(d, [5, 6]), _digits(d, [8, 9])
    if year is None or month is None or day is None or month.min() < 1 or month.max() > 12:
        return None
    first = (year - 1970).astype("datetime64[Y]").astype("datetime64[M]") + (month - 1)
    month_days = ((first + 1).astype("datetime64[D]") - first.astype("datetime64[D]")).astype(np.int64)
    if day.min() < 1 or np.any(day > month_days):
        return None
    secs = (first.astype("datetime64[D]").astype(np.int64) + day - 1) * 86400
    ms = np.zeros(secs.size, dtype=np.int64)
    if tod is None:
        return secs, ms
    t = _fixed_chars(tod, (5, 8, 12))
    if t is None or not np.all(t[:, 2] == 58):
        return None
    hh, mm = _digits(t, [0, 1]), _digits(t, [3, 4])
    ss = _digits(t, [6, 7]) if t.shape[1] >= 8 else np.zeros_like(secs)
    if t.shape[1] >= 8 and not np.all(t[:, 5] == 58):
        return None
    if t.shape[1] == 12:
        if not np.all(t[:, 8] == 46):
            return None
        ms = _digits(t, [9, 10, 11])
    if hh is None or mm is None or ss is None or ms is None:
        return None
    if hh.max() > 23 or mm.max() > 59 or ss.max() > 59:
        return None
    return secs + hh * 3600 + mm * 60 + ss, ms


def _first_line(text: bytes) -> str:
    end = text.find(b"\n")
    return text[: end if end >= 0 else len(text)].decode("utf-8").rstrip("\r")


def _check_header(path: Path, header: str, expected_sets: list[list[str]]) -> list[str]:
    fields = header.split("\t")
    for expected in expected_sets:
        if fields == expected:
            return expected
    if len(fields) == 1 and header.startswith("<"):
        for sep in (",", ";", " "):
            if len(header.split(sep)) in {len(e) for e in expected_sets}:
                raise ExportFormatError(
                    f"{path.name}: wrong separator {sep!r} in the header; MT5 exports are tab "
                    "separated (re-export from the terminal, or convert separators to tabs)"
                )
    raise ExportFormatError(
        f"{path.name}: unexpected header {header[:120]!r}; expected "
        + " or ".join("\\t".join(e) for e in expected_sets)
    )


def read_bar_export(path: str | Path) -> np.ndarray:
    """Parse an MT5 bar export (intraday or daily) or an MT4 headerless CSV into RATES_DTYPE.

    Times stay in the file's (server) time. Raises `ExportFormatError` on any malformed line.
    """
    path = Path(path)
    text = _decode(path)
    if not text or text.isspace():
        raise ExportFormatError(f"{path.name}: the file is empty")
    header = _first_line(text)
    if not header.startswith("<"):
        return _read_mt4(path, text)
    names = _check_header(path, header, [BAR_HEADER, DAILY_BAR_HEADER])
    prices = {n: pa.float64() for n in ("<OPEN>", "<HIGH>", "<LOW>", "<CLOSE>")}
    types: dict[str, pa.DataType] = {
        "<DATE>": pa.string(),
        "<TIME>": pa.string(),
        **prices,
        "<TICKVOL>": pa.int64(),
        "<VOL>": pa.int64(),
        "<SPREAD>": pa.int64(),
    }
    table = _read_table(path, text, names, "\t", True, {n: types[n] for n in names}, set())
    _check_no_missing(path, table, names, 2, text)
    secs, _ = _parse_times(path, table["<DATE>"], table["<TIME>"] if "<TIME>" in names else None, 2)
    out = np.zeros(table.num_rows, dtype=RATES_DTYPE)
    out["time"] = secs
    for src, dst in [("<OPEN>", "open"), ("<HIGH>", "high"), ("<LOW>", "low"), ("<CLOSE>", "close")]:
        out[dst] = table[src].to_numpy()
    _set_nonneg(path, out, "tick_volume", table["<TICKVOL>"].to_numpy(), 2)
    _set_nonneg(path, out, "real_volume", table["<VOL>"].to_numpy(), 2)
    out["spread"] = table["<SPREAD>"].to_numpy()
    return out


def _set_nonneg(path: Path, out: np.ndarray, field: str, values: np.ndarray, first_line: int) -> None:
    if (values < 0).any():
        row = int(np.argmax(values < 0))
        raise ExportFormatError(f"{path.name} line {row + first_line}: negative {field} {values[row]}")
    out[field] = values


def _read_mt4(path: Path, text: bytes) -> np.ndarray:
    header = _first_line(text)
    if header.count(",") != len(MT4_FIELDS) - 1:
        raise ExportFormatError(
            f"{path.name}: first line {header[:80]!r} is neither an MT5 export header "
            f"(<DATE>\\t<TIME>…) nor an MT4 CSV row (date,time,open,high,low,close,volume)"
        )
    types = {
        "date": pa.string(),
        "time": pa.string(),
        "volume": pa.float64(),
        **{n: pa.float64() for n in ("open", "high", "low", "close")},
    }
    table = _read_table(path, text, MT4_FIELDS, ",", False, types, set())
    _check_no_missing(path, table, MT4_FIELDS, 1, text)
    secs, _ = _parse_times(path, table["date"], table["time"], 1)
    out = np.zeros(table.num_rows, dtype=RATES_DTYPE)
    out["time"] = secs
    for n in ("open", "high", "low", "close"):
        out[n] = table[n].to_numpy()
    _set_nonneg(path, out, "tick_volume", table["volume"].to_numpy().astype(np.int64), 1)
    return out


def read_tick_export(path: str | Path) -> np.ndarray:
    """Parse an MT5 tick export into TICKS_DTYPE (server time, empty prices carried forward)."""
    path = Path(path)
    text = _decode(path)
    if not text or text.isspace():
        raise ExportFormatError(f"{path.name}: the file is empty")
    names = _check_header(path, _first_line(text), [TICK_HEADER])
    optional = {"<BID>", "<ASK>", "<LAST>", "<VOLUME>"}
    types = {
        "<DATE>": pa.string(),
        "<TIME>": pa.string(),
        "<BID>": pa.float64(),
        "<ASK>": pa.float64(),
        "<LAST>": pa.float64(),
        "<VOLUME>": pa.float64(),
        "<FLAGS>": pa.int64(),
    }
    table = _read_table(path, text, names, "\t", True, types, optional)
    _check_no_missing(path, table, ["<DATE>", "<TIME>", "<FLAGS>"], 2, text)
    secs, ms = _parse_times(path, table["<DATE>"], table["<TIME>"], 2)
    out = np.zeros(table.num_rows, dtype=TICKS_DTYPE)
    out["time"] = secs
    out["time_msc"] = secs * 1000 + ms
    for src, dst in [("<BID>", "bid"), ("<ASK>", "ask"), ("<LAST>", "last")]:
        out[dst] = _ffill(table[src].to_numpy(zero_copy_only=False))
    vol = np.nan_to_num(table["<VOLUME>"].to_numpy(zero_copy_only=False), nan=0.0)
    out["volume"] = vol.astype(np.uint64)
    out["volume_real"] = vol
    out["flags"] = table["<FLAGS>"].to_numpy()
    return out


def _ffill(values: np.ndarray) -> np.ndarray:
    """Carry the last known value forward; 0 before the first one (MT5: no price yet)."""
    values = values.astype(float)
    known = ~np.isnan(values)
    idx = np.where(known, np.arange(values.size), 0)
    np.maximum.accumulate(idx, out=idx)
    filled = values[idx]
    filled[~known & (np.cumsum(known) == 0)] = 0.0
    return filled


# --- writers (for users converting data, and for tests and benchmarks) ----------------------------
def _date_time_strings(secs: np.ndarray, ms: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    dt = secs.astype("datetime64[s]")
    day = np.datetime_as_string(dt.astype("datetime64[D]"))
    tod = np.datetime_as_string(dt, unit="s")
    dates = np.char.replace(day, "-", ".")
    times = np.array([s[11:] for s in tod.tolist()])
    if ms is not None:
        times = np.char.add(np.char.add(times, "."), np.char.zfill(ms.astype(str), 3))
    return dates, times


def _fmt(values: np.ndarray, digits: int) -> np.ndarray:
    return np.char.mod(f"%.{digits}f", values)


def _write(path: Path, lines: list[str], encoding: str) -> None:
    data = "\r\n".join(lines) + "\r\n"
    path.write_bytes(
        data.encode(encoding) if encoding != "utf-16" else codecs.BOM_UTF16_LE + data.encode("utf-16-le")
    )


def write_bar_export(
    path: str | Path, rates: np.ndarray, digits: int, daily: bool = False, encoding: str = "utf-16"
) -> Path:
    """Write rates as the MT5 terminal's bar export (UTF-16 LE with BOM by default)."""
    path = Path(path)
    dates, times = _date_time_strings(rates["time"], None)
    cols = [dates] + ([] if daily else [times])
    cols += [_fmt(rates[n], digits) for n in ("open", "high", "low", "close")]
    cols += [rates[n].astype(str) for n in ("tick_volume", "real_volume", "spread")]
    header = "\t".join(DAILY_BAR_HEADER if daily else BAR_HEADER)
    _write(path, [header] + ["\t".join(r) for r in zip(*cols, strict=True)], encoding)
    return path


def write_tick_export(path: str | Path, ticks: np.ndarray, digits: int, encoding: str = "utf-16") -> Path:
    """Write ticks as the MT5 terminal's tick export; unchanged prices are left empty."""
    path = Path(path)
    dates, times = _date_time_strings(ticks["time_msc"] // 1000, ticks["time_msc"] % 1000)
    bid, ask = _fmt(ticks["bid"], digits), _fmt(ticks["ask"], digits)
    bid_changed = np.r_[True, ticks["bid"][1:] != ticks["bid"][:-1]]
    ask_changed = np.r_[True, ticks["ask"][1:] != ticks["ask"][:-1]]
    bid = np.where(bid_changed, bid, "")
    ask = np.where(ask_changed, ask, "")
    last = np.where(ticks["last"] > 0, _fmt(ticks["last"], digits), "")
    vol = np.where(ticks["volume"] > 0, ticks["volume"].astype(str), "")
    cols = [dates, times, bid, ask, last, vol, ticks["flags"].astype(str)]
    _write(path, ["\t".join(TICK_HEADER)] + ["\t".join(r) for r in zip(*cols, strict=True)], encoding)
    return path


def write_mt4_csv(path: str | Path, rates: np.ndarray, digits: int) -> Path:
    """Write rates as an MT4-style headerless CSV (``date,HH:MM,o,h,l,c,volume``)."""
    path = Path(path)
    dates, times = _date_time_strings(rates["time"], None)
    times = np.array([t[:5] for t in times.tolist()])
    cols = [dates, times] + [_fmt(rates[n], digits) for n in ("open", "high", "low", "close")]
    cols.append(rates["tick_volume"].astype(str))
    _write(path, [",".join(r) for r in zip(*cols, strict=True)], "utf-8")
    return path


# --- a terminal over a folder of exports ------------------------------------------------------------
_MT4_PERIODS = {
    str(timeframe_seconds(v) // 60): name for name, v in TIMEFRAMES.items() if name != "MN1" and name != "W1"
} | {"10080": "W1", "43200": "MN1"}


def _infer_digits(prices: np.ndarray) -> int:
    sample = prices[:10_000]
    for digits in range(0, 9):
        scaled = sample * 10**digits
        if np.all(np.abs(scaled - np.rint(scaled)) < 1e-6):
            return digits
    return 8


def _length(tf: str) -> int:
    """Sortable bar length (MN1 longest)."""
    return 31 * 86400 if tf == "MN1" else timeframe_seconds(tf)


def _tiles(lower: str, higher: str) -> bool:
    """Whether bars of `lower` nest exactly inside bars of `higher` on the broker's grid: a
    shorter bar length that divides the longer (any intraday or daily one for W1 and MN1; D1
    for MN1, not W1 for MN1)."""
    if lower == higher or _length(lower) >= _length(higher):
        return False
    if higher == "MN1":
        return lower != "W1"
    return timeframe_seconds(higher) % timeframe_seconds(lower) == 0


class ExportFileClient(LocalTerminal):
    """An MT5 terminal whose history is a folder of exported files.

    File names: ``{SYMBOL}_{TF}[_anything].csv|txt|tsv`` for MT5 bar exports (the terminal's
    default name, e.g. ``EURUSD_M1_202401020000_202401312359.csv``), ``{SYMBOL}{minutes}.csv``
    for MT4 CSVs (``EURUSD60.csv``), and ``{SYMBOL}_TICKS[_anything].csv`` for tick exports.
    Several files for one series are merged (later files win on equal times). A timeframe with
    no file of its own is aggregated from the longest lower timeframe that tiles it (`source`:
    M5 → M15, H1, H4, D1; H1 → H4, D1; any intraday one → W1, MN1), on the broker's grid: the
    files' times are server time, as the terminal writes them. `digits` per symbol may be
    given; otherwise they are inferred from the prices.
    """

    def __init__(self, directory: str | Path, digits: dict[str, int] | None = None) -> None:
        super().__init__()
        self.directory = Path(directory)
        self._digits = dict(digits or {})
        self._bar_files: dict[tuple[str, str], list[Path]] = {}
        self._tick_files: dict[str, list[Path]] = {}
        self._rates_cache: dict[tuple[str, str], np.ndarray] = {}
        self._ticks_cache: dict[str, np.ndarray] = {}

    def _connect(self, path: str | None, **kwargs: Any) -> tuple[int, str] | None:
        if not self.directory.is_dir():
            return (RES_E_INVALID_PARAMS, f"export folder {self.directory} does not exist")
        self._bar_files.clear()
        self._tick_files.clear()
        self._rates_cache.clear()
        self._ticks_cache.clear()
        for file in sorted(self.directory.iterdir()):
            if file.suffix.lower() not in (".csv", ".txt", ".tsv") or file.name.startswith("."):
                continue
            stem = file.stem
            m = re.fullmatch(r"([A-Za-z0-9.#]+?)_TICKS(_.*)?", stem, flags=re.IGNORECASE)
            if m:
                self._tick_files.setdefault(m.group(1), []).append(file)
                continue
            m = re.fullmatch(r"([A-Za-z0-9.#]+?)_(M\d+|H\d+|D1|W1|MN1)(_.*)?", stem)
            if m and m.group(2) in TIMEFRAMES:
                self._bar_files.setdefault((m.group(1), m.group(2)), []).append(file)
                continue
            m = re.fullmatch(r"([A-Za-z#.]+)(\d+)", stem)
            if m and m.group(2) in _MT4_PERIODS:
                self._bar_files.setdefault((m.group(1), _MT4_PERIODS[m.group(2)]), []).append(file)
        if not self._bar_files and not self._tick_files:
            return (
                RES_E_INVALID_PARAMS,
                f"no MT5/MT4 export files in {self.directory} "
                "(expected names like EURUSD_M1.csv, EURUSD60.csv, EURUSD_TICKS.csv)",
            )
        return None

    def _symbol_names(self) -> list[str]:
        return sorted({s for s, _ in self._bar_files} | set(self._tick_files))

    def _load_rates(self, symbol: str, tf: str) -> np.ndarray:
        key = (symbol, tf)
        if key not in self._rates_cache:
            files = self._bar_files.get(key)
            if files:
                parts = [read_bar_export(f) for f in files]
                rates = parts[0] if len(parts) == 1 else np.concatenate(parts)
                steps = np.diff(rates["time"])
                if steps.size and steps.min() <= 0:  # overlapping files: later files win
                    rates = rates[np.argsort(rates["time"], kind="stable")]
                    rates = rates[np.r_[rates["time"][1:] != rates["time"][:-1], True]]
                self._rates_cache[key] = rates
            elif (source := self.source(symbol, tf)) is not None:
                self._rates_cache[key] = aggregate_rates(self._load_rates(symbol, source), tf)
            else:
                self._rates_cache[key] = np.zeros(0, dtype=RATES_DTYPE)
        return self._rates_cache[key]

    def source(self, symbol: str, tf: str) -> str | None:
        """The timeframe `symbol`'s `tf` bars are built from when it has no file of its own:
        the longest one with a file that tiles `tf` (its bars nest exactly in `tf`'s); None
        when there is none."""
        candidates = [t for (s, t) in self._bar_files if s == symbol and _tiles(t, tf)]
        return max(candidates, key=_length) if candidates else None

    def _load_ticks(self, symbol: str) -> np.ndarray:
        if symbol not in self._ticks_cache:
            files = self._tick_files.get(symbol, [])
            ticks = (
                np.concatenate([read_tick_export(f) for f in files])
                if files
                else np.zeros(0, dtype=TICKS_DTYPE)
            )
            self._ticks_cache[symbol] = ticks[np.argsort(ticks["time_msc"], kind="stable")]
        return self._ticks_cache[symbol]

    def _digits_for(self, symbol: str) -> int:
        if symbol not in self._digits:
            tfs = [tf for s, tf in self._bar_files if s == symbol]
            prices = self._load_rates(symbol, tfs[0])["close"] if tfs else self._load_ticks(symbol)["bid"]
            self._digits[symbol] = _infer_digits(prices)
        return self._digits[symbol]

    def _symbol_info(self, symbol: str) -> SymbolInfo:
        digits = self._digits_for(symbol)
        tfs = [tf for s, tf in self._bar_files if s == symbol]
        last = self._load_rates(symbol, tfs[0])[-1:] if tfs else None
        ticks = self._load_ticks(symbol)
        bid = (
            float(ticks["bid"][-1])
            if ticks.size
            else (float(last["close"][0]) if last is not None and last.size else 0.0)
        )
        ask = float(ticks["ask"][-1]) if ticks.size else bid
        return SymbolInfo(
            name=symbol,
            description=f"{symbol} (from export files)",
            path=str(self.directory),
            currency_base=symbol[:3],
            currency_profit=symbol[3:6],
            digits=digits,
            point=10.0**-digits,
            spread=0,
            spread_float=True,
            trade_tick_size=10.0**-digits,
            trade_contract_size=100_000.0,
            visible=True,
            time=int(ticks["time"][-1]) if ticks.size else 0,
            bid=bid,
            ask=ask,
        )

    def _first_time(self, symbol: str) -> int:
        firsts = [
            int(self._load_rates(s, tf)["time"][0])
            for s, tf in self._bar_files
            if s == symbol and self._load_rates(s, tf).size
        ]
        ticks = self._load_ticks(symbol)
        if ticks.size:
            firsts.append(int(ticks["time"][0]))
        return min(firsts) if firsts else 0

    def _rates(self, symbol: str, timeframe: int, start: int, end: int) -> np.ndarray:
        rates = self._load_rates(symbol, timeframe_name(timeframe_value(timeframe)))
        lo, hi = np.searchsorted(rates["time"], [start, end + 1])
        return rates[lo:hi]

    def _ticks(self, symbol: str, start_msc: int, end_msc: int) -> np.ndarray:
        ticks = self._load_ticks(symbol)
        lo, hi = np.searchsorted(ticks["time_msc"], [start_msc, end_msc + 1])
        return ticks[lo:hi]

    def copy_rates_range(self, symbol: str, timeframe: int, date_from: Any, date_to: Any) -> Any:
        return self._parsed(super().copy_rates_range, symbol, timeframe, date_from, date_to)

    def copy_rates_from(self, symbol: str, timeframe: int, date_from: Any, count: int) -> Any:
        return self._parsed(super().copy_rates_from, symbol, timeframe, date_from, count)

    def copy_rates_from_pos(self, symbol: str, timeframe: int, start_pos: int, count: int) -> Any:
        return self._parsed(super().copy_rates_from_pos, symbol, timeframe, start_pos, count)

    def copy_ticks_range(self, symbol: str, date_from: Any, date_to: Any, flags: int) -> Any:
        return self._parsed(super().copy_ticks_range, symbol, date_from, date_to, flags)

    def copy_ticks_from(self, symbol: str, date_from: Any, count: int, flags: int) -> Any:
        return self._parsed(super().copy_ticks_from, symbol, date_from, count, flags)

    def symbol_info(self, symbol: str) -> Any:
        return self._parsed(super().symbol_info, symbol)

    def _parsed(self, fn: Any, *args: Any) -> Any:
        """Run an API call; a malformed file turns into None + last_error (invalid parameters:
        the file behind the request is not a valid export), as MT5 reports failures."""
        try:
            return fn(*args)
        except ExportFormatError as exc:
            return self._fail(RES_E_INVALID_PARAMS, str(exc))

    def _check(self, symbol: str | None = None, timeframe: int | None = None) -> bool:
        ok = super()._check(symbol, timeframe)
        if ok and symbol is not None and timeframe is not None:
            tf = timeframe_name(timeframe)
            if (symbol, tf) not in self._bar_files and self.source(symbol, tf) is None:
                have = sorted({t for (s, t) in self._bar_files if s == symbol}, key=_length)
                lower = [t for t in TIMEFRAMES if _tiles(t, tf)]
                self._fail(
                    RES_E_NOT_FOUND,
                    f"no {tf} bar export for {symbol} in {self.directory}, and none it can be built from "
                    f"({symbol} has {', '.join(have) or 'no bar files'}; {tf} is built from any of "
                    f"{', '.join(sorted(lower, key=_length)[-4:])} or lower): export {symbol} {tf} from "
                    f"the terminal, or a lower timeframe such as {symbol}_M5.csv, or drop {tf} from "
                    "data.timeframes",
                )
                return False
        return ok
