"""The keyed audit: tampering by someone who can write the database file but not the
key file is evident. Each blind spot of the unkeyed chain is a test here."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import stat
from pathlib import Path

import pytest

from nexus.runtime.audit import (
    AuditKeys,
    Checkpointer,
    Tamper,
    chain_hash,
    event_hash,
    write_checkpoint,
)
from nexus.runtime.journal import Journal
from nexus.storage import open_store
from nexus.storage.base import EventRow, SessionChange, Store
from nexus.types import Event


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def store(home: Path):
    s = open_store(home / "nexus.db")
    yield s
    s.close()


@pytest.fixture
def journal(store: Store) -> Journal:
    return Journal(store)


def fill(journal: Journal, session_id: str, n: int) -> list[Event]:
    """session.created, then n-2 notes and a tool result (a step) with tokens."""
    created = {"agent": "assistant", "goal": "g", "priority": 0, "labels": {}}
    events = [journal.append(session_id, "session.created", created)]
    events += [journal.append(session_id, "note", {"i": i}) for i in range(2, n)]
    events.append(journal.append(session_id, "tool.result", {"ok": True}, tokens_in=7))
    return events


def sql(home: Path, statement: str, *args: object) -> None:
    """Edit the database behind NEXUS's back, as an attacker with file access would."""
    db = sqlite3.connect(home / "nexus.db")
    try:
        db.execute(statement, args)
        db.commit()
    finally:
        db.close()


def problem(journal: Journal, session_id: str | None = None) -> Tamper | None:
    return journal.verify(session_id).first_problem


# -- keys ---------------------------------------------------------------------------------


def test_the_key_file_is_private_256_bits_and_made_on_first_append(
    home: Path, journal: Journal
) -> None:
    """No key before the first append; then audit.key (0600) holds one 256-bit key, and
    the anchor file (0600) the first checkpoint."""
    key_file, anchor = home / "audit.key", home / "audit-anchor.json"
    assert not key_file.exists()
    fill(journal, "s1", 3)
    data = json.loads(key_file.read_text())
    assert list(data) == ["current", "keys"]
    assert list(data["keys"]) == [data["current"]]
    assert len(bytes.fromhex(data["keys"][data["current"]])) == 32
    for path in (key_file, anchor):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_rotation_keeps_old_keys_so_old_events_still_verify(home: Path, store: Store) -> None:
    """After rotate(), new events carry the new key id and old ones the old: both verify,
    in one chain, from a fresh process's view of the key file."""
    first = Journal(store)
    fill(first, "s1", 3)
    old_id = first.keys.current()[0]
    new_id = AuditKeys(home / "audit.key").rotate()
    second = Journal(store)  # a process started after the rotation
    second.append("s1", "note", {"after": "rotation"})
    assert [r.key_id for r in store.events("s1")] == [old_id] * 3 + [new_id]
    assert new_id != old_id
    report = Journal(store, keys=AuditKeys(home / "audit.key")).verify()
    assert (report.ok, report.events) == (True, 4)


def test_an_event_under_a_key_not_in_the_key_file_is_reported(home: Path, journal: Journal) -> None:
    """Replacing the key file (old keys lost) makes the events signed with them
    unverifiable, named by key id."""
    fill(journal, "s1", 2)
    kid = journal.keys.current()[0]
    (home / "audit.key").unlink()
    replaced = AuditKeys(home / "audit.key")
    replaced.current()
    assert Journal(journal.store, keys=replaced).verify().first_problem == Tamper(
        "s1", 1, f"signed with audit key {kid}, which is unknown"
    )


# -- the blind spots of the unkeyed chain --------------------------------------------------


def test_editing_the_index_fails_the_audit(home: Path, journal: Journal) -> None:
    """The index must agree with the chain: edited status, counters or last_seq are found."""
    fill(journal, "s1", 4)
    sql(home, "UPDATE sessions SET status = 'completed', steps = 5, tokens_in = 0")
    assert problem(journal) == Tamper(
        "s1",
        0,
        "the session index disagrees with the chain: status 'completed', chain says "
        "'queued'; steps 5, chain says 1; tokens_in 0, chain says 7",
    )
    sql(home, "UPDATE sessions SET status = 'queued', steps = 1, tokens_in = 7, last_seq = 2")
    assert problem(journal, "s1") == Tamper(
        "s1", 0, "the session index disagrees with the chain: last_seq 2, chain says 4"
    )


def test_deleting_a_tail_with_its_index_row_fails_the_audit(home: Path, journal: Journal) -> None:
    """Dropping a session's newest events and its index row leaves a whole chain and no
    last_seq to compare; the checkpoint still has the session at its old head."""
    fill(journal, "s1", 5)
    fill(journal, "s2", 3)
    checkpoint = write_checkpoint(journal.store, journal.keys)
    sql(home, "DELETE FROM events WHERE session_id = 's1' AND seq >= 4")
    sql(home, "DELETE FROM sessions WHERE id = 's1'")
    expected = Tamper("s1", 4, f"missing event: seq 4 to 5 are gone (checkpoint #{checkpoint.id})")
    assert problem(journal) == expected
    assert problem(journal, "s1") == expected


def test_deleting_a_whole_session_fails_the_audit(home: Path, journal: Journal) -> None:
    """Deleting every event and the index row of a session: the checkpoint names it."""
    fill(journal, "s1", 3)
    fill(journal, "s2", 3)
    checkpoint = write_checkpoint(journal.store, journal.keys)
    sql(home, "DELETE FROM events WHERE session_id = 's2'")
    sql(home, "DELETE FROM sessions WHERE id = 's2'")
    expected = Tamper(
        "s2", 1, f"missing event: the whole session is gone (checkpoint #{checkpoint.id})"
    )
    assert problem(journal) == expected
    assert problem(journal, "s2") == expected
    assert problem(journal, "s1") is None


@pytest.mark.parametrize("mark_unkeyed", [False, True])
def test_recomputing_the_whole_chain_after_an_edit_fails_the_audit(
    home: Path, journal: Journal, store: Store, mark_unkeyed: bool
) -> None:
    """An attacker without the key edits a payload and recomputes every hash and
    prev_hash of the session (as the unkeyed chain allowed), keeping the key ids or
    marking the rows as pre-key: both fail."""
    fill(journal, "s1", 4)
    sql(home, "UPDATE events SET payload = '{\"i\":666}' WHERE seq = 2")
    prev = ""
    for row in store.events("s1"):
        forged = EventRow(*[getattr(row, f) for f in row.__slots__][:10], prev, "", "")
        digest = chain_hash(forged)  # the best anyone without the key can do
        key_id = "" if mark_unkeyed else row.key_id
        sql(
            home,
            "UPDATE events SET prev_hash = ?, hash = ?, key_id = ? WHERE seq = ?",
            prev, digest, key_id, row.seq,
        )  # fmt: skip
        prev = digest
    expected = (
        "unkeyed event that no checkpoint vouches for (written without the key)"
        if mark_unkeyed
        else "tampered: content does not match its hash"
    )
    assert problem(journal) == Tamper("s1", 1, expected)


def test_rewriting_history_under_a_checkpoint_is_caught_even_with_the_key(
    home: Path, journal: Journal, store: Store
) -> None:
    """A chain rebuilt with the key (an insider) is whole, but the signed checkpoint's
    hash at that seq no longer matches; only rewriting the anchor too would hide it."""
    fill(journal, "s1", 3)
    write_checkpoint(store, journal.keys)
    kid, key = journal.keys.current()
    prev = ""
    for row in store.events("s1"):
        payload = '{"i":0}' if row.seq == 2 else row.payload
        digest = event_hash(
            key, kid, row.session_id, row.seq, row.ts, row.kind, row.tokens_in,
            row.tokens_out, row.cost_usd, row.latency_ms, prev, payload,
        )  # fmt: skip
        sql(home, "UPDATE events SET payload = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            payload, prev, digest, row.seq)  # fmt: skip
        prev = digest
    assert problem(journal) == Tamper("s1", 3, "history rewritten: hash differs from checkpoint #2")


# -- checkpoints and the anchor ----------------------------------------------------------


def test_deleting_the_checkpoint_rows_fails_the_audit(home: Path, journal: Journal) -> None:
    """With every checkpoint row gone, the anchor file names one the database lacks."""
    fill(journal, "s1", 2)
    checkpoint = write_checkpoint(journal.store, journal.keys)
    sql(home, "DELETE FROM checkpoints")
    assert problem(journal) == Tamper(
        "",
        0,
        f"checkpoint #{checkpoint.id} named by {home / 'audit-anchor.json'} is not in the "
        "database (checkpoint rows deleted or replaced)",
    )


def test_a_forged_checkpoint_fails_the_audit(home: Path, journal: Journal) -> None:
    """A newer checkpoint row not signed with the key (to vouch for a rewrite) is refused."""
    fill(journal, "s1", 2)
    body = json.dumps({"v": 1, "ts": 0, "key_id": "k", "sessions": 0, "heads": [], "legacy": []})
    sql(home, "INSERT INTO checkpoints VALUES (99, 0, ?, ?, ?)",
        journal.keys.current()[0], body, "00" * 32)  # fmt: skip
    assert problem(journal) == Tamper("", 0, "checkpoint #99 is not signed by the audit key")


def test_a_missing_anchor_fails_the_audit(home: Path, journal: Journal) -> None:
    """Events were signed, so a checkpoint was anchored: a missing anchor is reported."""
    fill(journal, "s1", 2)
    (home / "audit-anchor.json").unlink()
    assert problem(journal) == Tamper(
        "", 0, f"the anchor file {home / 'audit-anchor.json'} is missing"
    )


def test_the_report_names_the_checkpoint_it_held_the_chains_against(journal: Journal) -> None:
    """verify() reports the newest checkpoint: its id, time, key and session count."""
    fill(journal, "s1", 2)
    fill(journal, "s2", 2)
    row = write_checkpoint(journal.store, journal.keys)
    report = journal.verify().to_dict()
    assert report["checkpoint"] == {
        "id": row.id,
        "ts": row.ts,
        "key_id": journal.keys.current()[0],
        "sessions": 2,
    }
    assert (report["ok"], report["sessions"], report["events"]) == (True, 2, 4)


# -- rows written before keys ---------------------------------------------------------------


def legacy_append(store: Store, session_id: str, n: int) -> None:
    """Rows as a NEXUS before keyed chains wrote them: plain SHA-256, no key id."""
    prev = ""
    for seq in range(1, n + 1):
        kind = "session.created" if seq == 1 else "note"
        payload = '{"agent":"assistant","goal":"g","labels":{},"priority":0}' if seq == 1 else "{}"
        digest = event_hash(None, "", session_id, seq, 1.0 + seq, kind, 0, 0, 0.0, 0.0,
                            prev, payload)  # fmt: skip
        row = EventRow(0, session_id, seq, 1.0 + seq, kind, payload, 0, 0, 0.0, 0.0, prev, digest)
        create = {"agent": "assistant", "goal": "g", "status": "queued", "priority": 0,
                  "labels": {}}  # fmt: skip
        store.append(row, SessionChange(create=create if seq == 1 else None))
        prev = digest


def test_rows_from_before_keys_verify_and_a_session_continues_keyed(
    store: Store, home: Path
) -> None:
    """An upgraded home: its unkeyed rows are vouched for by the first checkpoint (made
    before the first keyed event), and an old session goes on with keyed events."""
    legacy_append(store, "old", 3)
    journal = Journal(store)
    journal.append("old", "note", {"after": "upgrade"})
    fill(journal, "new", 2)
    report = journal.verify()
    assert (report.ok, report.events, report.unkeyed_events) == (True, 6, 3)
    assert [r.key_id != "" for r in store.events("old")] == [False, False, False, True]


def test_an_unkeyed_session_forged_after_the_upgrade_fails_the_audit(
    store: Store, home: Path
) -> None:
    """Writing a new session the pre-key way (no key needed) is not vouched for."""
    legacy_append(store, "old", 2)
    journal = Journal(store)
    fill(journal, "new", 2)
    legacy_append(store, "forged", 2)
    write_checkpoint(store, journal.keys)  # even a later checkpoint does not vouch for it
    assert problem(journal) == Tamper(
        "forged", 1, "unkeyed event that no checkpoint vouches for (written without the key)"
    )


# -- scheduling ------------------------------------------------------------------------------


async def test_the_checkpointer_writes_after_n_appends_and_at_close(journal: Journal) -> None:
    """Due after `every_appends` new events (from any writer); run() writes it; aclose()
    writes the last one only if something was appended since."""
    store = journal.store
    checkpointer = Checkpointer(store, journal.keys, every_appends=3, every_s=3600, poll_s=0.01)
    fill(journal, "s1", 2)
    first = store.checkpoint()
    assert not checkpointer.due()
    journal.append("s1", "note", {})
    assert checkpointer.due()
    task = asyncio.create_task(checkpointer.run())
    try:
        while store.checkpoint() == first:
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    written = store.checkpoint()
    assert written is not None and json.loads(written.body)["heads"] == [
        ["s1", 3, store.head("s1")[1]]
    ]
    await checkpointer.aclose()
    assert store.checkpoint() == written  # nothing new: no closing checkpoint
    journal.append("s1", "note", {})
    await checkpointer.aclose()
    closing = store.checkpoint()
    assert closing is not None and closing.id == written.id + 1


def test_the_in_memory_store_audits_the_same_way() -> None:
    """The in-memory store keeps its key in memory and is held against its checkpoints."""
    store = open_store(Path(":memory:"))
    journal = Journal(store)
    fill(journal, "s1", 3)
    row = write_checkpoint(store, journal.keys)
    report = journal.verify()
    assert (report.ok, report.events) == (True, 3)
    assert report.checkpoint is not None and report.checkpoint.heads == {
        "s1": (3, store.head("s1")[1])
    }
    assert report.checkpoint.id == row.id
