"""Live events across processes on PostgreSQL (issue 10, parts 3 and 6): the
broadcaster of one process is woken by other processes' commits through its
store's one LISTEN connection, loses nothing in a notification storm or when that
connection is dropped, and a server streams, live over SSE, a session that a
worker in another process (another NEXUS_HOME) runs."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nexus.config import load_settings
from nexus.runtime.audit import KEY_FILE, AuditKeys
from nexus.runtime.journal import Journal
from nexus.runtime.runtime import Runtime
from nexus.server.broadcast import Broadcaster, Subscription
from nexus.storage.postgres import Listener, PostgresStore
from tests.peers.openai_server import ThreadedPeerServer
from tests.runtime.crash_worker import registry
from tests.server.test_broadcast import CREATED
from tests.server.test_live import LiveServer
from tests.storage.test_wake import NEVER_S, listener_pids, terminate
from tests.waiting import until, wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def reader(postgres_url: str) -> AsyncIterator[tuple[Broadcaster, Listener]]:
    """A broadcaster that only its listener can wake: a 60 s poll, a safety interval
    and a heartbeat no test waits out (a missed wake-up fails the test; no timed
    read covers it)."""
    store = PostgresStore(postgres_url)
    listener = store.wakeup()
    assert isinstance(listener, Listener)
    listener.safety_s = NEVER_S
    broadcaster = Broadcaster(store, poll_s=60, heartbeat_s=NEVER_S, buffer=100_000)
    await broadcaster.start()
    await until(lambda: listener.live, "the listener")
    yield broadcaster, listener
    await broadcaster.stop()
    store.close()


def journals(url: str, tmp_path: Path, n: int) -> list[Journal]:
    """`n` writers, each with a store of its own: to PostgreSQL, other processes."""
    keys = tmp_path / "audit.key"
    AuditKeys(keys).current()  # made once, before the writers race to make it
    return [Journal(PostgresStore(url), keys=AuditKeys(keys)) for _ in range(n)]


def received_ids(sub: Subscription, into: list[int]) -> int:
    """Take what the client was sent; append its frames' ids to `into`."""
    text = sub.take().decode()
    into.extend(int(line[4:]) for line in text.splitlines() if line.startswith("id: "))
    return len(into)


async def test_a_notification_storm_from_four_writers_loses_no_event(
    reader: tuple[Broadcaster, Listener], postgres_url: str, tmp_path: Path
) -> None:
    """Four writers commit 600 events as fast as they can, one transaction each
    (600 notifications): the one reader here, woken only by NOTIFY, hands a client
    every event exactly once, in commit (row id) order."""
    broadcaster, _ = reader
    sub = broadcaster.subscribe(None, 0)
    writers = journals(postgres_url, tmp_path, 4)

    def write(i: int, journal: Journal) -> None:
        journal.append(f"s{i}", "session.created", CREATED)
        for n in range(149):
            journal.append(f"s{i}", "note", {"n": n})

    threads = [threading.Thread(target=write, args=(i, j)) for i, j in enumerate(writers)]
    for t in threads:
        t.start()
    ids: list[int] = []
    await until(lambda: received_ids(sub, ids) >= 600, "600 events at the client")
    for t in threads:
        t.join()
    stored = writers[0].store.events_after(0, 10_000)
    assert ids == [r.id for r in stored] and len(ids) == 600
    assert {r.session_id: r.seq for r in stored} == {f"s{i}": 150 for i in range(4)}
    for journal in writers:
        journal.store.close()


async def test_a_dropped_listen_connection_loses_no_event(
    reader: tuple[Broadcaster, Listener], postgres_url: str, tmp_path: Path
) -> None:
    """The listen connection is terminated by the server between two bursts, and
    the second burst commits while it is down (no notification reaches this
    process, and the reader does not poll): the listener's rings (on the drop, on
    its return) have the reader read them; the client gets every event once, in
    order, and the listener is back on a new connection."""
    broadcaster, listener = reader
    listener.BACKOFF_S = 1.0  # down for a second
    sub = broadcaster.subscribe(None, 0)
    (journal,) = journals(postgres_url, tmp_path, 1)
    journal.append("s1", "session.created", CREATED)
    for n in range(49):
        journal.append("s1", "note", {"n": n})
    ids: list[int] = []
    await until(lambda: received_ids(sub, ids) == 50, "the first burst")
    (first,) = listener_pids(postgres_url)
    terminate(postgres_url, first)
    await until(lambda: not listener.live, "the drop noticed")
    for n in range(50):
        journal.append("s1", "note", {"n": 49 + n})
    await until(lambda: received_ids(sub, ids) == 100, "the burst written while down")
    await until(lambda: listener.live, "the listener back")
    assert len(listener_pids(postgres_url)) == 1 and listener_pids(postgres_url) != [first]
    assert ids == [r.id for r in journal.store.events_after(0, 1000)]
    assert [r.seq for r in journal.store.events("s1")] == list(range(1, 101))
    journal.store.close()


@pytest.mark.slow
def test_a_server_streams_live_a_session_a_worker_in_another_process_runs(
    postgres_url: str,
    threaded_peer: ThreadedPeerServer,
    nexus_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two NEXUS_HOMEs (two machines) on one PostgreSQL, signing with one audit key:
    a server in this process (no workers) streams a session that a worker process
    of the other home runs. The frames up to the held tool call arrive while the
    session still runs (live, not after it ends), then the rest and `end`: every
    event once, in order, as the journal has it."""
    monkeypatch.setenv("NEXUS_DATABASE_URL", postgres_url)
    threaded_peer.config.script = [
        {"tool_calls": [{"name": "mark", "arguments": {"tag": "hold"}}]},
        {"content": "done"},
    ]
    creator = Runtime(load_settings(), agents=registry())
    sid = creator.create_session("hold, then finish", agent="crash")
    worker_home = tmp_path / "worker-home"
    worker_home.mkdir()
    shutil.copy(nexus_home / KEY_FILE, worker_home / KEY_FILE)
    tool_log, release = tmp_path / "tool.log", tmp_path / "release"
    env = {
        **os.environ,
        "NEXUS_HOME": str(worker_home),
        "NEXUS_PROVIDERS": json.dumps(
            [{"name": "peer", "base_url": threaded_peer.url, "model": "m"}]
        ),
        "NEXUS_QUEUE_POLL_S": "0.05",
        "NEXUS_WORKER_ID": "worker-a",
        "CRASH_LOG": str(tool_log),
        "CRASH_RELEASE": str(release),
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}",
    }
    received: list[tuple[str, str]] = []
    with LiveServer(workers=False) as live:
        stream = threading.Thread(
            target=lambda: received.extend(live.stream(f"/api/v1/sessions/{sid}/stream"))
        )
        stream.start()
        with (tmp_path / "worker.log").open("wb") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "tests.runtime.crash_worker"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:

            def kinds() -> list[str]:
                return [json.loads(d)["kind"] for e, d in list(received) if e == "journal"]

            wait_for(lambda: "tool.call" in kinds(), "the tool call's frame", timeout=60)
            assert live.rt.session(sid).status == "running"
            assert tool_log.read_text().split()[:2] == ["start", "hold"]  # held
            before = kinds()
            release.touch()
            stream.join(60)
            assert not stream.is_alive()
        finally:
            worker.terminate()
            assert worker.wait(30) == 0
        journal = [e.to_dict() for e in live.rt.journal.events(sid)]
        assert live.rt.journal.verify(sid).ok  # one chain, signed by both homes' one key
    frames = [json.loads(d) for e, d in received if e == "journal"]
    assert [(f["seq"], f["kind"], f["hash"]) for f in frames] == [
        (e["seq"], e["kind"], e["hash"]) for e in journal
    ]
    assert before == [e["kind"] for e in journal[: len(before)]]
    assert before[-1] == "tool.call" and journal[-1]["kind"] == "session.completed"
    assert received[-1] == ("end", "{}")
    asyncio.run(creator.aclose())
