"""The journal: round trips, the hash chain, tamper detection, the session index
projection and live following."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from nexus.errors import JournalError
from nexus.runtime.journal import (
    STATUS_BY_KIND,
    Journal,
    Tamper,
    canonical,
    chain_hash,
)
from nexus.storage import open_store
from nexus.storage.base import Store
from nexus.types import Event


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "journal.db"


@pytest.fixture
def store(db_path: Path):
    s = open_store(db_path)
    yield s
    s.close()


@pytest.fixture
def journal(store: Store) -> Journal:
    return Journal(store)


def created(agent: str = "assistant", goal: str = "do it", **extra: object) -> dict[str, object]:
    return {"agent": agent, "goal": goal, "priority": 0, "labels": {}, **extra}


def fill(journal: Journal, session_id: str, n: int) -> list[Event]:
    """A session.created event plus n-1 note events."""
    events = [journal.append(session_id, "session.created", created())]
    events += [journal.append(session_id, "note", {"i": i}) for i in range(2, n + 1)]
    return events


def sql(db_path: Path, statement: str, *args: object) -> None:
    """Edit the database behind NEXUS's back, as an attacker with file access would."""
    db = sqlite3.connect(db_path)
    try:
        db.execute(statement, args)
        db.commit()
    finally:
        db.close()


# -- round trip and chain -------------------------------------------------------------


def test_append_returns_the_event_as_stored(journal: Journal) -> None:
    """append returns the whole Event, and events() reads back identical Events."""
    first = journal.append("s1", "session.created", created(goal="héllo wörld"))
    second = journal.append(
        "s1",
        "llm.response",
        {"message": {"role": "assistant", "content": "hi"}, "n": [1, 2.5, None, True]},
        tokens_in=12,
        tokens_out=4,
        cost_usd=0.25,
        latency_ms=12.34567,
    )

    assert first == Event(
        session_id="s1",
        seq=1,
        ts=first.ts,
        kind="session.created",
        payload={"agent": "assistant", "goal": "héllo wörld", "priority": 0, "labels": {}},
        prev_hash="",
        hash=first.hash,
    )
    assert second == Event(
        session_id="s1",
        seq=2,
        ts=second.ts,
        kind="llm.response",
        payload={"message": {"role": "assistant", "content": "hi"}, "n": [1, 2.5, None, True]},
        tokens_in=12,
        tokens_out=4,
        cost_usd=0.25,
        latency_ms=12.346,
        prev_hash=first.hash,
        hash=second.hash,
    )
    assert journal.events("s1") == [first, second]
    assert journal.events("s1", after_seq=1) == [second]
    assert journal.events("other") == []


def test_payload_is_stored_as_canonical_json(journal: Journal, store: Store) -> None:
    """The stored payload is canonical JSON: sorted keys, no spaces, UTF-8 kept."""
    journal.append("s1", "session.created", created())
    journal.append("s1", "note", {"b": 1, "a": "é", "c": {"z": 0, "y": [1, 2]}})
    stored = store.events("s1")[1].payload
    assert stored == '{"a":"é","b":1,"c":{"y":[1,2],"z":0}}'
    assert stored == canonical({"c": {"y": [1, 2], "z": 0}, "a": "é", "b": 1})


def test_hash_chain_links_every_event_to_the_previous(journal: Journal, store: Store) -> None:
    """Each event's prev_hash is the previous event's hash (empty for the first), and
    each hash is the HMAC-SHA256, under the current audit key, of its own fields and
    prev_hash; each row names that key."""
    events = fill(journal, "s1", 5)
    assert [e.prev_hash for e in events] == ["", *[e.hash for e in events[:-1]]]
    rows = store.events("s1")
    key_id, key = journal.keys.current()
    assert [r.key_id for r in rows] == [key_id] * 5
    assert [chain_hash(r, key) for r in rows] == [e.hash for e in events]
    assert [chain_hash(r) for r in rows] != [e.hash for e in events]
    assert len({e.hash for e in events}) == 5
    assert all(len(e.hash) == 64 for e in events)


def test_sessions_have_independent_chains(journal: Journal) -> None:
    """Interleaved sessions each number from 1 and chain only their own events."""
    a1 = journal.append("a", "session.created", created())
    b1 = journal.append("b", "session.created", created())
    a2 = journal.append("a", "note", {})
    b2 = journal.append("b", "note", {})
    assert [(e.seq, e.prev_hash) for e in (a1, a2)] == [(1, ""), (2, a1.hash)]
    assert [(e.seq, e.prev_hash) for e in (b1, b2)] == [(1, ""), (2, b1.hash)]


def test_a_second_writer_continues_the_chain_from_the_database(store: Store) -> None:
    """A journal without a cached head reads it from the store; a writer whose cached
    head went stale gets a JournalError, then continues from the database on retry."""
    first, second = Journal(store), Journal(store)
    fill(first, "s1", 2)
    third = second.append("s1", "note", {"by": "second"})
    assert third.seq == 3

    with pytest.raises(JournalError):
        first.append("s1", "note", {"by": "first, stale"})
    fourth = first.append("s1", "note", {"by": "first, retried"})

    assert (fourth.seq, fourth.prev_hash) == (4, third.hash)
    assert first.verify("s1").ok


# -- verify -------------------------------------------------------------------------------


def test_verify_passes_on_clean_data(journal: Journal) -> None:
    """verify() over untouched sessions reports every session and event, no problem."""
    fill(journal, "a", 3)
    fill(journal, "b", 4)
    report = journal.verify().to_dict()
    checkpoint = report.pop("checkpoint")
    assert report == {
        "ok": True,
        "sessions": 2,
        "events": 7,
        "first_problem": None,
        "unkeyed_events": 0,
    }
    # The home's first checkpoint, written before its first keyed event.
    assert checkpoint == {
        "id": 1,
        "ts": checkpoint["ts"],
        "key_id": journal.keys.current()[0],
        "sessions": 0,
    }
    only_b = journal.verify("b")
    assert (only_b.sessions, only_b.events, only_b.first_problem) == (1, 4, None)
    assert journal.verify("unknown").ok


def test_verify_detects_an_edited_payload(journal: Journal, db_path: Path) -> None:
    """Editing one payload in the file is reported as tampered at that seq."""
    fill(journal, "s1", 4)
    sql(db_path, "UPDATE events SET payload = '{\"i\":999}' WHERE session_id = 's1' AND seq = 3")
    report = journal.verify()
    assert report.first_problem == Tamper("s1", 3, "tampered: content does not match its hash")
    assert not report.ok
    assert report.to_dict()["first_problem"] == {
        "session_id": "s1",
        "seq": 3,
        "problem": "tampered: content does not match its hash",
    }


@pytest.mark.parametrize(
    "column, value",
    [("cost_usd", 0.0001), ("tokens_in", 1), ("kind", "tool.result"), ("ts", 1.0)],
)
def test_verify_detects_edited_accounting_columns(
    journal: Journal, db_path: Path, column: str, value: object
) -> None:
    """The hash covers the accounting columns too: changing cost, tokens, kind or time
    of an event is tampering."""
    fill(journal, "s1", 3)
    sql(db_path, f"UPDATE events SET {column} = ? WHERE seq = 2", value)
    assert journal.verify().first_problem == Tamper(
        "s1", 2, "tampered: content does not match its hash"
    )


def test_verify_detects_an_edit_whose_hash_was_recomputed_without_the_key(
    journal: Journal, store: Store, db_path: Path
) -> None:
    """Recomputing an edited row's hash without the audit key (plain SHA-256) is caught
    at that row."""
    fill(journal, "s1", 3)
    sql(db_path, "UPDATE events SET payload = '{\"i\":0}' WHERE seq = 2")
    edited = store.events("s1", after_seq=1, limit=1)[0]
    sql(db_path, "UPDATE events SET hash = ? WHERE seq = 2", chain_hash(edited))
    assert journal.verify().first_problem == Tamper(
        "s1", 2, "tampered: content does not match its hash"
    )


def test_verify_detects_an_edit_whose_hash_was_recomputed_with_the_key(
    journal: Journal, store: Store, db_path: Path
) -> None:
    """Even with the key, recomputing one row's hash breaks the next row's prev_hash."""
    fill(journal, "s1", 3)
    sql(db_path, "UPDATE events SET payload = '{\"i\":0}' WHERE seq = 2")
    edited = store.events("s1", after_seq=1, limit=1)[0]
    key = journal.keys.get(edited.key_id)
    sql(db_path, "UPDATE events SET hash = ? WHERE seq = 2", chain_hash(edited, key))
    problem = journal.verify().first_problem
    assert problem is not None
    assert (problem.session_id, problem.seq) == ("s1", 3)
    assert problem.problem.startswith("chain broken")


def test_verify_detects_a_deleted_middle_row(journal: Journal, db_path: Path) -> None:
    """Deleting a row in the middle is reported as missing, at the missing seq."""
    fill(journal, "s1", 4)
    sql(db_path, "DELETE FROM events WHERE seq = 2")
    assert journal.verify().first_problem == Tamper(
        "s1", 2, "missing event: expected seq 2, found 3"
    )


def test_verify_detects_deleted_last_rows(journal: Journal, db_path: Path) -> None:
    """Deleting a session's newest rows leaves an intact chain, but the index's last_seq
    still tells: reported as missing from the first deleted seq."""
    fill(journal, "s1", 5)
    sql(db_path, "DELETE FROM events WHERE seq >= 4")
    expected = Tamper("s1", 4, "missing event: seq 4 to 5 are gone")
    assert journal.verify().first_problem == expected
    assert journal.verify("s1").first_problem == expected


def test_verify_detects_deleted_last_rows_of_a_session_followed_by_another(
    journal: Journal, db_path: Path
) -> None:
    """A tail gap in one session is found even when another session follows it."""
    fill(journal, "a", 3)
    fill(journal, "b", 2)
    sql(db_path, "DELETE FROM events WHERE session_id = 'a' AND seq = 3")
    assert journal.verify().first_problem == Tamper("a", 3, "missing event: seq 3 to 3 are gone")


def test_verify_detects_a_session_whose_events_were_all_deleted(
    journal: Journal, db_path: Path
) -> None:
    """Deleting every event of a session is reported, with or without a session id."""
    fill(journal, "a", 2)
    fill(journal, "b", 3)
    sql(db_path, "DELETE FROM events WHERE session_id = 'b'")
    expected = Tamper("b", 1, "missing event: seq 1 to 3 are gone")
    assert journal.verify("b").first_problem == expected
    assert journal.verify().first_problem == expected
    assert journal.verify("a").ok


def test_verify_detects_swapped_rows(journal: Journal, db_path: Path) -> None:
    """Swapping the seq of two rows (reordering history) breaks the chain at the first."""
    fill(journal, "s1", 4)
    sql(db_path, "UPDATE events SET seq = -1 WHERE seq = 2")
    sql(db_path, "UPDATE events SET seq = 2 WHERE seq = 3")
    sql(db_path, "UPDATE events SET seq = 3 WHERE seq = -1")
    assert journal.verify().first_problem == Tamper(
        "s1", 2, "chain broken: prev_hash does not match the previous event (reordered?)"
    )


def test_verify_by_session_checks_only_that_session(journal: Journal, db_path: Path) -> None:
    """verify(session_id) audits one chain; verify() audits all and finds the bad one."""
    fill(journal, "a", 3)
    fill(journal, "b", 3)
    sql(db_path, "UPDATE events SET payload = '{}' WHERE session_id = 'b' AND seq = 2")
    only_a = journal.verify("a")
    assert (only_a.sessions, only_a.events, only_a.first_problem) == (1, 3, None)
    bad = Tamper("b", 2, "tampered: content does not match its hash")
    assert journal.verify("b").first_problem == bad
    assert journal.verify().first_problem == bad


# -- session index ------------------------------------------------------------------


def test_session_index_is_a_projection_of_the_events(journal: Journal, store: Store) -> None:
    """Status follows the lifecycle kinds; steps count llm.response and tool.result;
    tokens and cost sum over events; the reason of the last failure is kept."""
    journal.append(
        "s1", "session.created", created(agent="mail", goal="g", priority=3, labels={"k": "v"})
    )
    statuses = [store.session("s1").status]  # type: ignore[union-attr]
    steps = [
        ("session.started", {}, {}),
        ("llm.response", {"message": {}}, {"tokens_in": 10, "tokens_out": 5, "cost_usd": 0.5}),
        ("tool.call", {"name": "x"}, {}),
        ("tool.result", {"name": "x"}, {}),
        ("session.paused", {}, {}),
        ("session.resumed", {}, {}),
        ("llm.response", {"message": {}}, {"tokens_in": 20, "tokens_out": 1, "cost_usd": 0.25}),
        ("session.failed", {"reason": "budget"}, {"reason": "budget exhausted"}),
    ]
    for kind, payload, kw in steps:
        last = journal.append("s1", kind, payload, **kw)  # type: ignore[arg-type]
        statuses.append(store.session("s1").status)  # type: ignore[union-attr]

    assert statuses == [
        "queued",
        "running",
        "running",
        "running",
        "running",
        "paused",
        "running",
        "running",
        "failed",
    ]
    session = store.session("s1")
    assert session is not None
    assert session.to_dict() == {
        "id": "s1",
        "agent": "mail",
        "goal": "g",
        "status": "failed",
        "priority": 3,
        "labels": {"k": "v"},
        "created_at": session.created_at,
        "updated_at": last.ts,
        "reason": "budget exhausted",
        "steps": 3,
        "tokens_in": 30,
        "tokens_out": 6,
        "cost_usd": 0.75,
        "last_seq": 9,
    }


@pytest.mark.parametrize("kind", sorted(STATUS_BY_KIND))
def test_each_lifecycle_kind_sets_its_status(journal: Journal, store: Store, kind: str) -> None:
    """Every kind in STATUS_BY_KIND moves the session to its status."""
    journal.append("s1", "session.created", created())
    if kind != "session.created":
        journal.append("s1", kind, {})
    session = store.session("s1")
    assert session is not None and session.status == STATUS_BY_KIND[kind].value


# -- follow ---------------------------------------------------------------------------


async def wait_for(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
    """Poll a condition on observable state, giving up after a bounded number of tries."""
    for _ in range(2000):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


async def test_follow_yields_concurrent_appends_and_stops_when_finished(journal: Journal) -> None:
    """follow() yields events appended while it runs, in order, and returns once the
    session has finished and its last event was delivered."""
    journal.append("s1", "session.created", created())
    journal.append("s1", "session.started", {})
    seen: list[Event] = []

    async def consume() -> None:
        async for event in journal.follow("s1", poll_s=0.005):
            seen.append(event)

    task = asyncio.create_task(consume())
    try:
        await wait_for(lambda: len(seen) == 2, "the existing events")
        journal.append("s1", "note", {"i": 3})
        await wait_for(lambda: len(seen) == 3, "a live event")
        assert not task.done()
        journal.append("s1", "note", {"i": 4})
        journal.append("s1", "session.completed", {"final": "ok"})
        await asyncio.wait_for(task, timeout=10)
    finally:
        task.cancel()
    assert seen == journal.events("s1")
    assert [e.seq for e in seen] == [1, 2, 3, 4, 5]


async def test_follow_of_a_finished_session_replays_from_a_seq(journal: Journal) -> None:
    """Following a finished session yields the events after `after_seq`, then stops."""
    fill(journal, "s1", 3)
    journal.append("s1", "session.killed", {})
    seen = [e async for e in journal.follow("s1", after_seq=2)]
    assert [(e.seq, e.kind) for e in seen] == [(3, "note"), (4, "session.killed")]


async def test_follow_of_an_unknown_session_ends_at_once(journal: Journal) -> None:
    """An id with no session yields nothing and ends instead of waiting forever."""
    assert [e async for e in journal.follow("nope")] == []


def test_verify_detects_a_renumbered_first_row(journal: Journal, db_path: Path) -> None:
    """A first row renumbered below 1 is reported at its own seq."""
    fill(journal, "s1", 2)
    sql(db_path, "UPDATE events SET seq = 0 WHERE seq = 1")
    assert journal.verify().first_problem == Tamper(
        "s1", 0, "unexpected seq 0 where 1 was expected"
    )


def test_forget_makes_the_next_append_read_the_head_from_the_store(store: Store) -> None:
    """After forget(), a writer no longer trusts its cached head, so it continues a chain
    another writer extended instead of conflicting."""
    first, second = Journal(store), Journal(store)
    fill(first, "s1", 2)
    third = second.append("s1", "note", {})
    first.forget("s1")
    fourth = first.append("s1", "note", {})
    assert (fourth.seq, fourth.prev_hash) == (4, third.hash)
