"""The control channel in one process: kill (during an LLM call, an async tool, a
sync tool in a thread, while queued, while paused), pause and resume with a note,
and races between senders and runners. Every journal stays a valid chain, and no
step runs after a kill or a pause (effects are counted in real files)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from nexus.config import load_settings
from nexus.errors import ConfigError, SessionFinished, SessionNotFound
from nexus.runtime.agents import Agent, AgentRegistry
from nexus.runtime.dispatch import Dispatcher, resume_session
from nexus.runtime.runtime import Runtime
from nexus.runtime.tools import ToolContext, Toolkit, tool
from nexus.types import SessionStatus
from tests.peers.openai_server import ThreadedPeerServer
from tests.waiting import until

EFFECTS = "effects"


def effects(home: Path) -> list[str]:
    """The side effects tools really had: one line per effect, in a real file."""
    path = home / EFFECTS
    return path.read_text().splitlines() if path.exists() else []


def _effect(home: Path, text: str) -> None:
    with (home / EFFECTS).open("a") as f:
        f.write(text + "\n")


released = threading.Event()


def registry(home: Path) -> AgentRegistry:
    @tool(effect="read")
    async def wait_then_write(tag: str) -> str:
        """Sleep (as a coroutine) until released, then record an effect."""
        _effect(home, f"start {tag}")
        while not released.is_set():
            await asyncio.sleep(0.01)
        _effect(home, f"end {tag}")
        return tag

    @tool(effect="read")
    def block_then_write(ctx: ToolContext, tag: str) -> str:
        """Block a thread until released, then record an effect unless killed."""
        _effect(home, f"start {tag}")
        released.wait(30)
        ctx.check_stopped()
        _effect(home, f"end {tag}")
        return tag

    @tool(effect="read")
    def write(tag: str) -> str:
        """Record an effect at once."""
        _effect(home, f"write {tag}")
        return tag

    agents = AgentRegistry()
    tools = [wait_then_write, block_then_write, write]
    agents.add(Agent(name="c", toolkits=(Toolkit("c", tools),)))
    return agents


def call(name: str, **args: Any) -> dict[str, Any]:
    return {"name": name, "arguments": args}


@pytest.fixture(autouse=True)
def _release() -> Iterator[None]:
    released.clear()
    yield
    released.set()


@pytest.fixture
async def world(
    threaded_peer: ThreadedPeerServer, monkeypatch: pytest.MonkeyPatch, nexus_home: Path
) -> AsyncIterator[tuple[Runtime, Dispatcher, ThreadedPeerServer]]:
    monkeypatch.setenv(
        "NEXUS_PROVIDERS", f'[{{"name": "peer", "base_url": "{threaded_peer.url}", "model": "m"}}]'
    )
    rt = Runtime(load_settings(queue_poll_s=0.02), agents=registry(nexus_home))
    async with Dispatcher(rt) as d:
        yield rt, d, threaded_peer
    await rt.aclose()


def kinds(rt: Runtime, sid: str) -> list[str]:
    return [e.kind for e in rt.journal.events(sid)]


async def test_a_kill_aborts_the_llm_call_in_flight(
    world: tuple[Runtime, Dispatcher, ThreadedPeerServer],
) -> None:
    """Killed while its LLM call waits on the peer: the call is aborted, the
    session ends `killed` with who and why, and no second call is made. The aborted
    call was sent, so it is accounted as `llm.lost` (tests/observe/test_costs.py)."""
    rt, d, peer = world
    peer.config.latency_ms = 30_000
    sid = rt.create_session("think hard", agent="c")
    await d.submit(sid)
    await until(lambda: len(peer.requests) == 1, "LLM call in flight")
    command = await rt.control.post(sid, "kill", by="user:ops", reason="runaway")
    assert await d.wait(sid) is SessionStatus.KILLED
    events = rt.journal.events(sid)
    assert [e.kind for e in events][-4:] == [
        "llm.request",
        "llm.failed",
        "llm.lost",
        "session.killed",
    ]
    assert events[-3].payload["interrupted"] == "the LLM request in flight was aborted"
    assert events[-2].payload["why"] == "interrupted"
    killed = dict(events[-1].payload)
    noticed = killed.pop("noticed_at")
    assert killed == {
        "reason": "runaway",
        "by": "user:ops",
        "steps": 0,
        "command": command.id,
        "interrupted": "the LLM request in flight was aborted",
    }
    assert command.ts <= noticed <= events[-1].ts
    row = rt.session(sid)
    assert (row.status, row.reason, len(peer.requests)) == ("killed", "runaway", 1)
    assert rt.journal.verify(sid).ok


async def test_a_kill_cancels_a_tool_coroutine_before_its_effect(
    world: tuple[Runtime, Dispatcher, ThreadedPeerServer], nexus_home: Path
) -> None:
    """Killed while an async tool sleeps: the coroutine is cancelled, so its effect
    never happens, and its `tool.result` says it was cancelled."""
    rt, d, peer = world
    peer.config.script = [{"tool_calls": [call("wait_then_write", tag="a")]}, {"content": "x"}]
    sid = rt.create_session("use the tool", agent="c")
    await d.submit(sid)
    await until(lambda: effects(nexus_home) == ["start a"], "tool running")
    await rt.control.post(sid, "kill", by="user:ops", reason="stop")
    assert await d.wait(sid) is SessionStatus.KILLED
    released.set()
    await asyncio.sleep(0.05)  # give a (wrongly) surviving coroutine the chance to write
    assert effects(nexus_home) == ["start a"]
    result = [e for e in rt.journal.events(sid) if e.kind == "tool.result"][-1].payload
    assert (result["error"], result["by"]) == ("interrupted: the tool was cancelled", "Control")
    assert kinds(rt, sid)[-1] == "session.killed" and len(peer.requests) == 1
    assert rt.journal.verify(sid).ok


async def test_a_kill_abandons_a_sync_tool_thread_and_says_so(
    world: tuple[Runtime, Dispatcher, ThreadedPeerServer], nexus_home: Path
) -> None:
    """A sync tool runs in a thread, which Python cannot stop: the session ends at
    once, the journal says the thread was abandoned, and no later step runs. The
    thread, checking `ctx.check_stopped()` before its effect, makes none."""
    rt, d, peer = world
    peer.config.script = [{"tool_calls": [call("block_then_write", tag="t")]}, {"content": "x"}]
    sid = rt.create_session("block", agent="c")
    await d.submit(sid)
    await until(lambda: effects(nexus_home) == ["start t"], "thread running")
    await rt.control.post(sid, "kill", by="user:ops", reason="stop")
    assert await d.wait(sid) is SessionStatus.KILLED
    result = [e for e in rt.journal.events(sid) if e.kind == "tool.result"][-1].payload
    assert result["error"] == (
        "interrupted: the tool ran in a thread, which cannot be stopped: it was abandoned"
    )
    released.set()  # the abandoned thread goes on, checks the stop flag, writes nothing
    await asyncio.sleep(0.1)
    assert effects(nexus_home) == ["start t"]
    assert len(peer.requests) == 1  # no step after the kill
    assert rt.journal.verify(sid).ok


async def test_a_queued_session_is_killed_without_ever_starting(
    threaded_peer: ThreadedPeerServer, monkeypatch: pytest.MonkeyPatch, nexus_home: Path
) -> None:
    """With the only slot taken, a queued session killed ends `killed` at once; when
    its turn comes it does not run."""
    monkeypatch.setenv(
        "NEXUS_PROVIDERS", f'[{{"name": "peer", "base_url": "{threaded_peer.url}", "model": "m"}}]'
    )
    threaded_peer.config.latency_ms = 300
    threaded_peer.config.script = [{"content": "done"}]
    rt = Runtime(load_settings(concurrency=1, queue_poll_s=0.02), agents=registry(nexus_home))
    async with Dispatcher(rt) as d:
        first, second = rt.create_session("first", agent="c"), rt.create_session("2", agent="c")
        await d.submit(first)
        await d.submit(second)
        await until(lambda: len(threaded_peer.requests) == 1, "first running")
        await rt.control.post(second, "kill", by="user:ops", reason="not needed")
        assert rt.session(second).status == "killed"  # at once, not when dequeued
        assert await d.wait(first) is SessionStatus.COMPLETED
        assert await d.wait(second) is SessionStatus.KILLED
    assert kinds(rt, second) == ["session.created", "session.killed"]
    assert len(threaded_peer.requests) == 1
    assert rt.journal.verify().ok
    await rt.aclose()


async def test_pause_stops_at_the_next_step_and_resume_continues_with_the_note(
    world: tuple[Runtime, Dispatcher, ThreadedPeerServer], nexus_home: Path
) -> None:
    """Pause during an LLM call: the call finishes (soft stop), its tool call does
    not run, the session is `paused` with no step in flight and frees its slot.
    Resumed with a note, it runs the tool, and the model reads the note (after the
    tool's result) in its next request."""
    rt, d, peer = world
    peer.config.latency_ms = 200
    peer.config.script = [{"tool_calls": [call("write", tag="w")]}, {"content": "done"}]
    sid = rt.create_session("pause me", agent="c")
    await d.submit(sid)
    await until(lambda: len(peer.requests) == 1, "LLM call in flight")
    await rt.control.post(sid, "pause", by="user:ops", reason="look first")
    assert await d.wait(sid) is SessionStatus.PAUSED
    assert (rt.session(sid).status, effects(nexus_home), d.in_flight) == ("paused", [], 0)
    assert kinds(rt, sid)[-3:] == ["llm.response", "tool.call", "session.paused"]
    peer.config.latency_ms = 0
    await resume_session(rt, sid, by="user:ops", note="write only w", dispatcher=d)
    assert await d.wait(sid) is SessionStatus.COMPLETED
    assert effects(nexus_home) == ["write w"]
    last = peer.requests[-1]["messages"]
    assert [m["role"] for m in last[-3:]] == ["assistant", "tool", "user"]
    assert last[-1]["content"] == "Note from the operator (user:ops): write only w"
    control = [e.payload for e in rt.journal.events(sid) if e.kind == "session.control"]
    assert [(c["kind"], c["note"]) for c in control] == [("resume", "write only w")]
    assert rt.journal.verify(sid).ok


async def test_a_paused_session_can_be_killed(
    world: tuple[Runtime, Dispatcher, ThreadedPeerServer],
) -> None:
    """Kill of a paused session (no runner holds it) ends it `killed` at once; a
    resume after that is refused as ended."""
    rt, d, peer = world
    peer.config.latency_ms = 200
    peer.config.script = [{"tool_calls": [call("write", tag="never")]}, {"content": "done"}]
    sid = rt.create_session("pause then kill", agent="c")
    await d.submit(sid)
    await until(lambda: len(peer.requests) == 1, "LLM call in flight")
    await rt.control.post(sid, "pause", by="user:ops")
    assert await d.wait(sid) is SessionStatus.PAUSED
    await rt.control.post(sid, "kill", by="user:ops", reason="abandon")
    assert rt.session(sid).status == "killed"
    with pytest.raises(SessionFinished, match="already ended killed"):
        await rt.control.post(sid, "resume", by="user:ops")
    assert rt.journal.verify(sid).ok


async def test_concurrent_kill_and_resume_end_killed_with_one_writer(
    world: tuple[Runtime, Dispatcher, ThreadedPeerServer], nexus_home: Path
) -> None:
    """A resume and a kill of a paused session sent at the same moment: whichever
    order they land in, the session ends `killed`, its chain is valid, and no
    step runs after the kill (its tool never ran)."""
    rt, d, peer = world
    peer.config.latency_ms = 150
    peer.config.script = [{"tool_calls": [call("write", tag="late")]}, {"content": "done"}]
    sid = rt.create_session("race", agent="c")
    await d.submit(sid)
    await until(lambda: len(peer.requests) == 1, "LLM call in flight")
    await rt.control.post(sid, "pause", by="a")
    assert await d.wait(sid) is SessionStatus.PAUSED
    results = await asyncio.gather(
        resume_session(rt, sid, by="a", dispatcher=d),
        rt.control.post(sid, "kill", by="b", reason="race"),
        return_exceptions=True,
    )
    assert not [r for r in results if isinstance(r, Exception) and r.__class__ is not ConfigError]
    await until(lambda: rt.session(sid).status == "killed", "killed")
    await until(lambda: d.in_flight == 0, "runner gone")
    events = rt.journal.events(sid)
    assert events[-1].kind == "session.killed"
    assert [e.kind for e in events].count("session.killed") == 1
    assert effects(nexus_home) in ([], ["write late"])  # the resumed tool ran only if first
    if effects(nexus_home):
        assert "tool.result" in [e.kind for e in events]
    assert rt.journal.verify(sid).ok


async def test_commands_to_unknown_or_ended_sessions_are_clear_errors(
    world: tuple[Runtime, Dispatcher, ThreadedPeerServer],
) -> None:
    """Unknown session: SessionNotFound. Ended: SessionFinished, except a kill of a
    killed session, which is idempotent. Resume of a running session, or an unknown
    command: ConfigError. Nothing is written for a refused command."""
    rt, d, peer = world
    peer.config.script = [{"content": "done"}]
    with pytest.raises(SessionNotFound):
        await rt.control.post("s_nope", "kill", by="x")
    sid = rt.create_session("quick", agent="c")
    await d.submit(sid)
    assert await d.wait(sid) is SessionStatus.COMPLETED
    with pytest.raises(SessionFinished, match="already ended completed"):
        await rt.control.post(sid, "kill", by="x")
    queued = rt.create_session("later", agent="c")
    with pytest.raises(ConfigError, match="is queued, not paused"):
        await rt.control.post(queued, "resume", by="x")
    with pytest.raises(ConfigError, match="unknown command 'explode'"):
        await rt.control.post(queued, "explode", by="x")
    first = await rt.control.post(queued, "kill", by="x", reason="once")
    again = await rt.control.post(queued, "kill", by="y", reason="twice")
    assert again == first  # idempotent: the kill that ended it
    assert [c.kind for c in rt.store.commands(queued)] == ["kill"]
    assert kinds(rt, queued) == ["session.created", "session.killed"]


async def test_a_runner_that_loses_the_seq_race_stops_without_writing(
    nexus_home: Path,
) -> None:
    """A session killed from outside just as its runner starts (the runner's first
    write and the kill take the same seq): the runner's write is refused, it finds
    the session ended and stops; one `session.killed`, no failure after it."""
    from nexus.runtime.providers import ScriptedProvider
    from nexus.types import RunContext, SessionHook

    other = Runtime(load_settings())  # another process's view of the same database

    class KillAsItStarts(SessionHook):
        async def session_started(self, run: RunContext) -> None:
            await other.control.post(run.session_id, "kill", by="elsewhere", reason="race")

    rt = Runtime(load_settings(), provider=ScriptedProvider([{"content": "hi"}]))
    rt.hooks.insert(0, KillAsItStarts())
    sid = rt.create_session("race")
    assert await rt.run(sid) is SessionStatus.KILLED
    assert kinds(rt, sid) == ["session.created", "session.killed"]
    assert rt.journal.verify(sid).ok
    await other.aclose()
    await rt.aclose()


async def test_the_watcher_thread_ends_when_no_session_runs_here(
    world: tuple[Runtime, Dispatcher, ThreadedPeerServer],
) -> None:
    """The watcher thread lives while sessions run in this process, ends a second
    after the last one, and starts again with the next (no thread per runtime left
    behind in a long-lived process)."""
    rt, d, peer = world
    peer.config.script = [{"content": "done"}]
    for _ in range(2):
        sid = rt.create_session("quick", agent="c")
        await d.submit(sid)
        await until(lambda: rt.control._watcher is not None, "watcher started")
        assert await d.wait(sid) is SessionStatus.COMPLETED
        await until(lambda: rt.control._watcher is None, "watcher ended", timeout=10)
