"""The journal's rollup: incremental aggregates that equal a fold of the whole
journal, exact money, each event counted once across processes racing to catch up,
bounded label sets, and the per-tool statistics. Runs on both stores."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

import pytest

from nexus import events as ev
from nexus.config import load_settings
from nexus.observe import rollup as rollup_module
from nexus.observe.rollup import NANO, Rollup, bucket_of, hour_of, percentile
from nexus.runtime.agents import Agent, AgentRegistry
from nexus.runtime.providers import ScriptedProvider
from nexus.runtime.runtime import Runtime
from nexus.runtime.tools import Toolkit, tool
from nexus.storage.memory import MemoryStore
from nexus.types import ChatRequest, ChatResponse, Event, SessionStatus, Usage


@tool(effect="read")
def echo(text: str) -> str:
    """Echo a text back."""
    return f"echo: {text}"


@tool(effect="read")
def explode(reason: str) -> str:
    """Always raise."""
    raise RuntimeError(reason)


KIT = Toolkit("test", [echo, explode])


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


def runtime(provider: Any) -> Runtime:
    agents = AgentRegistry()
    agents.add(Agent(name="alpha", toolkits=(KIT,)))
    agents.add(Agent(name="beta", toolkits=(KIT,)))
    return Runtime(load_settings(), agents=agents, provider=provider)


SCRIPT = [
    {"tool_calls": [call("echo", text="a"), call("explode", reason="disk full")]},
    {"tool_calls": [call("explode", reason="disk full"), call("nope")]},
    {"content": "done"},
]


async def run_sessions(rt: Runtime, n: int) -> list[str]:
    ids = []
    for i in range(n):
        sid = rt.create_session(f"goal {i}", agent="alpha" if i % 3 else "beta")
        assert await rt.run(sid) is SessionStatus.COMPLETED
        ids.append(sid)
    return ids


def journal(rt: Runtime) -> list[Event]:
    return [e for row in rt.sessions() for e in rt.journal.events(row.id)]


def truth_by_agent(rt: Runtime) -> dict[str, dict[str, int]]:
    """The same figures, folded straight from every event of the journal."""
    agents = {row.id: row.agent for row in rt.sessions()}
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for event in journal(rt):
        if event.kind in (ev.LLM_RESPONSE, ev.LLM_FAILED):
            line = out[agents[event.session_id]]
            line["requests"] += 1
            line["failed"] += event.kind == ev.LLM_FAILED
            line["cost_nusd"] += round(event.cost_usd * NANO)
            line["tokens_in"] += event.tokens_in
            line["tokens_out"] += event.tokens_out
    return {k: dict(v) for k, v in out.items()}


def by_agent(report: Any) -> dict[str, dict[str, int]]:
    keys = ("requests", "failed", "cost_nusd", "tokens_in", "tokens_out")
    return {i["key"]: {k: i[k] for k in keys} for i in report.items}


async def test_the_rollup_equals_a_fold_of_the_whole_journal_and_money_is_exact() -> None:
    """After sessions of two agents (tool failures, an unknown tool), the costs by agent
    are exactly the journal's sums; costs are integer nano-dollars, so $0.1 + $0.2 is
    $0.3 to the last digit; the tool statistics count every result."""
    rt = runtime(ScriptedProvider(SCRIPT, cost_per_call=0.1, tokens=(120, 30)))
    try:
        await run_sessions(rt, 6)
        rollup = Rollup(rt.store)
        try:
            assert rollup.catch_up() == rt.store.latest_event_id()
            assert rollup.lag() == 0
            report = rollup.costs("agent")
            assert by_agent(report) == truth_by_agent(rt)
            assert report.total == {
                "key": None, "provider": None, "model": None,
                "requests": 18, "failed": 0, "lost": 0,
                "cost_nusd": 18 * 100_000_000, "estimated_nusd": 0,
                "tokens_in": 18 * 120, "tokens_out": 18 * 30,
                "cost_usd": 1.8, "estimated_usd": 0.0,
            }  # fmt: skip
            assert [i["key"] for i in report.items] == ["alpha", "beta"]  # by cost
            (model,) = rollup.costs("model").items
            assert (model["key"], model["provider"], model["requests"]) == (
                "scripted/scripted-1",
                "scripted",
                18,
            )
            (day,) = rollup.costs("day").items
            assert day["key"] == hour_of(journal(rt)[0].ts) // 86400 * 86400
            stats = {s["tool"]: s for s in rollup.tool_stats()}
            assert {t: (s["calls"], s["ok"], s["errors"]) for t, s in stats.items()} == {
                "explode": (12, 0, 12),
                "echo": (6, 6, 0),
                "nope": (6, 0, 6),
            }
            assert stats["explode"]["success_rate"] == 0.0
            assert stats["explode"]["failures"] == [
                {
                    "error_type": "ToolExecutionError",
                    "reason": "explode raised RuntimeError: disk full",
                    "count": 12,
                }
            ]
            assert stats["nope"]["failures"][0]["error_type"] == "UnknownToolError"
        finally:
            rollup.close()
    finally:
        await rt.aclose()


async def test_catching_up_is_incremental_and_a_rebuild_gives_the_same_figures() -> None:
    """A second catch-up folds only what was committed since; dropping everything and
    folding the journal again gives identical reports."""
    rt = runtime(ScriptedProvider(SCRIPT, cost_per_call=0.0123, tokens=(7, 3)))
    try:
        await run_sessions(rt, 2)
        rollup = Rollup(rt.store)
        try:
            first = rollup.catch_up()
            assert first == rt.store.latest_event_id()
            await run_sessions(rt, 3)
            assert rollup.lag() == rt.store.latest_event_id() - first
            assert rollup.catch_up() == rt.store.latest_event_id() - first
            assert rollup.catch_up() == 0
            before = (rollup.costs("agent").to_dict(), rollup.tool_stats(), rollup.series())
            assert rollup.rebuild() == rt.store.latest_event_id()
            assert (rollup.costs("agent").to_dict(), rollup.tool_stats(), rollup.series()) == before
            assert by_agent(rollup.costs("agent")) == truth_by_agent(rt)
        finally:
            rollup.close()
    finally:
        await rt.aclose()


async def test_processes_racing_to_catch_up_count_each_event_exactly_once() -> None:
    """Four rollups on their own connections (as four servers would be) catch up at
    once, in small batches: the totals are the journal's, never more."""
    rt = runtime(ScriptedProvider(SCRIPT, cost_per_call=0.01, tokens=(1, 1)))
    try:
        await run_sessions(rt, 8)
        rollups = [Rollup(rt.store) for _ in range(4)]
        try:
            folded = [0] * 4

            def work(i: int) -> None:
                while n := rollups[i].catch_up(max_events=7):
                    folded[i] += n

            threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sum(folded) == rt.store.latest_event_id()
            for r in rollups:
                assert by_agent(r.costs("agent")) == truth_by_agent(rt)
        finally:
            for r in rollups:
                r.close()
    finally:
        await rt.aclose()


async def test_label_values_from_outside_are_capped_under_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A peer that reports a new model name on every answer cannot grow the label set:
    past the cap, new names are counted as `other` (and still counted)."""
    monkeypatch.setattr(rollup_module, "MAX_LABEL_VALUES", 3)
    n = iter(range(100))

    def answer(request: ChatRequest) -> ChatResponse:
        return ChatResponse(
            content="ok", usage=Usage(1, 1), model=f"m-{next(n)}", provider="p", cost_usd=0.5
        )

    rt = runtime(ScriptedProvider([answer]))
    try:
        await run_sessions(rt, 6)
        rollup = Rollup(rt.store)
        try:
            rollup.catch_up()
            models = {i["model"]: i["requests"] for i in rollup.costs("model").items}
            assert models == {"m-0": 1, "m-1": 1, "m-2": 1, "other": 3}
            assert rollup.costs("model").total["cost_usd"] == 3.0
        finally:
            rollup.close()
    finally:
        await rt.aclose()


async def test_the_in_memory_store_keeps_its_rollup_in_a_private_database() -> None:
    """The memory store has no database: the rollup keeps the same tables in a
    private one and answers the same."""
    agents = AgentRegistry()
    agents.add(Agent(name="alpha", toolkits=(KIT,)))
    rt = Runtime(
        load_settings(),
        store=MemoryStore(),
        agents=agents,
        provider=ScriptedProvider(SCRIPT, cost_per_call=0.25),
    )
    try:
        sid = rt.create_session("goal", agent="alpha")
        assert await rt.run(sid) is SessionStatus.COMPLETED
        rollup = Rollup(rt.store)
        assert rollup.catch_up() == rt.store.latest_event_id()
        assert rollup.costs("agent").total["cost_usd"] == 0.75
        rollup.close()
    finally:
        await rt.aclose()


def test_percentiles_interpolate_inside_the_histogram_buckets() -> None:
    """p50 of ten calls in the 10-25 ms bucket is its middle; the top bucket is
    unbounded and answers its lower edge; an empty histogram has none."""
    counts = [0] * 17
    counts[bucket_of(20.0)] = 10
    assert bucket_of(20.0) == 4
    assert percentile(counts, 0.5) == 17.5
    assert percentile(counts, 1.0) == 25.0
    top = [0] * 16 + [3]
    assert percentile(top, 0.99) == 120_000.0
    assert percentile([0] * 17, 0.5) is None
