"""The bar and tick store under ``data/``: partitioned Parquet, atomic appends, quarantine.

Layout (hive partitions; times UTC)::

    data/bars/symbol=EURUSD/timeframe=M1/part-<lo>-<hi>.parquet
    data/ticks/symbol=EURUSD/part-<lo>-<hi>.parquet
    data/quarantine/bars/symbol=EURUSD/timeframe=M1/part-<lo>-<hi>.parquet
    data/quarantine/ticks/symbol=EURUSD/part-<lo>-<hi>.parquet
    data/flags/bars/symbol=EURUSD/timeframe=H1/part-<lo>-<hi>.parquet   (time, rules)

The flag log holds the open times of stored bars that broke only a soft rule of the data
contract (a spike: kept, since a genuine news bar can be huge) and the rules they broke.

Each data part covers the half-open window of bar *open* times ``(previous watermark, hi]``
(``lo`` is the first instant after the previous watermark; names use UTC like
``20240301T000000`` for bars and ``20240301T000000.000`` for ticks). The watermark of a series
is the largest ``hi``: it is derived from the committed files alone, so there is no separate
state to fall out of step. A part may hold zero rows when a whole window was quarantined.

Writes are atomic: a part is written to a hidden temporary file in the same folder, flushed,
fsynced and renamed into place; the rename is the commit. The quarantine and flag-log parts of
a window are written (under deterministic names) *before* the data part, so a crash anywhere
leaves either the previous state or the new one, and a re-run rewrites identical files. Appends to one series
are serialised with a lock file. Many small parts are compacted by the same write-then-rename;
parts left behind by a crash mid-compaction are covered by the merged part and are ignored on
read and removed on the next compaction.
"""

from __future__ import annotations

import fcntl
import functools
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.atomic_files import write_parquet_atomic

BAR_COLUMNS = ["time", "open", "high", "low", "close", "tick_volume", "spread", "real_volume"]
TICK_COLUMNS = ["time", "bid", "ask", "last", "volume", "flags", "volume_real"]

BAR_SCHEMA = pa.schema(
    [
        ("time", pa.timestamp("s", tz="UTC")),
        ("open", pa.float64()),
        ("high", pa.float64()),
        ("low", pa.float64()),
        ("close", pa.float64()),
        ("tick_volume", pa.int64()),
        ("spread", pa.int32()),
        ("real_volume", pa.int64()),
    ]
)
TICK_SCHEMA = pa.schema(
    [
        ("time", pa.timestamp("ms", tz="UTC")),
        ("bid", pa.float64()),
        ("ask", pa.float64()),
        ("last", pa.float64()),
        ("volume", pa.int64()),
        ("flags", pa.int64()),
        ("volume_real", pa.float64()),
    ]
)
# a folder listed less than this long after its last change is listed again (see `BarStore.parts`)
LISTING_RACE_NS = 100_000_000
_PART = re.compile(r"part-(\d{8}T\d{6}(?:\.\d{3})?)-(\d{8}T\d{6}(?:\.\d{3})?)\.parquet")


@dataclass(frozen=True)
class SeriesKey:
    """One stored series: bars of (symbol, timeframe), or the ticks of a symbol."""

    kind: str  # "bars" | "ticks"
    symbol: str
    timeframe: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("bars", "ticks"):
            raise ValueError(f"unknown series kind {self.kind!r}")
        if (self.kind == "bars") != (self.timeframe is not None):
            raise ValueError("bars need a timeframe; ticks have none")

    @property
    def unit(self) -> str:
        """Time unit of the series' clock: seconds for bars, milliseconds for ticks."""
        return "s" if self.kind == "bars" else "ms"

    @property
    def schema(self) -> pa.Schema:
        return BAR_SCHEMA if self.kind == "bars" else TICK_SCHEMA

    def relpath(self) -> Path:
        p = Path(self.kind) / f"symbol={self.symbol}"
        return p / f"timeframe={self.timeframe}" if self.timeframe else p

    def __str__(self) -> str:
        return f"{self.symbol} {self.timeframe}" if self.timeframe else f"{self.symbol} ticks"


def format_instant(value: int, unit: str) -> str:
    """Epoch value (s or ms) → the compact UTC string used in part names."""
    secs, ms = divmod(int(value), 1000) if unit == "ms" else (int(value), None)
    text = datetime.fromtimestamp(secs, UTC).strftime("%Y%m%dT%H%M%S")
    return text if ms is None else f"{text}.{ms:03d}"


@functools.lru_cache(maxsize=1 << 16)  # part names are listed every live cycle; strptime is slow
def parse_instant(text: str, unit: str) -> int:
    """A part name's compact UTC string → epoch value (s or ms)."""
    base, _, frac = text.partition(".")
    secs = int(datetime.strptime(base, "%Y%m%dT%H%M%S").replace(tzinfo=UTC).timestamp())
    return secs * 1000 + int(frac or 0) if unit == "ms" else secs


@dataclass(frozen=True)
class Part:
    path: Path
    lo: int
    hi: int


def rates_to_frame(rates: np.ndarray, utc_seconds: np.ndarray) -> pd.DataFrame:
    """MT5 rates (RATES_DTYPE) with their UTC open times → a stored-bars frame."""
    return pd.DataFrame(
        {
            "time": pd.to_datetime(utc_seconds.astype("datetime64[s]")).tz_localize("UTC"),
            "open": rates["open"],
            "high": rates["high"],
            "low": rates["low"],
            "close": rates["close"],
            "tick_volume": rates["tick_volume"].astype(np.int64),
            "spread": rates["spread"].astype(np.int32),
            "real_volume": rates["real_volume"].astype(np.int64),
        }
    )


def ticks_to_frame(ticks: np.ndarray, utc_msc: np.ndarray) -> pd.DataFrame:
    """MT5 ticks (TICKS_DTYPE) with their UTC millisecond times → a stored-ticks frame."""
    return pd.DataFrame(
        {
            "time": pd.to_datetime(utc_msc.astype("datetime64[ms]")).tz_localize("UTC"),
            "bid": ticks["bid"],
            "ask": ticks["ask"],
            "last": ticks["last"],
            "volume": ticks["volume"].astype(np.int64),
            "flags": ticks["flags"].astype(np.int64),
            "volume_real": ticks["volume_real"],
        }
    )


def frame_times(frame: pd.DataFrame, unit: str) -> np.ndarray:
    """Epoch integers (s or ms) of a stored frame's ``time`` column."""
    return frame["time"].array.as_unit(unit).asi8


FaultHook = Callable[[str], None]


def _flag_schema(key: SeriesKey) -> pa.Schema:
    return pa.schema([key.schema.field("time"), pa.field("rules", pa.string())])


class BarStore:
    """Bars and ticks under `root` (see module docstring). Safe against crashes at any point.

    `fault_hook`, when given, is called with a stage name ("tmp_written", "quarantine_committed",
    "flags_committed", "data_committed", "compacted") so tests can kill the process at exactly that point.
    """

    def __init__(self, root: str | Path, max_parts: int = 32, fault_hook: FaultHook | None = None) -> None:
        self.root = Path(root)
        self.max_parts = max_parts
        self._fault = fault_hook or (lambda stage: None)
        # series → (rows kept, newest time kept, the tail): see `tail`
        self._tails: dict[SeriesKey, tuple[int, int, pd.DataFrame]] = {}
        self._swept: set[SeriesKey] = set()  # series whose crash leftovers this process removed
        # folder → (its mtime, when it was listed, the parts): see `parts`
        self._listings: dict[Path, tuple[int, int, tuple[Part, ...]]] = {}
        self._file_md5: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) → md5: see content_md5

    # --- paths and listing -------------------------------------------------------------------------
    def series_dir(self, key: SeriesKey, quarantine: bool = False, flags: bool = False) -> Path:
        base = self.root / "quarantine" if quarantine else self.root / "flags" if flags else self.root
        return base / key.relpath()

    def parts(self, key: SeriesKey, quarantine: bool = False, flags: bool = False) -> list[Part]:
        """Committed parts, oldest first, without parts covered by another (crash leftovers).

        A folder's listing is kept and reused while the folder's modification time is the one
        it was listed at (every commit, compaction and sweep creates, renames or removes a file
        in it, which moves that time, whichever process does it) — unless the folder changed
        less than `LISTING_RACE_NS` before it was listed: file times come from a coarse clock,
        so a change right after such a listing could leave the time as it was (the "racy"
        case, as in git's index); those folders are listed again. A live process asks for the
        same series' watermark several times per bar close; one `stat` now answers."""
        folder = self.series_dir(key, quarantine, flags)
        try:
            mtime = os.stat(folder).st_mtime_ns
        except FileNotFoundError:
            return []
        cached = self._listings.get(folder)
        if cached is not None and cached[0] == mtime and cached[1] - mtime > LISTING_RACE_NS:
            return list(cached[2])
        listed_at = time.time_ns()
        found = []
        for name in os.listdir(folder):
            m = _PART.fullmatch(name)
            if m:
                lo, hi = (parse_instant(m.group(i), key.unit) for i in (1, 2))
                found.append(Part(folder / name, lo, hi))
        found.sort(key=lambda p: (p.lo, -p.hi))
        kept: list[Part] = []
        for part in found:
            if kept and part.lo >= kept[-1].lo and part.hi <= kept[-1].hi:
                continue  # covered by a merged part
            kept.append(part)
        self._listings[folder] = (mtime, listed_at, tuple(kept))
        return kept

    def series(self, kind: str = "bars") -> list[SeriesKey]:
        """All series of a kind that have committed data."""
        out = []
        for sym_dir in sorted((self.root / kind).glob("symbol=*")):
            symbol = sym_dir.name.split("=", 1)[1]
            if kind == "ticks":
                out.append(SeriesKey("ticks", symbol))
            else:
                out += [
                    SeriesKey("bars", symbol, d.name.split("=", 1)[1])
                    for d in sorted(sym_dir.glob("timeframe=*"))
                ]
        return out

    def content_md5(self) -> str:
        """The DVC directory hash of everything under `root` — what ``dvc add``/``dvc commit``
        would record in ``data.dvc`` (``<md5>.dir``) — ignoring the store's lock and temporary
        files as ``.dvcignore`` does. Lineage: a model records the hash of the data it read,
        which after live ingestion is newer than ``data.dvc``. Reads every file (files seen
        before with the same size and modification time are not read again)."""
        import hashlib
        import json

        entries = []
        for path in sorted(self.root.rglob("*")):
            if path.name.startswith(".") or not path.is_file():
                continue
            st = path.stat()
            key = (str(path), st.st_size, st.st_mtime_ns)
            digest = self._file_md5.get(key)
            if digest is None:
                h = hashlib.md5()  # noqa: S324 - DVC's content hash, not a security use
                with open(path, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
                digest = self._file_md5[key] = h.hexdigest()
            entries.append({"md5": digest, "relpath": path.relative_to(self.root).as_posix()})
        entries.sort(key=lambda e: e["relpath"].split("/"))
        listing = json.dumps(entries, sort_keys=True).encode()
        return hashlib.md5(listing).hexdigest() + ".dir"  # noqa: S324

    def watermark(self, key: SeriesKey) -> int | None:
        """Last processed instant (epoch s for bars, ms for ticks, UTC), or None if empty."""
        parts = self.parts(key)
        return max(p.hi for p in parts) if parts else None

    # --- reading ---------------------------------------------------------------------------------------
    def read(
        self, key: SeriesKey, start: int | None = None, end: int | None = None, quarantine: bool = False
    ) -> pd.DataFrame:
        """Rows with time in [start, end] (epoch units of the series), sorted; bars unique on time."""
        parts = [
            p
            for p in self.parts(key, quarantine)
            if (start is None or p.hi >= start) and (end is None or p.lo <= end)
        ]
        schema = key.schema
        if quarantine:
            schema = schema.append(pa.field("rules", pa.string()))
        tables = [pq.read_table(p.path, schema=schema) for p in parts]
        table = pa.concat_tables(tables) if tables else schema.empty_table()
        frame = table.to_pandas()
        if frame.empty:
            return frame
        t = frame_times(frame, key.unit)
        mask = np.ones(t.size, dtype=bool)
        if start is not None:
            mask &= t >= start
        if end is not None:
            mask &= t <= end
        frame = frame[mask]
        if not quarantine and key.kind == "bars":  # ticks may share a millisecond
            frame = frame.drop_duplicates("time", keep="last")
        return frame.sort_values("time", kind="stable").reset_index(drop=True)

    def flags(self, key: SeriesKey) -> pd.DataFrame:
        """The flag log of a series: ``time`` (bar open, UTC) and ``rules`` of every stored bar
        that broke only soft rules of the data contract, sorted by time."""
        schema = _flag_schema(key)
        tables = [pq.read_table(p.path, schema=schema) for p in self.parts(key, flags=True)]
        frame = (pa.concat_tables(tables) if tables else schema.empty_table()).to_pandas()
        return frame.drop_duplicates("time", keep="last").sort_values("time").reset_index(drop=True)

    def tail(self, key: SeriesKey, n: int) -> pd.DataFrame:
        """The last `n` committed rows of a series (for causal context such as ATR).

        Kept in memory between calls: only parts committed since the last call (a part whose
        newest row is newer than the kept tail's) are read — appends only ever add newer rows,
        and compaction rewrites rows without changing them — so a live process appending one
        bar per close reads one small part, not the last `n` one-bar parts."""
        parts = self.parts(key)
        cached = self._tails.get(key)
        if cached is not None and (cached[0] < n or not parts or parts[0].lo > cached[1]):
            cached = None  # too short, or the series was rewritten under us: read afresh
        newer = [p for p in parts if cached is None or p.hi > cached[1]]
        if cached is not None and not newer:  # nothing committed since: the kept rows as they are
            return cached[2].iloc[-n:].reset_index(drop=True).copy() if n else cached[2].iloc[:0].copy()
        chunks: list[pd.DataFrame] = [] if cached is None else [cached[2]]
        total = 0 if cached is None else len(cached[2])
        fresh: list[pd.DataFrame] = []
        for part in reversed(newer):
            if cached is None and total >= n:
                break
            frame = pq.read_table(part.path, schema=key.schema).to_pandas()
            fresh.insert(0, frame)
            total += len(frame)
        chunks += fresh
        if not chunks or total == 0:
            return key.schema.empty_table().to_pandas()
        frame = pd.concat(chunks, ignore_index=True) if len(chunks) > 1 else chunks[0]
        if key.kind == "bars":
            frame = frame.drop_duplicates("time", keep="last")
        keep = max(n, cached[0]) if cached is not None else n  # a short read never shrinks it
        frame = frame.sort_values("time", kind="stable").tail(keep).reset_index(drop=True)
        if len(frame):
            self._tails[key] = (keep, int(frame_times(frame, key.unit)[-1]), frame)
        return (frame.tail(n).reset_index(drop=True) if keep > n else frame).copy()

    # --- writing ---------------------------------------------------------------------------------------
    @contextmanager
    def _locked(self, key: SeriesKey) -> Iterator[None]:
        folder = self.series_dir(key)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _write_atomic(self, table: pa.Table, target: Path) -> None:
        write_parquet_atomic(table, target, before_rename=lambda: self._fault("tmp_written"))

    def _part_name(self, key: SeriesKey, lo: int, hi: int) -> str:
        return f"part-{format_instant(lo, key.unit)}-{format_instant(hi, key.unit)}.parquet"

    def append(
        self,
        key: SeriesKey,
        good: pd.DataFrame,
        through: int,
        quarantined: pd.DataFrame | None = None,
        flagged: pd.DataFrame | None = None,
    ) -> int:
        """Commit one window: rows after the watermark up to `through` (inclusive).

        `good` rows are stored; `quarantined` rows (with a ``rules`` column) go to the
        quarantine; `flagged` (``time``, ``rules``: good rows that broke soft rules) to the flag
        log. Rows at or before the current watermark are ignored, so repeating an append is
        harmless. Returns the number of good rows written.
        """
        with self._locked(key):
            if key not in self._swept:  # leftovers of a crashed writer: once per process is enough
                self._sweep_temporaries(key)  # (readers ignore them; compaction sweeps too)
                self._swept.add(key)
            parts = self.parts(key)
            mark = max(p.hi for p in parts) if parts else None
            if mark is not None and through <= mark:
                return 0
            lo = mark + 1 if mark is not None else self._first_time(good, quarantined, key, through)
            good = self._window(good, key, lo, through)
            name = self._part_name(key, lo, through)
            if quarantined is not None and len(quarantined):
                bad = self._window(quarantined, key, lo, through)
                if len(bad):
                    schema = key.schema.append(pa.field("rules", pa.string()))
                    table = pa.Table.from_pandas(bad[schema.names], schema=schema, preserve_index=False)
                    self._write_atomic(table, self.series_dir(key, quarantine=True) / name)
                    self._fault("quarantine_committed")
            if flagged is not None and len(flagged):
                marked = self._window(flagged, key, lo, through)
                if len(marked):
                    schema = _flag_schema(key)
                    table = pa.Table.from_pandas(marked[schema.names], schema=schema, preserve_index=False)
                    self._write_atomic(table, self.series_dir(key, flags=True) / name)
                    self._fault("flags_committed")
            table = pa.Table.from_pandas(good[key.schema.names], schema=key.schema, preserve_index=False)
            self._write_atomic(table, self.series_dir(key) / name)
            self._fault("data_committed")
            self._extend_tail(key, good)
            if len(parts) + 1 > self.max_parts:
                # merge the parts after the oldest (history stays as it is): a live series
                # appending one bar per close rewrites a few recent rows, not its whole past
                self._compact(key, keep_oldest=self.max_parts >= 2)
            return len(good)

    def _extend_tail(self, key: SeriesKey, rows: pd.DataFrame) -> None:
        """Add rows just committed to the kept tail (see `tail`), when one is kept."""
        cached = self._tails.get(key)
        if cached is None or not len(rows):
            return
        n, _, frame = cached
        drop = max(0, len(frame) + len(rows) - n)  # rows that fall out of the kept n
        merged = pd.concat([frame.iloc[drop:], rows[key.schema.names]], ignore_index=True)
        merged = merged.iloc[-n:].reset_index(drop=True)
        self._tails[key] = (n, int(frame_times(merged, key.unit)[-1]), merged)

    @staticmethod
    def _first_time(good: pd.DataFrame, bad: pd.DataFrame | None, key: SeriesKey, through: int) -> int:
        firsts = [int(frame_times(f, key.unit).min()) for f in (good, bad) if f is not None and len(f)]
        return min(firsts) if firsts else through

    @staticmethod
    def _window(frame: pd.DataFrame, key: SeriesKey, lo: int, hi: int) -> pd.DataFrame:
        t = frame_times(frame, key.unit)
        return frame[(t >= lo) & (t <= hi)]

    def compact(self, key: SeriesKey) -> None:
        """Merge a series' parts into one file (also removes crash leftovers)."""
        with self._locked(key):
            self._compact(key)

    def _compact(self, key: SeriesKey, keep_oldest: bool = False) -> None:
        parts = self.parts(key)
        if keep_oldest:
            parts = parts[1:]
        if not parts:
            return
        frame = self.read(key, start=parts[0].lo)
        merged = self.series_dir(key) / self._part_name(key, parts[0].lo, parts[-1].hi)
        table = pa.Table.from_pandas(frame[key.schema.names], schema=key.schema, preserve_index=False)
        self._write_atomic(table, merged)
        self._fault("compacted")
        replaced = {p.path for p in parts}
        for path in self.series_dir(key).glob("part-*.parquet"):
            # every part the merged one covers (crash leftovers included), never the kept oldest
            if path != merged and (not keep_oldest or path in replaced or self._covered(path, key, merged)):
                path.unlink()
        self._sweep_temporaries(key)

    def _covered(self, path: Path, key: SeriesKey, merged: Path) -> bool:
        """Whether part `path`'s range lies inside part `merged`'s (a leftover it replaces)."""
        a, b = _PART.fullmatch(path.name), _PART.fullmatch(merged.name)
        if not a or not b:
            return False
        lo, hi = parse_instant(a.group(1), key.unit), parse_instant(a.group(2), key.unit)
        return parse_instant(b.group(1), key.unit) <= lo and hi <= parse_instant(b.group(2), key.unit)

    def _sweep_temporaries(self, key: SeriesKey) -> None:
        """Delete temporaries a crashed writer left in the series' data and quarantine folders.
        Only call under the series lock: then no live writer owns one."""
        for folder in (
            self.series_dir(key),
            self.series_dir(key, quarantine=True),
            self.series_dir(key, flags=True),
        ):
            for path in folder.glob(".tmp-*.parquet"):
                path.unlink()
