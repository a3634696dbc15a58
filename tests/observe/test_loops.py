"""Loop detection against a real OpenAI-compatible peer: a model repeating one call,
alternating two, or answering the same thing over and over is stopped exactly at
the step that would close the loop, journaled with its evidence, and paused (or
killed) through the control channel; legitimate repetition with other arguments
runs to its end; a resume with a note continues; the history survives a crash;
the policy is per agent and broken policies are refused. Both stores."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from nexus import events as ev
from nexus.config import load_settings
from nexus.errors import ConfigError
from nexus.observe.loops import normalise
from nexus.runtime.agents import Agent, AgentRegistry, Limits, LoopPolicy
from nexus.runtime.providers.openai import OpenAIProvider
from nexus.runtime.runtime import Runtime
from nexus.runtime.tools import Toolkit, tool
from nexus.types import SessionStatus
from tests.peers.openai_server import PeerServer

RAN: list[tuple[str, str]] = []


@tool(effect="read")
def read_file(path: str) -> str:
    """Read a file."""
    RAN.append(("read_file", path))
    return f"contents of {path}"


@tool(effect="read")
def search(query: str) -> str:
    """Search."""
    RAN.append(("search", query))
    return f"results for {query}"


KIT = Toolkit("files", [read_file, search])


@pytest.fixture(autouse=True)
def _clear() -> None:
    RAN.clear()


def calls(*pairs: tuple[str, dict[str, Any]], content: str | None = None) -> dict[str, Any]:
    turn: dict[str, Any] = {"tool_calls": [{"name": n, "arguments": a} for n, a in pairs]}
    if content is not None:
        turn["content"] = content
    return turn


def runtime(peer: PeerServer, policy: LoopPolicy | None = None) -> Runtime:
    agents = AgentRegistry()
    limits = Limits(loops=policy or LoopPolicy(), max_steps=200)
    agents.add(Agent(name="reader", toolkits=(KIT,), limits=limits))
    provider = OpenAIProvider(name="peer", base_url=peer.url, model="m")
    return Runtime(load_settings(), agents=agents, provider=provider)


async def close(rt: Runtime) -> None:
    await (await rt.provider()).aclose()
    await rt.aclose()


def kinds(rt: Runtime, sid: str) -> list[str]:
    return [e.kind for e in rt.journal.events(sid)]


def detected(rt: Runtime, sid: str) -> dict[str, Any]:
    (found,) = [e.payload for e in rt.journal.events(sid) if e.kind == ev.LOOP_DETECTED]
    return found


async def test_the_same_call_forever_is_stopped_at_its_third_time(peer: PeerServer) -> None:
    """The model reads one file over and over: it reads it twice; the third identical
    call (arguments in another key order and spacing) does not run; the session is
    paused by the loop guard with the evidence journaled."""
    peer.config.update({"script": [calls(("read_file", {"path": "a.txt"}))] * 10})
    rt = runtime(peer)
    try:
        sid = rt.create_session("read", agent="reader")
        assert await rt.run(sid) is SessionStatus.PAUSED
        assert RAN == [("read_file", "a.txt")] * 2
        assert kinds(rt, sid)[-3:] == [ev.TOOL_CALL, ev.LOOP_DETECTED, ev.SESSION_PAUSED]
        assert detected(rt, sid) == {
            "step": 6,
            "detector": "repeat",
            "summary": "read_file called 3 times with the same arguments in the last 3 calls",
            "count": 3,
            "window": 20,
            "calls": [
                {"step": s, "tool": "read_file", "arguments": '{"path":"a.txt"}'} for s in (2, 4, 6)
            ],
            "action": "pause",
        }
        paused = rt.journal.events(sid)[-1].payload
        assert paused["by"] == "loop-guard" and isinstance(paused["command"], int)
        assert paused["reason"].startswith("loop detected (repeat): read_file called 3 times")
    finally:
        await close(rt)


async def test_alternating_two_calls_is_stopped_as_a_cycle(peer: PeerServer) -> None:
    """search, read, search, read, then search again: the fifth call would start the
    cycle's third round; it does not run, and the detection names the cycle."""
    turn = [calls(("search", {"query": "q"})), calls(("read_file", {"path": "r.md"}))]
    peer.config.update({"script": turn * 10})
    rt = runtime(peer)
    try:
        sid = rt.create_session("dig", agent="reader")
        assert await rt.run(sid) is SessionStatus.PAUSED
        assert RAN == [("search", "q"), ("read_file", "r.md")] * 2
        found = detected(rt, sid)
        assert (found["detector"], found["period"], found["step"]) == ("cycle", 2, 10)
        assert [c["step"] for c in found["calls"]] == [2, 4, 6, 8, 10]
        assert found["summary"] == (
            "the calls search -> read_file went round 2 times and were starting again"
        )
    finally:
        await close(rt)


async def test_legitimate_repetition_with_other_arguments_runs_to_its_end(
    peer: PeerServer,
) -> None:
    """Ten reads of ten files, the same words asking for three other searches, then
    an alternation whose arguments change each round, then an answer: no loop, the
    session completes, every call ran."""
    script = [calls(("read_file", {"path": f"f{i}.txt"})) for i in range(10)]
    said = "Let me search for the next city."
    script += [calls(("search", {"query": c}), content=said) for c in ("Rome", "Oslo", "Lima")]
    script += [
        calls(("search", {"query": f"q{i}"}))
        if i % 2 == 0
        else calls(("read_file", {"path": f"p{i}"}))
        for i in range(8)
    ]
    script.append({"content": "all read"})
    peer.config.update({"script": script})
    rt = runtime(peer)
    try:
        sid = rt.create_session("read them all", agent="reader")
        assert await rt.run(sid) is SessionStatus.COMPLETED
        assert len(RAN) == 21
        assert ev.LOOP_DETECTED not in kinds(rt, sid)
    finally:
        await close(rt)


async def test_near_duplicate_answers_are_stopped(peer: PeerServer) -> None:
    """Three answers saying the same thing (one character apart) and asking for the
    same search up to case and spacing: the step after the third does not run."""
    said = "Let me check the weather again, try {}."
    queries = ["Weather in Paris", "weather  in paris", "WEATHER IN PARIS", "weather in Paris"]
    script = [
        calls(("search", {"query": queries[i % 4]}), content=said.format(i)) for i in range(10)
    ]
    peer.config.update({"script": script})
    rt = runtime(peer)
    try:
        sid = rt.create_session("weather", agent="reader")
        assert await rt.run(sid) is SessionStatus.PAUSED
        found = detected(rt, sid)
        assert found["detector"] == "near_duplicate"
        assert [a["step"] for a in found["answers"]] == [1, 3, 5]
        assert found["similarity"] >= 0.95
        assert len(RAN) == 2  # the third answer's call did not run
    finally:
        await close(rt)


async def test_a_resume_with_a_note_lets_the_session_go_on(peer: PeerServer) -> None:
    """Paused by the loop guard; resumed with a note: the note reaches the model,
    the held call runs, and the session completes."""
    script = [calls(("read_file", {"path": "a.txt"}))] * 3 + [{"content": "understood"}]
    peer.config.update({"script": script})
    rt = runtime(peer)
    try:
        sid = rt.create_session("read", agent="reader")
        assert await rt.run(sid) is SessionStatus.PAUSED
        await rt.control.post(sid, "resume", by="ops", note="stop re-reading a.txt")
        assert await rt.run(sid) is SessionStatus.COMPLETED
        last = peer.requests[-1]["messages"]
        assert any("stop re-reading a.txt" in str(m.get("content")) for m in last)
        assert RAN == [("read_file", "a.txt")] * 3
    finally:
        await close(rt)


async def test_the_kill_action_kills(peer: PeerServer) -> None:
    """With `action = "kill"` the looping session is killed by the loop guard."""
    peer.config.update({"script": [calls(("read_file", {"path": "a.txt"}))] * 10})
    rt = runtime(peer, LoopPolicy(action="kill"))
    try:
        sid = rt.create_session("read", agent="reader")
        assert await rt.run(sid) is SessionStatus.KILLED
        assert rt.journal.events(sid)[-1].payload["by"] == "loop-guard"
        assert detected(rt, sid)["action"] == "kill"
        assert len(RAN) == 2
    finally:
        await close(rt)


async def test_thresholds_are_per_agent_and_the_guard_can_be_off(peer: PeerServer) -> None:
    """`repeats = 5` lets four identical calls run; `enabled = false` lets the model
    loop until max_steps."""
    peer.config.update({"script": [calls(("read_file", {"path": "a.txt"}))] * 40})
    rt = runtime(peer, LoopPolicy(repeats=5))
    try:
        sid = rt.create_session("read", agent="reader")
        assert await rt.run(sid) is SessionStatus.PAUSED
        assert len(RAN) == 4 and detected(rt, sid)["count"] == 5
    finally:
        await close(rt)
    RAN.clear()
    agents = AgentRegistry()
    agents.add(
        Agent(
            name="reader",
            toolkits=(KIT,),
            limits=Limits(max_steps=12, loops=LoopPolicy(enabled=False)),
        )
    )
    rt = Runtime(
        load_settings(),
        agents=agents,
        provider=OpenAIProvider(name="peer", base_url=peer.url, model="m"),
    )
    try:
        sid = rt.create_session("read", agent="reader")
        assert await rt.run(sid) is SessionStatus.FAILED  # max_steps, not the loop guard
        assert ev.LOOP_DETECTED not in kinds(rt, sid) and len(RAN) == 6
    finally:
        await close(rt)


async def test_the_history_survives_a_crash_between_repetitions(peer: PeerServer) -> None:
    """The worker stops during the LLM call after the second identical read; the
    session resumes on a fresh runtime, whose guard folds the history from the
    journal: the third identical call is still refused."""
    peer.config.update(
        {"script": [calls(("read_file", {"path": "a.txt"}))] * 10, "latency_ms": 200}
    )
    rt = runtime(peer)
    sid = rt.create_session("read", agent="reader")
    try:
        task = asyncio.create_task(rt.run(sid))
        while len(peer.requests) < 3:  # the third LLM call is in flight
            await asyncio.sleep(0.01)
        assert len(RAN) == 2
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await close(rt)
    peer.config.update({"latency_ms": 0})
    fresh = runtime(peer)
    try:
        assert await fresh.run(sid) is SessionStatus.PAUSED
        assert len(RAN) == 2
        assert [c["step"] for c in detected(fresh, sid)["calls"]] == [2, 4, 6]
    finally:
        await close(fresh)


def test_a_broken_loop_policy_in_an_agent_file_is_refused(nexus_home: Path) -> None:
    """`[limits.loops]` with an unknown action is a ConfigError naming the file and field."""
    folder = nexus_home / "agents"
    folder.mkdir(parents=True)
    (folder / "bad.toml").write_text(
        'name = "bad"\nsystem_prompt = "x"\n[limits.loops]\naction = "explode"\n'
    )
    with pytest.raises(ConfigError, match=r"loops\.action"):
        AgentRegistry.load(folder)


def test_arguments_are_compared_normalised() -> None:
    """Key order and spacing do not matter; text that is not JSON is compared with its
    whitespace collapsed."""
    assert normalise('{"b": 1,  "a": [1, 2]}') == normalise('{"a":[1,2],"b":1}')
    assert normalise("not  json\n") == "not json"
