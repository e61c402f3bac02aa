"""Atomic file writes: write a hidden temporary file beside the target, fsync, rename.

Readers see the old file or the new one, never a partial one; a crash leaves at most a
``.tmp-*`` file, which readers ignore. Folders (a step's outputs) are built in a hidden
``.stage-*`` folder beside them and swapped in by rename (`staged_dir`, `replace_dirs`).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
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


def replace_dir(new: Path, target: Path) -> None:
    """Put folder `new` in the place of `target` (same file system) by renames: the old folder
    is moved aside, the new one renamed in, the old one deleted. `target` is never a mix of
    old and new files; a crash between the two renames leaves it missing and the old one in
    a ``.old-*`` folder beside it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if target.exists():
        old = target.parent / f".old-{target.name}-{uuid.uuid4().hex}"
        os.rename(target, old)
    os.rename(new, target)
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """A fresh hidden folder beside `target` to write a step's outputs into; when the block
    ends without error it replaces `target` (`replace_dir`), on an error it is deleted and
    `target` is left as it was."""
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = target.parent / f".stage-{target.name}-{uuid.uuid4().hex}"
    stage.mkdir()
    try:
        yield stage
        replace_dir(stage, target)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def replace_dirs(stage_root: Path, target_root: Path, names: Iterable[str]) -> None:
    """Move each folder `name` of `stage_root` over the same folder of `target_root` (a flow
    that built every step's outputs in a staging root publishes them together, only after the
    last step succeeded)."""
    for name in names:
        replace_dir(stage_root / name, target_root / name)
