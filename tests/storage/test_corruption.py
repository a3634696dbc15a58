"""A damaged or unexpectedly empty database is refused in one line naming the file and
what to do, and nothing more is written into it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from nexus.errors import StorageCorrupt, StorageError
from nexus.storage.base import EventRow, SessionChange
from nexus.storage.sqlite import SQLiteStore, check_sqlite_file
from tests.storage.damage import empty, settle, truncate, zero_pages

pytestmark = pytest.mark.sqlite_only  # about SQLite files themselves

ADVICE = "stop NEXUS, keep a copy, restore from backup or run `sqlite3 nexus.db .recover`"


def event(session_id: str, seq: int) -> EventRow:
    return EventRow(
        0, session_id, seq, 1000.0 + seq, "note", '{"text":"' + "x" * 900 + '"}',
        0, 0, 0.0, 0.0, "", f"h{seq}",
    )  # fmt: skip


def fill(path: Path, sessions: int = 40, events: int = 10) -> None:
    """A real journal of `sessions` x `events` rows, about 100 pages."""
    store = SQLiteStore(path)
    try:
        for s in range(sessions):
            sid = f"s{s:03d}"
            create = {"agent": "a", "goal": "g", "status": "queued", "priority": 0, "labels": {}}
            store.append(event(sid, 1), SessionChange(create=create))
            for seq in range(2, events + 1):
                store.append(event(sid, seq), SessionChange())
    finally:
        store.close()
    settle(path)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "home" / "nexus.db"
    fill(path)
    return path


def test_zeroed_pages_are_refused_at_open_naming_the_file_and_what_to_do(db_path: Path) -> None:
    """20 zeroed pages in the middle: opening the store raises StorageCorrupt, one line
    naming the file, SQLite's finding and the way out; the file is left as it was."""
    zero_pages(db_path, 20)
    damaged = db_path.read_bytes()

    with pytest.raises(StorageCorrupt) as info:
        SQLiteStore(db_path)

    message = str(info.value)
    assert message.startswith(f"database {db_path} is damaged (")
    assert message.endswith(f"): {ADVICE}")
    assert len(message.splitlines()) == 1
    assert info.value.path == str(db_path) and info.value.detail
    assert isinstance(info.value, StorageError)
    assert db_path.read_bytes() == damaged


def test_a_truncated_file_is_refused(db_path: Path) -> None:
    """A file cut in half is refused as damaged, not opened short of its sessions."""
    truncate(db_path, 0.5)
    with pytest.raises(StorageCorrupt) as info:
        SQLiteStore(db_path)
    assert str(db_path) in str(info.value)


@pytest.mark.parametrize("state", ["dbos.sqlite", "api-token", "audit.key", "audit-anchor.json"])
def test_an_empty_database_in_a_used_home_is_refused(db_path: Path, state: str) -> None:
    """A zero-length nexus.db beside other NEXUS state is refused, naming that state;
    the file stays empty (no schema is written into it)."""
    empty(db_path)
    (db_path.parent / state).write_text("x")

    with pytest.raises(StorageCorrupt) as info:
        SQLiteStore(db_path)

    assert str(info.value) == (
        f"database {db_path} is damaged (it is empty, but {db_path.parent} holds {state} "
        f"of a NEXUS home in use): {ADVICE}"
    )
    assert db_path.read_bytes() == b""


def test_a_schemaless_database_in_a_used_home_is_refused(tmp_path: Path) -> None:
    """A valid SQLite file without NEXUS's tables, beside the API token, is refused."""
    path = tmp_path / "nexus.db"
    sqlite3.connect(path).close()
    (tmp_path / "api-token").write_text("t")
    with pytest.raises(StorageCorrupt, match="it is empty, but"):
        SQLiteStore(path)


def test_a_fresh_home_still_creates_the_database(tmp_path: Path) -> None:
    """No other state: an empty (or missing) nexus.db is a new one and gets its schema."""
    missing, zero = tmp_path / "a" / "nexus.db", tmp_path / "b" / "nexus.db"
    zero.parent.mkdir()
    zero.write_bytes(b"")
    for path in (missing, zero):
        store = SQLiteStore(path)
        try:
            assert store.count_sessions() == 0
            assert store.check_integrity() is None
        finally:
            store.close()


def test_damage_found_during_operation_becomes_storage_corrupt_and_stops_writes(
    tmp_path: Path,
) -> None:
    """A file damaged while open (past the open check): the next read that hits it
    raises StorageCorrupt instead of sqlite3.DatabaseError, and every write after is
    refused with the same message, so nothing new lands in the file."""
    path = tmp_path / "nexus.db"
    fill(path)
    store = SQLiteStore(path)
    try:
        zero_pages(path, 20)
        with pytest.raises(StorageCorrupt) as read:
            list(store.iter_all_events())
        with pytest.raises(StorageCorrupt) as write:
            store.append(event("s000", 11), SessionChange())
        assert str(write.value) == str(read.value)
        assert store.check_integrity() == read.value.detail
    finally:
        store.close()


def test_check_integrity_reports_damage_and_none_when_sound(db_path: Path) -> None:
    """check_integrity() (for /readyz) is None on a sound file and names damage found
    since the store opened."""
    store = SQLiteStore(db_path)
    try:
        assert store.check_integrity() is None
        zero_pages(db_path, 20)
        detail = store.check_integrity()
        assert detail is not None and detail
    finally:
        store.close()


def test_check_sqlite_file_reads_any_sqlite_file_without_changing_it(tmp_path: Path) -> None:
    """check_sqlite_file: None for a sound or a missing file, SQLite's finding for a
    damaged or a non-database file; the file's bytes are unchanged."""
    path = tmp_path / "nexus.db"
    fill(path)
    assert check_sqlite_file(path) is None
    assert check_sqlite_file(tmp_path / "absent.sqlite") is None
    truncate(path, 0.5)
    before = path.read_bytes()
    assert check_sqlite_file(path)
    assert path.read_bytes() == before
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database at all" * 500)
    assert check_sqlite_file(garbage) == "file is not a database"


def test_a_missing_database_beside_other_state_is_created(tmp_path: Path) -> None:
    """Only a file that is there and empty is refused: a database that does not exist
    yet is new, even beside an audit key (the audit's checkpoint notices lost sessions)."""
    (tmp_path / "audit.key").write_text("{}")
    store = SQLiteStore(tmp_path / "other.db")
    try:
        assert store.count_sessions() == 0
    finally:
        store.close()
