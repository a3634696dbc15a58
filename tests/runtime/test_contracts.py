"""The kernel's contracts for later features: folding, recording that cannot be
bypassed, the recorded agent, session hooks, the toolkit registry, and the
defects they close (duplicate call ids, calls per turn, usage, result sizes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from nexus.config import load_settings
from nexus.errors import ConfigError, LimitExceeded, RecoverableError
from nexus.runtime.agents import Agent, AgentRegistry, Limits
from nexus.runtime.pipeline import APPROVAL, BREAKER, BUDGET, DEGRADED, KILL
from nexus.runtime.providers import ScriptedProvider
from nexus.runtime.runtime import Runtime
from nexus.runtime.toolkits import ToolkitRegistry
from nexus.runtime.tools import Tool, ToolContext, Toolkit, tool
from nexus.types import (
    ChatRequest,
    ChatResponse,
    Guard,
    Next,
    Outcome,
    RunContext,
    SessionHook,
    SessionStatus,
    Step,
    Usage,
)
from tests.peers.openai_server import ThreadedPeerServer
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


class Crash(BaseException):
    """Stands for the process dying: nothing in the loop catches it."""


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


@tool(effect="read")
async def echo(text: str) -> str:
    """Echo a text back."""
    return f"echo: {text}"


def runtime(provider: Any, *, limits: Limits | None = None, **kw: Any) -> Runtime:
    agents = AgentRegistry()
    agents.add(Agent(name="t", toolkits=(Toolkit("t", [echo]),), limits=limits or Limits()))
    return Runtime(load_settings(), agents=agents, provider=provider, **kw)


def kinds(rt: Runtime, sid: str) -> list[str]:
    return [e.kind for e in rt.journal.events(sid)]


def open_tool_calls(rt: Runtime, sid: str) -> list[int]:
    """Steps whose last tool.call has no tool.result after it."""
    open_: dict[int, bool] = {}
    for e in rt.journal.events(sid):
        if e.kind == "tool.call":
            open_[e.payload["step"]] = True
        elif e.kind == "tool.result":
            open_[e.payload["step"]] = False
    return [s for s, is_open in open_.items() if is_open]


# -- folding across a real SIGKILL ------------------------------------------------


@pytest.mark.slow
def test_a_guard_folded_from_the_journal_holds_its_state_across_sigkill(
    tmp_path: Path, nexus_home: Path, threaded_peer: ThreadedPeerServer
) -> None:
    """A guard that counts tool results (its state a projection of the journal)
    holds after a SIGKILL and resume exactly what it held before the crash."""
    from tests.runtime.fold_worker import registry

    threaded_peer.config.script = [
        {"tool_calls": [call("hold", tag="a")]},
        {"tool_calls": [call("hold", tag="b")]},
        {"tool_calls": [call("hold", tag="hold")]},
        {"content": "done"},
    ]
    env = dict(os.environ)
    env.update(
        NEXUS_HOME=str(nexus_home),
        NEXUS_PROVIDERS=json.dumps([{"name": "peer", "base_url": threaded_peer.url, "model": "m"}]),
        NEXUS_QUEUE_POLL_S="0.05",
        FOLD_LOG=str(tmp_path / "fold.log"),
        CRASH_RELEASE=str(tmp_path / "release"),
        PYTHONPATH=str(ROOT),
    )
    log = tmp_path / "fold.log"

    def seen() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    def worker(name: str) -> subprocess.Popen[bytes]:
        with (tmp_path / f"{name}.log").open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "tests.runtime.fold_worker"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    rt = Runtime(load_settings(), agents=registry())
    sid = rt.create_session("count", agent="fold")
    first = worker("w1")
    try:
        wait_for(lambda: "6 2" in seen(), "the held third call")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        first.kill()
    before = seen()
    assert before == ["1 0", "2 0", "3 1", "4 1", "5 2", "6 2"]
    (tmp_path / "release").touch()
    second = worker("w2")
    try:
        wait_for(lambda: rt.session(sid).status == "completed", "session completed")
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0
    # Resumed at the interrupted step with the count it had, then on as before.
    assert seen()[len(before) :] == ["6 2", "7 3"]
    assert rt.journal.verify(sid).ok
    rt.store.close()


# -- recording that cannot be bypassed ----------------------------------------------

STAGES = [KILL, BUDGET, APPROVAL, DEGRADED, BREAKER, 5000]


def refusing_guard(stage: int, how: str, kind: str) -> Guard:
    class Refuse(Guard):
        async def handle(self, step: Step, run: RunContext, call_next: Next) -> Outcome:
            if step.kind != kind:
                return await call_next(step)
            if how == "terminal":
                raise LimitExceeded(f"refused at stage {stage}")
            if how == "recoverable":
                raise RecoverableError(f"refused at stage {stage}")
            return Outcome(error=f"answered at stage {stage}", error_type="Answered")

    Refuse.stage = stage
    return Refuse()


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("how", ["terminal", "recoverable", "answer"])
async def test_a_guard_refusing_a_tool_step_at_any_stage_is_journaled(stage: int, how: str) -> None:
    """Whatever the stage, a guard that refuses a tool call (terminally, recoverably,
    or by answering itself) leaves a tool.result saying so: never a bare tool.call."""
    prov = ScriptedProvider([{"tool_calls": [call("echo", text="x")]}, {"content": "ok"}])
    rt = runtime(prov, guards=[refusing_guard(stage, how, "tool")])
    sid = rt.create_session("refuse", agent="t")
    status = await rt.run(sid)
    result = next(e.payload for e in rt.journal.events(sid) if e.kind == "tool.result")
    expected = {
        "terminal": (f"refused: refused at stage {stage}", "LimitExceeded", "Refuse"),
        "recoverable": (f"refused at stage {stage}", "RecoverableError", "Refuse"),
        "answer": (f"answered at stage {stage}", "Answered", None),
    }[how]
    assert (result["error"], result["error_type"], result.get("by")) == expected
    assert status is (SessionStatus.FAILED if how == "terminal" else SessionStatus.COMPLETED)
    assert open_tool_calls(rt, sid) == []
    await rt.aclose()


@pytest.mark.parametrize("stage", STAGES)
async def test_a_guard_refusing_an_llm_step_at_any_stage_is_journaled(stage: int) -> None:
    """An LLM step refused at any stage: its request, then llm.failed naming the
    guard, then the session fails with the reason."""
    rt = runtime(
        ScriptedProvider([{"content": "never"}]), guards=[refusing_guard(stage, "terminal", "llm")]
    )
    sid = rt.create_session("refuse", agent="t")
    assert await rt.run(sid) is SessionStatus.FAILED
    events = rt.journal.events(sid)
    assert [e.kind for e in events] == [
        "session.created",
        "session.started",
        "llm.request",
        "llm.failed",
        "session.failed",
    ]
    assert events[3].payload == {
        "step": 1,
        "attempt": 1,
        "error": f"refused at stage {stage}",
        "error_type": "LimitExceeded",
        "by": "Refuse",
    }
    await rt.aclose()


# -- the journal records what the model saw ------------------------------------------


async def test_each_llm_step_records_what_was_sent_before_the_call() -> None:
    """llm.request holds the messages added since the previous step, the model and
    the parameters (max_tokens is always set), not a copy of the whole conversation."""
    prov = ScriptedProvider([{"tool_calls": [call("echo", text="x")]}, {"content": "ok"}])
    rt = runtime(prov)
    sid = rt.create_session("say it", agent="t", model="m-1")
    assert await rt.run(sid) is SessionStatus.COMPLETED
    requests = [e.payload for e in rt.journal.events(sid) if e.kind == "llm.request"]
    system = rt.agents.get("t").system_prompt
    assert requests == [
        {
            "step": 1,
            "attempt": 1,
            "model": "m-1",
            "params": {"max_tokens": 4096},
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": "say it"},
            ],
            "tools": 1,
        },
        {
            "step": 3,
            "attempt": 1,
            "model": "m-1",
            "params": {"max_tokens": 4096},
            "messages": [{"role": "tool", "tool_call_id": "call_0_0", "content": "echo: x"}],
            "tools": 1,
        },
    ]
    assert [c.max_tokens for c in prov.calls] == [4096, 4096]
    await rt.aclose()


async def test_a_resumed_session_runs_with_the_agent_recorded_at_creation(
    nexus_home: Path,
) -> None:
    """The agent's TOML changes between a crash and the resume: the resumed session
    still uses the recorded prompt, model and limits."""
    agents = nexus_home / "agents"
    agents.mkdir(parents=True)
    toml = agents / "writer.toml"
    toml.write_text(
        'name = "writer"\nsystem_prompt = "You are the OLD prompt."\nmodel = "old-model"\n'
        'toolkits = ["workspace"]\n[limits]\nmax_steps = 7\n'
    )
    script: list[Any] = [
        {"tool_calls": [call("write_file", path="a.txt", content="A")]},
        Crash(),
        {"content": "done"},
    ]
    rt = Runtime(load_settings(), provider=ScriptedProvider(script))
    sid = rt.create_session("write", agent="writer")
    with pytest.raises(Crash):
        await rt.run(sid)
    await rt.aclose()
    toml.write_text(
        'name = "writer"\nsystem_prompt = "You are the NEW prompt."\nmodel = "new-model"\n'
        'toolkits = ["workspace"]\n[limits]\nmax_steps = 1\n'
    )
    script[1] = {"content": "done"}
    prov = ScriptedProvider(script)
    rt2 = Runtime(load_settings(), provider=prov)
    assert rt2.agents.get("writer").system_prompt == "You are the NEW prompt."
    assert await rt2.run(sid) is SessionStatus.COMPLETED  # max_steps=1 would have failed it
    (resumed,) = prov.calls
    assert (resumed.messages[0], resumed.model) == (
        {"role": "system", "content": "You are the OLD prompt."},
        "old-model",
    )
    spec = rt2.journal.events(sid)[0].payload["spec"]
    assert (spec["name"], spec["model"], spec["limits"]["max_steps"], spec["toolkits"]) == (
        "writer",
        "old-model",
        7,
        ["workspace"],
    )
    assert [t["function"]["name"] for t in spec["tools"]] == [
        "read_file",
        "list_files",
        "write_file",
        "delete_file",
    ]
    await rt2.aclose()


# -- session hooks ----------------------------------------------------------------


async def test_session_hooks_see_start_resume_and_end_without_the_loop_knowing() -> None:
    """A hook (a lease, a root span) sees the session start, resume after a crash,
    and end with its status."""
    seen: list[tuple[str, str]] = []

    class Lease(SessionHook):
        async def session_started(self, run: RunContext) -> None:
            seen.append(("granted", run.session_id))

        async def session_resumed(self, run: RunContext) -> None:
            seen.append(("granted again", run.session_id))

        async def session_ended(self, run: RunContext, status: SessionStatus) -> None:
            seen.append((f"revoked ({status.value})", run.session_id))

    script: list[Any] = [{"tool_calls": [call("echo", text="x")]}, Crash(), {"content": "ok"}]
    rt = runtime(ScriptedProvider(script), hooks=[Lease()])
    sid = rt.create_session("lease", agent="t")
    with pytest.raises(Crash):
        await rt.run(sid)
    script[1] = {"content": "ok"}
    rt2 = runtime(ScriptedProvider(script), hooks=[Lease()])
    assert await rt2.run(sid) is SessionStatus.COMPLETED
    assert seen == [("granted", sid), ("granted again", sid), ("revoked (completed)", sid)]
    await rt.aclose()
    await rt2.aclose()


# -- hostile model answers --------------------------------------------------------


async def test_duplicate_tool_call_ids_are_the_models_error_to_correct() -> None:
    """Two calls with one id: neither runs, both get a result telling the model why,
    and the session goes on (resume keys on the step, so it could never be confused)."""
    ran: list[str] = []

    @tool(effect="read")
    def note(text: str) -> str:
        """Note a text."""
        ran.append(text)
        return text

    def duplicated(request: ChatRequest) -> ChatResponse:
        from nexus.types import ToolCall

        return ChatResponse(
            content=None,
            tool_calls=(
                ToolCall("same", "note", '{"text": "a"}'),
                ToolCall("same", "note", '{"text": "b"}'),
            ),
        )

    agents = AgentRegistry()
    agents.add(Agent(name="n", toolkits=(Toolkit("n", [note]),)))
    prov = ScriptedProvider([duplicated, {"content": "sorry"}])
    rt = Runtime(load_settings(), agents=agents, provider=prov)
    sid = rt.create_session("dup", agent="n")
    assert await rt.run(sid) is SessionStatus.COMPLETED
    results = [e.payload for e in rt.journal.events(sid) if e.kind == "tool.result"]
    assert [(r["step"], r["error_type"], r["by"]) for r in results] == [
        (2, "ToolCallRefused", "kernel"),
        (3, "ToolCallRefused", "kernel"),
    ]
    assert "not unique ('same' used more than once" in results[0]["error"]
    assert ran == []
    assert [m["role"] for m in prov.calls[1].messages][-2:] == ["tool", "tool"]
    await rt.aclose()


async def test_a_crash_in_the_second_of_two_calls_resumes_that_call_by_step() -> None:
    """A crash during the second call of a turn: the resume retries exactly that
    call (keyed by step, not by the model's id) and the session completes with both
    results."""
    runs: list[tuple[str, int]] = []
    crash = {"armed": True}

    @tool(effect="read")
    def step_tool(ctx: ToolContext, text: str) -> str:
        """Record a call; crash once on 'b'."""
        runs.append((text, ctx.attempt))
        if text == "b" and crash["armed"]:
            crash["armed"] = False
            raise Crash
        return text

    agents = AgentRegistry()
    agents.add(Agent(name="s", toolkits=(Toolkit("s", [step_tool]),)))
    script = [
        {"tool_calls": [call("step_tool", text="a"), call("step_tool", text="b")]},
        {"content": "ok"},
    ]
    rt = Runtime(load_settings(), agents=agents, provider=ScriptedProvider(script))
    sid = rt.create_session("two", agent="s")
    with pytest.raises(Crash):
        await rt.run(sid)
    rt2 = Runtime(load_settings(), agents=agents, provider=ScriptedProvider(script))
    assert await rt2.run(sid) is SessionStatus.COMPLETED
    assert runs == [("a", 1), ("b", 1), ("b", 2)]
    results = [
        (e.payload["step"], e.payload["result"])
        for e in rt2.journal.events(sid)
        if e.kind == "tool.result"
    ]
    assert results == [(2, "a"), (3, "b")]
    assert open_tool_calls(rt2, sid) == []
    await rt.aclose()
    await rt2.aclose()


async def test_two_hundred_calls_in_one_turn_run_up_to_the_cap_and_leave_no_open_call() -> None:
    """200 calls in one response: the first 16 run, the rest are refused with a
    message the model can act on; under a step limit the session fails with every
    started call closed by a result."""
    turn = {"tool_calls": [call("echo", text=str(i)) for i in range(200)]}
    rt = runtime(ScriptedProvider([turn, {"content": "ok"}]), limits=Limits(max_steps=None))
    sid = rt.create_session("many", agent="t")
    assert await rt.run(sid) is SessionStatus.COMPLETED
    results = [e.payload for e in rt.journal.events(sid) if e.kind == "tool.result"]
    assert len(results) == 200
    assert [r.get("result") for r in results[:16]] == [f"echo: {i}" for i in range(16)]
    assert {r.get("error_type") for r in results[16:]} == {"ToolCallRefused"}
    assert results[16]["error"].startswith(
        "refused: this response made 200 tool calls and at most 16"
    )

    rt2 = runtime(ScriptedProvider([turn]), limits=Limits(max_steps=50))
    sid2 = rt2.create_session("many, limited", agent="t")
    assert await rt2.run(sid2) is SessionStatus.FAILED
    assert "step limit reached" in (rt2.session(sid2).reason or "")
    assert open_tool_calls(rt2, sid2) == []
    await rt.aclose()
    await rt2.aclose()


async def test_impossible_usage_is_counted_instead_and_marked() -> None:
    """Negative token counts are not written into the totals: the tokens are counted
    with tiktoken instead, the event says what was wrong and that the figures are
    estimated, and the session's totals hold the counted tokens. (Until issue 11 the
    tokens were zeroed; the reported cost of such a response is not trusted either.)"""
    from nexus.observe.tokens import count_completion, count_prompt

    def bad_usage(request: ChatRequest) -> ChatResponse:
        return ChatResponse(content="hi", usage=Usage(-24, 1_999_999_999_999_998), cost_usd=1.0)

    provider = ScriptedProvider([bad_usage])
    rt = runtime(provider)
    sid = rt.create_session("count", agent="t")
    assert await rt.run(sid) is SessionStatus.COMPLETED
    response = next(e for e in rt.journal.events(sid) if e.kind == "llm.response")
    sent = provider.calls[0]
    counted = (
        count_prompt(sent.messages, sent.tools),
        count_completion(ChatResponse(content="hi")),
    )
    assert (response.tokens_in, response.tokens_out, response.cost_usd) == (*counted, 0.0)
    assert {k: response.payload.get(k) for k in USAGE_MARKS} == {
        "usage_problem": "negative token counts (-24 in, 1999999999999998 out)",
        "usage_estimated": True,
        "cost_estimated": True,
        "unpriced": True,  # no model named: no price known
    }
    row = rt.session(sid)
    assert (row.tokens_in, row.tokens_out, row.cost_usd) == (*counted, 0.0)
    await rt.aclose()


USAGE_MARKS = ("usage_problem", "usage_estimated", "cost_estimated", "unpriced")


async def test_a_tool_result_over_the_cap_goes_back_to_the_model_as_an_error() -> None:
    """A result larger than max_tool_result_bytes is not journaled; the model is
    told to ask for less."""

    @tool(effect="read")
    def huge() -> str:
        """Return a lot."""
        return "x" * 5000

    agents = AgentRegistry()
    agents.add(Agent(name="h", toolkits=(Toolkit("h", [huge]),)))
    rt = Runtime(
        load_settings(max_tool_result_bytes=1024),
        agents=agents,
        provider=ScriptedProvider([{"tool_calls": [call("huge")]}, {"content": "ok"}]),
    )
    sid = rt.create_session("big", agent="h")
    assert await rt.run(sid) is SessionStatus.COMPLETED
    result = next(e.payload for e in rt.journal.events(sid) if e.kind == "tool.result")
    assert (result["error_type"], "result" in result) == ("ToolResultTooLarge", False)
    assert result["error"].startswith("huge returned 5002 bytes, over the limit of 1024")
    await rt.aclose()


# -- a session that cannot run never poisons anything --------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"priority": -1}, "priority must be from 0"),
        ({"priority": 10**9}, "priority must be from 0"),
        ({"labels": {"bad\x00key": "v"}}, "label key 'bad\\x00key' is invalid"),
        ({"labels": {"k": "v" * 500_000}}, "over 256"),
        ({"agent": "nope"}, "unknown agent 'nope'"),
        ({"limits": {"max_steps": 0}}, "invalid budget"),
        ({"replay": "/no/such/file"}, "neither a file nor a session id"),
    ],
)
async def test_bad_input_is_refused_before_anything_is_journaled(
    kwargs: dict[str, Any], message: str
) -> None:
    """Every input of a new session is checked first: a refusal writes nothing."""
    rt = runtime(ScriptedProvider([]))
    with pytest.raises(ConfigError, match=None) as info:
        rt.create_session("goal", **kwargs)
    assert message in str(info.value)
    assert rt.store.count_sessions() == 0
    await rt.aclose()


async def test_a_session_with_no_provider_ends_failed_with_the_reason() -> None:
    """No LLM provider configured: the session ends failed saying so (it used to
    stay queued, with only a traceback in the worker's log)."""
    rt = Runtime(load_settings())
    sid = rt.create_session("needs a model")
    assert await rt.run(sid) is SessionStatus.FAILED
    row = rt.session(sid)
    assert (row.status, (row.reason or "").split(":")[0]) == ("failed", "NoProviderConfigured")
    assert kinds(rt, sid) == ["session.created", "session.failed"]
    await rt.aclose()


# -- the toolkit registry -----------------------------------------------------------


def install_entry_point(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real installed distribution (dist-info on sys.path) declaring a toolkit in
    the `nexus.toolkits` entry-point group; the toolkit's tool comes from a JSON Schema."""
    pkg = root / "weather_kit.py"
    pkg.write_text(
        textwrap.dedent(
            """
            from nexus.runtime.tools import Tool, Toolkit

            def forecast(ctx, city, days=1):
                return {"city": city, "days": days, "sky": ctx.settings.sky}

            def toolkit():
                from pydantic import BaseModel

                class Settings(BaseModel):
                    sky: str = "clear"

                tool = Tool.from_schema(
                    name="forecast",
                    description="The weather of a city.",
                    parameters={
                        "type": "object",
                        "properties": {
                            "city": {"type": "string", "minLength": 1},
                            "days": {"type": "integer", "minimum": 1, "maximum": 7},
                        },
                        "required": ["city"],
                        "additionalProperties": False,
                    },
                    fn=forecast,
                )
                return Toolkit("weather", [tool], settings_model=Settings)
            """
        )
    )
    dist = root / "weather_kit-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: weather-kit\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[nexus.toolkits]\nweather = weather_kit:toolkit\n")
    monkeypatch.syspath_prepend(str(root))


async def test_a_toml_agent_uses_an_entry_point_toolkit_built_from_a_json_schema(
    nexus_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed package's toolkit (entry point), whose tool is described by a
    JSON Schema, is named by a TOML agent; its settings section reaches the tool;
    bad arguments are checked against the schema."""
    (tmp_path / "site").mkdir()
    install_entry_point(tmp_path / "site", monkeypatch)
    monkeypatch.setenv("NEXUS_TOOLKITS__WEATHER__SKY", "overcast")
    (nexus_home / "agents").mkdir(parents=True)
    (nexus_home / "agents" / "weather.toml").write_text(
        'name = "weatherman"\nsystem_prompt = "Tell the weather."\ntoolkits = ["weather"]\n'
    )
    script = [
        {"tool_calls": [call("forecast", city="")]},
        {"tool_calls": [call("forecast", city="Paris", days=2)]},
        {"content": "overcast in Paris"},
    ]
    rt = Runtime(load_settings(), provider=ScriptedProvider(script))
    assert "weather" in rt.toolkits.names()
    sid = rt.create_session("weather?", agent="weatherman")
    assert await rt.run(sid) is SessionStatus.COMPLETED
    results = [e.payload for e in rt.journal.events(sid) if e.kind == "tool.result"]
    assert results[0]["error_type"] == "ToolArgumentsError"
    assert "city: '' should be non-empty" in results[0]["error"]
    assert results[1]["result"] == {"city": "Paris", "days": 2, "sky": "overcast"}
    await rt.aclose()


async def test_toolkit_settings_and_lifecycle_reach_the_tool(nexus_home: Path) -> None:
    """A toolkit's settings section (nexus.toml) is validated and handed to its
    tools; it opens once per worker, however many sessions, and closes at shutdown;
    a bad setting is refused naming it."""
    from pydantic import BaseModel

    class DbSettings(BaseModel):
        dsn: str
        pool: int = 2

    life: list[str] = []

    async def on_open(settings: DbSettings) -> None:
        life.append(f"open {settings.dsn} pool={settings.pool}")

    async def on_close() -> None:
        life.append("close")

    @tool(effect="read")
    def query(ctx: ToolContext, sql: str) -> str:
        """Run a query."""
        return f"{sql} on {ctx.settings.dsn}"

    kit = Toolkit("db", [query], settings_model=DbSettings, on_open=on_open, on_close=on_close)
    nexus_home.mkdir(parents=True)
    (nexus_home / "nexus.toml").write_text('[toolkits.db]\ndsn = "db://main"\npool = 4\n')
    registry = ToolkitRegistry(load_settings().toolkits)
    registry.register(kit)
    agents = AgentRegistry()
    agents.add(Agent(name="q", toolkits=("db",)))
    script = [{"tool_calls": [call("query", sql="select 1")]}, {"content": "ok"}]
    rt = Runtime(
        load_settings(), agents=agents, toolkits=registry, provider=ScriptedProvider(script)
    )
    for _ in range(2):
        sid = rt.create_session("query", agent="q")
        assert await rt.run(sid) is SessionStatus.COMPLETED
        result = next(e.payload for e in rt.journal.events(sid) if e.kind == "tool.result")
        assert result["result"] == "select 1 on db://main"
    await rt.aclose()
    assert life == ["open db://main pool=4", "close"]

    bad = ToolkitRegistry({"db": {"pool": "many"}})
    with pytest.raises(ConfigError) as info:
        kit.parse_settings(bad._settings["db"])
    assert str(info.value) == (
        "invalid settings of toolkit db: NEXUS_TOOLKITS__DB__DSN: Field required; "
        "NEXUS_TOOLKITS__DB__POOL: Input should be a valid integer, "
        "unable to parse string as an integer"
    )


@pytest.mark.sqlite_only
async def test_tools_get_declared_secrets_through_the_context_and_they_are_redacted(
    monkeypatch: pytest.MonkeyPatch, nexus_home: Path
) -> None:
    """`ctx.secrets.get(name)` gives a tool the secrets it declares (from
    NEXUS_SECRET_<NAME> today), never others, and the value never reaches the journal."""
    secret = "tok-5a1f9c2e7b"
    monkeypatch.setenv("NEXUS_SECRET_GITHUB_TOKEN", secret)
    monkeypatch.setenv("NEXUS_SECRET_OTHER", "other-value-123")

    @tool(effect="read", secrets=["github_token"])
    def whoami(ctx: ToolContext, which: str) -> str:
        """Use a credential."""
        return f"used {ctx.secrets.get(which)}"

    agents = AgentRegistry()
    agents.add(Agent(name="g", toolkits=(Toolkit("g", [whoami]),)))
    script = [
        {"tool_calls": [call("whoami", which="github_token"), call("whoami", which="other")]},
        {"content": "ok"},
    ]
    rt = Runtime(load_settings(), agents=agents, provider=ScriptedProvider(script))
    sid = rt.create_session("who", agent="g")
    assert await rt.run(sid) is SessionStatus.COMPLETED
    results = [e.payload for e in rt.journal.events(sid) if e.kind == "tool.result"]
    assert results[0]["result"] == "used [REDACTED]"
    assert results[1]["error"].startswith(
        "whoami raised SecretNotFound: secret 'other' is not declared"
    )
    await rt.aclose()
    assert secret.encode() not in (nexus_home / "nexus.db").read_bytes()


def test_a_tool_from_a_json_schema_refuses_a_bad_schema() -> None:
    """A schema that is not a valid JSON Schema object is refused when the tool is built."""
    with pytest.raises(ConfigError, match="invalid JSON Schema"):
        Tool.from_schema(
            name="t", description="", parameters={"type": "object", "properties": 3}, fn=print
        )
    with pytest.raises(ConfigError, match="must be a JSON Schema of type object"):
        Tool.from_schema(name="t", description="", parameters={"type": "string"}, fn=print)


async def test_a_session_created_before_the_spec_was_recorded_still_runs() -> None:
    """A journal from before this version (no `spec` in session.created) resumes with
    the agent's current definition."""
    prov = ScriptedProvider([{"content": "legacy ok"}])
    rt = runtime(prov)
    rt.journal.append(
        "s_legacy",
        "session.created",
        {"goal": "old", "agent": "t", "priority": 0, "labels": {}},
    )
    assert await rt.run("s_legacy") is SessionStatus.COMPLETED
    assert prov.calls[0].messages[0] == {
        "role": "system",
        "content": rt.agents.get("t").system_prompt,
    }
    await rt.aclose()


def test_the_public_api_exports_the_contracts() -> None:
    """`import nexus` offers every contract a feature author needs, each resolving."""
    import nexus

    contracts = {"Guard", "RunContext", "Projection", "SessionHook", "Step", "Outcome", "Event"}
    assert contracts | {"Tool", "Toolkit", "ToolkitRegistry", "Runtime"} <= set(nexus.__all__)
    assert all(getattr(nexus, name) is not None for name in nexus.__all__)


# -- control-flow exits -------------------------------------------------------------


async def test_a_guard_kills_a_session_through_a_control_flow_exit() -> None:
    """`SessionKilled` from a guard ends the session `killed` (not failed), with who
    and why journaled, and the refused step closed by its outcome."""
    from nexus.errors import SessionKilled

    class Kill(Guard):
        stage = KILL

        async def handle(self, step: Step, run: RunContext, call_next: Next) -> Outcome:
            if step.kind == "tool":
                raise SessionKilled("operator pressed kill", by="alice")
            return await call_next(step)

    rt = runtime(ScriptedProvider([{"tool_calls": [call("echo", text="x")]}]), guards=[Kill()])
    sid = rt.create_session("stop me", agent="t")
    assert await rt.run(sid) is SessionStatus.KILLED
    events = rt.journal.events(sid)
    assert [e.kind for e in events][-3:] == ["tool.call", "tool.result", "session.killed"]
    assert events[-2].payload["error"] == "refused: operator pressed kill"
    assert events[-1].payload == {"reason": "operator pressed kill", "by": "alice", "steps": 2}
    row = rt.session(sid)
    assert (row.status, row.reason) == ("killed", "operator pressed kill")
    assert await rt.run(sid) is SessionStatus.KILLED  # never runs again
    await rt.aclose()


async def test_a_suspended_session_keeps_its_step_and_continues_when_resumed() -> None:
    """`SessionSuspended` ends the run `paused` without running the step; it does not
    run again until resumed, and then resumes at that step (its next attempt, saying
    why) and the tool runs exactly once."""
    from nexus.errors import SessionSuspended

    ran: list[str] = []
    armed = {"pause": True}

    @tool(effect="read")
    def act(text: str) -> str:
        """Act once."""
        ran.append(text)
        return text

    class Pause(Guard):
        stage = APPROVAL

        async def handle(self, step: Step, run: RunContext, call_next: Next) -> Outcome:
            if step.kind == "tool" and armed["pause"]:
                armed["pause"] = False
                raise SessionSuspended("waiting for a look", by="loop-detector")
            return await call_next(step)

    agents = AgentRegistry()
    agents.add(Agent(name="p", toolkits=(Toolkit("p", [act]),)))
    script = [{"tool_calls": [call("act", text="go")]}, {"content": "done"}]
    rt = Runtime(
        load_settings(), agents=agents, provider=ScriptedProvider(script), guards=[Pause()]
    )
    sid = rt.create_session("pause me", agent="p")
    assert await rt.run(sid) is SessionStatus.PAUSED
    paused = rt.journal.events(sid)[-1]
    assert (paused.kind, paused.payload) == (
        "session.paused",
        {
            "reason": "waiting for a look",
            "by": "loop-detector",
            "steps": 1,
            "kind": "SessionSuspended",
        },
    )
    assert (rt.session(sid).status, ran) == ("paused", [])
    assert await rt.run(sid) is SessionStatus.PAUSED  # not again until resumed
    await rt.control.post(sid, "resume", by="operator")
    assert await rt.run(sid) is SessionStatus.COMPLETED
    assert ran == ["go"]
    calls = [e.payload for e in rt.journal.events(sid) if e.kind == "tool.call"]
    assert [(c["attempt"], c.get("retry_reason")) for c in calls] == [
        (1, None),
        (2, "attempt 1 did not run: the session was paused before it"),
    ]
    assert rt.journal.verify(sid).ok
    await rt.aclose()


async def test_every_outcome_is_committed_before_the_next_step_runs() -> None:
    """An outcome rides in the same transaction as the next step's intent: when a
    tool runs, the LLM response that asked for it is in the database; when the next
    LLM call goes out, the tool's result is."""
    seen: list[list[str]] = []
    holder: dict[str, Runtime] = {}

    def stored() -> list[str]:
        (sid,) = holder["rt"].store.session_ids(["running"])
        return [r.kind for r in holder["rt"].store.events(sid)]

    @tool(effect="read")
    def look() -> str:
        """Look at the database."""
        seen.append(stored())
        return "looked"

    def second(request: ChatRequest) -> ChatResponse:
        seen.append(stored())
        return ChatResponse(content="done")

    agents = AgentRegistry()
    agents.add(Agent(name="l", toolkits=(Toolkit("l", [look]),)))
    prov = ScriptedProvider([{"tool_calls": [call("look")]}, second])
    rt = holder["rt"] = Runtime(load_settings(), agents=agents, provider=prov)
    sid = rt.create_session("look", agent="l")
    assert await rt.run(sid) is SessionStatus.COMPLETED
    assert seen == [
        ["session.created", "session.started", "llm.request", "llm.response", "tool.call"],
        [
            "session.created",
            "session.started",
            "llm.request",
            "llm.response",
            "tool.call",
            "tool.result",
            "llm.request",
        ],
    ]
    await rt.aclose()
