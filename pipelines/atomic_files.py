"""Atomic file writes: write a hidden temporary file beside the target, fsync, rename.

Readers see the old file or the new one, never a partial one; a crash leaves at most a
``.tmp-*`` file, which readers ignore.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    target: Path, write: Callable[[object], None], before_rename: Callable[[], None] | None = None
) -> None:
    """Create `target` through ``write(binary_handle)``; `before_rename` runs after the fsync."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{uuid.uuid4().hex}{target.suffix}"
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(target.parent)


def write_parquet_atomic(
    table: pa.Table, target: Path, before_rename: Callable[[], None] | None = None
) -> None:
    """Write a Parquet file (zstd) atomically."""
    write_atomic(target, lambda h: pq.write_table(table, h, compression="zstd"), before_rename)


def write_text_atomic(text: str, target: Path) -> None:
    """Write a UTF-8 text file atomically."""
    write_atomic(target, lambda h: h.write(text.encode("utf-8")))  # type: ignore[attr-defined]
