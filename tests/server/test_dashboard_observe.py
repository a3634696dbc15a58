"""The dashboard's observability views: the overview page (totals, charts as inline
SVG, cost breakdown and tool statistics from the rollup, for a time range and a
grouping), and the session page's Outcome and Conversation panels, for sessions a
scripted Runtime ran on the same store; in-process, and once in Chromium."""

from __future__ import annotations

import html
import itertools
import json
import re
import time
from collections import defaultdict
from typing import Any

import pytest

from nexus import events as ev
from nexus.config import load_settings
from nexus.errors import ProviderUnavailable, SessionSuspended
from nexus.observe.rollup import hour_of
from nexus.observe.transcript import LONG_CHARS, transcript
from nexus.runtime.agents import Agent, AgentRegistry
from nexus.runtime.providers import ScriptedProvider
from nexus.runtime.runtime import Runtime
from nexus.runtime.tools import Toolkit, tool
from nexus.server.dashboard import charts
from nexus.types import Event, SessionStatus
from tests.server.test_dashboard import Browser, open_browser, text_of
from tests.server.test_e2e import DESKTOP, PHONE, Server, Tab, browser, shoot, sign_in  # noqa: F401
from tests.server.test_observe_api import SCRIPT

DAY = 86400
HOSTILE = "<script>alert('pwned')</script>"
LONG = "\n".join(f"line {i}: {'x' * 40}" for i in range(40))


@tool(effect="read")
def lookup(key: str) -> str:
    """Look a key up."""
    if key == "missing":
        raise KeyError(key)
    if key == "long":
        return LONG
    if key == "hostile":
        return f"found {HOSTILE}"
    return f"value of {key}"


KIT = Toolkit("kv", [lookup])


def agents() -> AgentRegistry:
    registry = AgentRegistry()
    registry.add(Agent(name="kv", toolkits=(KIT,)))
    registry.add(Agent(name="other", toolkits=(KIT,)))
    return registry


async def run_fleet() -> list[str]:
    """Four sessions that complete (kv, other, kv, other: 3 LLM calls at $0.002 and
    (100, 20) tokens each, `lookup` called twice, failing once) and one of `other`
    that fails (its provider is down: one failed LLM call, no cost)."""
    ok = Runtime(
        load_settings(),
        agents=agents(),
        provider=ScriptedProvider(SCRIPT, cost_per_call=0.002, tokens=(100, 20)),
    )
    down = Runtime(
        load_settings(),
        agents=agents(),
        provider=ScriptedProvider([ProviderUnavailable("the provider is down")]),
    )
    ids = []
    try:
        for i in range(4):
            sid = ok.create_session(f"look up {i}", agent="kv" if i % 2 == 0 else "other")
            assert await ok.run(sid) is SessionStatus.COMPLETED
            ids.append(sid)
        sid = down.create_session("look up, failing", agent="other")
        assert await down.run(sid) is SessionStatus.FAILED
        ids.append(sid)
    finally:
        await ok.aclose()
        await down.aclose()
    return ids


def journal(rt: Runtime) -> list[Event]:
    return [e for row in rt.sessions() for e in rt.journal.events(row.id)]


def truth(rt: Runtime, bucket: Any, by: str = "agent") -> dict[str, dict[tuple[str, int], float]]:
    """Per metric, (group, bucket) -> value, folded straight from every event."""
    agent = {row.id: row.agent for row in rt.sessions()}
    out: dict[str, dict[tuple[str, int], float]] = defaultdict(lambda: defaultdict(float))
    for e in journal(rt):
        at = bucket(e.ts)
        if e.kind == ev.LLM_RESPONSE:
            key = agent[e.session_id] if by == "agent" else str(e.payload[by])
            out["cost"][key, at] += e.cost_usd
            out["tokens"][key, at] += e.tokens_in + e.tokens_out
        if e.kind in ev.TERMINAL_KINDS:
            key = agent[e.session_id] if by == "agent" else "all"
            out["sessions"][key, at] += 1
            out["failed"][key, at] += e.kind != ev.SESSION_COMPLETED
    return {k: {g: round(v, 9) for g, v in d.items()} for k, d in out.items()}


# -- reading the page -----------------------------------------------------------------


def figures(page: str) -> dict[str, str]:
    return dict(re.findall(r'data-figure="([a-z_-]+)" data-value="([^"]*)"', page))


def chart(page: str, chart_id: str) -> dict[str, Any]:
    """One chart's SVG attributes and marks: (key, bucket) -> value."""
    found = re.search(rf'<figure class="chart[^"]*" id="{chart_id}">(.*?)</figure>', page, re.S)
    assert found, f"no chart {chart_id}"
    body = found.group(1)
    tag = re.search(r'<svg class="chart-svg"[^>]*>', body)
    assert tag, chart_id
    svg = dict(re.findall(r'data-(metric|buckets|total)="([^"]*)"', tag[0]))
    marks = {
        (html.unescape(k), int(ts)): float(v)
        for k, ts, v in re.findall(
            r'<(?:rect|circle) class="(?:bar|point)[^"]*"[^>]*data-key="([^"]*)" '
            r'data-ts="(\d+)" data-value="([^"]*)"',
            body,
        )
    }
    ticks = [int(t) for t in re.findall(r'<text class="tick"[^>]*data-ts="(\d+)"', body)]
    legend = re.findall(r'<li data-key="([^"]*)">', body)
    return {"svg": svg, "marks": marks, "ticks": ticks, "legend": legend, "html": body}


def table_rows(page: str, section: str) -> list[tuple[str, ...]]:
    """(data-key, other data- values...) of each row of the overview's tables."""
    found = re.search(rf'data-fragment="overview-{section}">(.*?)</table>', page, re.S)
    assert found, section
    row = r'<tr data-key="([^"]*)" data-\w+="([^"]*)"(?: data-\w+="([^"]*)")?'
    return re.findall(row, found[1])


@pytest.fixture
async def web() -> Any:
    async for b in open_browser(workers=False):
        await b.login()
        yield b


async def get(web: Browser, url: str) -> str:
    resp = await web.client.get(url)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-security-policy"].startswith("default-src 'self'")
    return resp.text


# -- the overview -----------------------------------------------------------------------


async def test_the_overview_needs_a_login() -> None:
    """Signed out, the page sends you to the login (keeping the query) and its
    fragment answers 401."""
    async for web in open_browser(workers=False):
        page = await web.client.get("/overview?range=24h&by=model")
        assert (page.status_code, page.headers["location"]) == (
            303,
            "/login?next=/overview%3Frange%3D24h%26by%3Dmodel",
        )
        frag = await web.client.get("/fragments/overview")
        assert frag.status_code == 401
        assert json.loads(frag.text)["status"] == 401


async def test_the_overview_shows_the_journals_figures_by_agent_over_24_hours(
    web: Browser,
) -> None:
    """24 hourly buckets by agent: the totals, every bar and point of the four charts
    equal to a fold of the journal, the cost breakdown and the tool statistics."""
    await run_fleet()
    page = await get(web, "/overview?range=24h&by=agent")
    assert 'aria-current="page">Overview' in page
    assert figures(page) == {
        "cost": "0.024",
        "tokens": "1440",
        "requests": "13",
        "sessions": "5",
        "failure_rate": "0.2",
    }
    visible = text_of(page)
    assert "Cost $0.024 Tokens 1,440 1,200 in · 240 out" in visible
    assert "LLM requests 13 1 failed · 0 lost" in visible
    assert "Sessions ended 5 Failure rate 20% 1 of 5" in visible
    now_hour = hour_of(time.time())
    starts = list(range(now_hour - 23 * 3600, now_hour + 3600, 3600))
    want = truth(web.rt, hour_of)
    cost = chart(page, "chart-cost")
    assert cost["svg"] == {"metric": "cost", "buckets": "24", "total": "0.024"}
    assert cost["marks"] == want["cost"]
    assert cost["legend"] == ["kv", "other"]  # ranked by cost, then name
    assert cost["ticks"] == starts[::4]  # at most 7 labels: every 4th hour
    assert chart(page, "chart-tokens")["marks"] == want["tokens"]
    assert chart(page, "chart-sessions")["marks"] == want["sessions"]
    failures = chart(page, "chart-failures")
    assert failures["svg"]["total"] == "0.2"
    assert failures["marks"] == {
        g: round(want["failed"].get(g, 0) / n, 6) for g, n in want["sessions"].items()
    }
    assert 'class="bar series-0"' in cost["html"] and 'class="bar series-1"' in cost["html"]
    assert re.search(r'aria-labelledby="chart-cost-title chart-cost-desc"', cost["html"])
    assert "Cost per hour by agent, 24 hours from" in cost["html"]
    assert "kv $0.012; other $0.012. Total $0.024." in cost["html"]
    assert table_rows(page, "costs") == [("kv", "0.012", ""), ("other", "0.012", ""),
                                         ("total", "0.024", "")]  # fmt: skip
    assert table_rows(page, "tools") == [("lookup", "8", "0.5")]
    tools = text_of(re.search(r'data-fragment="overview-tools">(.*?)</table>', page, re.S)[1])
    assert "lookup 8 50%" in tools
    assert "4\u00d7 ToolExecutionError lookup raised KeyError: 'missing'" in tools


async def test_the_range_picker_changes_buckets_and_figures(web: Browser) -> None:
    """7 and 30 days: daily buckets ending today holding the day's figures; a custom
    range of today: hourly, the same figures as 24 hours; a custom range in 2020: no
    data at all; a bad range or day is named beside the form and the default shown."""
    await run_fleet()
    today = int(time.time() // DAY) * DAY
    for name, days in (("7d", 7), ("30d", 30)):
        page = await get(web, f"/overview?range={name}")
        cost = chart(page, "chart-cost")
        assert cost["svg"] == {"metric": "cost", "buckets": str(days), "total": "0.024"}
        assert cost["marks"] == truth(web.rt, lambda ts: int(ts // DAY) * DAY)["cost"]
        assert {ts for _, ts in cost["marks"]} == {today}
        assert f'data-span="{name}" data-by="agent" data-window="day"' in page
    day = time.strftime("%Y-%m-%d", time.gmtime(today))
    custom = await get(web, f"/overview?range=custom&since={day}&until={day}")
    assert 'data-window="hour"' in custom and 'value="custom" selected' in custom
    assert chart(custom, "chart-cost")["svg"]["buckets"] == "24"
    assert figures(custom) == figures(await get(web, "/overview?range=24h"))
    old = await get(web, "/overview?range=custom&since=2020-01-01&until=2020-01-07")
    assert figures(old) == {"cost": "0.0", "tokens": "0", "requests": "0", "sessions": "0",
                            "failure_rate": ""}  # fmt: skip
    for chart_id in ("chart-cost", "chart-tokens", "chart-sessions", "chart-failures"):
        drawn = chart(old, chart_id)
        assert (drawn["svg"]["buckets"], drawn["marks"], drawn["legend"]) == ("7", {}, [])
        assert "No data in this range" in drawn["html"]
    assert table_rows(old, "costs") == [] and table_rows(old, "tools") == []
    assert "No LLM requests in this range." in old and "No tool calls in this range." in old
    bad = await get(web, "/overview?range=forever&by=colour")
    assert text_of(bad).count("range 'forever' is not one of 24h, 7d, 30d, custom") == 1
    assert "grouping 'colour' is not one of agent, model, provider" in text_of(bad)
    assert chart(bad, "chart-cost")["svg"]["buckets"] == "7"
    junk = await get(web, "/overview?range=custom&since=yesterday")
    assert "since 'yesterday' is not a day (YYYY-MM-DD, from 1970)" in text_of(junk)
    backwards = await get(web, "/overview?range=custom&since=2024-02-02&until=2024-02-01")
    assert "the range ends before it starts" in text_of(backwards)


async def test_the_grouping_picker_splits_by_model_and_provider(web: Browser) -> None:
    """By model or provider the cost and token bars are the model's or provider's;
    sessions belong to agents, so their charts count all sessions as one; the fragment
    renders the same parts as the page."""
    await run_fleet()
    for by, key, line in (
        ("model", "scripted-1", "scripted/scripted-1"),
        ("provider", "scripted", "scripted"),
    ):
        page = await get(web, f"/overview?range=24h&by={by}")
        assert chart(page, "chart-cost")["marks"] == truth(web.rt, hour_of, by)["cost"]
        assert chart(page, "chart-cost")["legend"] == [key]
        sessions = chart(page, "chart-sessions")
        assert sessions["marks"] == truth(web.rt, hour_of, by)["sessions"]
        assert sessions["legend"] == ["all"] and "(all sessions)" in sessions["html"]
        # The failed LLM call: no model answered it (no cost, one failed request).
        assert table_rows(page, "costs") == [
            (line, "0.024", ""), ("", "0.0", ""), ("total", "0.024", ""),
        ]  # fmt: skip
        assert f"Cost by {by}" in text_of(page)
        frag = (await web.client.get(f"/fragments/overview?range=24h&by={by}")).json()
        assert set(frag["replace"]) == {
            "overview-figures", "overview-charts", "overview-costs", "overview-tools",
            "overview-alerts",
        }  # fmt: skip
        assert (frag["state"]["range"], frag["state"]["by"]) == ("24h", by)
        assert chart(frag["replace"]["overview-charts"], "chart-cost") == chart(page, "chart-cost")
        assert figures(frag["replace"]["overview-figures"]) == figures(page)


def test_stacked_bars_fold_the_smallest_groups_into_other_and_scale_the_axis() -> None:
    """Eight groups over three hourly buckets: the six first in the palette keep their
    colour, the other two are summed as `other`; bars stack bottom-up in palette order;
    a value outside the range is left out; the axis rounds up to a round step."""
    starts = [7200, 10800, 14400]
    values = {f"g{i}": {7200: 1.0, 14400: float(i)} for i in range(8)}
    values["g0"][99_000] = 50.0  # outside the range
    colours = charts.palette([f"g{i}" for i in range(8)])
    assert colours == {f"g{i}": str(i) for i in range(6)}
    drawn = charts.stacked_bars(
        id="c", title="Calls", metric="calls", starts=starts, window="hour",
        values=values, colours=colours, fmt=lambda v: f"{v:g}", integer=True,
    )  # fmt: skip
    assert [(m.key, m.series, m.ts, m.value) for m in drawn.marks] == [
        ("g0", "0", 7200, 1.0),
        *[(f"g{i}", str(i), ts, v) for i in range(1, 6) for ts, v in ((7200, 1.0), (14400, i))],
        ("other", "other", 7200, 2.0), ("other", "other", 14400, 13.0),
    ]  # fmt: skip
    assert drawn.total == 36.0 and drawn.buckets == 3
    assert [t.label for t in drawn.y_ticks] == ["0", "10", "20", "30", "40"]  # the top stack is 28
    first = [m for m in drawn.marks if m.ts == 14400]
    bottom = drawn.plot[3]
    assert first[0].y + first[0].h == pytest.approx(bottom, abs=0.02)  # g1 on the axis
    for below, above in itertools.pairwise(first):
        assert above.y + above.h == pytest.approx(below.y, abs=0.02)  # stacked, no gaps
    assert [leg.key for leg in drawn.legend] == ["g0", "g1", "g2", "g3", "g4", "g5", "other"]
    assert charts.nice_step(0.0015, integer=False) == 0.002
    assert charts.nice_step(0.3, integer=True) == 1.0
    assert charts.nice_step(0, integer=False) == 0.25


def test_rate_lines_break_where_nothing_was_counted() -> None:
    """A line per group of failed/ended per bucket, broken over a bucket with no
    session; the total is the rate over the whole range."""
    drawn = charts.rate_lines(
        id="r", title="Failure rate", metric="failure_rate", starts=[0, 3600, 7200, 10800],
        window="hour", hits={"a": {0: 1, 10800: 2}}, of={"a": {0: 4, 3600: 2, 10800: 2}},
        colours={"a": "0"},
    )  # fmt: skip
    assert [(m.ts, m.value) for m in drawn.marks] == [(0, 0.25), (3600, 0.0), (10800, 1.0)]
    assert [len(p.points.split()) for p in drawn.paths] == [2]  # 10800 stands alone
    assert (drawn.total, drawn.total_text) == (0.375, "37.5%")
    assert drawn.marks[0].text == "a · 1970-01-01 00:00 UTC: 25% (1 of 4 sessions failed)"


# -- the session page ---------------------------------------------------------------------


async def test_the_outcome_panel_shows_the_session_and_its_agents_week(web: Browser) -> None:
    """A completed session: succeeded, its cost, steps and tokens; its agent's last 7
    days: sessions, success rate, cost and steps, per day as three small charts; the
    failed session's panel says failed, with the reason."""
    ids = await run_fleet()
    page = await get(web, f"/sessions/{ids[0]}")
    panel = re.search(r'id="panel-outcome">(.*?)</section>', page, re.S)[1]
    assert 'data-outcome="completed">Succeeded' in panel
    assert figures(panel) == {
        "session-cost": "0.006", "session-steps": "5", "session-tokens": "360",
    }  # fmt: skip
    assert re.search(r'data-agent-week data-sessions="2" data-cost="0.012" data-steps="10"', panel)
    assert "kv · last 7 days UTC 2 sessions 100% succeeded $0.012 10 steps" in text_of(panel)
    today = int(time.time() // DAY) * DAY
    day = truth(web.rt, lambda ts: int(ts // DAY) * DAY)
    cost = chart(panel, "agent-cost")
    assert cost["svg"] == {"metric": "cost", "buckets": "7", "total": "0.012"}
    assert cost["marks"] == {k: v for k, v in day["cost"].items() if k[0] == "kv"}
    assert chart(panel, "agent-success")["marks"] == {("kv", today): 1.0}
    assert chart(panel, "agent-steps")["marks"] == {("kv", today): 10.0}
    assert '<ul class="legend"' not in panel  # one agent: the heading names it
    failed = await get(web, f"/sessions/{ids[4]}")
    panel = re.search(r'id="panel-outcome">(.*?)</section>', failed, re.S)[1]
    assert 'data-outcome="failed">Failed' in panel and "the provider is down" in panel
    assert chart(panel, "agent-success")["marks"] == {("other", today): round(2 / 3, 6)}


async def run_conversation() -> str:
    """A session that pauses (a guard's decision), is resumed with an operator note,
    and whose tool results and answer hold markup, one result long."""
    script: list[Any] = [
        {"content": f"I will look {HOSTILE}", "tool_calls": [
            {"name": "lookup", "arguments": {"key": "hostile"}},
            {"name": "lookup", "arguments": {"key": "long"}},
        ]},
        SessionSuspended("a person should look", by="reviewer"),
        {"content": f"The answer is {HOSTILE}"},
    ]  # fmt: skip
    provider = ScriptedProvider(script, cost_per_call=0.001)
    rt = Runtime(load_settings(), agents=agents(), provider=provider)
    try:
        sid = rt.create_session(f"find <b>it</b> {HOSTILE}", agent="kv")
        assert await rt.run(sid) is SessionStatus.PAUSED
        provider.script[1] = {"tool_calls": [{"name": "lookup", "arguments": {"key": "missing"}}]}
        await rt.control.post(sid, "resume", by="alice", note=f"try {HOSTILE} the missing key")
        assert await rt.run(sid) is SessionStatus.COMPLETED
    finally:
        await rt.aclose()
    return sid


def entries(page: str) -> list[tuple[str, str, str]]:
    """(turn, role, visible text) of each transcript entry, in page order."""
    panel = re.search(r'id="panel-conversation">(.*?)</section>', page, re.S)
    assert panel
    found = re.findall(
        r'<li class="tx tx-\w+" data-turn="(\d+)" data-role="(\w+)"[^>]*>(.*?)</li>', panel[1], re.S
    )
    return [(turn, role, text_of(body)) for turn, role, body in found]


async def test_the_conversation_reads_every_turn_in_order_and_escapes_markup(
    web: Browser,
) -> None:
    """The transcript: instructions, the goal, each assistant turn with its calls'
    arguments and results or errors, the pause, the resume, the operator's note, the
    answer; in journal order. Markup in the goal, a tool result, the note and the
    model's answer stays text; the long result is folded behind its first line."""
    sid = await run_conversation()
    page = await get(web, f"/sessions/{sid}")
    assert "<script>" not in page and "<b>it</b>" not in page
    assert page.count("&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;") >= 4
    got = entries(page)
    assert [(turn, role) for turn, role, _ in got] == [
        ("1", "system"), ("2", "goal"), ("3", "assistant"), ("4", "status"),
        ("5", "status"), ("6", "note"), ("7", "assistant"), ("8", "assistant"),
    ]  # fmt: skip
    texts = [text for _, _, text in got]
    assert texts[0].startswith("Instructions You are a careful assistant")
    assert texts[1] == f"Goal find <b>it</b> {HOSTILE}"
    first = LONG.split("\n", 1)[0]
    assert texts[2] == (
        f"Assistant scripted-1 I will look {HOSTILE} "
        f'lookup (key="hostile") {_latency(texts[2], 0)} found {HOSTILE} '
        f'lookup (key="long") {_latency(texts[2], 1)} '
        f"Result · 40 lines, {len(LONG):,} characters {first} {LONG}"
    ).replace("\n", " ")
    assert texts[3:6] == [
        "Paused by reviewer a person should look",
        "Resumed",
        f"Note from alice try {HOSTILE} the missing key",
    ]
    assert texts[6] == (
        f'Assistant scripted-1 lookup (key="missing") {_latency(texts[6], 0)} '
        "ToolExecutionError lookup raised KeyError: 'missing'"
    )
    assert texts[7] == f"Answer scripted-1 The answer is {HOSTILE}"
    assert len(LONG) > LONG_CHARS
    assert re.search(r'<details class="tx-fold" id="tx-3-result"><summary>', page)
    assert not re.search(r'id="tx-2-result"', page)  # the short result is shown whole
    assert re.findall(r'data-step="(\d+)" data-tool="lookup" data-outcome="(\w+)"', page) == [
        ("2", "ok"), ("3", "ok"), ("5", "error"),
    ]  # fmt: skip
    frag = (await web.client.get(f"/fragments/sessions/{sid}")).json()
    live = frag["replace"]["panel:conversation"]
    assert entries(f'id="panel-conversation">{live}</section>') == got


def _latency(text: str, n: int) -> str:
    """The n-th call's latency as the transcript wrote it (a measured figure)."""
    return re.findall(r"\) ([\d.]+ ms|[\d.]+ s)", text)[n]


def test_the_transcript_of_a_refused_and_an_unanswered_call() -> None:
    """A call a guard refused reads as refused by it; a call with no result yet is
    pending; arguments that are not JSON are kept as the model wrote them."""

    def event(seq: int, kind: str, payload: dict[str, Any]) -> Event:
        return Event("s_1", seq, float(seq), kind, payload)

    calls = [
        {"id": "c1", "function": {"name": "rm", "arguments": '{"path": "/"}'}},
        {"id": "c2", "function": {"name": "ls", "arguments": "not json {"}},
    ]
    state = transcript([
        event(1, ev.SESSION_CREATED, {"goal": "tidy up", "agent": "a"}),
        event(2, ev.LLM_RESPONSE, {"step": 1, "model": "m",
                                   "message": {"role": "assistant", "tool_calls": calls}}),
        event(3, ev.TOOL_RESULT, {"step": 2, "call_id": "c1", "name": "rm", "attempt": 1,
                                  "error": "irreversible", "error_type": "ToolCallRefused",
                                  "by": "policy"}),
    ])  # fmt: skip
    assert [e.role for e in state.entries] == ["goal", "assistant"]
    refused, pending = state.entries[1].calls
    assert (refused.outcome, refused.by, refused.error, refused.attempts) == (
        "refused", "policy", "irreversible", 0,
    )  # fmt: skip
    assert (pending.outcome, pending.arguments.text, pending.inline) == (
        "pending", "not json {", None,
    )  # fmt: skip
    assert refused.inline == 'path="/"'
    assert not state.ended


# -- in a browser -------------------------------------------------------------------------


@pytest.mark.slow
def test_the_overview_and_session_views_in_chromium(browser: Any) -> None:  # noqa: F811
    """In Chromium: the overview draws its SVG charts (visible, sized), the grouping
    picker switches them to the model, a session run meanwhile updates the figures
    without a reload; the session page shows the conversation and the agent's week.
    On a phone the overview is no wider than the screen. No console error, no CSP
    violation. Screenshots: overview-desktop.png, session-views-desktop.png,
    overview-phone.png in test-artifacts/screenshots/."""
    with Server(workers=False) as server:
        ids = server.call(run_fleet)  # playwright holds this thread's loop
        context = browser.new_context(viewport=DESKTOP)
        tab = Tab(context, server.url)
        sign_in(tab, server.token)
        tab.goto("/overview?range=24h")
        page = tab.page
        bar = page.locator('#chart-cost rect.bar[data-key="kv"]')
        bar.wait_for()
        assert bar.is_visible()
        box = page.locator("#chart-cost svg").bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 100
        assert page.locator("#chart-failures circle.point").count() >= 1
        assert page.locator('[data-figure="sessions"]').get_attribute("data-value") == "5"
        page.select_option('select[name="by"]', "model")
        page.wait_for_url(re.compile(r"by=model"))
        page.locator('#chart-cost rect.bar[data-key="scripted-1"]').wait_for()
        page.locator(".live[data-state=live]").wait_for()
        tab.mark()
        server.call(run_conversation)
        page.locator('[data-figure="sessions"][data-value="6"]').wait_for()
        assert tab.still_marked()
        shoot(tab, "overview-desktop")
        tab.goto(f"/sessions/{ids[0]}")
        page.locator("#panel-conversation .tx-assistant").first.wait_for()
        assert page.locator("#agent-cost rect.bar").first.is_visible()
        assert page.locator("#panel-conversation .tx").count() == 5
        page.set_viewport_size({"width": 1280, "height": 2000})  # the whole side column
        shoot(tab, "session-views-desktop")
        assert tab.errors == []
        context.close()
        phone = browser.new_context(viewport=PHONE)
        ptab = Tab(phone, server.url)
        sign_in(ptab, server.token)
        ptab.goto("/overview?range=30d")
        ptab.page.locator("#chart-cost rect.bar").first.wait_for()
        # The tables scroll inside their box; the page itself is no wider than the phone.
        assert ptab.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        shoot(ptab, "overview-phone")
        assert ptab.errors == []
        phone.close()


async def test_the_overview_lists_the_alerts_of_the_range(web: Browser, peer: Any) -> None:
    """A session paused by its budget: its two alerts (80% crossed, the call refused)
    are listed on the overview, newest first, linked to the session, and the live
    fragment holds the same table."""
    from tests.observe.test_alerts import paused_by_budget

    sid = await paused_by_budget(peer)
    page = await get(web, "/overview?range=24h")
    found = re.search(r'data-fragment="overview-alerts">(.*?)</table>', page, re.S)
    assert found
    rows = re.findall(r'<tr data-kind="([^"]+)" data-session="([^"]+)">', found[1])
    assert rows == [("budget.exceeded", sid), ("budget.alert", sid)]
    assert f'href="/sessions/{sid}"' in found[1]
    assert "session: a call of up to $" in found[1] and "; pause" in found[1]
    frag = json.loads((await web.client.get("/fragments/overview?range=24h")).text)
    assert re.findall(r'data-kind="([^"]+)"', frag["replace"]["overview-alerts"]) == [
        "budget.exceeded",
        "budget.alert",
    ]
