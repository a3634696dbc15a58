"""The SQLite store: WAL, durability, migrations, refusals, appends and queries."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest

from nexus.errors import JournalError, SchemaVersionError, StorageError
from nexus.storage import EventRow, SessionQuery, SessionRow, open_store
from nexus.storage.base import SessionChange
from nexus.storage.migrations import LATEST, MIGRATIONS
from nexus.storage.sqlite import SQLiteStore

pytestmark = pytest.mark.sqlite_only  # about SQLite files themselves


def row(
    session_id: str, seq: int, *, ts: float = 1000.0, kind: str = "note", **kw: object
) -> EventRow:
    fields: dict[str, object] = {
        "id": 0,
        "session_id": session_id,
        "seq": seq,
        "ts": ts,
        "kind": kind,
        "payload": f'{{"n":{seq}}}',
        "tokens_in": 0,
        "tokens_out": 0,
        "cost_usd": 0.0,
        "latency_ms": 0.0,
        "prev_hash": f"h{seq - 1}" if seq > 1 else "",
        "hash": f"h{seq}",
    }
    fields.update(kw)
    return EventRow(**fields)  # type: ignore[arg-type]


def create(
    store: SQLiteStore,
    session_id: str,
    *,
    ts: float,
    agent: str = "assistant",
    labels: dict[str, str] | None = None,
    status: str = "queued",
) -> None:
    change = SessionChange(
        create={
            "agent": agent,
            "goal": f"goal of {session_id}",
            "status": "queued",
            "priority": 0,
            "labels": labels or {},
        },
        status=status,
    )
    store.append(row(session_id, 1, ts=ts, kind="session.created"), change)


def dump(path: Path) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """Every row of both tables, read through a separate connection."""
    db = sqlite3.connect(path)
    try:
        events = db.execute("SELECT * FROM events ORDER BY id").fetchall()
        sessions = db.execute("SELECT * FROM sessions ORDER BY id").fetchall()
    finally:
        db.close()
    return events, sessions


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "nexus.db"


@pytest.fixture
def store(db_path: Path):
    s = SQLiteStore(db_path)
    yield s
    s.close()


# -- opening ------------------------------------------------------------------------


def test_new_database_is_in_wal_mode_and_creates_parent_folder(db_path: Path) -> None:
    """Opening a store creates the parent folder and a WAL-mode database file."""
    store = open_store(db_path)
    store.close()
    db = sqlite3.connect(db_path)
    try:
        (mode,) = db.execute("PRAGMA journal_mode").fetchone()
    finally:
        db.close()
    assert mode == "wal"


@pytest.mark.parametrize(("durability", "expected"), [("normal", 1), ("full", 2)])
def test_durability_sets_the_synchronous_pragma(
    db_path: Path, durability: str, expected: int
) -> None:
    """durability=normal maps to synchronous=NORMAL (1), full to FULL (2)."""
    store = SQLiteStore(db_path, durability=durability)  # type: ignore[arg-type]
    try:
        (value,) = store._db.execute("PRAGMA synchronous").fetchone()
    finally:
        store.close()
    assert value == expected


def test_migrations_are_recorded_in_schema_version(store: SQLiteStore, db_path: Path) -> None:
    """Each applied migration leaves one row in schema_version; the store reports LATEST."""
    assert store.schema_version() == LATEST
    db = sqlite3.connect(db_path)
    try:
        versions = [v for (v,) in db.execute("SELECT version FROM schema_version ORDER BY version")]
        tables = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        db.close()
    assert versions == [v for v, _ in MIGRATIONS]
    assert tables == {
        "schema_version",
        "sessions",
        "events",
        "checkpoints",
        "commands",
        "workers",
        "leases",
    }


def test_reopening_does_not_reapply_migrations(db_path: Path) -> None:
    """A second open of an up-to-date database applies nothing and keeps the data."""
    first = SQLiteStore(db_path)
    create(first, "s1", ts=1.0)
    first.close()
    second = SQLiteStore(db_path)
    try:
        assert second.schema_version() == LATEST
        assert [r.seq for r in second.events("s1")] == [1]
    finally:
        second.close()
    db = sqlite3.connect(db_path)
    try:
        (count,) = db.execute("SELECT count(*) FROM schema_version").fetchone()
    finally:
        db.close()
    assert count == len(MIGRATIONS)


def test_older_database_at_version_zero_is_migrated_on_open(db_path: Path) -> None:
    """A database holding only an empty schema_version table (version 0) is migrated to
    LATEST on open and is then usable."""
    db_path.parent.mkdir(parents=True)
    db = sqlite3.connect(db_path)
    db.execute(
        "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
    )
    db.commit()
    db.close()

    store = SQLiteStore(db_path)
    try:
        assert store.schema_version() == LATEST
        create(store, "s1", ts=5.0)
        assert store.session("s1") is not None
    finally:
        store.close()


def test_newer_database_is_refused_naming_both_versions(db_path: Path) -> None:
    """A database written by a newer NEXUS (version LATEST+1) is refused with
    SchemaVersionError naming its version and the highest known one; nothing is changed."""
    SQLiteStore(db_path).close()
    db = sqlite3.connect(db_path)
    db.execute("INSERT INTO schema_version VALUES (?, 0)", (LATEST + 1,))
    db.commit()
    db.close()
    before = dump(db_path)

    with pytest.raises(SchemaVersionError) as info:
        SQLiteStore(db_path)

    message = str(info.value)
    assert f"schema version {LATEST + 1}" in message
    assert f"versions up to {LATEST}" in message
    assert str(db_path) in message
    assert dump(db_path) == before


def test_corrupt_file_gives_storage_error_and_is_left_untouched(db_path: Path) -> None:
    """A file of random bytes is refused with a StorageError naming the file and the
    cause, and its bytes are not overwritten."""
    db_path.parent.mkdir(parents=True)
    garbage = os.urandom(8192)
    db_path.write_bytes(garbage)

    with pytest.raises(StorageError) as info:
        SQLiteStore(db_path)

    assert str(db_path) in str(info.value)
    assert "not a database" in str(info.value)
    assert db_path.read_bytes() == garbage
    assert not isinstance(info.value, SchemaVersionError)


def test_concurrent_first_opens_of_one_file_all_succeed(tmp_path: Path) -> None:
    """Several workers opening the same fresh file at once all succeed, and each
    migration is applied exactly once."""
    for trial in range(5):
        path = tmp_path / f"race{trial}.db"
        errors: list[BaseException] = []
        barrier = threading.Barrier(8)

        def open_once(path: Path = path, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                SQLiteStore(path).close()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_once) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        db = sqlite3.connect(path)
        try:
            versions = [v for (v,) in db.execute("SELECT version FROM schema_version")]
        finally:
            db.close()
        assert versions == [v for v, _ in MIGRATIONS]


# -- appending ----------------------------------------------------------------------


def test_append_stores_the_row_exactly_and_projects_the_session(store: SQLiteStore) -> None:
    """An appended row reads back field for field, and its session change updates the
    index row in the same transaction."""
    create(store, "s1", ts=10.0, labels={"team": "a"})
    rid = store.append(
        row(
            "s1",
            2,
            ts=11.0,
            kind="llm.response",
            tokens_in=7,
            tokens_out=3,
            cost_usd=0.5,
            latency_ms=1.5,
        ),
        SessionChange(status="running", steps=1),
    )
    store.append(
        row("s1", 3, ts=12.0, kind="session.failed"),
        SessionChange(status="failed", reason="boom"),
    )

    assert store.events("s1", after_seq=1, limit=1) == [
        EventRow(rid, "s1", 2, 11.0, "llm.response", '{"n":2}', 7, 3, 0.5, 1.5, "h1", "h2")
    ]
    assert store.head("s1") == (3, "h3")
    assert store.head("nope") == (0, "")
    assert store.session("s1") == SessionRow(
        id="s1",
        agent="assistant",
        goal="goal of s1",
        status="failed",
        priority=0,
        labels={"team": "a"},
        created_at=10.0,
        updated_at=12.0,
        reason="boom",
        steps=1,
        tokens_in=7,
        tokens_out=3,
        cost_usd=0.5,
        last_seq=3,
    )
    assert store.session("nope") is None


def test_duplicate_seq_raises_journal_error_and_changes_nothing(
    store: SQLiteStore, db_path: Path
) -> None:
    """Appending a second event with an existing (session_id, seq) raises JournalError
    and rolls back the whole transaction, session change included."""
    create(store, "s1", ts=1.0)
    store.append(row("s1", 2, ts=2.0), SessionChange(status="running", steps=1))
    before = dump(db_path)

    with pytest.raises(JournalError) as info:
        store.append(
            row("s1", 2, ts=3.0, tokens_in=99, cost_usd=9.0),
            SessionChange(status="completed", reason="never", steps=1),
        )

    assert "#2" in str(info.value) and "s1" in str(info.value)
    assert dump(db_path) == before
    # The store is still usable after the rollback.
    store.append(row("s1", 3, ts=4.0), SessionChange())
    assert store.head("s1") == (3, "h3")


def test_duplicate_session_creation_raises_journal_error(store: SQLiteStore, db_path: Path) -> None:
    """Creating a session id twice is refused and leaves the database unchanged."""
    create(store, "s1", ts=1.0)
    before = dump(db_path)
    with pytest.raises(JournalError):
        store.append(
            row("s1", 2, ts=2.0, kind="session.created"),
            SessionChange(
                create={"agent": "x", "goal": "g", "status": "queued", "priority": 0, "labels": {}}
            ),
        )
    assert dump(db_path) == before


# -- reading ------------------------------------------------------------------------


def test_events_after_returns_all_sessions_in_commit_order(store: SQLiteStore) -> None:
    """events_after walks every session's events by row id (commit order), from a
    cursor, honouring the limit."""
    create(store, "a", ts=1.0)
    create(store, "b", ts=2.0)
    store.append(row("a", 2, ts=3.0), SessionChange())
    store.append(row("b", 2, ts=4.0), SessionChange())
    store.append(row("a", 3, ts=5.0), SessionChange())

    everything = store.events_after(0)
    assert [(r.session_id, r.seq) for r in everything] == [
        ("a", 1),
        ("b", 1),
        ("a", 2),
        ("b", 2),
        ("a", 3),
    ]
    assert [r.id for r in everything] == sorted(r.id for r in everything)
    cursor = everything[1].id
    assert [(r.session_id, r.seq) for r in store.events_after(cursor, limit=2)] == [
        ("a", 2),
        ("b", 2),
    ]
    assert store.events_after(everything[-1].id) == []


def test_iter_all_events_orders_by_session_then_seq(store: SQLiteStore) -> None:
    """The audit iterator yields each session's events together, in seq order."""
    create(store, "b", ts=1.0)
    create(store, "a", ts=2.0)
    store.append(row("b", 2, ts=3.0), SessionChange())
    store.append(row("a", 2, ts=4.0), SessionChange())
    assert [(r.session_id, r.seq) for r in store.iter_all_events()] == [
        ("a", 1),
        ("a", 2),
        ("b", 1),
        ("b", 2),
    ]


def test_events_reads_a_window_after_a_seq(store: SQLiteStore) -> None:
    """events(after_seq, limit) returns the next `limit` events of one session only."""
    create(store, "a", ts=1.0)
    create(store, "b", ts=1.5)
    for seq in range(2, 6):
        store.append(row("a", seq, ts=float(seq)), SessionChange())
    assert [r.seq for r in store.events("a")] == [1, 2, 3, 4, 5]
    assert [r.seq for r in store.events("a", after_seq=2, limit=2)] == [3, 4]
    assert store.events("a", after_seq=5) == []
    assert [r.seq for r in store.events("b")] == [1]


@pytest.fixture
def populated(store: SQLiteStore) -> SQLiteStore:
    """Five sessions with distinct creation times, agents, labels and statuses."""
    create(store, "s1", ts=1.0, agent="mail", labels={"team": "a"}, status="completed")
    create(store, "s2", ts=2.0, agent="mail", labels={"team": "b"}, status="running")
    create(store, "s3", ts=3.0, agent="code", labels={"team": "a", "env": "prod"}, status="failed")
    create(store, "s4", ts=4.0, agent="code", labels={}, status="running")
    create(store, "s5", ts=5.0, agent="mail", labels={"team": "a"}, status="queued")
    return store


def ids(rows: list[SessionRow]) -> list[str]:
    return [r.id for r in rows]


def test_sessions_lists_newest_first(populated: SQLiteStore) -> None:
    """Without filters, sessions come newest first."""
    assert ids(populated.sessions(SessionQuery())) == ["s5", "s4", "s3", "s2", "s1"]


def test_sessions_filters_by_status_agent_and_label(populated: SQLiteStore) -> None:
    """status (any of), agent and label filters each narrow the list, and combine."""
    assert ids(populated.sessions(SessionQuery(status=["running"]))) == ["s4", "s2"]
    assert ids(populated.sessions(SessionQuery(status=["running", "failed"]))) == ["s4", "s3", "s2"]
    assert ids(populated.sessions(SessionQuery(agent="mail"))) == ["s5", "s2", "s1"]
    assert ids(populated.sessions(SessionQuery(label=("team", "a")))) == ["s5", "s3", "s1"]
    assert ids(populated.sessions(SessionQuery(label=("env", "prod")))) == ["s3"]
    assert ids(populated.sessions(SessionQuery(label=("team", "zzz")))) == []
    assert ids(
        populated.sessions(
            SessionQuery(status=["completed", "queued"], agent="mail", label=("team", "a"))
        )
    ) == ["s5", "s1"]


def test_sessions_pages_with_limit_and_offset(populated: SQLiteStore) -> None:
    """limit and offset page through the newest-first list without overlap."""
    pages = [ids(populated.sessions(SessionQuery(limit=2, offset=o))) for o in (0, 2, 4, 6)]
    assert pages == [["s5", "s4"], ["s3", "s2"], ["s1"], []]


def test_session_ids_selects_statuses_oldest_first(populated: SQLiteStore) -> None:
    """session_ids returns the ids with any of the statuses, oldest first."""
    assert populated.session_ids(["running", "queued"]) == ["s2", "s4", "s5"]
    assert populated.session_ids(["paused"]) == []


def test_session_row_to_dict_holds_every_field(populated: SQLiteStore) -> None:
    """SessionRow.to_dict is the full row as plain data."""
    row3 = populated.session("s3")
    assert row3 is not None
    assert row3.to_dict() == {
        "id": "s3",
        "agent": "code",
        "goal": "goal of s3",
        "status": "failed",
        "priority": 0,
        "labels": {"team": "a", "env": "prod"},
        "created_at": 3.0,
        "updated_at": 3.0,
        "reason": None,
        "steps": 0,
        "tokens_in": 0,
        "tokens_out": 0,
        "cost_usd": 0.0,
        "last_seq": 1,
    }


def test_unopenable_path_gives_storage_error(db_path: Path) -> None:
    """A path that cannot hold a database (here a folder) is refused with a StorageError
    naming it, not a raw sqlite3 error."""
    db_path.mkdir(parents=True)
    with pytest.raises(StorageError) as info:
        SQLiteStore(db_path)
    assert str(db_path) in str(info.value)


def test_a_failing_append_rolls_back_and_leaves_the_store_usable(
    store: SQLiteStore, db_path: Path
) -> None:
    """An append whose session change is malformed raises, commits nothing, and the
    store keeps working (the transaction is not left open)."""
    create(store, "s1", ts=1.0)
    before = dump(db_path)
    with pytest.raises(KeyError):
        store.append(row("s2", 1, ts=2.0), SessionChange(create={"goal": "no agent"}))
    assert dump(db_path) == before
    store.append(row("s1", 2, ts=3.0), SessionChange())
    assert store.head("s1") == (2, "h2")
