"""The span tree rebuilt from a session's journal (`nexus.observe.spans`): whole trees
of scripted sessions against snapshots (a tool failure; a crash retried as attempt 2,
with and without the lost attempt's cost journaled; a session killed mid-tool, open
spans while it ran), deterministic ids, and content kept out unless asked for."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from nexus.config import load_settings
from nexus.observe.spans import (
    CHAT,
    EXECUTE_TOOL,
    INVOKE_AGENT,
    STEP,
    TraceBuilder,
    build_trace,
    span_id,
    trace_id,
)
from nexus.runtime.providers import ScriptedProvider
from nexus.runtime.redact import Redactor
from nexus.runtime.runtime import Runtime
from nexus.types import SessionStatus
from tests.observe.tracing import CRASH_ONCE, Crash, agents, call, check_times, shape
from tests.peers.openai_server import PeerServer
from tests.snapshots import assert_snapshot
from tests.waiting import until

CONTENT = (".messages", ".arguments", ".result")


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    CRASH_ONCE.clear()
    yield


def runtime(provider: ScriptedProvider) -> Runtime:
    return Runtime(load_settings(), agents=agents(), provider=provider)


def tree_of(rt: Runtime, sid: str) -> dict[str, object]:
    """The whole tree, its timings checked against the journal, then normalised."""
    events = rt.journal.events(sid)
    trace = build_trace(events)
    data = trace.to_dict()
    assert data["trace_id"] == trace_id(sid) and data["session_id"] == sid
    check_times(data["root"], events)
    return shape(data["root"], sid)


async def test_a_session_with_a_tool_failure_is_one_tree_of_steps_llm_calls_and_tools() -> None:
    """Two tool calls in one turn (one raises), then the answer: the root, a step per
    LLM turn holding its chat span and its tool spans, the failure's reason on its
    span, tokens and cost on every span that spent them."""
    prov = ScriptedProvider(
        [
            {"tool_calls": [call("echo", text="a"), call("explode", reason="disk on fire")]},
            {"content": "one of two worked"},
        ],
        cost_per_call=0.0015,
        tokens=(120, 30),
    )
    rt = runtime(prov)
    sid = rt.create_session("echo, then explode", agent="t")
    assert await rt.run(sid) is SessionStatus.COMPLETED
    assert_snapshot("trace_tool_failure", tree_of(rt, sid))
    await rt.aclose()


async def test_ids_are_deterministic_so_a_rebuild_is_the_same_trace() -> None:
    """Trace and span ids come from (session, kind, step, attempt): building twice, or
    in another process, gives the same ids, and every id of a tree is distinct."""
    prov = ScriptedProvider([{"tool_calls": [call("echo", text="a")]}, {"content": "ok"}])
    rt = runtime(prov)
    sid = rt.create_session("echo", agent="t")
    await rt.run(sid)
    first = build_trace(rt.journal.events(sid))
    again = build_trace(Runtime(load_settings()).journal.events(sid))
    assert first.to_dict() == again.to_dict()
    ids = [(s.operation, s.step, s.attempt, s.span_id) for s in first.spans()]
    assert ids == [
        (INVOKE_AGENT, None, None, span_id(sid, INVOKE_AGENT)),
        (STEP, 1, None, span_id(sid, STEP, 1)),
        (CHAT, 1, 1, span_id(sid, CHAT, 1, 1)),
        (EXECUTE_TOOL, 2, 1, span_id(sid, EXECUTE_TOOL, 2, 1)),
        (STEP, 3, None, span_id(sid, STEP, 3)),
        (CHAT, 3, 1, span_id(sid, CHAT, 3, 1)),
    ]
    assert len({i[3] for i in ids}) == len(ids)
    assert len(first.trace_id) == 32 and all(len(i[3]) == 16 for i in ids)
    await rt.aclose()


async def test_a_crash_is_retried_as_attempt_2_and_the_lost_call_is_accounted() -> None:
    """A tool crashes the worker in step 2, then step 3's LLM call is in flight at a
    second crash. Each interrupted attempt is a span of its own in its step, ended as
    an error when the next attempt starts (which carries the retry reason); the LLM
    attempt the provider billed ends at the `llm.lost` the resume journals, with its
    estimated tokens, marked estimated up to the root. Three runs, one tree."""
    script: list[object] = [
        {"tool_calls": [call("fragile", text="t")]},
        Crash(),
        {"content": "finished"},
    ]
    sid = runtime(ScriptedProvider(script)).create_session("survive two crashes", agent="t")
    for _ in range(2):  # dies inside the tool of step 2, then in step 3's call
        with pytest.raises(Crash):
            await runtime(ScriptedProvider(script, cost_per_call=0.002)).run(sid)
    script[1] = {"content": "finished"}
    final = runtime(ScriptedProvider(script, cost_per_call=0.002))
    assert await final.run(sid) is SessionStatus.COMPLETED
    assert_snapshot("trace_crash_retry", tree_of(final, sid))
    await final.aclose()


async def test_a_kill_during_an_llm_call_ends_its_span_with_the_billed_estimate(
    peer: PeerServer,
) -> None:
    """Killed while its LLM call waits on the peer: the attempt ends as the kill cut
    it (`llm.failed`), and the `llm.lost` that follows adds the billed estimate to
    that span; the step and the root end as killed."""
    peer.config.latency_ms = 30_000
    provider = {"name": "peer", "base_url": peer.url, "model": "scripted-1"}
    rt = Runtime(load_settings(providers=[provider]), agents=agents())
    sid = rt.create_session("think for ever", agent="t")
    task = asyncio.create_task(rt.run(sid))
    await until(lambda: len(peer.requests) == 1, "the LLM call in flight")
    await rt.control.post(sid, "kill", by="user:ops", reason="too slow")
    assert await task is SessionStatus.KILLED
    assert_snapshot("trace_killed_in_llm_call", tree_of(rt, sid))
    await rt.aclose()


async def test_a_killed_session_open_spans_while_it_runs_then_ends_killed() -> None:
    """While a tool runs, the root, its step and the tool's span are open (no end,
    status unset); a kill then ends the tool as interrupted, and the step and the root
    as errors naming who killed it and why."""
    prov = ScriptedProvider([{"tool_calls": [call("echo", text="a"), call("block", tag="b")]}])
    rt = runtime(prov)
    sid = rt.create_session("block forever", agent="t")
    task = asyncio.create_task(rt.run(sid))
    await until(
        lambda: (
            [e.kind for e in rt.journal.events(sid)][-1:] == ["tool.call"]
            and len([e for e in rt.journal.events(sid) if e.kind == "tool.call"]) == 2
        ),
        "the second tool running",
    )
    assert_snapshot("trace_running", tree_of(rt, sid))
    await rt.control.post(sid, "kill", by="user:ops", reason="runaway")
    assert await task is SessionStatus.KILLED
    assert_snapshot("trace_killed", tree_of(rt, sid))
    await rt.aclose()


async def test_content_is_out_by_default_and_redacted_when_asked_for() -> None:
    """No prompt, completion, argument or result reaches a span unless asked; asked,
    each is there with every secret masked, even one the journal did not know of when
    it wrote the events."""
    canary = "canary-31a7c0de"
    prov = ScriptedProvider(
        [{"tool_calls": [call("echo", text=f"the key {canary}")]}, {"content": f"said {canary}"}]
    )
    rt = runtime(prov)  # the journal does not know the canary: it is stored as it came
    sid = rt.create_session(f"repeat {canary}", agent="t")
    await rt.run(sid)
    events = rt.journal.events(sid)
    assert canary in str([e.payload for e in events])
    plain = build_trace(events)
    assert canary not in str(plain.to_dict())
    assert not [k for s in plain.spans() for k in s.attributes if k.endswith(CONTENT)]

    told = build_trace(events, content=True, redactor=Redactor([canary]))
    assert canary not in str(told.to_dict())
    content = sorted(
        (s.name, k, v)
        for s in told.spans()
        for k, v in s.otel_attributes().items()
        if k.endswith(CONTENT)
    )
    assert [(name, key) for name, key, _ in content] == [
        ("chat scripted-1", "gen_ai.input.messages"),
        ("chat scripted-1", "gen_ai.input.messages"),
        ("chat scripted-1", "gen_ai.output.messages"),
        ("chat scripted-1", "gen_ai.output.messages"),
        ("execute_tool echo", "gen_ai.tool.call.arguments"),
        ("execute_tool echo", "gen_ai.tool.call.result"),
    ]
    assert all("[REDACTED]" in text for _, _, text in content)
    await rt.aclose()


def test_a_builder_that_forgets_hands_each_finished_step_out_once() -> None:
    """The live exporter's mode: each step is handed out once, at the first event
    past it (the next step's request, the end), then forgotten; the root last."""
    from nexus.types import Event

    sid = "s_builder"
    rows = [
        ("session.created", {"goal": "g", "agent": "a"}),
        ("session.started", {"agent": "a"}),
        ("llm.request", {"step": 1, "attempt": 1, "model": "m", "params": {}, "messages": []}),
        ("llm.response", {"step": 1, "message": {"role": "assistant", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "x", "arguments": "{}"}}
        ]}, "model": "m", "provider": "p", "finish_reason": "tool_calls"}),
        ("tool.call", {"step": 2, "attempt": 1, "call_id": "c1", "name": "x", "arguments": "{}"}),
        ("tool.result", {"step": 2, "attempt": 1, "call_id": "c1", "name": "x", "result": 1}),
        ("llm.request", {"step": 3, "attempt": 1, "model": "m", "params": {}, "messages": []}),
        ("llm.response", {"step": 3, "message": {"role": "assistant", "content": "ok"},
                          "model": "m", "provider": "p", "finish_reason": "stop"}),
        ("session.completed", {"steps": 4, "answer_step": 3}),
    ]  # fmt: skip
    builder = TraceBuilder(sid, retain=False)
    out = []
    for seq, (kind, payload) in enumerate(rows, 1):
        finished = builder.apply(Event(sid, seq, 1000.0 + seq, kind, payload))
        out.append([(s.name, [c.name for c in s.children]) for s in finished])
    assert out == [
        [], [], [], [], [], [],
        [("step 1", ["chat m", "execute_tool x"])],
        [],
        [("step 3", ["chat m"]), ("invoke_agent a", [])],
    ]  # fmt: skip
