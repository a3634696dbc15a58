"""The session page's span waterfall in-process: one row per span of the journal's
trace, in tree order, each bar placed on the session's time axis in SVG attributes
(no inline style), failures and retries marked, open spans while the session runs,
and the panel re-rendered by the live fragment."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest

from nexus.config import load_settings
from nexus.observe.spans import build_trace
from nexus.runtime.providers import ScriptedProvider
from nexus.runtime.runtime import Runtime
from nexus.types import SessionStatus
from tests.observe.tracing import agents, call
from tests.server.test_dashboard import Browser, open_browser
from tests.waiting import until

ROW = re.compile(
    r'<div class="wf-row wf-(?P<op>\w+) wf-s-(?P<status>\w+)(?P<open> wf-open)?" role="row" '
    r'data-span="(?P<id>\w+)">.*?<span class="wf-label wf-d(?P<depth>\d)".*?'
    r'<rect class="wf-bar" x="(?P<x>[\d.]+)" y="1.5" width="(?P<w>[\d.]+)".*?'
    r'<span class="wf-dur mono" role="cell">(?P<dur>[^<]+)</span>',
    re.S,
)


@pytest.fixture
async def signed_in() -> AsyncIterator[Browser]:
    """The dashboard without workers (sessions run by a runtime of the test), signed in."""
    async for browser in open_browser(workers=False):
        await browser.login()
        yield browser


def rows(page: str) -> list[dict[str, str]]:
    panel = page[page.index('id="panel-waterfall"') :]
    return [m.groupdict() for m in ROW.finditer(panel)]


async def test_the_waterfall_shows_every_span_on_the_session_s_time_axis(
    signed_in: Browser,
) -> None:
    """A session with a failing tool: rows in the tree's order (root, step, its LLM
    call and tools, the next step...), indented by depth, the root's bar the whole
    axis, every other bar inside its parent's, the failure in red with its reason."""
    prov = ScriptedProvider(
        [{"tool_calls": [call("echo", text="a"), call("explode", reason="no disk")]}, {}],
        cost_per_call=0.004,
    )
    worker = Runtime(load_settings(), agents=agents(), provider=prov)
    sid = worker.create_session("two tools", agent="t")
    assert await worker.run(sid) is SessionStatus.COMPLETED
    page = (await signed_in.client.get(f"/sessions/{sid}")).text
    trace = build_trace(worker.journal.events(sid))
    got = rows(page)
    assert [(r["id"], r["op"], r["status"], r["depth"]) for r in got] == [
        (s.span_id, s.operation, s.status, str(d))
        for s, d in [
            (trace.root, 0),
            *[(x, 1 if x.operation == "step" else 2) for x in list(trace.spans())[1:]],
        ]
    ]
    assert (got[0]["x"], got[0]["w"]) == ("0.0", "100.0")
    spans = {s.span_id: s for s in trace.spans()}
    for r in got[1:]:
        span = spans[r["id"]]
        parent = next(g for g in got if g["id"] == span.parent_id)
        assert float(parent["x"]) <= float(r["x"]) <= float(parent["x"]) + float(parent["w"])
        assert float(r["w"]) > 0
    panel = page[page.index('id="panel-waterfall"') :]
    assert "ToolExecutionError: explode raised RuntimeError: no disk" in panel
    assert "$0.008" in panel  # the root's cost: two calls
    # Full width above the timeline, not in the side column.
    assert page.index('id="panel-waterfall"') < page.index("Timeline</h2>")
    assert page.index('id="panel-waterfall"') < page.index('<aside class="panels side">')
    await worker.aclose()


async def test_a_running_session_has_open_bars_and_the_fragment_renders_the_panel(
    signed_in: Browser,
) -> None:
    """While a tool runs, the root, its step and the tool are open rows (amber,
    `open`); the live fragment carries the same panel."""
    prov = ScriptedProvider([{"tool_calls": [call("block", tag="x")]}])
    worker = Runtime(load_settings(), agents=agents(), provider=prov)
    sid = worker.create_session("block", agent="t")
    task = asyncio.create_task(worker.run(sid))
    await until(
        lambda: [e.kind for e in worker.journal.events(sid)][-1:] == ["tool.call"], "tool runs"
    )
    page = (await signed_in.client.get(f"/sessions/{sid}")).text
    assert [(r["op"], r["status"], bool(r["open"]), r["dur"]) for r in rows(page)] == [
        ("invoke_agent", "unset", True, "open"),
        ("step", "unset", True, "open"),
        ("chat", "ok", False, rows(page)[2]["dur"]),
        ("execute_tool", "unset", True, "open"),
    ]
    frag = (await signed_in.client.get(f"/fragments/sessions/{sid}")).json()
    assert "wf-open" in frag["replace"]["panel:waterfall"]
    await worker.control.post(sid, "kill", by="user:test", reason="done looking")
    assert await task is SessionStatus.KILLED
    page = (await signed_in.client.get(f"/sessions/{sid}")).text
    assert [(r["op"], r["status"]) for r in rows(page)] == [
        ("invoke_agent", "error"),
        ("step", "error"),
        ("chat", "ok"),
        ("execute_tool", "error"),
    ]
    assert 'class="wf-mark wf-mark-session-killed"' in page
    await worker.aclose()
