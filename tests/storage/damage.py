"""Damaging a real SQLite file, as a failing disk, a full disk or a careless copy would."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def settle(path: Path) -> None:
    """Fold the WAL into the main file, so damage to it hits the committed data."""
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


def zero_pages(path: Path, count: int = 20) -> None:
    """Overwrite `count` pages in the middle of the file with zeros."""
    settle(path)
    data = path.read_bytes()
    page = int.from_bytes(data[16:18], "big") or 65536  # header: page size (1 means 64 KiB)
    pages = len(data) // page
    if pages < count + 2:
        raise ValueError(f"{path} has {pages} pages: too few to zero {count} in the middle")
    first = (pages - count) // 2
    with path.open("r+b") as f:
        f.seek(first * page)
        f.write(bytes(count * page))


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut the file to `keep` of its size, on a page boundary."""
    settle(path)
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(int(size * keep) // 4096 * 4096)


def empty(path: Path) -> None:
    """Leave a zero-length file (and no WAL) where the database was."""
    settle(path)
    for side in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        side.unlink(missing_ok=True)
    path.write_bytes(b"")
