"""`nexus costs` and `nexus traces tools`: the journal's rollup as tables and JSON,
the same locally and through a server, with clear errors for bad options."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from nexus.cli.observe import parse_when
from nexus.config import load_settings
from nexus.runtime.agents import Agent, AgentRegistry
from nexus.runtime.providers import ScriptedProvider
from nexus.runtime.runtime import Runtime
from nexus.runtime.tools import Toolkit, tool
from nexus.types import SessionStatus
from tests.cli.test_cli import nexus


@tool(effect="read")
def fetch(url: str) -> str:
    """Fetch a page."""
    if "bad" in url:
        raise ConnectionError("refused")
    return "page"


KIT = Toolkit("web", [fetch])


def run_sessions() -> None:
    agents = AgentRegistry()
    agents.add(Agent(name="crawler", toolkits=(KIT,)))
    agents.add(Agent(name="writer", toolkits=(KIT,)))
    script = [
        {"tool_calls": [{"name": "fetch", "arguments": {"url": "https://a"}}]},
        {"tool_calls": [{"name": "fetch", "arguments": {"url": "https://bad"}}]},
        {"content": "done"},
    ]
    rt = Runtime(
        load_settings(),
        agents=agents,
        provider=ScriptedProvider(script, cost_per_call=0.125, tokens=(40, 10)),
    )

    async def go() -> None:
        for agent in ("crawler", "crawler", "writer"):
            sid = rt.create_session("crawl", agent=agent)
            assert await rt.run(sid) is SessionStatus.COMPLETED
        await rt.aclose()

    asyncio.run(go())


def as_json(*args: str) -> Any:
    result = nexus(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_costs_by_agent_as_json_and_as_a_table() -> None:
    """Two crawler sessions and one writer session at $0.125 a call, 3 calls each:
    $0.75 and $0.375, the total $1.125; the table shows the same figures."""
    run_sessions()
    report = as_json("costs", "--by", "agent")
    assert [(i["key"], i["requests"], i["cost_usd"]) for i in report["items"]] == [
        ("crawler", 6, 0.75),
        ("writer", 3, 0.375),
    ]
    assert report["total"]["cost_usd"] == 1.125
    table = nexus("costs")
    assert table.exit_code == 0, table.output
    lines = [line.split() for line in table.stdout.splitlines() if line.strip()]
    assert ["crawler", "6", "0", "0", "240", "60", "$0.750000", "-"] in lines
    assert ["total", "9", "0", "0", "360", "90", "$1.12", "-"] in lines
    sessions = as_json("costs", "--by", "session", "--agent", "writer")
    assert [(s["agent"], s["cost_usd"]) for s in sessions["items"]] == [("writer", 0.375)]
    day = nexus("costs", "--by", "day")
    assert day.exit_code == 0 and "total" in day.stdout


def test_tool_statistics_rank_the_failure_reasons() -> None:
    """`fetch` ran 6 times and failed 3: the table shows 50.0% and the reason."""
    run_sessions()
    (stats,) = as_json("traces", "tools")["items"]
    assert (stats["tool"], stats["calls"], stats["errors"]) == ("fetch", 6, 3)
    out = nexus("traces", "tools").stdout
    assert "50.0%" in out
    assert "fetch: 3x ToolExecutionError: fetch raised ConnectionError: refused" in out


def test_the_same_reports_come_through_a_server() -> None:
    """`--server` gives the very documents the local reads give."""
    from tests.server.test_live import LiveServer

    run_sessions()
    with LiveServer(workers=False) as live:
        for args in (
            ("costs", "--by", "model"),
            ("costs", "--by", "hour"),
            ("traces", "tools", "--since", "0"),
        ):
            assert as_json(*args, "--server", live.url) == as_json(*args)


def test_bad_options_exit_2_naming_them() -> None:
    """An unknown grouping or an unreadable time is one line and exit 2."""
    bad_by = nexus("costs", "--by", "colour")
    assert bad_by.exit_code == 2 and "--by takes agent, model" in bad_by.stderr
    bad_time = nexus("costs", "--since", "yesterday-ish")
    assert bad_time.exit_code == 2 and "cannot read the time 'yesterday-ish'" in bad_time.stderr


def test_times_read_as_durations_dates_or_seconds() -> None:
    """`24h` is a day before now; a date is UTC midnight; seconds pass through."""
    assert parse_when("24h", now=100_000.0) == 100_000.0 - 86_400
    assert parse_when("30m", now=5000.0) == 3200.0
    assert parse_when("2026-12-01") == 1_796_083_200.0
    assert parse_when("1700000000") == 1_700_000_000.0
    assert parse_when(None) is None
