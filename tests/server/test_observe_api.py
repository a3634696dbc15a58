"""Costs, tool statistics, series and /metrics over the API: the journal's figures
(through the rollup) for sessions another process ran, auth on every route, and
Prometheus' own parser reading the scrape."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nexus.config import load_settings
from nexus.runtime.agents import Agent, AgentRegistry
from nexus.runtime.providers import ScriptedProvider
from nexus.runtime.runtime import Runtime
from nexus.runtime.tools import Toolkit, tool
from nexus.types import SessionStatus
from tests.server.test_api import Api, assert_problem


@tool(effect="read")
def lookup(key: str) -> str:
    """Look a key up."""
    if key == "missing":
        raise KeyError(key)
    return f"value of {key}"


KIT = Toolkit("kv", [lookup])
SCRIPT = [
    {"tool_calls": [{"name": "lookup", "arguments": {"key": "a"}}]},
    {"tool_calls": [{"name": "lookup", "arguments": {"key": "missing"}}]},
    {"content": "done"},
]


async def run_elsewhere(n: int) -> list[str]:
    """Sessions run by another runtime on the same store (as a worker would)."""
    agents = AgentRegistry()
    agents.add(Agent(name="kv", toolkits=(KIT,)))
    agents.add(Agent(name="other", toolkits=(KIT,)))
    rt = Runtime(
        load_settings(),
        agents=agents,
        provider=ScriptedProvider(SCRIPT, cost_per_call=0.002, tokens=(100, 20)),
    )
    ids = []
    try:
        for i in range(n):
            sid = rt.create_session(f"look up {i}", agent="kv" if i % 2 == 0 else "other")
            assert await rt.run(sid) is SessionStatus.COMPLETED
            ids.append(sid)
    finally:
        await rt.aclose()
    return ids


ROUTES = ["/api/v1/costs", "/api/v1/costs/series", "/api/v1/tools/stats", "/metrics"]


async def test_every_observability_route_needs_the_token(api: Api) -> None:
    """Without the token each route answers 401, /metrics included (default)."""
    for url in ROUTES:
        assert_problem(await api.client.get(url), 401, "unauthorized")


async def test_costs_by_agent_model_day_and_session_are_the_journals(api: Api) -> None:
    """Four sessions of two agents: 3 LLM calls each at $0.002: by agent, $0.012 and
    $0.012 exactly; by model one line; by day one line; by session the four, most
    expensive first; a bad `by` is a 422 naming it."""
    ids = await run_elsewhere(4)
    resp = await api.get("/api/v1/costs", params={"by": "agent"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    line = {
        "provider": None, "model": None, "requests": 6, "failed": 0, "lost": 0,
        "tokens_in": 600, "tokens_out": 120, "cost_usd": 0.012, "cost_nusd": 12_000_000,
        "estimated_usd": 0.0, "estimated_nusd": 0,
    }  # fmt: skip
    assert body["items"] == [{**line, "key": "kv"}, {**line, "key": "other"}]
    assert body["total"] == {
        **line, "key": None, "requests": 12, "tokens_in": 1200, "tokens_out": 240,
        "cost_usd": 0.024, "cost_nusd": 24_000_000,
    }  # fmt: skip
    models = (await api.get("/api/v1/costs", params={"by": "model"})).json()["items"]
    assert [(m["provider"], m["model"], m["requests"]) for m in models] == [
        ("scripted", "scripted-1", 12)
    ]
    days = (await api.get("/api/v1/costs", params={"by": "day"})).json()["items"]
    assert len(days) == 1 and days[0]["cost_nusd"] == 24_000_000
    sessions = (await api.get("/api/v1/costs", params={"by": "session"})).json()
    assert sessions["by"] == "session"
    assert sorted(s["id"] for s in sessions["items"]) == sorted(ids)
    assert {round(s["cost_usd"], 9) for s in sessions["items"]} == {0.006}
    bad = await api.get("/api/v1/costs", params={"by": "colour"})
    assert bad.status_code == 422 and "by" in bad.text


async def test_tool_stats_and_series(api: Api) -> None:
    """`lookup` ran 6 times over 3 sessions, failing 3 (KeyError): success rate 0.5,
    the failure reason ranked with its count; the series has the hour's figures."""
    await run_elsewhere(3)
    (stats,) = (await api.get("/api/v1/tools/stats")).json()["items"]
    assert {k: stats[k] for k in ("tool", "calls", "ok", "errors", "success_rate", "retries")} == {
        "tool": "lookup", "calls": 6, "ok": 3, "errors": 3, "success_rate": 0.5, "retries": 0,
    }  # fmt: skip
    assert stats["failures"] == [
        {"error_type": "ToolExecutionError", "reason": "lookup raised KeyError: 'missing'",
         "count": 3}
    ]  # fmt: skip
    assert all(stats[p] is not None for p in ("p50_ms", "p95_ms", "p99_ms"))
    (point,) = (await api.get("/api/v1/costs/series")).json()["items"]
    assert {k: point[k] for k in ("requests", "tokens", "sessions", "failed", "steps")} == {
        "requests": 9, "tokens": 9 * 120, "sessions": 3, "failed": 0, "steps": 3 * 5,
    }  # fmt: skip
    none = (await api.get("/api/v1/tools/stats", params={"since": 2**39})).json()
    assert none["items"] == []


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_are_prometheus_text_with_the_journals_figures(api: Api) -> None:
    """The scrape parses with Prometheus' parser and holds the requests, tokens, cost,
    tool calls, latency histograms and sessions by status of the journal; no label
    holds a session id."""
    ids = await run_elsewhere(2)
    resp = await api.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    got = scrape(resp.text)
    llm = (("agent", "kv"), ("model", "scripted-1"), ("provider", "scripted"))
    assert got[("nexus_llm_requests_total", (*llm, ("status", "ok")))] == 3
    assert got[("nexus_llm_cost_usd_total", llm)] == pytest.approx(0.006, abs=1e-12)
    tokens_in = (("agent", "kv"), ("direction", "in"), *llm[1:])
    assert got[("nexus_llm_tokens_total", tokens_in)] == 300
    hist = (("model", "scripted-1"), ("provider", "scripted"))
    assert got[("nexus_llm_latency_seconds_count", hist)] == 6
    assert got[("nexus_llm_latency_seconds_bucket", (("le", "+Inf"), *hist))] == 6
    assert (
        got[("nexus_tool_calls_total", (("agent", "kv"), ("status", "error"), ("tool", "lookup")))]
        == 1
    )
    assert got[("nexus_tool_latency_seconds_count", (("tool", "lookup"),))] == 4
    assert got[("nexus_sessions", (("status", "completed"),))] == 2
    assert got[("nexus_sessions", (("status", "running"),))] == 0
    assert (
        got[("nexus_journal_events_total", (("agent", "other"), ("kind", "session.completed")))]
        == 1
    )
    assert got[("nexus_rollup_lag_events", ())] == 0
    labels = {v for _, pairs in got for _, v in pairs}
    assert not labels & set(ids)


async def test_metrics_can_be_made_public(monkeypatch: pytest.MonkeyPatch) -> None:
    """`NEXUS_METRICS_PUBLIC=true` serves /metrics without the token; the API still
    needs it."""
    from tests.server.test_api import open_api

    monkeypatch.setenv("NEXUS_METRICS_PUBLIC", "true")
    async for a in open_api(workers=False):
        assert (await a.client.get("/metrics")).status_code == 200
        assert_problem(await a.client.get("/api/v1/costs"), 401, "unauthorized")
