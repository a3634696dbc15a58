"""The REST API in-process (httpx.ASGITransport): auth, sessions, problem+json
errors for every kind of bad input, readiness and the OpenAPI document."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

import nexus
from nexus.config import load_settings
from nexus.runtime.runtime import Runtime
from nexus.server.app import create_app
from nexus.server.auth import COOKIE
from nexus.storage.base import SessionQuery

ROOT = Path(__file__).resolve().parents[2]
DEMO = "demo.json"  # under NEXUS_HOME/recordings/ (conftest.py)
PROBLEM = "application/problem+json"


class Api:
    """A client of an app whose lifespan is running, with the token at hand."""

    def __init__(self, app: FastAPI, client: httpx.AsyncClient, token: str) -> None:
        self.app, self.client, self.token = app, client, token
        self.auth = {"Authorization": f"Bearer {token}"}

    @property
    def rt(self) -> Runtime:
        runtime: Runtime = self.app.state.nexus.runtime
        return runtime

    async def get(self, url: str, **kw: Any) -> httpx.Response:
        return await self.client.get(url, headers={**self.auth, **kw.pop("headers", {})}, **kw)

    async def post(self, url: str, **kw: Any) -> httpx.Response:
        return await self.client.post(url, headers={**self.auth, **kw.pop("headers", {})}, **kw)


async def open_api(*, workers: bool) -> AsyncIterator[Api]:
    rt = Runtime(load_settings())
    app = create_app(rt, workers=workers)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            yield Api(app, client, app.state.nexus.auth.tokens.read())
    await rt.aclose()


def assert_problem(resp: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == PROBLEM
    body: dict[str, Any] = resp.json()
    assert body["type"] == f"urn:nexus:problem:{slug}"
    assert body["status"] == status
    return body


async def test_healthz_is_open_and_everything_else_needs_the_token(api: Api) -> None:
    """Only /healthz answers without credentials; every other API route is 401."""
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
    paths = api.app.openapi()["paths"]
    urls = sorted((p, m) for p in paths if p.startswith("/api/") for m in paths[p])
    urls.append(("/api/v1/openapi.json", "get"))
    assert ("/api/v1/sessions", "get") in urls and len(urls) >= 10
    for url, method in urls:  # every method of every path (kill, pause... are POST only)
        concrete = url.replace("{session_id}", "s_x").replace("{name}", "assistant")
        resp = await api.client.request(method.upper(), concrete)
        body = assert_problem(resp, 401, "unauthorized")
        assert body["detail"] == "authentication required"  # says nothing more
        assert resp.headers["www-authenticate"] == 'Bearer realm="nexus"'


async def test_wrong_tokens_are_refused_then_rate_limited(api: Api) -> None:
    """A wrong token gets 401 with no detail; after 10 failures wrong tokens get 429
    with Retry-After until the window passes, while the right token still passes: a
    local process spraying bad tokens cannot lock the real users out."""
    for _ in range(10):
        resp = await api.client.get("/api/v1/version", headers={"Authorization": "Bearer nope"})
        assert_problem(resp, 401, "unauthorized")
    resp = await api.client.get("/api/v1/version", headers={"Authorization": "Bearer nope"})
    assert_problem(resp, 429, "rate-limited")
    assert int(resp.headers["retry-after"]) >= 1
    resp = await api.get("/api/v1/version")
    assert (resp.status_code, resp.json()) == (200, {"version": nexus.__version__, "api": "v1"})


@pytest.mark.sqlite_only  # on PostgreSQL the token is in the database (test_stateless.py)
async def test_token_file_is_private_and_256_bits(api: Api) -> None:
    """The token is created on first start with mode 0600 and 256 random bits."""
    path = api.app.state.nexus.auth.tokens.path
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(api.token) == 43  # token_urlsafe(32): 32 bytes, base64url


async def test_create_list_get_and_events(api: Api) -> None:
    """POST creates a queued session; list, get and events return whole documents."""
    resp = await api.post(
        "/api/v1/sessions",
        json={
            "goal": "summarise",
            "priority": 3,
            "labels": {"team": "ops"},
            "budget": {"max_steps": 4},
        },
    )
    assert resp.status_code == 201
    row = resp.json()
    assert resp.headers["location"] == f"/api/v1/sessions/{row['id']}"
    assert {k: row[k] for k in ("agent", "goal", "status", "priority", "labels", "steps")} == {
        "agent": "assistant",
        "goal": "summarise",
        "status": "queued",
        "priority": 3,
        "labels": {"team": "ops"},
        "steps": 0,
    }
    assert (await api.get(f"/api/v1/sessions/{row['id']}")).json() == row
    listed = (await api.get("/api/v1/sessions")).json()
    assert listed == {"items": [row], "limit": 50, "offset": 0, "next_offset": None}
    events = (await api.get(f"/api/v1/sessions/{row['id']}/events")).json()
    assert [e["kind"] for e in events["items"]] == ["session.created"]
    assert events["items"][0]["payload"]["limits"] == {"max_steps": 4}
    assert events["next_after_seq"] == 1
    empty = (await api.get(f"/api/v1/sessions/{row['id']}/events?after_seq=1")).json()
    assert empty == {"items": [], "next_after_seq": 1}


async def test_list_filters_and_pages(api: Api) -> None:
    """Filters by status, agent and label; pages with next_offset."""
    ids = []
    for i in range(5):
        r = await api.post("/api/v1/sessions", json={"goal": f"g{i}", "labels": {"n": str(i % 2)}})
        ids.append(r.json()["id"])
    page1 = (await api.get("/api/v1/sessions?limit=2")).json()
    page2 = (await api.get("/api/v1/sessions?limit=2&offset=2")).json()
    page3 = (await api.get("/api/v1/sessions?limit=2&offset=4")).json()
    got = [r["id"] for p in (page1, page2, page3) for r in p["items"]]
    assert sorted(got) == sorted(ids) and len(set(got)) == 5
    assert (page1["next_offset"], page2["next_offset"], page3["next_offset"]) == (2, 4, None)
    odd = (await api.get("/api/v1/sessions?label=n=1")).json()["items"]
    assert sorted(r["goal"] for r in odd) == ["g1", "g3"]
    assert (await api.get("/api/v1/sessions?status=failed")).json()["items"] == []
    assert (
        len((await api.get("/api/v1/sessions?status=queued&agent=assistant")).json()["items"]) == 5
    )
    assert_problem(await api.get("/api/v1/sessions?status=bogus"), 422, "validation")


async def test_session_runs_on_the_workers_to_completion(live_api: Api) -> None:
    """With workers, a created session runs (replay provider) and completes."""
    row = (await live_api.post("/api/v1/sessions", json={"goal": "demo", "replay": DEMO})).json()
    deadline = time.monotonic() + 30
    while (await live_api.get(f"/api/v1/sessions/{row['id']}")).json()["status"] != "completed":
        assert time.monotonic() < deadline, "session did not complete"
        import asyncio

        await asyncio.sleep(0.02)
    events = (await live_api.get(f"/api/v1/sessions/{row['id']}/events")).json()["items"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["kind"] == "session.completed"


async def test_readyz_without_workers_is_503(api: Api) -> None:
    """Readiness reports the missing workers as a 503 problem with the checks."""
    body = assert_problem(await api.get("/api/v1/readyz"), 503, "unavailable")
    assert body["checks"]["workers"] == "not running"


@pytest.mark.parametrize(
    ("body", "status", "slug", "fragment"),
    [
        (b"{not json", 400, "malformed-json", "not valid JSON"),
        (b'{"goal": ""}', 422, "validation", "goal: String should have at least 1 character"),
        (b"{}", 422, "validation", "goal: Field required"),
        (b'{"goal": "x", "surprise": 1}', 422, "validation", "surprise: Extra inputs"),
        (b'{"goal": "x", "priority": -1}', 422, "validation", "priority: Input should be"),
        (b'{"goal": "x", "budget": {"max_steps": 0}}', 422, "validation", "budget.max_steps"),
        (b'{"goal": "x", "agent": "ghost"}', 422, "invalid-request", "unknown agent 'ghost'"),
        (b'{"goal": "x", "replay": "/no/such/file"}', 422, "invalid-request", "replay must be"),
        (b"[1, 2]", 422, "validation", "Input should be a valid dictionary"),
    ],
)
async def test_bad_session_bodies_get_clear_problems(
    api: Api, body: bytes, status: int, slug: str, fragment: str
) -> None:
    """Every bad body gets the right status, a stable type, a clear detail, and
    writes nothing."""
    resp = await api.post(
        "/api/v1/sessions", content=body, headers={"Content-Type": "application/json"}
    )
    problem = assert_problem(resp, status, slug)
    assert fragment in problem["detail"]
    assert (await api.get("/api/v1/sessions")).json()["items"] == []


async def test_huge_bodies_are_refused_with_413(api: Api) -> None:
    """Bodies over 1 MiB are refused, whether declared or streamed in chunks."""
    big = b'{"goal": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    resp = await api.post(
        "/api/v1/sessions", content=big, headers={"Content-Type": "application/json"}
    )
    assert_problem(resp, 413, "payload-too-large")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"x" * 65536

    resp = await api.post(
        "/api/v1/sessions", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert_problem(resp, 413, "payload-too-large")
    assert (await api.get("/api/v1/sessions")).json()["items"] == []


async def test_unknown_ids_are_404(api: Api) -> None:
    """Unknown sessions and agents are 404 problems with their own types."""
    for url in (
        "/api/v1/sessions/s_nope",
        "/api/v1/sessions/s_nope/events",
        "/api/v1/sessions/s_nope/stream",
        "/api/v1/audit/verify?session_id=s_nope",
    ):
        assert_problem(await api.get(url), 404, "session-not-found")
    assert_problem(await api.get("/api/v1/agents/ghost"), 404, "agent-not-found")
    assert_problem(await api.get("/api/v1/nothing-here"), 404, "not-found")


@pytest.mark.parametrize("value", ["abc", "-3", "1.5"])
async def test_invalid_last_event_id_is_400(api: Api, value: str) -> None:
    """A Last-Event-ID that is not a non-negative integer is refused."""
    sid = (await api.post("/api/v1/sessions", json={"goal": "x"})).json()["id"]
    for url in (f"/api/v1/sessions/{sid}/stream", "/api/v1/events/stream"):
        resp = await api.get(url, headers={"Last-Event-ID": value})
        assert_problem(resp, 400, "invalid-last-event-id")


async def test_cookie_auth_needs_csrf_for_changes(api: Api) -> None:
    """A dashboard cookie reads freely; POSTs need its CSRF token; forged and
    expired cookies are 401."""
    auth = api.app.state.nexus.auth
    cookie, csrf = auth.issue_cookie()
    jar = {"Cookie": f"{COOKIE}={cookie}"}
    c = api.client
    assert (await c.get("/api/v1/version", headers=jar)).status_code == 200
    resp = await c.post("/api/v1/sessions", json={"goal": "x"}, headers=jar)
    assert_problem(resp, 403, "csrf")
    resp = await c.post(
        "/api/v1/sessions", json={"goal": "x"}, headers={**jar, "X-CSRF-Token": "forged"}
    )
    assert_problem(resp, 403, "csrf")
    resp = await c.post(
        "/api/v1/sessions", json={"goal": "x"}, headers={**jar, "X-CSRF-Token": csrf}
    )
    assert resp.status_code == 201
    sid, expiry, sig = cookie.split(".")
    forged = f"{sid}.{int(expiry) + 3600}.{sig}"
    resp = await c.get("/api/v1/version", headers={"Cookie": f"{COOKIE}={forged}"})
    assert_problem(resp, 401, "unauthorized")
    old, _ = auth.issue_cookie(now=time.time() - 13 * 3600)
    resp = await c.get("/api/v1/version", headers={"Cookie": f"{COOKIE}={old}"})
    assert_problem(resp, 401, "unauthorized")


async def test_rotating_the_token_invalidates_old_credentials(api: Api) -> None:
    """After rotation the old token and cookies made with it are refused."""
    auth = api.app.state.nexus.auth
    cookie, _ = auth.issue_cookie()
    new = auth.tokens.rotate()
    assert_problem(await api.get("/api/v1/version"), 401, "unauthorized")
    resp = await api.client.get("/api/v1/version", headers={"Cookie": f"{COOKIE}={cookie}"})
    assert_problem(resp, 401, "unauthorized")
    ok = await api.client.get("/api/v1/version", headers={"Authorization": f"Bearer {new}"})
    assert ok.json() == {"version": "0.1.0", "api": "v1"}


async def test_openapi_document_lists_the_api(api: Api) -> None:
    """The OpenAPI document (behind auth) describes the session routes."""
    doc = (await api.get("/api/v1/openapi.json")).json()
    assert doc["info"]["title"] == "NEXUS"
    assert {
        "/api/v1/sessions",
        "/api/v1/sessions/{session_id}",
        "/api/v1/sessions/{session_id}/events",
        "/api/v1/sessions/{session_id}/stream",
        "/api/v1/events/stream",
        "/api/v1/agents",
        "/healthz",
    } <= set(doc["paths"])


async def test_agents_audit_and_config(api: Api) -> None:
    """Agents, audit and config read endpoints."""
    agents = (await api.get("/api/v1/agents")).json()["items"]
    assert [a["name"] for a in agents] == ["assistant"]
    assert (await api.get("/api/v1/agents/assistant")).json() == agents[0]
    await api.post("/api/v1/sessions", json={"goal": "x"})
    audit = (await api.get("/api/v1/audit/verify")).json()
    assert audit == {
        "ok": True,
        "sessions": 1,
        "events": 1,
        "first_problem": None,
        "checkpoint": {
            "id": 1,
            "ts": audit["checkpoint"]["ts"],
            "key_id": audit["checkpoint"]["key_id"],
            "sessions": 0,
        },
        "unkeyed_events": 0,
    }
    assert (await api.get("/api/v1/config")).json()["durability"] == "normal"


async def test_an_unhandled_error_is_a_500_problem_logged_without_its_traceback_in_the_body(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A route whose store fails unexpectedly (here: closed under it) answers an RFC
    9457 problem, not text/plain; the traceback goes to the log only, and it is the
    store's own error (each store says "closed" in its own words)."""
    async for api in open_api(workers=False):
        api.rt.store.close()
        with pytest.raises(Exception) as closed:
            api.rt.store.sessions(SessionQuery())
        transport = httpx.ASGITransport(app=api.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            resp = await c.get("/api/v1/sessions", headers=api.auth)
        assert (resp.status_code, resp.headers["content-type"]) == (500, PROBLEM)
        assert resp.json() == {
            "type": "urn:nexus:problem:internal",
            "title": "Internal error",
            "status": 500,
            "detail": "internal error",
            "instance": "/api/v1/sessions",
        }
        [record] = [r for r in caplog.records if r.name == "nexus.server"]
        assert record.getMessage() == "unhandled error answering GET /api/v1/sessions"
        assert record.exc_info is not None
        error = record.exc_info[1]
        assert (type(error), str(error)) == (type(closed.value), str(closed.value))
