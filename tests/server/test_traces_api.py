"""`GET /api/v1/sessions/{id}/trace`: the journal's span tree, documented in OpenAPI;
open spans for a session that has not ended; 404 for an unknown session; the token
required."""

from __future__ import annotations

from nexus.config import load_settings
from nexus.observe.spans import build_trace
from nexus.runtime.providers import ScriptedProvider
from nexus.runtime.runtime import Runtime
from nexus.types import SessionStatus
from tests.observe.tracing import agents, call
from tests.server.test_api import Api, assert_problem


async def test_the_trace_route_answers_the_journal_s_tree(api: Api) -> None:
    """A session run by another process of the home: the route's document is the tree
    `nexus.observe.spans` builds from the journal, ids, times and attributes alike."""
    prov = ScriptedProvider(
        [{"tool_calls": [call("explode", reason="no disk")]}, {"content": "gave up"}],
        cost_per_call=0.01,
    )
    worker = Runtime(load_settings(), agents=agents(), provider=prov)
    sid = worker.create_session("try the tool", agent="t")
    assert await worker.run(sid) is SessionStatus.COMPLETED
    resp = await api.get(f"/api/v1/sessions/{sid}/trace")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body == build_trace(worker.journal.events(sid)).to_dict()
    root = body["root"]
    assert [(c["name"], [g["name"] for g in c["children"]]) for c in root["children"]] == [
        ("step 1", ["chat scripted-1", "execute_tool explode"]),
        ("step 3", ["chat scripted-1"]),
    ]
    failed = root["children"][0]["children"][1]
    assert (failed["status"], failed["error"]) == ("error", "explode raised RuntimeError: no disk")
    assert (root["status"], root["cost_usd"], root["open"]) == ("ok", 0.02, False)
    await worker.aclose()


async def test_a_session_not_ended_has_an_open_root(api: Api) -> None:
    """A queued session: its root span is open (no end, status unset), nothing else."""
    sid = api.rt.create_session("wait for a worker")
    body = (await api.get(f"/api/v1/sessions/{sid}/trace")).json()
    root = body["root"]
    assert (root["name"], root["open"], root["status"], root["end"], root["children"]) == (
        "invoke_agent assistant",
        True,
        "unset",
        None,
        [],
    )


async def test_unknown_sessions_are_404_and_the_token_is_required(api: Api) -> None:
    """An unknown id is the session-not-found problem; no token, 401."""
    assert_problem(await api.get("/api/v1/sessions/s_ghost/trace"), 404, "session-not-found")
    sid = api.rt.create_session("secret trace")
    resp = await api.client.get(f"/api/v1/sessions/{sid}/trace")
    assert_problem(resp, 401, "unauthorized")


async def test_the_openapi_document_describes_the_trace(api: Api) -> None:
    """The route names its response model, the span tree recursively, and its problems."""
    doc = (await api.get("/api/v1/openapi.json")).json()
    route = doc["paths"]["/api/v1/sessions/{session_id}/trace"]["get"]
    ok = route["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/Trace"}
    assert {"401", "404", "422", "429"} <= set(route["responses"])
    span = doc["components"]["schemas"]["TraceSpan"]
    assert span["properties"]["children"]["items"] == {"$ref": "#/components/schemas/TraceSpan"}
    assert doc["components"]["schemas"]["Trace"]["properties"]["root"] == {
        "$ref": "#/components/schemas/TraceSpan"
    }
