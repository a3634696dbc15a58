"""Durable dispatch on DBOS: sessions run as workflows, by priority, one executor
per worker id, and crashed workers' sessions resume from the journal."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nexus.config import load_settings
from nexus.errors import ConfigError
from nexus.runtime.dispatch import Dispatcher
from nexus.runtime.providers import ScriptedProvider
from nexus.runtime.runtime import Runtime
from nexus.types import SessionStatus
from tests.peers.openai_server import ThreadedPeerServer
from tests.runtime.crash_worker import registry
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


async def test_session_runs_as_a_dbos_workflow() -> None:
    """submit → the session runs to completion under DBOS; its workflow is SUCCESS."""
    from dbos import DBOS

    rt = Runtime(load_settings(), provider=ScriptedProvider([{"content": "hi"}]))
    sid = rt.create_session("say hi")
    async with Dispatcher(rt) as d:
        await d.submit(sid)
        assert await d.wait(sid) is SessionStatus.COMPLETED
        status = await DBOS.get_workflow_status_async(sid)
        assert (status.workflow_id, status.status) == (sid, "SUCCESS")
    assert rt.session(sid).status == "completed"
    await rt.aclose()


async def test_queue_runs_sessions_by_priority_zero_first() -> None:
    """With one slot, queued sessions start in priority order (0 highest), FIFO within one."""
    order: list[str] = []

    def remember(request: Any) -> Any:
        from nexus.types import ChatResponse

        order.append(request.messages[1]["content"])
        return ChatResponse(content="ok")

    rt = Runtime(
        load_settings(concurrency=1, queue_poll_s=0.02), provider=ScriptedProvider([remember])
    )
    async with Dispatcher(rt) as d:
        ids = {}
        for goal, prio in [("p5", 5), ("p0-a", 0), ("p2", 2), ("p0-b", 0)]:
            ids[goal] = rt.create_session(goal, priority=prio)
        for goal, prio in [("p5", 5), ("p0-a", 0), ("p2", 2), ("p0-b", 0)]:
            await d.submit(ids[goal], priority=prio, direct=False)
        for sid in ids.values():
            assert await d.wait(sid) is SessionStatus.COMPLETED
    assert order == ["p0-a", "p0-b", "p2", "p5"]
    await rt.aclose()


async def test_one_slot_runs_one_session_at_a_time_however_it_started(
    threaded_peer: ThreadedPeerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`concurrency` bounds sessions started directly and those DBOS dequeues alike:
    with one slot, no two sessions' runs overlap (DBOS counts only its queue's own,
    so a direct start and a dequeued session used to run side by side)."""
    threaded_peer.config.latency_ms = 80
    monkeypatch.setenv(
        "NEXUS_PROVIDERS",
        f'[{{"name": "peer", "base_url": "{threaded_peer.url}", "model": "m"}}]',
    )
    rt = Runtime(load_settings(concurrency=1, queue_poll_s=0.02))
    async with Dispatcher(rt) as d:
        ids = [rt.create_session(f"goal {i}") for i in range(3)]
        for sid in ids:
            await d.submit(sid)  # the first starts at once, the others queue
        for sid in ids:
            assert await d.wait(sid) is SessionStatus.COMPLETED
    spans = sorted((rt.journal.events(sid)[1].ts, rt.session(sid).updated_at) for sid in ids)
    assert [e.kind for e in rt.journal.events(ids[0])][:2] == ["session.created", "session.started"]
    for (_start, end), (next_start, _end) in itertools.pairwise(spans):
        assert end <= next_start, spans
    await rt.aclose()


async def test_sessions_queued_but_never_submitted_run_at_start() -> None:
    """A session journaled as queued whose creator died before submitting is picked up."""
    rt = Runtime(load_settings(), provider=ScriptedProvider([{"content": "late"}]))
    sid = rt.create_session("orphan")
    async with Dispatcher(rt) as d:
        assert await d.wait(sid) is SessionStatus.COMPLETED
    await rt.aclose()


async def test_one_executor_per_worker_id() -> None:
    """A second dispatcher with the same worker id is refused (it would run the
    first one's sessions twice); another worker id is the way to scale."""
    rt = Runtime(load_settings(), provider=ScriptedProvider([]))
    worker = rt.worker_id  # on a shared store (PostgreSQL): an id derived from the host
    if rt.settings.database_url is None:
        assert worker == "local"
    async with Dispatcher(rt):
        with pytest.raises(ConfigError, match=f"worker id '{worker}' is already running"):
            await Dispatcher(rt).start()
    await rt.aclose()


# -- crash and resume in real worker processes -----------------------------------


@pytest.fixture
def crash_env(
    tmp_path: Path, nexus_home: Path, threaded_peer: ThreadedPeerServer
) -> Iterator[dict[str, str]]:
    env = dict(os.environ)
    env.update(
        NEXUS_HOME=str(nexus_home),
        NEXUS_PROVIDERS=f'[{{"name": "peer", "base_url": "{threaded_peer.url}", "model": "m"}}]',
        NEXUS_QUEUE_POLL_S="0.05",
        CRASH_LOG=str(tmp_path / "tool.log"),
        CRASH_RELEASE=str(tmp_path / "release"),
        PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}",
    )
    yield env


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "tests.runtime.crash_worker"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def turns(peer: ThreadedPeerServer) -> list[int]:
    """For each LLM request the peer received, which turn (assistant messages so far)."""
    return [sum(m["role"] == "assistant" for m in r["messages"]) for r in peer.requests]


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


HOLD_SCRIPT = [
    {"tool_calls": [{"name": "mark", "arguments": {"tag": "hold"}}]},
    {"content": "done"},
]


def start_held_session(
    crash_env: dict[str, str], peer: ThreadedPeerServer, tmp_path: Path, goal: str
) -> tuple[Runtime, str, subprocess.Popen[bytes]]:
    """A session whose first tool call is held mid-call, in a first worker process."""
    peer.config.script = HOLD_SCRIPT
    rt = Runtime(load_settings(), agents=registry())
    sid = rt.create_session(goal, agent="crash")
    first = start_worker(crash_env, tmp_path / "w1.log")
    log = Path(crash_env["CRASH_LOG"])
    wait_for(lambda: any(x.startswith("start hold") for x in lines(log)), "tool start")
    return rt, sid, first


def kill(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)


def restart_until_completed(
    crash_env: dict[str, str], tmp_path: Path, rt: Runtime, sid: str
) -> None:
    """A second worker on the same worker id recovers the session; stop it after."""
    second = start_worker(crash_env, tmp_path / "w2.log")
    try:
        wait_for(lambda: rt.session(sid).status == "completed", "session completed")
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0


@pytest.mark.slow
def test_sigkill_mid_tool_call_resumes_and_retries_with_same_key(
    crash_env: dict[str, str], threaded_peer: ThreadedPeerServer, tmp_path: Path
) -> None:
    """SIGKILL while a tool runs: after restart the completed LLM step is not called
    again, the interrupted tool call is retried with its idempotency key, and the
    session completes."""
    rt, sid, first = start_held_session(crash_env, threaded_peer, tmp_path, "hold on")
    try:
        kill(first)
    finally:
        first.kill()
    assert [e.kind for e in rt.journal.events(sid)][-1] == "tool.call"
    Path(crash_env["CRASH_RELEASE"]).touch()
    restart_until_completed(crash_env, tmp_path, rt, sid)
    tool_log = lines(Path(crash_env["CRASH_LOG"]))
    key = tool_log[0].split()[2]
    assert tool_log == [
        f"start hold {key} False",
        f"start hold {key} True",
        f"end hold {key} True",
    ]
    assert turns(threaded_peer) == [0, 1]
    kinds = [e.kind for e in rt.journal.events(sid)]
    assert (
        kinds.count("tool.call"),
        kinds.count("tool.result"),
        kinds.count("session.resumed"),
        kinds[-1],
    ) == (2, 1, 1, "session.completed")  # both attempts of the interrupted call
    assert rt.journal.verify(sid).ok
    asyncio.run(rt.aclose())


@pytest.mark.slow
def test_sigkill_between_steps_resumes_without_repeating_steps(
    crash_env: dict[str, str], threaded_peer: ThreadedPeerServer, tmp_path: Path
) -> None:
    """SIGKILL after a tool result is committed, while the next LLM call is in flight:
    after restart no tool runs again and no completed LLM call is repeated."""
    rt, sid, first = start_held_session(crash_env, threaded_peer, tmp_path, "step once")
    try:
        threaded_peer.config.latency_ms = 60_000  # the next LLM call will hang in flight
        Path(crash_env["CRASH_RELEASE"]).touch()
        wait_for(lambda: len(threaded_peer.requests) == 2, "second LLM request")
        kill(first)
    finally:
        first.kill()
    threaded_peer.config.latency_ms = 0
    # The call in flight is known: its request was committed before it went out.
    assert [e.kind for e in rt.journal.events(sid)][-2:] == ["tool.result", "llm.request"]
    restart_until_completed(crash_env, tmp_path, rt, sid)
    assert [x.split()[0] for x in lines(Path(crash_env["CRASH_LOG"]))] == ["start", "end"]
    assert turns(threaded_peer) == [0, 1, 1]  # only the interrupted call is asked again
    assert rt.journal.verify(sid).ok
    asyncio.run(rt.aclose())


@pytest.fixture
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL 15 cluster; yields a URL for DBOS's system database."""
    from tests.peers.postgres import PostgresServer, available

    if not available():
        pytest.skip("PostgreSQL 15 server binaries are not installed (scripts/test installs them)")
    root = Path("/tmp") / f"nexus-pg-{os.getpid()}-{time.monotonic_ns()}"
    server = PostgresServer(root)
    server.start()
    try:
        yield server.url("nexus_dbos")
    finally:
        server.stop()
        import shutil

        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_one_postgres_queue_without_duplicates(
    crash_env: dict[str, str], threaded_peer: ThreadedPeerServer, tmp_path: Path, postgres: str
) -> None:
    """Scale-out: two worker processes (two worker ids) on one DBOS queue in
    PostgreSQL run 24 sessions, each exactly once, and both take a share."""
    threaded_peer.config.latency_ms = 150  # long enough that both workers are up to share
    threaded_peer.config.script = [
        {"tool_calls": [{"name": "mark", "arguments": {"tag": "work"}}]},
        {"content": "done"},
    ]
    rt = Runtime(load_settings(), agents=registry())
    ids = [rt.create_session(f"job {i}", agent="crash") for i in range(24)]
    workers = []
    for wid in ("w1", "w2"):
        env = {
            **crash_env,
            "NEXUS_DBOS_URL": postgres,
            "NEXUS_WORKER_ID": wid,
            "NEXUS_CONCURRENCY": "2",
        }
        workers.append(start_worker(env, tmp_path / f"{wid}.log"))
    try:
        wait_for(
            lambda: all(rt.session(s).status == "completed" for s in ids),
            "all sessions completed",
            timeout=120,
        )
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            assert w.wait(30) == 0
    starts = [x for x in lines(Path(crash_env["CRASH_LOG"])) if x.startswith("start")]
    assert len(starts) == 24 and len({x.split()[2] for x in starts}) == 24  # one run each
    for sid in ids:
        kinds = [e.kind for e in rt.journal.events(sid)]
        assert kinds.count("session.started") == 1 and "session.resumed" not in kinds
    import psycopg

    with psycopg.connect(postgres) as conn:
        rows = conn.execute(
            "SELECT executor_id, count(*) FROM dbos.workflow_status GROUP BY executor_id"
        ).fetchall()
    shares = dict(rows)
    assert set(shares) == {"w1", "w2"} and sum(shares.values()) == 24
    asyncio.run(rt.aclose())


# -- sessions that cannot run never poison the worker (issue 12, item 1) ------------


async def test_one_bad_queued_row_fails_alone_and_the_worker_starts() -> None:
    """A session journaled by an older NEXUS with priority -1 (which DBOS refuses)
    ends `failed` with the reason at worker start; the good session next to it
    runs, and the worker keeps going (it used to die with a traceback)."""
    rt = Runtime(load_settings(), provider=ScriptedProvider([{"content": "fine"}]))
    bad = "s_0000000000000bad"
    rt.journal.append(bad, "session.created", {"goal": "old", "agent": "assistant", "priority": -1})
    good = rt.create_session("new")
    async with Dispatcher(rt) as d:
        assert await d.wait(good) is SessionStatus.COMPLETED
        row = rt.session(bad)
        assert (row.status, row.reason) == (
            "failed",
            "could not dispatch: ConfigError: priority -1 is not from 0 (the highest) to 1000",
        )
    assert [e.kind for e in rt.journal.events(bad)] == ["session.created", "session.failed"]
    await rt.aclose()


async def test_a_session_that_cannot_be_handed_over_ends_failed_with_the_reason() -> None:
    """submit refuses a session it cannot dispatch: DispatchError, and the session is
    `failed` with the reason, never left queued for no one."""
    from nexus.errors import DispatchError

    rt = Runtime(load_settings(), provider=ScriptedProvider([]))
    sid = rt.create_session("x")
    async with Dispatcher(rt) as d:
        with pytest.raises(DispatchError, match=f"session {sid}: could not dispatch"):
            await d.submit(sid, priority=5000)
    assert rt.session(sid).status == "failed"
    await rt.aclose()


async def test_an_internal_error_in_a_session_ends_it_failed_never_stuck_running() -> None:
    """A session whose creation record is unreadable (a `session.created` without an
    agent) raises inside the runtime: it ends `failed` naming the error, instead of
    staying `running` behind a DBOS traceback."""
    rt = Runtime(load_settings(), provider=ScriptedProvider([]))
    sid = "s_00000000000broke"
    rt.journal.append(sid, "session.created", {"goal": "no agent recorded"})
    async with Dispatcher(rt) as d:
        await d.submit(sid)
        with pytest.raises(KeyError):
            await d.wait(sid)
    row = rt.session(sid)
    assert (row.status, row.reason) == ("failed", "internal error: KeyError: 'agent'")
    await rt.aclose()


async def test_the_dispatcher_holds_nothing_for_sessions_that_ended() -> None:
    """`nexus start` runs for months: after 10,000 sessions the dispatcher holds no
    handle or task of a finished one, and never more than it runs at once."""
    n, concurrency = 10_000, 100
    rt = Runtime(
        load_settings(concurrency=concurrency, queue_poll_s=0.02),
        provider=ScriptedProvider([{"content": "ok"}] * n),
    )
    most = 0
    async with Dispatcher(rt) as d:
        ids = []
        for i in range(n):
            sid = rt.create_session(f"goal {i}")
            await d.submit(sid)
            ids.append(sid)
            most = max(most, d.in_flight)
        for sid in ids:
            await d.wait(sid)
            most = max(most, d.in_flight)
        assert (d.in_flight, len(d._running), len(d._handles)) == (0, 0, 0)
    assert 0 < most <= concurrency
    assert rt.store.count_sessions(["completed"]) == n
    await rt.aclose()


async def test_a_worker_adopts_the_session_of_a_dead_nexus_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A `nexus run` process that died leaves its session PENDING under its own
    executor id; the next worker of the home finds its lock file free, re-queues the
    session, and runs it to the end (the lock file is gone after)."""
    import nexus.runtime.dispatch as dispatch
    from nexus.examples import demo_recording

    monkeypatch.setattr(dispatch, "ADOPT_AFTER_S", 0.0)
    rt = Runtime(load_settings(queue_poll_s=0.02))
    sid = rt.create_session("demo", replay=str(demo_recording()), replay_pace_s=0.5)
    home = rt.settings.home
    child = subprocess.Popen(
        [sys.executable, "-c", SOLO_RUN, sid],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        wait_for(lambda: rt.session(sid).status == "running", "solo run started")
        assert (home / f"worker-run-{sid}.lock").exists()
        kill(child)
    finally:
        child.kill()
    async with Dispatcher(rt) as d:
        assert await d.wait(sid) is SessionStatus.COMPLETED
    kinds = [e.kind for e in rt.journal.events(sid)]
    assert (kinds.count("session.resumed"), kinds[-1]) == (1, "session.completed")
    assert not (home / f"worker-run-{sid}.lock").exists()
    assert rt.journal.verify(sid).ok
    await rt.aclose()


SOLO_RUN = """
import asyncio, sys
from nexus.runtime.dispatch import Dispatcher
from nexus.runtime.runtime import Runtime

async def main(sid):
    rt = Runtime()
    async with Dispatcher.solo(rt, sid) as d:
        await d.submit(sid)
        await d.wait(sid)

asyncio.run(main(sys.argv[1]))
"""


async def test_a_worker_signs_a_checkpoint_of_what_it_ran_when_it_stops() -> None:
    """A worker's clean stop signs a checkpoint holding the head of each session it
    ran, so deleting one of them afterwards fails the audit."""
    rt = Runtime(load_settings(), provider=ScriptedProvider([{"content": "a"}, {"content": "b"}]))
    ids = [rt.create_session("one"), rt.create_session("two")]
    async with Dispatcher(rt) as d:
        for sid in ids:
            assert await d.wait(sid) is SessionStatus.COMPLETED
    report = rt.journal.verify()
    assert report.ok and report.checkpoint is not None
    assert {sid: report.checkpoint.heads[sid][0] for sid in ids} == {
        sid: rt.session(sid).last_seq for sid in ids
    }
    await rt.aclose()
