"""Group commit: concurrent sessions share journal transactions, each writer
resumes only after its own event is durable, and one bad event fails alone."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from nexus.errors import JournalError, StorageError
from nexus.runtime.journal import Journal
from nexus.storage.base import EventRow, SessionChange
from nexus.storage.sqlite import SQLiteStore

CREATED = {"goal": "g", "agent": "a", "priority": 0, "labels": {}}


class CountingStore(SQLiteStore):
    """The real store, remembering the size of each committed batch."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.batches: list[int] = []

    def append_many(self, items: Sequence[tuple[EventRow, SessionChange]]) -> list[int | Exception]:
        self.batches.append(len(items))
        return super().append_many(items)


@pytest.fixture
def store(tmp_path: Path) -> CountingStore:
    return CountingStore(tmp_path / "j.db")


async def test_concurrent_sessions_share_transactions(store: CountingStore) -> None:
    """50 sessions appending at once commit in far fewer transactions than events,
    every event lands, and every chain verifies."""
    journal = Journal(store)
    for i in range(50):
        journal.append(f"s{i}", "session.created", CREATED)
    store.batches.clear()

    async def writer(i: int) -> list[int]:
        return [(await journal.append_async(f"s{i}", "note", {"n": n})).seq for n in range(20)]

    seqs = await asyncio.gather(*(writer(i) for i in range(50)))
    assert seqs == [list(range(2, 22))] * 50
    assert sum(store.batches) == 1000
    assert len(store.batches) <= 100  # ~50 events per transaction, not 1
    report = journal.verify()
    assert (report.ok, report.sessions, report.events) == (True, 50, 1050)


async def test_a_writer_resumes_only_after_its_event_is_committed(store: CountingStore) -> None:
    """When append_async returns, the event is in the database."""
    journal = Journal(store)
    journal.append("s", "session.created", CREATED)
    event = await journal.append_async("s", "note", {"x": 1})
    rows = SQLiteStore(Path(store.path)).events("s")
    assert [(r.seq, r.hash) for r in rows][-1] == (event.seq, event.hash)


async def test_one_refused_event_fails_alone(store: CountingStore, tmp_path: Path) -> None:
    """A conflicting event in a shared batch raises for its writer only."""
    journal, rival = Journal(store), Journal(store)
    for s in ("a", "b"):
        journal.append(s, "session.created", CREATED)
    journal.events("a")
    rival.append("a", "note", {"by": "rival"})  # journal's cached head for "a" is now stale
    results = await asyncio.gather(
        journal.append_async("a", "note", {"stale": True}),
        journal.append_async("b", "note", {"fine": True}),
        return_exceptions=True,
    )
    assert isinstance(results[0], JournalError)
    assert not isinstance(results[1], BaseException) and results[1].seq == 2
    retried = await journal.append_async("a", "note", {"retried": True})
    assert retried.seq == 3 and journal.verify().ok


async def test_cancelling_the_leader_still_commits_the_batch(store: CountingStore) -> None:
    """The task leading a group commit may be cancelled; the events queued with it
    still commit and their writers resume."""
    journal = Journal(store)
    for s in ("a", "b"):
        journal.append(s, "session.created", CREATED)
    leader = asyncio.ensure_future(journal.append_async("a", "note", {"lead": True}))
    follower = asyncio.ensure_future(journal.append_async("b", "note", {"follow": True}))
    await asyncio.sleep(0)  # both queued; the leader is inside its yield
    leader.cancel()
    event = await follower
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert event.seq == 2
    assert [e.kind for e in journal.events("a")] == ["session.created", "note"]


class FailingStore(CountingStore):
    """The real store, whose database fails as a whole for the next `failures`
    transactions (as an unreachable server does: the call raises, no row result)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.failures = 0

    def append_many(self, items: Sequence[tuple[EventRow, SessionChange]]) -> list[int | Exception]:
        if self.failures:
            self.failures -= 1
            raise StorageError("cannot reach the database (injected)")
        return super().append_many(items)


async def test_a_store_failing_as_a_whole_fails_every_writer_of_the_batch(
    tmp_path: Path,
) -> None:
    """When the database fails a group commit as a whole, the leader and every
    follower of that batch get the error (none is left waiting), nothing is written,
    and once the database is back each session appends again from its real head."""
    store = FailingStore(tmp_path / "j.db")
    journal = Journal(store)
    for i in range(5):
        journal.append(f"s{i}", "session.created", CREATED)
    store.batches.clear()
    store.failures = 1

    async def writer(i: int) -> Exception | int:
        try:
            return (await journal.append_async(f"s{i}", "note", {"n": 1})).seq
        except StorageError as exc:
            return exc

    outcomes = await asyncio.wait_for(asyncio.gather(*(writer(i) for i in range(5))), 30)
    assert [str(o) for o in outcomes] == ["cannot reach the database (injected)"] * 5
    assert [store.head(f"s{i}")[0] for i in range(5)] == [1] * 5
    again = await asyncio.gather(*(writer(i) for i in range(5)))
    assert again == [2] * 5
    report = journal.verify()
    assert (report.ok, report.sessions, report.events) == (True, 5, 10)
    with pytest.raises(StorageError):
        store.failures = 1
        journal.append("s0", "note", {"n": 2})
    assert journal.append("s0", "note", {"n": 2}).seq == 3
