"""The broadcaster's memory of live sessions: clients that join a running session
catch up from it byte for byte as from the journal, miss nothing and get nothing
twice, and what it holds stays within its bound."""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from nexus.runtime.journal import Journal
from nexus.server import deflate
from nexus.server.broadcast import Broadcaster, CatchUp, event_json
from nexus.storage.base import EventRow
from nexus.storage.sqlite import SQLiteStore

CREATED = {"goal": "g", "agent": "a", "priority": 0, "labels": {}}


@pytest.mark.parametrize(
    ("session_id", "kind", "ts", "cost"),
    [
        ("s_4294c76aae637bce", "tool.call", 1795625678.4931893, 0.0),
        ('we"ird\\', "ünïcode", 1.0, 1e-7),
        ("line\nbreak", "k\t", 0.1, 123.456),
    ],
)
def test_event_json_is_the_event_as_json(
    session_id: str, kind: str, ts: float, cost: float
) -> None:
    """The hand-formatted event text parses to the event, with its stored payload,
    whatever characters its strings hold."""
    row = EventRow(7, session_id, 3, ts, kind, '{"a":[1,"x"]}', 1, 2, cost, 0.5, "p", "ab12")
    assert json.loads(event_json(row)) == {
        "id": 7,
        "session_id": session_id,
        "seq": 3,
        "ts": ts,
        "kind": kind,
        "tokens_in": 1,
        "tokens_out": 2,
        "cost_usd": cost,
        "latency_ms": 0.5,
        "hash": "ab12",
        "payload": {"a": [1, "x"]},
    }


async def until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


@pytest.fixture
async def parts(nexus_home: Path) -> AsyncIterator[tuple[SQLiteStore, Journal, Broadcaster]]:
    store = SQLiteStore(nexus_home / "n.db")
    journal = Journal(store)
    # A long poll: the reader is woken by the journal's commits (the store's
    # wakeup) but runs only when a test awaits, after its synchronous appends; so
    # the tests decide when it reads, and can put a client ahead of it.
    broadcaster = Broadcaster(store, poll_s=60, coalesce_s=0)
    await broadcaster.start()
    yield store, journal, broadcaster
    await broadcaster.stop()
    store.close()


def journal_frames(b: Broadcaster, store: SQLiteStore, session_id: str, after: int) -> bytes:
    """What a client starting after seq `after` must be sent, read from the journal."""
    return b.backlog(store.events(session_id, after), by_seq=True)


def seen(caught: CatchUp | None) -> tuple[bytes, int, bool] | None:
    """A catch-up as a client sees it: its frames, where it leaves off, ended."""
    if caught is None:
        return None
    stream = deflate.Stream()
    deflated = stream.start() + b"".join(stream.add(p.block()) for p in caught.pieces)
    # A deflating client is sent the same frames (the checksum is checked too).
    assert zlib.decompress(deflated + stream.finish()) == caught.raw
    return caught.raw, caught.last_seq, caught.ended


def notes(journal: Journal, session_id: str, n: int) -> None:
    for i in range(n):
        journal.append(session_id, "note", {"i": i, "text": "x" * 100})


async def read(b: Broadcaster, store: SQLiteStore, session_id: str) -> None:
    """Let the reader (woken by the appends) run until the session's tail holds its
    last event."""
    last = store.session(session_id).last_seq  # type: ignore[union-attr]

    def held() -> bool:
        caught = b.catch_up(session_id, last - 1)
        return caught is not None and caught.last_seq == last

    await until(held, "the reader")


async def test_clients_joining_a_live_session_catch_up_from_memory_as_from_the_journal(
    parts: tuple[SQLiteStore, Journal, Broadcaster],
) -> None:
    """The first client's journal read becomes the session's tail; the reader
    extends it batch by batch; later clients at any position get exactly the
    journal's frames, plain or deflated, without a read of their own."""
    store, journal, b = parts
    journal.append("s1", "session.created", CREATED)
    notes(journal, "s1", 3)  # seq 1..4
    assert b.catch_up("s1", 0) is None  # nothing held yet: the caller reads
    first = b.remember(store.session("s1"), 0, store.events("s1", 0))  # type: ignore[arg-type]
    assert seen(first) == (journal_frames(b, store, "s1", 0), 4, False)
    notes(journal, "s1", 4)  # seq 5..8
    await read(b, store, "s1")
    notes(journal, "s1", 2)  # seq 9..10
    await read(b, store, "s1")
    for after in range(10):
        assert seen(b.catch_up("s1", after)) == (
            journal_frames(b, store, "s1", after),
            10,
            False,
        ), after
    assert seen(b.catch_up("s1", 10)) == (b"", 10, False)
    journal.append("s1", "session.completed", {"answer": "ok"}, reason="completed")
    await read(b, store, "s1")
    assert seen(b.catch_up("s1", 11)) == (b"", 11, True)
    assert seen(b.catch_up("s1", 3)) == (journal_frames(b, store, "s1", 3), 11, True)


async def test_a_client_ahead_of_the_reader_gets_each_event_once(
    parts: tuple[SQLiteStore, Journal, Broadcaster],
) -> None:
    """A client whose catch-up read went past the reader's position is handed only
    the events after it from the next batch, in order: no duplicate, no gap; the
    same for a deflating client."""
    store, journal, b = parts
    journal.append("s1", "session.created", CREATED)
    notes(journal, "s1", 5)  # seq 1..6, not yet read by the reader
    caught = b.remember(store.session("s1"), 0, store.events("s1", 0))  # type: ignore[arg-type]
    sub = b.subscribe("s1", caught.last_seq)
    zipped = b.subscribe("s1", caught.last_seq, deflated=True)
    zipped.begin(caught.pieces)  # as the route does, before any batch
    other = b.subscribe("s1", 0)  # one from the very start, for contrast
    notes(journal, "s1", 3)  # seq 7..9
    await read(b, store, "s1")
    whole = journal_frames(b, store, "s1", 0)
    assert (sub.last_id, zipped.last_id, other.last_id) == (9, 9, 9)
    assert caught.raw + sub.take() == whole
    assert other.take() == whole
    assert zlib.decompress(zipped.take() + zipped.finish()) == b"retry: 1000\n\n" + whole


async def test_the_tails_stay_within_their_memory_bound(
    parts: tuple[SQLiteStore, Journal, Broadcaster],
) -> None:
    """Past `tail_bytes`, the least recently used session's frames go; one session
    alone keeps at most half the bound, its oldest frames going first. A client
    that wants what is gone reads the journal (catch_up says None)."""
    store, journal, b = parts
    for sid in ("s1", "s2", "s3"):
        journal.append(sid, "session.created", CREATED)
        notes(journal, sid, 9)  # about 3 KB of frames each
    size = {sid: len(journal_frames(b, store, sid, 0)) for sid in ("s1", "s2", "s3")}
    b.tail_bytes = int(size["s1"] * 2.5)
    for sid in ("s1", "s2"):
        b.remember(store.session(sid), 0, store.events(sid, 0))  # type: ignore[arg-type]
    assert b.tails == 2 and b.held_bytes == size["s1"] + size["s2"]
    assert b.catch_up("s1", 0) is not None  # s1 is now the most recently used
    b.remember(store.session("s3"), 0, store.events("s3", 0))  # type: ignore[arg-type]
    assert b.tails == 2 and b.held_bytes == size["s1"] + size["s3"]  # s2 went
    assert b.catch_up("s2", 0) is None
    assert seen(b.catch_up("s1", 0)) == (journal_frames(b, store, "s1", 0), 10, False)

    for _ in range(2):  # s1 grows past half the bound: its oldest pieces go
        notes(journal, "s1", 10)
        await read(b, store, "s1")
    assert b.catch_up("s1", 0) is None
    assert b.held_bytes <= b.tail_bytes
    assert b.catch_up("s1", 19) is None  # the second piece went too
    assert seen(b.catch_up("s1", 20)) == (journal_frames(b, store, "s1", 20), 30, False)
    assert len(journal_frames(b, store, "s1", 20)) <= b.tail_bytes // 2


async def test_the_coalescing_wait_grows_with_the_clients(nexus_home: Path) -> None:
    """A wake waits `coalesce_s` with few clients and longer with many (each
    client is one socket write per batch), never past `max_coalesce_s`; 0 turns
    coalescing off."""
    store = SQLiteStore(nexus_home / "n.db")
    b = Broadcaster(store, coalesce_s=0.05, max_coalesce_s=0.25, writes_per_s=500)
    waits = {}
    for clients in (0, 1, 25, 100, 1000):
        while b.subscribers < clients:
            b.subscribe(None, 0)
        waits[clients] = b.coalesce_wait
    assert waits == {0: 0.05, 1: 0.05, 25: 0.05, 100: 0.2, 1000: 0.25}
    assert Broadcaster(store, coalesce_s=0).coalesce_wait == 0.0
    store.close()
