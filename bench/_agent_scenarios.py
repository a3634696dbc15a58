"""The scenarios of `bench.agent_step`: one agent run, done seven ways.

Each builder is an async context manager `build(url, tmp, inflight)` that sets a
framework up against the peer LLM at `url` (files under `tmp`) and yields
`run_one(i)`, one complete run that checks its final answer. Peer frameworks are
imported inside their builders, so this module imports without them.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._common import RunOne

SYSTEM = "You answer questions by looking values up with the lookup tool."
GOAL = "What is the value stored under the key x?"
EXPECTED = "final: value-of-x"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look up the value stored under a key.",
            "parameters": {
                "type": "object",
                "properties": {"key": {"type": "string"}},
                "required": ["key"],
            },
        },
    }
]
MAX_TURNS = 4  # the peer answers after one tool call; more means a broken scenario


class BenchError(RuntimeError):
    """A scenario did not do the agent run it claims to measure."""


def _check(answer: object, scenario: str) -> None:
    if not (isinstance(answer, str) and EXPECTED in answer):
        raise BenchError(f"{scenario}: expected an answer containing {EXPECTED!r}, got {answer!r}")


async def _lookup(key: str) -> str:
    return f"value-of-{key}"


Build = Callable[[str, Path, int], AbstractAsyncContextManager[RunOne]]


@dataclass(frozen=True)
class Scenario:
    """One way to do the agent run. `requires` are the modules it cannot run without."""

    key: str
    label: str
    durable: bool
    build: Build
    requires: tuple[str, ...] = ()
    dist: str | None = None

    def missing(self) -> list[str]:
        """The required modules that are not importable."""
        return [m for m in self.requires if _find_spec(m) is None]


def _find_spec(module: str) -> Any:
    try:
        return importlib.util.find_spec(module)
    except ImportError:  # a parent package is missing
        return None


@asynccontextmanager
async def baseline(url: str, tmp: Path, inflight: int) -> AsyncIterator[RunOne]:
    """(a) The least a client can do: POST, run the tool, POST again. Nothing persisted."""
    import aiohttp

    endpoint = f"{url}/chat/completions"
    connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=30)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def run_one(i: int) -> None:
            messages: list[dict[str, Any]] = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": GOAL},
            ]
            for _ in range(MAX_TURNS):
                body = {"model": "m", "messages": messages, "tools": TOOLS}
                async with http.post(endpoint, data=json.dumps(body)) as resp:
                    resp.raise_for_status()
                    data = json.loads(await resp.text())
                message = data["choices"][0]["message"]
                messages.append(message)
                calls = message.get("tool_calls")
                if not calls:
                    _check(message.get("content"), "a")
                    return
                for call in calls:
                    args = json.loads(call["function"]["arguments"])
                    result = await _lookup(**args)
                    messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
            raise BenchError(f"a: no final answer after {MAX_TURNS} turns")

        yield run_one


def _nexus_runtime(url: str, home: Path, concurrency: int) -> Any:
    from nexus.config import load_settings
    from nexus.runtime.agents import Agent, AgentRegistry
    from nexus.runtime.runtime import Runtime
    from nexus.runtime.tools import Toolkit, tool

    @tool(effect="read")
    async def lookup(key: str) -> str:
        """Look up the value stored under a key.

        Args:
            key: the key to look up.
        """
        return await _lookup(key)

    settings = load_settings(
        home=home,
        providers=[{"name": "peer", "base_url": url, "model": "m"}],
        concurrency=concurrency,
    )
    agents = AgentRegistry()
    agents.add(Agent(name="bench", toolkits=(Toolkit("bench", [lookup]),), system_prompt=SYSTEM))
    return Runtime(settings, agents=agents)


def _check_nexus(rt: Any, session_id: str, scenario: str) -> None:
    *_, answered, last = rt.journal.events(session_id)
    if last.kind != "session.completed":
        raise BenchError(f"{scenario}: session ended with {last.kind}: {last.payload}")
    # Older journals kept the answer in session.completed; it is stored once now,
    # in the llm.response just before.
    answer = last.payload.get("answer") or answered.payload.get("message", {}).get("content")
    _check(answer, scenario)


@asynccontextmanager
async def durable_runs(rt: Any, scenario: str) -> AsyncIterator[RunOne]:
    """`run_one` on a runtime's DBOS dispatcher: create, submit, wait, check once;
    the runtime is closed at the end."""
    from nexus.runtime.dispatch import Dispatcher
    from nexus.types import SessionStatus

    try:
        async with Dispatcher(rt) as dispatcher:
            checked = False

            async def run_one(i: int) -> None:
                nonlocal checked
                session_id = rt.create_session(GOAL, agent="bench")
                await dispatcher.submit(session_id)
                status = await dispatcher.wait(session_id)
                if status is not SessionStatus.COMPLETED or not checked:
                    _check_nexus(rt, session_id, scenario)
                    checked = True

            yield run_one
    finally:
        await rt.aclose()


@asynccontextmanager
async def nexus_durable(url: str, tmp: Path, inflight: int) -> AsyncIterator[RunOne]:
    """(b) NEXUS as deployed: journal per step, one DBOS workflow per session."""
    # Sessions beyond the dispatcher's capacity wait for DBOS's queue poll; keep
    # every in-flight session in the direct-start path the brief measures.
    rt = _nexus_runtime(url, tmp / "nexus-durable", max(64, inflight))
    async with durable_runs(rt, "b") as run_one:
        yield run_one


@asynccontextmanager
async def nexus_inline(url: str, tmp: Path, inflight: int) -> AsyncIterator[RunOne]:
    """(b-inline) NEXUS's journal without DBOS: `Runtime.run` in the calling task."""
    from nexus.types import SessionStatus

    rt = _nexus_runtime(url, tmp / "nexus-inline", max(64, inflight))
    try:
        checked = False

        async def run_one(i: int) -> None:
            nonlocal checked
            session_id = rt.create_session(GOAL, agent="bench")
            status = await rt.run(session_id)
            if status is not SessionStatus.COMPLETED or not checked:
                _check_nexus(rt, session_id, "b-inline")
                checked = True

        yield run_one
    finally:
        await rt.aclose()


def _langgraph_agent(url: str, checkpointer: Any) -> Any:
    from langchain_core.tools import tool as lc_tool
    from langchain_openai import ChatOpenAI
    from langgraph.prebuilt import create_react_agent

    @lc_tool
    async def lookup(key: str) -> str:
        """Look up the value stored under a key."""
        return await _lookup(key)

    llm = ChatOpenAI(base_url=url, api_key="x", model="m")  # type: ignore[arg-type]
    with warnings.catch_warnings():
        # Deprecated in LangGraph 1.x for langchain.agents.create_agent, which needs
        # the full `langchain` package; the prebuilt is what LangGraph itself ships.
        warnings.simplefilter("ignore")
        return create_react_agent(llm, [lookup], prompt=SYSTEM, checkpointer=checkpointer)


def _langgraph_run(graph: Any, scenario: str) -> RunOne:
    async def run_one(i: int) -> None:
        out = await graph.ainvoke(
            {"messages": [{"role": "user", "content": GOAL}]},
            {"configurable": {"thread_id": f"run-{i}"}},
        )
        _check(out["messages"][-1].content, scenario)

    return run_one


@asynccontextmanager
async def langgraph_sqlite(url: str, tmp: Path, inflight: int) -> AsyncIterator[RunOne]:
    """(c) LangGraph ReAct agent, checkpointed to SQLite after every super-step."""
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    async with AsyncSqliteSaver.from_conn_string(str(tmp / "langgraph.sqlite")) as saver:
        yield _langgraph_run(_langgraph_agent(url, saver), "c")


@asynccontextmanager
async def langgraph_memoryless(url: str, tmp: Path, inflight: int) -> AsyncIterator[RunOne]:
    """(c-mem) LangGraph ReAct agent without a checkpointer."""
    yield _langgraph_run(_langgraph_agent(url, None), "c-mem")


@asynccontextmanager
async def _openai_agent(url: str) -> AsyncIterator[Any]:
    from agents import Agent, OpenAIChatCompletionsModel, function_tool, set_tracing_disabled
    from openai import AsyncOpenAI

    set_tracing_disabled(True)  # the default exporter would post traces to api.openai.com

    @function_tool
    async def lookup(key: str) -> str:
        """Look up the value stored under a key."""
        return await _lookup(key)

    client = AsyncOpenAI(base_url=url, api_key="x")
    model = OpenAIChatCompletionsModel(model="m", openai_client=client)
    try:
        yield Agent(name="bench", instructions=SYSTEM, tools=[lookup], model=model)
    finally:
        await client.close()


@asynccontextmanager
async def agents_sqlite(url: str, tmp: Path, inflight: int) -> AsyncIterator[RunOne]:
    """(d) OpenAI Agents SDK with one SQLiteSession per run on one file."""
    from agents import Runner, SQLiteSession

    db_path = tmp / "agents.sqlite"
    async with _openai_agent(url) as agent:

        async def run_one(i: int) -> None:
            session = SQLiteSession(f"run-{i}", db_path)
            try:
                result = await Runner.run(agent, GOAL, session=session)
            finally:
                session.close()
            _check(result.final_output, "d")

        yield run_one


@asynccontextmanager
async def agents_memoryless(url: str, tmp: Path, inflight: int) -> AsyncIterator[RunOne]:
    """(d-mem) OpenAI Agents SDK without a session."""
    from agents import Runner

    async with _openai_agent(url) as agent:

        async def run_one(i: int) -> None:
            result = await Runner.run(agent, GOAL)
            _check(result.final_output, "d-mem")

        yield run_one


LANGGRAPH = ("langgraph.prebuilt", "langchain_openai")
AGENTS = ("agents", "openai")
SCENARIOS = {
    s.key: s
    for s in (
        Scenario("a", "(a) baseline: aiohttp loop", False, baseline),
        Scenario("b-inline", "(b') NEXUS journal, no DBOS", True, nexus_inline, ("nexus.runtime",)),
        Scenario("b", "(b) NEXUS durable", True, nexus_durable, ("nexus.runtime", "dbos")),
        Scenario(
            "c",
            "(c) LangGraph + SqliteSaver",
            True,
            langgraph_sqlite,
            (*LANGGRAPH, "langgraph.checkpoint.sqlite.aio"),
            "langgraph",
        ),
        Scenario(
            "c-mem", "(c0) LangGraph, no ckpt", False, langgraph_memoryless, LANGGRAPH, "langgraph"
        ),
        Scenario(
            "d", "(d) Agents SDK + SQLiteSession", True, agents_sqlite, AGENTS, "openai-agents"
        ),
        Scenario(
            "d-mem",
            "(d0) Agents SDK, no session",
            False,
            agents_memoryless,
            AGENTS,
            "openai-agents",
        ),
    )
}
PEER_KEYS = ("c", "c-mem", "d", "d-mem")
DURABLE_PEERS = ("c", "d")
