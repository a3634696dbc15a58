"""Waking live readers (`nexus.storage.wake`): this process's commits ring the
store's doorbells on every store; on PostgreSQL every process's commits do,
through one LISTEN connection per store, which comes back after it is dropped."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import psycopg
import pytest

from nexus.runtime.audit import AuditKeys
from nexus.runtime.journal import Journal
from nexus.storage.memory import MemoryStore
from nexus.storage.postgres import LISTEN_APP, Listener, PostgresStore
from nexus.storage.sqlite import SQLiteStore
from nexus.storage.wake import COMMANDS, EVENTS, Wakeup
from tests.server.test_broadcast import CREATED
from tests.waiting import wait_for

NEVER_S = 3600.0  # a safety interval no test waits out: only a ring wakes the reader


def listener_pids(url: str) -> list[int]:
    """The backends of the listen connections on this database (as an operator
    finds them)."""
    with psycopg.connect(url) as db:
        rows = db.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
            "AND datname = current_database() ORDER BY pid",
            (LISTEN_APP,),
        ).fetchall()
    return [int(pid) for (pid,) in rows]


def terminate(url: str, pid: int) -> None:
    with psycopg.connect(url) as db:
        db.execute("SELECT pg_terminate_backend(%s)", (pid,))


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_on_local_stores_the_journal_rings_after_each_commit_and_nothing_is_live(
    kind: str, tmp_path: Path
) -> None:
    """SQLite and memory hear only this process: `live` is false, so readers keep
    their own poll interval; the journal's commit rings the events waiters (not
    the commands ones), and a closed waiter is rung no more."""
    store = MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "n.db")
    wakeup = store.wakeup()
    events, commands = wakeup.waiter(EVENTS), wakeup.waiter(COMMANDS)
    journal = Journal(store, keys=AuditKeys(tmp_path / "audit.key"))
    journal.append("s1", "session.created", CREATED)
    assert (wakeup.live, wakeup.timeout(0.05)) == (False, 0.05)
    assert (events.wait(0), commands.wait(0)) == (True, False)
    events.clear()
    events.close()
    journal.append("s1", "note", {})
    assert events.wait(0) is False
    store.close()


async def test_an_async_waiter_is_rung_from_another_thread_once_until_cleared() -> None:
    """A ring from any thread wakes a task on its loop; until the task clears it,
    further rings cost the loop nothing more (one pending wake-up)."""
    wakeup = Wakeup()
    waiter = wakeup.async_waiter(EVENTS)
    scheduled = []
    loop = asyncio.get_running_loop()
    real = loop.call_soon_threadsafe

    def counting(callback, *args):  # type: ignore[no-untyped-def]
        scheduled.append(callback)
        return real(callback, *args)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    try:
        rings = [threading.Thread(target=wakeup.ring, args=(EVENTS,)) for _ in range(5)]
        for t in rings:
            t.start()
        for t in rings:
            t.join()
        async with asyncio.timeout(10):
            await waiter.wait()
        assert (waiter.is_set(), len(scheduled)) == (True, 1)
        waiter.clear()
        ring = threading.Thread(target=wakeup.ring, args=(EVENTS,))
        ring.start()
        ring.join()
        async with asyncio.timeout(10):
            await waiter.wait()
        assert len(scheduled) == 2
    finally:
        del loop.call_soon_threadsafe
        waiter.close()


def test_commits_of_another_process_ring_here_through_one_listen_connection(
    postgres_url: str, tmp_path: Path
) -> None:
    """A reader's store hears the appends and commands of another store on the same
    database (another process, to PostgreSQL: its own sessions) without any poll:
    one listen connection, opened when the first reader waits, for all its waiters;
    while it listens readers poll only at the safety interval."""
    reader, writer = PostgresStore(postgres_url), PostgresStore(postgres_url)
    wakeup = reader.wakeup()
    assert isinstance(wakeup, Listener) and listener_pids(postgres_url) == []  # lazily
    events = [wakeup.waiter(EVENTS) for _ in range(3)]
    commands = wakeup.waiter(COMMANDS)
    wait_for(lambda: wakeup.live, "the listener")
    assert len(listener_pids(postgres_url)) == 1
    assert wakeup.timeout(0.05) == wakeup.safety_s == 1.0
    wakeup.safety_s = NEVER_S

    Journal(writer, keys=AuditKeys(tmp_path / "audit.key")).append("s1", "session.created", CREATED)
    assert [w.wait(30) for w in events] == [True, True, True]
    writer.post_command("s1", "kill", "test", "stop", {})
    assert commands.wait(30) is True
    for waiter in [*events, commands]:
        waiter.close()
    writer.close()
    reader.close()


def test_a_dropped_listen_connection_comes_back_and_rings_for_the_gap(
    postgres_url: str, tmp_path: Path
) -> None:
    """Terminated by the server (`pg_terminate_backend`), the listen connection is
    reopened after a backoff (a new backend); meanwhile `live` is false, so readers
    poll at their own pace. Waiters are rung on the drop, and again once it listens,
    for a commit made in between that notified nobody here; then NOTIFY rings as
    before."""
    reader, writer = PostgresStore(postgres_url), PostgresStore(postgres_url)
    wakeup = reader.wakeup()
    assert isinstance(wakeup, Listener)
    wakeup.BACKOFF_S = 1.0  # a gap long enough to commit into
    events = wakeup.waiter(EVENTS)
    wait_for(lambda: wakeup.live, "the listener")
    (first,) = listener_pids(postgres_url)

    terminate(postgres_url, first)
    wait_for(lambda: not wakeup.live, "the drop noticed")
    assert wakeup.timeout(0.05) == 0.05  # readers poll at their own pace meanwhile
    assert events.wait(30) is True  # the drop's ring: read now, then poll
    events.clear()
    journal = Journal(writer, keys=AuditKeys(tmp_path / "audit.key"))
    journal.append("s1", "session.created", CREATED)  # notifies nobody here
    assert events.wait(30) is True  # the reconnection's ring
    wait_for(lambda: wakeup.live, "the listener back")
    (second,) = listener_pids(postgres_url)
    assert second != first
    events.clear()
    journal.append("s1", "note", {})
    assert events.wait(30) is True  # NOTIFY again
    events.close()
    writer.close()
    reader.close()


async def test_journal_follow_is_woken_by_another_process_commits(
    postgres_url: str, tmp_path: Path
) -> None:
    """`Journal.follow` (under `nexus logs --follow`) on one store yields what another
    store on the database appends, to the session's end, with polling and the
    safety interval both an hour: it is woken by NOTIFY alone."""
    reader, writer = PostgresStore(postgres_url), PostgresStore(postgres_url)
    reader.wakeup().safety_s = NEVER_S
    keys = tmp_path / "audit.key"
    ours, theirs = Journal(reader, keys=AuditKeys(keys)), Journal(writer, keys=AuditKeys(keys))
    theirs.append("s1", "session.created", CREATED)
    follow = ours.follow("s1", poll_s=NEVER_S)
    seen = [(await anext(follow)).kind]

    def finish() -> None:
        theirs.append("s1", "note", {})
        theirs.append("s1", "session.completed", {"answer": "ok"}, reason="completed")

    writes = threading.Thread(target=finish)
    writes.start()
    async with asyncio.timeout(30):
        seen += [event.kind async for event in follow]
    writes.join()
    assert seen == ["session.created", "note", "session.completed"]
    writer.close()
    reader.close()
