"""The agent loop: tool calls, recoverable errors back to the model, terminal
errors failing the session with nothing lost, limits, resume and replay."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from nexus.config import load_settings
from nexus.runtime.agents import Agent, AgentRegistry, Limits
from nexus.runtime.pipeline import KILL
from nexus.runtime.providers import ReplayProvider, RetryProvider, ScriptedProvider
from nexus.runtime.providers.openai import OpenAIProvider
from nexus.runtime.runtime import Runtime
from nexus.runtime.tools import ToolContext, Toolkit, tool
from nexus.types import Event, Guard, Next, Outcome, Projection, RunContext, SessionStatus, Step
from tests.peers.openai_server import PeerServer


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing in the loop catches it."""


CALLS: list[tuple[str, str, bool]] = []


@tool(effect="read")
async def echo(ctx: ToolContext, text: str) -> str:
    """Echo a text back."""
    CALLS.append(("echo", ctx.idempotency_key, ctx.retry))
    return f"echo: {text}"


@tool(effect="read")
def explode(reason: str) -> str:
    """Always raise."""
    raise RuntimeError(reason)


@tool(effect="read", timeout_s=0.05)
async def sleepy() -> str:
    """Sleep far past the timeout."""
    await asyncio.sleep(30)
    return "never"


CRASH_ONCE: dict[str, bool] = {}


@tool(effect="read")
async def fragile(ctx: ToolContext, text: str) -> str:
    """Crash the 'process' the first time it runs."""
    CALLS.append(("fragile", ctx.idempotency_key, ctx.retry))
    if not CRASH_ONCE.get("done"):
        CRASH_ONCE["done"] = True
        raise Crash
    return f"fragile: {text}"


KIT = Toolkit("test", [echo, explode, sleepy, fragile])


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()
    CRASH_ONCE.clear()


def make_runtime(
    provider: Any,
    *,
    limits: Limits | None = None,
    guards: list[Guard] | None = None,
    **settings: Any,
) -> Runtime:
    agents = AgentRegistry()
    agents.add(Agent(name="t", toolkits=(KIT, "workspace"), limits=limits or Limits()))
    return Runtime(load_settings(**settings), agents=agents, provider=provider, guards=guards)


def kinds(rt: Runtime, sid: str) -> list[str]:
    return [e.kind for e in rt.journal.events(sid)]


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


async def test_several_tool_calls_in_one_turn_then_final_answer_completes() -> None:
    """Two tool calls in one assistant turn both run, in order, and the answer ends it."""
    prov = ScriptedProvider(
        [
            {"tool_calls": [call("echo", text="a"), call("echo", text="b")]},
            {"content": "both echoed"},
        ]
    )
    rt = make_runtime(prov)
    sid = rt.create_session("echo twice", agent="t")
    assert await rt.run(sid) is SessionStatus.COMPLETED
    assert kinds(rt, sid) == [
        "session.created",
        "session.started",
        "llm.request",
        "llm.response",
        "tool.call",
        "tool.result",
        "tool.call",
        "tool.result",
        "llm.request",
        "llm.response",
        "session.completed",
    ]
    second = prov.calls[1].messages
    assert [m["role"] for m in second] == ["system", "user", "assistant", "tool", "tool"]
    assert [m["content"] for m in second[3:]] == ["echo: a", "echo: b"]
    row = rt.session(sid)
    assert (row.status, row.steps, row.tokens_in, row.tokens_out, row.reason) == (
        "completed",
        4,
        20,
        10,
        "completed",
    )
    # The answer is stored once, in its llm.response; the end names that step.
    assert rt.journal.events(sid)[-1].payload == {"steps": 4, "answer_step": 4}
    await rt.aclose()


@pytest.mark.parametrize(
    ("bad_call", "error_type", "message"),
    [
        (call("nope"), "UnknownToolError", "unknown tool 'nope'; available tools: echo"),
        ({"name": "echo", "arguments": "{not json"}, "ToolArgumentsError", "not valid JSON"),
        ({"name": "echo", "arguments": "[1, 2]"}, "ToolArgumentsError", "must be a JSON object"),
        (call("echo", text=42), "ToolArgumentsError", "text: Input should be a valid string"),
        (call("echo"), "ToolArgumentsError", "text: Field required"),
        (call("echo", text="x", extra=1), "ToolArgumentsError", "extra: Extra inputs"),
        (
            call("explode", reason="disk on fire"),
            "ToolExecutionError",
            "explode raised RuntimeError: disk on fire",
        ),
        (call("sleepy"), "ToolTimeoutError", "sleepy timed out after 0.05s"),
    ],
)
async def test_recoverable_errors_go_back_to_the_model(
    bad_call: dict[str, Any], error_type: str, message: str
) -> None:
    """Unknown tools, bad JSON, schema violations, raising and slow tools become tool
    results the model sees; the session carries on and completes."""
    prov = ScriptedProvider([{"tool_calls": [bad_call]}, {"content": "recovered"}])
    rt = make_runtime(prov)
    sid = rt.create_session("misbehave", agent="t")
    assert await rt.run(sid) is SessionStatus.COMPLETED
    result = next(e for e in rt.journal.events(sid) if e.kind == "tool.result")
    assert result.payload["error_type"] == error_type
    assert message in result.payload["error"]
    fed_back = prov.calls[1].messages[-1]
    assert fed_back["role"] == "tool"
    assert fed_back["content"].startswith(f"error ({error_type}): ")
    assert message in fed_back["content"]
    await rt.aclose()


@pytest.mark.parametrize(
    ("limits", "script_turns", "reason"),
    [
        (Limits(max_steps=3), 10, "step limit reached: 3 of max_steps=3"),
        (Limits(max_tokens=40), 10, "token limit reached: 45 of max_tokens=40"),
        (Limits(max_cost_usd=0.02), 10, "cost limit reached"),
    ],
)
async def test_limits_fail_the_session_with_the_reason(
    limits: Limits, script_turns: int, reason: str
) -> None:
    """An exhausted limit fails the session, journals why, and keeps every earlier event."""
    prov = ScriptedProvider(
        [{"tool_calls": [call("echo", text=str(i))]} for i in range(script_turns)],
        cost_per_call=0.01,
    )
    rt = make_runtime(prov, limits=limits)
    sid = rt.create_session("loop forever", agent="t")
    assert await rt.run(sid) is SessionStatus.FAILED
    events = rt.journal.events(sid)
    assert events[-1].kind == "session.failed"
    assert reason in events[-1].payload["reason"]
    assert rt.session(sid).reason == events[-1].payload["reason"]
    assert rt.journal.verify(sid).ok
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


async def test_wall_time_limit_interrupts_a_running_step() -> None:
    """max_wall_s bounds a step in flight, not only the start of the next one."""

    @tool(effect="read", timeout_s=60)
    async def slow() -> str:
        """Take a long time."""
        await asyncio.sleep(60)
        return "late"

    agents = AgentRegistry()
    agents.add(Agent(name="w", toolkits=(Toolkit("w", [slow]),), limits=Limits(max_wall_s=0.2)))
    rt = Runtime(
        load_settings(), agents=agents, provider=ScriptedProvider([{"tool_calls": [call("slow")]}])
    )
    sid = rt.create_session("be slow", agent="w")
    assert await rt.run(sid) is SessionStatus.FAILED
    assert "wall-time limit reached during step 2" in rt.session(sid).reason
    await rt.aclose()


async def test_provider_unreachable_fails_session_and_keeps_journal() -> None:
    """A provider that never answers ends the session as failed after its retries."""
    prov = RetryProvider(
        OpenAIProvider(name="dead", base_url="http://127.0.0.1:9/v1", model="m"),
        attempts=2,
        backoff_s=0.01,
    )
    rt = make_runtime(prov)
    sid = rt.create_session("talk to nobody", agent="t")
    assert await rt.run(sid) is SessionStatus.FAILED
    reason = rt.session(sid).reason or ""
    assert reason.startswith(
        "ProviderUnavailable: unreachable after 2 attempts: dead at http://127.0.0.1:9/v1: "
    )
    assert kinds(rt, sid) == [
        "session.created",
        "session.started",
        "llm.request",
        "llm.failed",
        "session.failed",
    ]
    await prov.aclose()
    await rt.aclose()


@pytest.mark.parametrize("mode", ["not_json", "no_choices"])
async def test_malformed_provider_response_fails_session(peer: PeerServer, mode: str) -> None:
    """A provider answering with something that is not a completion fails the session
    with a clear reason, after the steps that already succeeded."""
    prov = OpenAIProvider(name="peer", base_url=peer.url, model="m")
    peer.config.script = [{"tool_calls": [call("echo", text="hi")]}, {"content": "bye"}]
    rt = make_runtime(prov)
    sid = rt.create_session("get garbage", agent="t")
    peer.config.malformed = None
    # First turn is fine; break the peer before the second.

    class BreakPeer(Guard):
        stage = KILL

        async def handle(self, step: Step, run: RunContext, call_next: Next) -> Outcome:
            if step.kind == "tool":
                peer.config.malformed = mode
            return await call_next(step)

    rt.guards.append(BreakPeer())
    assert await rt.run(sid) is SessionStatus.FAILED
    assert "ProviderResponseError: malformed response from peer" in (rt.session(sid).reason or "")
    assert kinds(rt, sid) == [
        "session.created",
        "session.started",
        "llm.request",
        "llm.response",
        "tool.call",
        "tool.result",
        "llm.request",
        "llm.failed",
        "session.failed",
    ]
    await prov.aclose()
    await rt.aclose()


@pytest.mark.parametrize("mode", ["bad_tool_args", "unknown_tool", "bad_schema_args"])
async def test_peer_sending_bad_tool_calls_is_recovered(peer: PeerServer, mode: str) -> None:
    """Malformed tool calls from a real HTTP provider go back to the model; the run ends."""
    peer.config.malformed = mode
    prov = OpenAIProvider(name="peer", base_url=peer.url, model="m")
    rt = make_runtime(prov)
    sid = rt.create_session("call tools badly", agent="t")
    assert await rt.run(sid) is SessionStatus.COMPLETED
    result = next(e for e in rt.journal.events(sid) if e.kind == "tool.result")
    assert result.payload["error_type"] in ("ToolArgumentsError", "UnknownToolError")
    tool_msg = peer.requests[-1]["messages"][-1]
    assert tool_msg["role"] == "tool" and tool_msg["content"].startswith("error (")
    await prov.aclose()
    await rt.aclose()


async def test_a_guard_added_from_outside_plugs_in_at_its_stage() -> None:
    """A guard defined outside the kernel runs at its stage (before the limits guard),
    inside the recorder: its answer is journaled as the step's outcome, and a
    projection registered beside it sees every event as it is journaled."""
    seen: list[tuple[str, str, int]] = []

    class Deny(Guard):
        stage = KILL

        async def handle(self, step: Step, run: RunContext, call_next: Next) -> Outcome:
            seen.append(("deny", step.kind, step.number))
            if step.call is not None and step.call.name == "explode":
                return Outcome(error="denied by policy", error_type="Denied", refused_by="Deny")
            return await call_next(step)

    class Watch(Projection[int]):
        name = "watch"

        def initial(self) -> int:
            return 0

        def apply(self, state: int, event: Event) -> int:
            if event.kind in ("llm.response", "tool.result"):
                seen.append(("watch", event.kind, event.payload["step"]))
            return state + 1

    prov = ScriptedProvider(
        [
            {"tool_calls": [call("explode", reason="x"), call("echo", text="y")]},
            {"content": "ok"},
        ]
    )
    rt = make_runtime(prov, guards=[Deny()])
    rt.projections.append(Watch())
    assert [type(g).__name__ for g in sorted(rt.guards, key=lambda g: g.stage)] == [
        "Control",
        "Deny",
        "LimitsGuard",
        "BudgetGuard",
        "LoopGuard",
    ]
    sid = rt.create_session("guarded", agent="t")
    assert await rt.run(sid) is SessionStatus.COMPLETED
    assert seen == [
        ("deny", "llm", 1),
        ("watch", "llm.response", 1),
        ("deny", "tool", 2),
        ("watch", "tool.result", 2),
        ("deny", "tool", 3),
        ("watch", "tool.result", 3),
        ("deny", "llm", 4),
        ("watch", "llm.response", 4),
    ]
    # The refusal is journaled like any result, so a resume never re-decides it.
    denied = [e.payload for e in rt.journal.events(sid) if e.payload.get("step") == 2]
    assert denied == [
        {
            "step": 2,
            "attempt": 1,
            "call_id": "call_0_0",
            "name": "explode",
            "arguments": '{"reason": "x"}',
            "idempotency_key": denied[0]["idempotency_key"],
        },
        {
            "step": 2,
            "attempt": 1,
            "call_id": "call_0_0",
            "name": "explode",
            "error": "denied by policy",
            "error_type": "Denied",
            "by": "Deny",
        },
    ]
    await rt.aclose()


async def test_resume_after_crash_never_repeats_a_completed_step() -> None:
    """A crash after some steps: the resumed run replays the journal, calls neither the
    LLM nor the tools again for completed steps, and finishes the session."""
    script = [
        {"tool_calls": [call("echo", text="one")]},
        {"tool_calls": [call("echo", text="two")]},
        Crash(),
        {"content": "finished"},
    ]
    prov = ScriptedProvider(script)
    rt = make_runtime(prov)
    sid = rt.create_session("crash midway", agent="t")
    with pytest.raises(Crash):
        await rt.run(sid)
    assert rt.session(sid).status == "running"
    assert len(prov.calls) == 3 and len(CALLS) == 2

    script[2] = {"content": "finished"}
    prov2 = ScriptedProvider(script)
    rt2 = make_runtime(prov2)  # a fresh process: same NEXUS_HOME, new objects
    assert await rt2.run(sid) is SessionStatus.COMPLETED
    assert len(prov2.calls) == 1  # only the step that never completed
    assert len(CALLS) == 2  # no tool ran again
    assert [m["role"] for m in prov2.calls[0].messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
    ]
    k = kinds(rt2, sid)
    assert k.count("session.resumed") == 1 and k[-1] == "session.completed"
    assert rt2.journal.verify(sid).ok
    await rt.aclose()
    await rt2.aclose()


async def test_tool_call_started_but_not_finished_is_retried_with_the_same_key() -> None:
    """A crash inside a tool: on resume the call runs again with the same
    idempotency key and `retry=True`, and the journal shows both attempts (what
    really happened to the world), with why the second was made."""
    prov = ScriptedProvider([{"tool_calls": [call("fragile", text="t")]}, {"content": "done"}])
    rt = make_runtime(prov)
    sid = rt.create_session("crash in a tool", agent="t")
    with pytest.raises(Crash):
        await rt.run(sid)
    assert kinds(rt, sid)[-1] == "tool.call"
    rt2 = make_runtime(prov)
    assert await rt2.run(sid) is SessionStatus.COMPLETED
    (first_key, first_retry), (second_key, second_retry) = [(c[1], c[2]) for c in CALLS]
    assert (first_key == second_key, first_retry, second_retry) == (True, False, True)
    k = kinds(rt2, sid)
    assert (k.count("tool.call"), k.count("tool.result"), k.count("llm.response")) == (2, 1, 2)
    calls = [e.payload for e in rt2.journal.events(sid) if e.kind == "tool.call"]
    assert [(c["step"], c["attempt"], c.get("retry_reason")) for c in calls] == [
        (2, 1, None),
        (2, 2, "attempt 1 was interrupted: the worker stopped before it finished"),
    ]
    result = next(e.payload for e in rt2.journal.events(sid) if e.kind == "tool.result")
    assert (result["step"], result["attempt"], result["result"]) == (2, 2, "fragile: t")
    await rt.aclose()
    await rt2.aclose()


async def test_replay_is_deterministic(tmp_path: Path) -> None:
    """Replaying an exported session twice produces the same journal as the original
    (same LLM responses, same tool calls and results), without any LLM."""
    prov = ScriptedProvider(
        [
            {"tool_calls": [call("write_file", path="a.txt", content="alpha")]},
            {"tool_calls": [call("read_file", path="a.txt")]},
            {"content": "read alpha"},
        ]
    )
    rt = make_runtime(prov)
    original = rt.create_session("write and read", agent="t")
    await rt.run(original)
    export = tmp_path / "rec.json"
    export.write_text(json.dumps(rt.export(original)))

    def shape(sid: str) -> list[tuple[str, Any]]:
        out = []
        for e in rt.journal.events(sid):
            p = {k: v for k, v in e.payload.items() if k not in ("provider", "idempotency_key")}
            out.append((e.kind, p))
        return out

    runs = []
    for _ in range(2):
        sid = rt.create_session("write and read", agent="t", replay=str(export))
        assert await rt.run(sid) is SessionStatus.COMPLETED
        runs.append(shape(sid)[1:])  # skip session.created (it names the replay source)
    assert runs[0] == runs[1] == shape(original)[1:]
    # Replaying straight from the journal (session id as the source) works too.
    sid = rt.create_session("write and read", agent="t", replay=original)
    assert await rt.run(sid) is SessionStatus.COMPLETED
    assert shape(sid)[1:] == runs[0]
    await rt.aclose()


async def test_replay_that_diverges_fails_clearly(tmp_path: Path) -> None:
    """A replay asked for more answers than it recorded fails the session, saying so."""
    rt = make_runtime(ScriptedProvider([{"content": "short"}]))
    original = rt.create_session("one turn", agent="t")
    await rt.run(original)
    replay = ReplayProvider.from_events(rt.journal.events(original), source=original)
    rt2 = make_runtime(replay, limits=Limits(max_steps=5))
    sid = rt2.create_session("one turn", agent="t")
    # Start from a journal that already has one answer: the replay has no second one.
    rt2.journal.append(sid, "session.started", {"agent": "t"})
    rt2.journal.append(
        sid,
        "llm.response",
        {
            "step": 1,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "echo", "arguments": '{"text":"x"}'},
                    }
                ],
            },
            "model": "m",
            "provider": "p",
            "finish_reason": "tool_calls",
        },
    )
    assert await rt2.run(sid) is SessionStatus.FAILED
    assert "the run diverged from the recording" in (rt2.session(sid).reason or "")
    await rt.aclose()
    await rt2.aclose()


async def test_secret_canary_never_reaches_the_database_or_logs(
    peer: PeerServer, caplog: pytest.LogCaptureFixture, nexus_home: Path
) -> None:
    """The provider's API key (a registered secret) and key-shaped strings in LLM output
    and tool results are redacted before anything is written."""
    canary = "canary-7f3a9c1e5b2d"
    shaped = "sk-" + "Z" * 32
    peer.config.script = [
        {"tool_calls": [call("echo", text=f"key {canary} and {shaped}")]},
        {"content": f"the key was {canary}"},
    ]
    caplog.set_level("DEBUG")
    rt = make_runtime(
        None, providers=[{"name": "peer", "base_url": peer.url, "model": "m", "api_key": canary}]
    )
    rt._provider = None  # use the configured provider (with the canary as its API key)
    sid = rt.create_session(f"remember {canary}", agent="t")
    assert await rt.run(sid) is SessionStatus.COMPLETED
    await rt.aclose()
    for f in nexus_home.iterdir():
        if f.is_file():
            data = f.read_bytes()
            assert canary.encode() not in data, f.name
            assert shaped.encode() not in data, f.name
    assert canary not in caplog.text
    assert peer.requests  # the secret did reach the provider, as it must


async def test_a_guard_answering_an_llm_step_without_a_response_fails_the_session() -> None:
    """A guard may refuse an LLM step with an Outcome of its own; with no response to
    continue from, the session fails naming the reason (not an internal error)."""

    class Refuse(Guard):
        stage = KILL

        async def handle(self, step: Step, run: RunContext, call_next: Next) -> Outcome:
            if step.kind == "llm":
                return Outcome(error="model calls are switched off", error_type="Refused")
            return await call_next(step)

    rt = make_runtime(ScriptedProvider([{"content": "never"}]), guards=[Refuse()])
    sid = rt.create_session("try", agent="t")
    assert await rt.run(sid) is SessionStatus.FAILED
    assert rt.session(sid).reason == (
        "TerminalError: LLM step 1 produced no response: model calls are switched off"
    )
    assert kinds(rt, sid) == [
        "session.created",
        "session.started",
        "llm.request",
        "llm.failed",
        "session.failed",
    ]
    failed = rt.journal.events(sid)[3].payload
    assert failed == {
        "step": 1,
        "attempt": 1,
        "error": "LLM step 1 produced no response: model calls are switched off",
        "error_type": "TerminalError",
        "by": "kernel",
    }
    await rt.aclose()
