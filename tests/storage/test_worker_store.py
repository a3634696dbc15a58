"""The worker registry and run epochs (`WorkerStore`), on every store: heartbeats,
the one supervisor lease, declaring late workers gone exactly once, and the fencing
of a stale run's appends in their own transaction."""

from __future__ import annotations

import threading

import pytest

from nexus.errors import JournalError, SessionFenced
from nexus.storage.base import SessionChange, Store, WorkerRow
from tests.storage.test_sqlite import row
from tests.storage.test_store_contract import created
from tests.waiting import wait_for


def beat(s: Store, worker: str, *, starting: bool = False) -> str | None:
    return s.beat(worker, host="h1", pid=42, role="worker", starting=starting)


def test_a_heartbeat_registers_a_worker_and_reports_its_status_before(store: Store) -> None:
    """The first beat registers the worker (None before); later beats find it alive;
    a clean stop marks it stopped, and the next beat revives it."""
    assert beat(store, "w1", starting=True) is None
    assert beat(store, "w1") == "alive"
    store.leave("w1")
    (w,) = store.workers()
    assert (w.id, w.host, w.pid, w.role, w.status) == ("w1", "h1", 42, "worker", "stopped")
    assert 0 <= w.age_s < 60 and w.started_at <= w.heartbeat_at
    assert beat(store, "w1") == "stopped"
    assert [x.status for x in store.workers()] == ["alive"]


def test_late_and_stopped_workers_are_declared_gone_once(store: Store) -> None:
    """A worker whose heartbeat is older than the timeout becomes `dead`, a stopped
    one `left`; each id is returned once, a fresh worker is left alone, and a dead
    worker that beats again learns it was declared dead."""
    beat(store, "late", starting=True)
    beat(store, "quits", starting=True)
    store.leave("quits")
    wait_for(lambda: all(w.age_s > 0.2 for w in store.workers()), "the heartbeats to age")
    beat(store, "fresh", starting=True)
    assert store.declare_gone(0.2) == ["late", "quits"]
    assert store.declare_gone(0.2) == []
    statuses = {w.id: w.status for w in store.workers()}
    assert statuses == {"fresh": "alive", "late": "dead", "quits": "left"}
    assert beat(store, "late") == "dead"


def test_two_racing_supervisors_never_both_declare_one_worker(store: Store) -> None:
    """Threads declaring at once split the gone workers between them: none twice."""
    for i in range(20):
        beat(store, f"w{i:02}", starting=True)
    wait_for(lambda: all(w.age_s > 0.1 for w in store.workers()), "the heartbeats to age")
    results: list[list[str]] = []

    def declare() -> None:
        results.append(store.declare_gone(0.1))

    threads = [threading.Thread(target=declare) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everyone = sorted(w for r in results for w in r)
    assert everyone == [f"w{i:02}" for i in range(20)]


def test_one_lease_holder_at_a_time_until_it_expires(store: Store) -> None:
    """The holder renews its lease; another cannot take it until it expires."""
    assert store.hold_lease("supervisor", "a", 0.3)
    assert store.hold_lease("supervisor", "a", 0.3)
    assert not store.hold_lease("supervisor", "b", 0.3)
    wait_for(lambda: store.hold_lease("supervisor", "b", 30), "the lease to expire")
    assert not store.hold_lease("supervisor", "a", 30)


def test_a_claim_moves_the_epoch_on_and_fences_the_older_run(store: Store) -> None:
    """Each claim raises the session's epoch and names the owner; an append carrying
    the old epoch is refused (`SessionFenced`, nothing written), the new one commits,
    and an append that is not a run's (no epoch) is never fenced."""
    store.append(*created("s1", ts=1.0))
    assert store.session_owner("s1") == (0, None)
    assert store.claim_session("s1", "wa") == 1
    started = row("s1", 2, ts=2.0, kind="session.started")
    store.append(started, SessionChange(status="running", epoch=1))
    assert store.claim_session("s1", "wb") == 2
    assert store.session_owner("s1") == (2, "wb")
    with pytest.raises(SessionFenced, match="epoch 1"):
        store.append(row("s1", 3, ts=3.0), SessionChange(epoch=1))
    assert store.head("s1")[0] == 2
    store.append(row("s1", 3, ts=3.0), SessionChange(epoch=2))
    with pytest.raises(SessionFenced):  # the epoch decides, before the seq collides
        store.append(row("s1", 3, ts=3.0), SessionChange(epoch=1))
    store.append(row("s1", 4, ts=4.0), SessionChange())
    assert [e.seq for e in store.events("s1")] == [1, 2, 3, 4]
    assert store.running_by_worker() == {"wb": ["s1"]}
    with pytest.raises(JournalError):
        store.claim_session("s-none", "wa")


def test_a_fenced_row_fails_alone_in_a_group_commit(store: Store) -> None:
    """In one group commit, the stale run's rows are refused and the other sessions'
    rows commit."""
    store.append(*created("s1", ts=1.0))
    store.append(*created("s2", ts=1.0))
    store.claim_session("s1", "wa")
    store.claim_session("s1", "wb")
    results = store.append_many(
        [
            (row("s1", 2, ts=2.0), SessionChange(epoch=1)),
            (row("s2", 2, ts=2.0), SessionChange()),
        ]
    )
    assert isinstance(results[0], SessionFenced) and isinstance(results[1], int)
    assert (store.head("s1")[0], store.head("s2")[0]) == (1, 2)


def test_worker_rows_are_plain_data(store: Store) -> None:
    """`WorkerRow.to_dict` holds every field (what the API and `nexus workers` show)."""
    beat(store, "w1", starting=True)
    (w,) = store.workers()
    assert isinstance(w, WorkerRow)
    assert set(w.to_dict()) == {
        "id", "host", "pid", "role", "started_at", "heartbeat_at", "status", "age_s",
    }  # fmt: skip
