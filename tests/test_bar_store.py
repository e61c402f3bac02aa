"""The bar store: atomic appends, derived watermark, compaction, crash safety at every stage."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from crash_ingest import crash_client, crash_params

from pipelines.bar_store import BarStore, SeriesKey, rates_to_frame
from pipelines.ingest import ingest_history, make_contract
from pipelines.mt5 import constants as C

KEY = SeriesKey("bars", "EURUSD", "H1")
REPO = Path(__file__).resolve().parents[1]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
def h1(sim) -> pd.DataFrame:
    rates = sim.copy_rates_range("EURUSD", C.TIMEFRAME_H1, utc(2024, 1, 2), utc(2024, 1, 12))
    return rates_to_frame(rates, rates["time"])


def _epoch(ts: pd.Timestamp) -> int:
    return int(ts.timestamp())


def test_append_read_and_watermark(tmp_path, h1):
    store = BarStore(tmp_path)
    assert store.watermark(KEY) is None and store.read(KEY).empty
    first, second = h1.iloc[:100], h1.iloc[100:]
    assert store.append(KEY, first, _epoch(first["time"].iloc[-1])) == 100
    assert store.append(KEY, second, _epoch(second["time"].iloc[-1])) == len(second)
    pd.testing.assert_frame_equal(store.read(KEY), h1.reset_index(drop=True))
    assert store.watermark(KEY) == _epoch(h1["time"].iloc[-1])
    # a repeated append is ignored: idempotent
    assert store.append(KEY, second, _epoch(second["time"].iloc[-1])) == 0
    pd.testing.assert_frame_equal(store.read(KEY), h1.reset_index(drop=True))
    window = store.read(KEY, start=_epoch(h1["time"].iloc[10]), end=_epoch(h1["time"].iloc[19]))
    assert len(window) == 10
    assert store.tail(KEY, 5)["time"].tolist() == h1["time"].iloc[-5:].tolist()
    assert store.series() == [KEY]
    names = sorted(p.name for p in (tmp_path / "bars/symbol=EURUSD/timeframe=H1").glob("*.parquet"))
    assert names[0] == f"part-20240102T000000-{first['time'].iloc[-1]:%Y%m%dT%H%M%S}.parquet"


def test_a_kept_listing_sees_every_other_writers_commit(tmp_path, h1):
    """A store keeps each folder's listing while the folder is unchanged: another writer's
    commit (another process; here another instance) is seen at once, whether it lands right
    after the listing (the racy window, re-listed) or long after it (the folder's time moved),
    and so is a compaction; a listing is reused only when nothing changed."""
    reader, writer = BarStore(tmp_path), BarStore(tmp_path, max_parts=3)
    rows = [h1.iloc[i : i + 1] for i in range(8)]
    writer.append(KEY, rows[0], _epoch(rows[0]["time"].iloc[-1]))
    assert reader.watermark(KEY) == _epoch(h1["time"].iloc[0])
    writer.append(KEY, rows[1], _epoch(rows[1]["time"].iloc[-1]))  # at once: racy, listed again
    assert reader.watermark(KEY) == _epoch(h1["time"].iloc[1])
    for i in range(2, 8):
        time.sleep(0.15)  # past the racy window: the kept listing is trusted until a change
        listed = reader.parts(KEY)
        assert reader.parts(KEY) == listed
        writer.append(KEY, rows[i], _epoch(rows[i]["time"].iloc[-1]))  # compacts now and then
        assert reader.watermark(KEY) == _epoch(h1["time"].iloc[i])
        assert [p.path for p in reader.parts(KEY)] == [p.path for p in writer.parts(KEY)]
        assert all(p.path.exists() for p in reader.parts(KEY))
    pd.testing.assert_frame_equal(reader.read(KEY), h1.iloc[:8].reset_index(drop=True))


def test_quarantine_and_all_bad_window_advance_the_watermark(tmp_path, h1):
    store = BarStore(tmp_path)
    bad = h1.iloc[:3].assign(rules="low<=open")
    through = _epoch(h1["time"].iloc[2])
    assert store.append(KEY, h1.iloc[:0], through, bad) == 0
    assert store.watermark(KEY) == through
    assert store.read(KEY).empty
    assert store.read(KEY, quarantine=True)["rules"].tolist() == ["low<=open"] * 3


def test_compaction_merges_parts_and_keeps_rows(tmp_path, h1):
    store = BarStore(tmp_path, max_parts=4)
    for i in range(0, len(h1), 20):
        chunk = h1.iloc[i : i + 20]
        store.append(KEY, chunk, _epoch(chunk["time"].iloc[-1]))
    assert len(store.parts(KEY)) <= 4
    pd.testing.assert_frame_equal(store.read(KEY), h1.reset_index(drop=True))


def test_live_appends_compact_recent_parts_and_keep_the_tail_current(tmp_path, h1):
    """One bar per append, as the live worker does: compaction merges the parts after the
    oldest (history is not rewritten on every 32nd bar) and the tail kept in memory always
    equals what a fresh store reads from disk."""
    store = BarStore(tmp_path, max_parts=4)
    store.append(KEY, h1.iloc[:100], _epoch(h1["time"].iloc[99]))
    oldest = store.parts(KEY)[0].path
    written = oldest.stat().st_mtime_ns
    for i in range(100, 140):
        store.append(KEY, h1.iloc[i : i + 1], _epoch(h1["time"].iloc[i]))
        fresh = BarStore(tmp_path).tail(KEY, 15)
        pd.testing.assert_frame_equal(store.tail(KEY, 15), fresh)
    parts = store.parts(KEY)
    assert len(parts) <= 4 and parts[0].path == oldest and oldest.stat().st_mtime_ns == written
    pd.testing.assert_frame_equal(store.read(KEY), h1.iloc[:140].reset_index(drop=True))


def test_tails_of_mixed_lengths_stay_exact_and_read_each_new_part_once(tmp_path, h1, monkeypatch):
    """The live worker asks a series for its last 15 rows (validation context) and for its
    last few (the scorer's new bars), in any order: every answer equals a fresh store's, and a
    short request does not shrink what is kept — a reader whose series another store appends
    to reads each new one-bar part once, not the last 15 parts again (a regression here did
    that on every close)."""
    import pyarrow.parquet as pq

    writer = BarStore(tmp_path, max_parts=64)  # no compaction (it reads parts on purpose)
    reader = BarStore(tmp_path)
    writer.append(KEY, h1.iloc[:60], _epoch(h1["time"].iloc[59]))
    reader.tail(KEY, 15)
    reads: list[object] = []
    real_read_table = pq.read_table

    def counting(*args, **kwargs):
        reads.append(args[0])
        return real_read_table(*args, **kwargs)

    appended = 0
    for i, n in zip(range(60, 90), [2, 15, 1, 3, 15, 0] * 5, strict=True):
        writer.append(KEY, h1.iloc[i : i + 1], _epoch(h1["time"].iloc[i]))
        appended += 1
        for length in (n, 15):
            monkeypatch.setattr(pq, "read_table", counting)
            got = reader.tail(KEY, length)
            monkeypatch.setattr(pq, "read_table", real_read_table)
            pd.testing.assert_frame_equal(got, BarStore(tmp_path).tail(KEY, length))
            pd.testing.assert_frame_equal(got, writer.read(KEY).tail(length).reset_index(drop=True))
    assert len(reads) == appended, f"{len(reads)} part reads for {appended} new parts"


def test_leftovers_of_a_crash_are_ignored(tmp_path, h1):
    store = BarStore(tmp_path, max_parts=100)
    for i in range(0, 60, 20):
        chunk = h1.iloc[i : i + 20]
        store.append(KEY, chunk, _epoch(chunk["time"].iloc[-1]))
    folder = store.series_dir(KEY)
    # as if a compaction died after its rename but before deleting the merged parts
    merged = store._part_name(KEY, store.parts(KEY)[0].lo, store.parts(KEY)[-1].hi)
    frame = store.read(KEY)
    store._write_atomic(pa.Table.from_pandas(frame, schema=KEY.schema, preserve_index=False), folder / merged)
    (folder / ".tmp-deadbeef.parquet").write_bytes(b"half a file")
    assert len(list(folder.glob("part-*"))) == 4
    pd.testing.assert_frame_equal(store.read(KEY), h1.iloc[:60].reset_index(drop=True))
    assert [p.path.name for p in store.parts(KEY)] == [merged]
    store.compact(KEY)
    assert sorted(p.name for p in folder.glob("*.parquet")) == [merged]


def _ingest(root: Path, end: str) -> None:
    params = crash_params(str(root), end)
    client = crash_client(params)
    ingest_history(client, BarStore(root, max_parts=1), make_contract(params), params)


def _snapshot(root: Path) -> dict[str, pd.DataFrame]:
    store = BarStore(root)
    out = {}
    for tf in ("M5", "H1"):
        key = SeriesKey("bars", "EURUSD", tf)
        out[f"{tf}"] = store.read(key)
        out[f"{tf}-q"] = store.read(key, quarantine=True)
        out[f"{tf}-f"] = store.flags(key)
        out[f"{tf}-w"] = pd.DataFrame({"w": [store.watermark(key)]})
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, pd.DataFrame]:
    """What two uninterrupted ingests (to Jan 5, then to Jan 9) leave behind."""
    root = tmp_path_factory.mktemp("reference")
    _ingest(root, "2024-01-05T00:00:00")
    _ingest(root, "2024-01-09T00:00:00")
    return _snapshot(root)


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage", ["tmp_written", "quarantine_committed", "flags_committed", "data_committed", "compacted"]
)
def test_a_crash_at_any_stage_loses_and_duplicates_nothing(tmp_path, reference, stage):
    root = tmp_path / "data"
    _ingest(root, "2024-01-05T00:00:00")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    crashed = subprocess.run(
        [
            sys.executable,
            str(REPO / "tests" / "crash_ingest.py"),
            str(root),
            stage,
            "1",
            "2024-01-09T00:00:00",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert crashed.returncode == 137, crashed.stderr  # it really died at that stage
    _ingest(root, "2024-01-09T00:00:00")  # the re-run after the crash
    got = _snapshot(root)
    assert reference["M5-q"].shape[0] > 0  # the scenario exercises the quarantine too
    assert reference["M5-f"].shape[0] > 0  # and the flag log (tight spikes: kept, flagged)
    assert set(reference["M5-f"]["time"]).issubset(set(reference["M5"]["time"]))
    for name, frame in reference.items():
        pd.testing.assert_frame_equal(got[name], frame, obj=name)
    # a half-written temporary file from the crash was ignored by readers; the re-run's
    # compaction removed it
    assert list(root.rglob(".tmp-*")) == []
