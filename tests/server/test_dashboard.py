"""The dashboard in-process (httpx.ASGITransport): signing in and out, the login
wall, CSRF, the new-session form, the pages' content and live fragments, the
security headers, and the panel/action registries."""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from nexus.config import load_settings
from nexus.examples import demo_recording
from nexus.runtime.runtime import Runtime
from nexus.server.app import create_app
from nexus.server.auth import COOKIE, COOKIE_TTL_S
from nexus.server.dashboard import ACTIONS, PANELS, TEMPLATE_DIRS, Action, Panel, View
from nexus.server.dashboard import format as fmt
from nexus.server.dashboard.web import safe_next
from nexus.server.recordings import REFUSED

DEMO = "demo.json"  # under NEXUS_HOME/recordings/ (conftest.py)
DEMO_FILE = str(demo_recording())  # the runtime itself takes any local file
BASE = "http://127.0.0.1"


class Browser:
    """A cookie-keeping client of an app whose lifespan runs."""

    def __init__(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        self.app, self.client = app, client
        self.token: str = app.state.nexus.auth.tokens.read()

    @property
    def rt(self) -> Runtime:
        runtime: Runtime = self.app.state.nexus.runtime
        return runtime

    async def login(self) -> None:
        resp = await self.client.post("/login", data={"token": self.token, "next": "/"})
        assert resp.status_code == 303, resp.text

    async def csrf(self) -> str:
        page = await self.client.get("/new")
        found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert found, page.text
        return found.group(1)


async def open_browser(
    *, workers: bool, auth: bool = True, base: str = BASE
) -> AsyncIterator[Browser]:
    rt = Runtime(load_settings())
    app = create_app(rt, workers=workers, auth=auth)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=base) as client:
            yield Browser(app, client)
    await rt.aclose()


@pytest.fixture
async def web() -> AsyncIterator[Browser]:
    """The dashboard without workers: sessions are created, not run."""
    async for b in open_browser(workers=False):
        yield b


@pytest.fixture
async def signed_in(web: Browser) -> Browser:
    await web.login()
    return web


@pytest.fixture
async def live_web() -> AsyncIterator[Browser]:
    """The dashboard with the session workers running, signed in."""
    async for b in open_browser(workers=True):
        await b.login()
        yield b


async def wait_status(rt: Runtime, session_id: str, status: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while rt.session(session_id).status != status:
        assert time.monotonic() < deadline, f"{session_id} never became {status}"
        await asyncio.sleep(0.02)


def text_of(page: str) -> str:
    """The page's visible text, tags dropped and whitespace folded."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


# -- signing in ------------------------------------------------------------------------


async def test_login_sets_a_strict_httponly_cookie_and_goes_on_to_next(web: Browser) -> None:
    """The right token: 303 to `next`, cookie HttpOnly, SameSite=Strict, Path=/,
    12 h, not Secure over http; the page behind it then opens."""
    form = await web.client.get("/login", params={"next": "/new"})
    assert form.status_code == 200
    assert 'name="next" value="/new"' in form.text
    resp = await web.client.post("/login", data={"token": web.token, "next": "/new"})
    assert (resp.status_code, resp.headers["location"]) == (303, "/new")
    cookie = resp.headers["set-cookie"]
    attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert attrs == {"httponly", "max-age", "path", "samesite"}
    assert f"Max-Age={COOKIE_TTL_S}" in cookie
    assert "Path=/" in cookie
    assert "SameSite=strict" in cookie
    assert web.app.state.nexus.auth.cookie_sid(web.client.cookies[COOKIE]) is not None
    page = await web.client.get("/new")
    assert page.status_code == 200
    assert "Start session" in page.text
    # Signed in, the login form sends you straight on.
    again = await web.client.get("/login", params={"next": "/"})
    assert (again.status_code, again.headers["location"]) == (303, "/")


async def test_login_over_https_marks_the_cookie_secure() -> None:
    async for b in open_browser(workers=False, base="https://127.0.0.1"):
        resp = await b.client.post("/login", data={"token": b.token})
        assert resp.status_code == 303
        assert "Secure" in resp.headers["set-cookie"]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/sessions/s_1?x=1", "/sessions/s_1?x=1"),
        ("//evil.example/", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("/ok\r\nSet-Cookie: x=1", "/"),
        ("", "/"),
    ],
)
async def test_login_goes_on_only_to_local_paths(web: Browser, target: str, expected: str) -> None:
    resp = await web.client.post("/login", data={"token": web.token, "next": target})
    assert (resp.status_code, resp.headers["location"]) == (303, expected)
    assert safe_next(target) == expected


async def test_a_wrong_token_is_refused_with_a_generic_error(web: Browser) -> None:
    """401, the form again with one generic message, no cookie."""
    resp = await web.client.post("/login", data={"token": "not-the-token", "next": "/"})
    assert resp.status_code == 401
    assert "set-cookie" not in resp.headers
    assert "That token is not valid." in resp.text
    assert 'name="token"' in resp.text
    empty = await web.client.post("/login", data={"next": "/"})
    assert empty.status_code == 401


async def test_repeated_failures_are_rate_limited_but_the_right_token_passes(
    web: Browser,
) -> None:
    """Past the limiter's budget wrong tokens get 429 with Retry-After (the counter is
    shared with the API's), while the right token still logs in and still works on
    the API: nobody can lock the real users out."""
    limit = web.app.state.nexus.auth.limiter.max_failures
    for _ in range(limit):
        assert (await web.client.post("/login", data={"token": "wrong"})).status_code == 401
    blocked = await web.client.post("/login", data={"token": "wrong"})
    assert blocked.status_code == 429
    assert int(blocked.headers["retry-after"]) >= 1
    assert "Too many failed attempts" in blocked.text
    assert "set-cookie" not in blocked.headers
    api = await web.client.get("/api/v1/sessions", headers={"Authorization": "Bearer wrong"})
    assert api.status_code == 429
    right = await web.client.get(
        "/api/v1/sessions", headers={"Authorization": f"Bearer {web.token}"}
    )
    assert right.status_code == 200
    assert (await web.client.post("/login", data={"token": web.token})).status_code == 303


async def test_logout_needs_the_csrf_token_and_clears_the_cookie(signed_in: Browser) -> None:
    c = signed_in.client
    assert (await c.post("/logout")).status_code == 403
    assert (await c.get("/")).status_code == 200  # still signed in
    resp = await c.post("/logout", data={"csrf_token": await signed_in.csrf()})
    assert (resp.status_code, resp.headers["location"]) == (303, "/login")
    assert COOKIE not in c.cookies
    assert (await c.get("/")).status_code == 303


# -- the login wall --------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/new", "/sessions/s_0000", "/?status=failed&agent=x"])
async def test_pages_send_strangers_to_login_with_next(web: Browser, path: str) -> None:
    resp = await web.client.get(path)
    assert resp.status_code == 303
    assert resp.headers["location"] == "/login?next=" + quote(path)


async def test_fragments_answer_401_instead_of_redirecting(web: Browser) -> None:
    resp = await web.client.get("/fragments/sessions")
    assert resp.status_code == 401
    assert resp.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("kind", ["forged", "expired", "garbage"])
async def test_bad_cookies_are_sent_to_login_and_cleared(web: Browser, kind: str) -> None:
    auth = web.app.state.nexus.auth
    if kind == "forged":
        value = auth.issue_cookie()[0][:-4] + "AAAA"
    elif kind == "expired":
        value = auth.issue_cookie(now=time.time() - 13 * 3600)[0]
    else:
        value = "not.a.cookie.at.all"
    assert auth.cookie_sid(value) is None
    resp = await web.client.get("/", headers={"Cookie": f"{COOKIE}={value}"})
    assert (resp.status_code, resp.headers["location"]) == (303, "/login?next=/")
    assert f'{COOKIE}=""' in resp.headers["set-cookie"]  # deleted, so it is not re-counted


async def test_a_bearer_token_opens_pages(web: Browser) -> None:
    resp = await web.client.get("/", headers={"Authorization": f"Bearer {web.token}"})
    assert resp.status_code == 200
    assert "Sessions" in resp.text


async def test_with_auth_off_pages_are_open_and_login_steps_aside() -> None:
    async for b in open_browser(workers=False, auth=False):
        assert (await b.client.get("/")).status_code == 200
        login = await b.client.get("/login", params={"next": "/new"})
        assert (login.status_code, login.headers["location"]) == (303, "/new")
        created = await b.client.post("/new", data={"goal": "open mode"})
        assert created.status_code == 303
        # No cookie to bind a token to: cross-site posts are refused by origin instead.
        cross = await b.client.post(
            "/new", data={"goal": "from evil"}, headers={"Origin": "http://evil.example"}
        )
        assert cross.status_code == 403
        sites = await b.client.post(
            "/new", data={"goal": "from evil"}, headers={"Sec-Fetch-Site": "cross-site"}
        )
        assert sites.status_code == 403
        assert [s.goal for s in b.rt.sessions()] == ["open mode"]


# -- CSRF and the new-session form -----------------------------------------------------


async def test_new_session_without_csrf_token_is_forbidden(signed_in: Browser) -> None:
    c = signed_in.client
    for data in ({"goal": "no token"}, {"goal": "bad token", "csrf_token": "x" * 43}):
        resp = await c.post("/new", data=data)
        assert resp.status_code == 403
        assert "CSRF" in resp.text
    right = await signed_in.csrf()
    cross = await c.post(
        "/new",
        data={"goal": "cross", "csrf_token": right},
        headers={"Sec-Fetch-Site": "same-site"},
    )
    assert cross.status_code == 403
    assert signed_in.rt.store.count_sessions() == 0


async def test_the_form_offers_the_registry_agents_and_their_limits(signed_in: Browser) -> None:
    page = await signed_in.client.get("/new", params={"replay": "s_abc", "goal": "again"})
    names = re.findall(r'<option value="([^"]+)" data-limits', page.text)
    assert names == [a.name for a in signed_in.rt.agents.all()]
    assert 'name="replay" value="s_abc"' in page.text
    assert ">again</textarea>" in page.text
    assert 'placeholder="50" data-limit="max_steps"' in page.text  # the agent's default


async def test_new_session_form_creates_and_submits_a_session(
    signed_in: Browser, demo_in_recordings: Path
) -> None:
    csrf = await signed_in.csrf()
    resp = await signed_in.client.post(
        "/new",
        data={
            "csrf_token": csrf,
            "goal": "Write the weekly report\nwith two sections",
            "agent": "assistant",
            "priority": "3",
            "max_steps": "7",
            "max_cost_usd": "0.5",
            "max_tokens": "",
            "replay": DEMO,
            "replay_pace_s": "0.5",
            "labels": "team=ops, ticket=42",
            "model": "",
        },
    )
    assert resp.status_code == 303
    session_id = resp.headers["location"].removeprefix("/sessions/")
    row = signed_in.rt.session(session_id)
    assert (row.goal, row.agent, row.priority, row.status, row.labels) == (
        "Write the weekly report\nwith two sections",
        "assistant",
        3,
        "queued",
        {"team": "ops", "ticket": "42"},
    )
    created = signed_in.rt.journal.events(session_id)[0].payload
    assert created["limits"] == {"max_steps": 7, "max_cost_usd": 0.5}
    assert (created["replay"], created["replay_pace_s"]) == (
        str(demo_in_recordings.resolve()),
        0.5,
    )
    assert "model" not in created


async def test_invalid_forms_come_back_with_messages_and_values(signed_in: Browser) -> None:
    csrf = await signed_in.csrf()
    resp = await signed_in.client.post(
        "/new",
        data={
            "csrf_token": csrf,
            "goal": "   ",
            "priority": "-1",
            "max_steps": "0",
            "labels": "oops",
            "model": "kept-model",
        },
    )
    assert resp.status_code == 422
    errors = dict(re.findall(r'<span class="err" id="err-([a-z_]+)">([^<]*)</span>', resp.text))
    assert set(errors) == {"goal", "priority", "max_steps", "labels"}
    assert errors["goal"] == "Say what the session should do."
    assert 'name="model" value="kept-model"' in resp.text
    unknown = await signed_in.client.post(
        "/new", data={"csrf_token": csrf, "goal": "x", "agent": "nobody"}
    )
    assert unknown.status_code == 422
    found = dict(re.findall(r'<span class="err" id="err-([a-z_]+)">([^<]*)</span>', unknown.text))
    assert "unknown agent" in html.unescape(found["agent"])
    assert signed_in.rt.store.count_sessions() == 0


@pytest.mark.parametrize("source", ["/etc/passwd", "/no/such/file", "../../etc/passwd"])
async def test_the_form_refuses_replay_paths_outside_the_recordings_folder(
    signed_in: Browser, source: str
) -> None:
    """The form follows the API's replay rules: a server-side path is refused on the
    replay field, in the same words whether it exists or not."""
    resp = await signed_in.client.post(
        "/new", data={"csrf_token": await signed_in.csrf(), "goal": "x", "replay": source}
    )
    assert resp.status_code == 422
    found = dict(re.findall(r'<span class="err" id="err-([a-z_]+)">([^<]*)</span>', resp.text))
    assert {k: html.unescape(v) for k, v in found.items()} == {"replay": REFUSED}
    assert f'name="replay" value="{source}"' in resp.text
    assert signed_in.rt.store.count_sessions() == 0


# -- pages ------------------------------------------------------------------------------


async def test_a_session_runs_from_the_form_and_both_pages_show_it(live_web: Browser) -> None:
    """Workers on: the form's session replays the demo to completion; its page shows
    the header, every journal entry by kind, and the list shows it completed."""
    csrf = await live_web.csrf()
    resp = await live_web.client.post(
        "/new", data={"csrf_token": csrf, "goal": "Demo report", "replay": DEMO}
    )
    session_id = resp.headers["location"].removeprefix("/sessions/")
    await wait_status(live_web.rt, session_id, "completed")
    page = await live_web.client.get(f"/sessions/{session_id}")
    assert page.status_code == 200
    kinds = re.findall(r'data-kind="([a-z.]+)"', page.text)
    assert kinds == [e.kind for e in live_web.rt.journal.events(session_id)]
    assert kinds[0] == "session.created" and kinds[-1] == "session.completed"
    visible = text_of(page.text)
    row = live_web.rt.session(session_id)
    assert f'data-status="{row.status}"' in page.text
    assert 'data-finished="true"' in page.text
    for needle in (
        "Demo report",
        "Completed",
        "Tool call · write_file",
        "Result · read_file",
        "LLM · demo-1",
        "report.md is written",
        "# Sprint notes",  # tool arguments shown as text, not JSON escapes
        f"{row.steps}",
        "Budget",
        "Details",
        "Replay",
        "Export JSON",
    ):
        assert needle in visible, needle
    listing = await live_web.client.get("/")
    assert re.search(
        rf'data-id="{session_id}" data-key="completed:{row.last_seq}"', listing.text
    ), listing.text
    assert "Demo report" in listing.text
    exported = await live_web.client.get(f"/sessions/{session_id}/export.json")
    assert exported.headers["content-disposition"] == f'attachment; filename="{session_id}.json"'
    data = exported.json()
    assert (data["format"], data["session"]["id"]) == ("nexus.session/1", session_id)


async def test_the_list_filters_by_status_and_agent_and_pages(signed_in: Browser) -> None:
    rt = signed_in.rt
    ids = [rt.create_session(f"goal {i}") for i in range(53)]
    rt.journal.append(ids[0], "session.started", {"agent": "assistant"})
    rt.journal.append(ids[0], "session.failed", {"reason": "boom", "steps": 0}, reason="boom")
    c = signed_in.client

    first = await c.get("/")
    rows = re.findall(r'<tr data-id="([^"]+)"', first.text)
    assert rows == ids[::-1][:50]
    assert 'href="/?offset=50">Older' in first.text
    second = await c.get("/?offset=50")
    assert re.findall(r'<tr data-id="([^"]+)"', second.text) == ids[::-1][50:]
    assert 'href="/">← Newer' in second.text

    failed = await c.get("/?status=failed")
    assert re.findall(r'<tr data-id="([^"]+)"', failed.text) == [ids[0]]
    chips = dict(re.findall(r'class="chip st-([a-z_]+)[^"]*">.*?<b>(\d+)</b>', failed.text))
    assert (chips["failed"], chips["queued"], chips["running"]) == ("1", "52", "0")
    assert '<span class="why">boom</span>' in failed.text
    none = await c.get("/?agent=nobody")
    assert "No sessions match these filters." in none.text
    ignored = await c.get("/?status=bogus&offset=-3")
    assert len(re.findall(r'<tr data-id="', ignored.text)) == 50


async def test_live_fragments_render_rows_and_new_events(signed_in: Browser) -> None:
    rt = signed_in.rt
    sid = rt.create_session("fragment me")
    c = signed_in.client
    listing = (await c.get("/fragments/sessions?status=queued")).json()
    assert set(listing["replace"]) >= {"rows", "chips", "pager"}
    assert f'data-id="{sid}"' in listing["replace"]["rows"]
    assert listing["state"] == {"total": 1}

    rt.journal.append(sid, "session.started", {"agent": "assistant"})
    rt.journal.append(
        sid,
        "llm.response",
        {
            "step": 1,
            "message": {"role": "assistant", "content": "thinking <b>hard</b>"},
            "model": "m-1",
            "provider": "p",
            "finish_reason": "stop",
        },
        tokens_in=12,
        tokens_out=3,
        cost_usd=0.0021,
        latency_ms=250,
    )
    frag = (await c.get(f"/fragments/sessions/{sid}?after_seq=1")).json()
    assert frag["state"] == {
        "last_seq": 3,
        "status": "running",
        "finished": False,
        "title": f"{sid} · running · NEXUS",
    }
    events = frag["append"]["events"]
    assert re.findall(r'data-seq="(\d+)"', events) == ["2", "3"]
    assert "thinking &lt;b&gt;hard&lt;/b&gt;" in events
    assert "12 → 3 tok" in events and "$0.0021" in events and "250 ms" in events
    panels = {
        "panel:budget",
        "panel:details",
        "panel:outcome",
        "panel:conversation",
        "panel:waterfall",
    }
    assert set(frag["replace"]) == {"header", "actions", "tail", *panels}
    assert "Running" in text_of(frag["replace"]["header"]).title()
    nothing_new = (await c.get(f"/fragments/sessions/{sid}?after_seq=3")).json()
    assert nothing_new["append"] == {} and nothing_new["state"]["last_seq"] == 3
    everything = (await c.get(f"/fragments/sessions/{sid}?after_seq=junk")).json()
    assert re.findall(r'data-seq="(\d+)"', everything["append"]["events"]) == ["1", "2", "3"]


async def test_tool_errors_and_failures_are_marked(signed_in: Browser) -> None:
    rt = signed_in.rt
    sid = rt.create_session("break things")
    rt.journal.append(
        sid,
        "tool.result",
        {
            "step": 2,
            "call_id": "c1",
            "name": "read_file",
            "error": "no such file",
            "error_type": "ToolExecutionError",
        },
    )
    rt.journal.append(
        sid,
        "session.failed",
        {"reason": "LimitExceeded: steps", "steps": 2},
        reason="LimitExceeded: steps",
    )
    rt.journal.append(sid, "custom.kind", {"anything": [1, 2]})
    page = (await signed_in.client.get(f"/sessions/{sid}")).text
    assert re.search(r'class="ev ev-error"[^>]*data-kind="tool.result"', page)
    assert re.search(r'class="ev ev-failed"[^>]*data-kind="session.failed"', page)
    assert re.search(r'class="ev ev-other"[^>]*data-kind="custom.kind"', page)
    visible = text_of(page)
    assert "Error · read_file step 2 c1 #2" in visible
    assert "ToolExecutionError no such file" in visible
    assert "Reason: LimitExceeded: steps" in visible


async def test_unknown_session_is_a_404_page(signed_in: Browser) -> None:
    resp = await signed_in.client.get("/sessions/s_nope")
    assert resp.status_code == 404
    assert resp.headers["content-type"].startswith("text/html")
    assert "Session not found" in resp.text
    frag = await signed_in.client.get("/fragments/sessions/s_nope")
    assert frag.status_code == 404
    assert frag.headers["content-type"] == "application/problem+json"
    assert (await signed_in.client.get("/sessions/s_nope/export.json")).status_code == 404


PAGE = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


@pytest.mark.parametrize("path", ["/nope", "/sessions/x/y", "/new/deeper"])
async def test_an_unknown_page_is_the_dashboards_404_page(signed_in: Browser, path: str) -> None:
    """A browser asking for a page that does not exist gets the dashboard's own error
    page (its layout, security headers, 404), not raw problem+json."""
    resp = await signed_in.client.get(path, headers=PAGE)
    assert (resp.status_code, resp.headers["content-type"]) == (404, "text/html; charset=utf-8")
    assert resp.headers["content-security-policy"].startswith("default-src 'self'")
    visible = text_of(resp.text)
    assert "404 Not found there is no such page Back to sessions" in visible
    assert 'class="topbar"' in resp.text and "Sign out" in visible  # the usual bar


@pytest.mark.parametrize("path", ["/api/v1/nope", "/api/v1/sessions/x/y", "/fragments/nope"])
async def test_unknown_api_paths_stay_problem_json_for_browsers(
    signed_in: Browser, path: str
) -> None:
    """Under the API (and the page fragments) a 404 is problem+json, whatever the
    client accepts."""
    resp = await signed_in.client.get(path, headers=PAGE)
    assert (resp.status_code, resp.headers["content-type"]) == (404, "application/problem+json")
    assert resp.json() == {
        "type": "urn:nexus:problem:not-found",
        "title": "Not found",
        "status": 404,
        "detail": "Not Found",
        "instance": path,
    }


async def test_user_text_is_escaped(signed_in: Browser) -> None:
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    sid = signed_in.rt.create_session(evil, labels={"k": "<b>v</b>"})
    for path in ("/", f"/sessions/{sid}"):
        page = (await signed_in.client.get(path)).text
        assert "<script>alert" not in page and "<img src=x" not in page
        assert "&lt;script&gt;alert(" in page
        assert "<b>v</b>" not in page


# -- security headers ----------------------------------------------------------------------


async def test_security_headers_on_every_kind_of_dashboard_response(signed_in: Browser) -> None:
    c = signed_in.client
    sid = signed_in.rt.create_session("headers")
    responses = [
        await c.get("/"),
        await c.get(f"/sessions/{sid}"),
        await c.get("/new"),
        await c.get("/sessions/s_nope"),
        await c.get("/fragments/sessions"),
        await c.get("/static/nexus.css"),
        await c.post("/new", data={"goal": "no csrf"}),
        await c.get("/fragments/sessions/s_nope"),
        await c.get("/login"),
    ]
    for resp in responses:
        csp = resp.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, resp.url
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert resp.headers["x-frame-options"] == "DENY"
        assert resp.headers["referrer-policy"] == "same-origin"
        assert resp.headers["x-content-type-options"] == "nosniff"
    assert responses[0].headers["cache-control"] == "no-store"


async def test_pages_carry_no_inline_script_or_handlers(live_web: Browser) -> None:
    """CSP forbids inline script: every script is a same-origin file, no element has
    an on* handler or inline style, and the static assets are served."""
    sid = live_web.rt.create_session("inline check", replay=DEMO_FILE)
    await live_web.app.state.nexus.submit(sid, 0)
    await wait_status(live_web.rt, sid, "completed")
    for path in ("/", f"/sessions/{sid}", "/new", "/sessions/s_nope"):
        page = (await live_web.client.get(path)).text
        scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, re.S)
        assert scripts, path
        for attrs, body in scripts:
            assert re.search(r'src="/static/[\w.]+\?v=\w+"', attrs) and not body.strip()
        assert not re.search(r"<[^>]+\son[a-z]+\s*=", page), path
        assert not re.search(r"<[^>]+\sstyle\s*=", page), path
        for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page):
            resp = await live_web.client.get(asset)
            assert resp.status_code == 200, asset
            assert "immutable" in resp.headers["cache-control"]


# -- registries and packaging -----------------------------------------------------------------


async def test_a_registered_panel_and_action_show_without_touching_the_pages(
    signed_in: Browser, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "panels").mkdir()
    (tmp_path / "panels" / "probe.html").write_text(
        "<p class='probe'>{{ session.id }} has {{ n }} events</p>"
    )
    (tmp_path / "actions").mkdir()
    (tmp_path / "actions" / "probe.html").write_text(
        '<button data-post="/api/v1/sessions/{{ session.id }}/probe">Probe</button>'
    )

    def probe(view: View) -> dict[str, Any]:
        assert view.session is not None
        return {"n": view.session.last_seq}

    monkeypatch.setattr("nexus.server.dashboard.registry.TEMPLATE_DIRS", [*TEMPLATE_DIRS, tmp_path])
    monkeypatch.setattr("nexus.server.dashboard.web.TEMPLATE_DIRS", [*TEMPLATE_DIRS, tmp_path])
    PANELS.append(Panel("probe", "Probe", "panels/probe.html", context=probe, order=0))
    ACTIONS.append(Action("probe", "actions/probe.html", when=lambda v: v.session is not None))
    try:
        sid = signed_in.rt.create_session("extend me")
        page = (await signed_in.client.get(f"/sessions/{sid}")).text
        assert re.search(r'id="panel-probe">\s*<h2 class="panel-title">Probe</h2>', page)
        assert f"{sid} has 1 events" in page
        assert page.index('id="panel-probe"') < page.index('id="panel-budget"')  # order=0
        assert f'data-post="/api/v1/sessions/{sid}/probe"' in page
        frag = (await signed_in.client.get(f"/fragments/sessions/{sid}")).json()
        assert f"{sid} has 1 events" in frag["replace"]["panel:probe"]
        assert "Probe" in frag["replace"]["actions"]
    finally:
        PANELS.remove(next(p for p in PANELS if p.name == "probe"))
        ACTIONS.remove(next(a for a in ACTIONS if a.name == "probe"))


async def test_a_registered_page_gets_the_login_wall_error_pages_and_headers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A router in PAGES (plus a NavLink) is mounted with the same behaviour as the
    built-in pages: login redirect, HTML error pages for bad input, headers."""
    from fastapi import HTTPException

    from nexus.server.dashboard import NAV, PAGES, NavLink
    from nexus.server.dashboard.web import page_router, render, require_login

    router = page_router()

    @router.get("/costs")
    async def costs(request: Request, days: int = 7) -> Response:
        require_login(request)
        if days > 365:
            raise HTTPException(418, "too far back")
        return render(request, "error.html", {"status": 200, "title": f"{days} days", "detail": ""})

    monkeypatch.setattr("nexus.server.dashboard._install.PAGES", [*PAGES, router])
    monkeypatch.setattr("nexus.server.dashboard.web.NAV", [*NAV, NavLink("Costs", "/costs")])
    async for b in open_browser(workers=False):
        assert (await b.client.get("/costs")).headers["location"] == "/login?next=/costs"
        await b.login()
        page = await b.client.get("/costs?days=30")
        assert page.status_code == 200
        assert "30 days" in page.text
        assert '<a href="/costs" aria-current="page">Costs</a>' in page.text
        invalid = await b.client.get("/costs?days=many")
        assert (invalid.status_code, invalid.headers["content-type"]) == (
            422,
            "text/html; charset=utf-8",
        )
        assert "Invalid request" in invalid.text
        teapot = await b.client.get("/costs?days=999")
        assert teapot.status_code == 418
        assert "too far back" in teapot.text
        for resp in (page, invalid, teapot):
            assert resp.headers["x-frame-options"] == "DENY"


def test_templates_and_static_files_ship_inside_the_package() -> None:
    """hatchling packs everything under src/nexus: the dashboard's files live there."""
    root = resources.files("nexus.server.dashboard")
    for name in (
        "templates/base.html",
        "templates/session.html",
        "templates/events/default.html",
        "static/nexus.css",
        "static/nexus.js",
        "static/favicon.svg",
    ):
        assert root.joinpath(name).is_file(), name


# -- formats -----------------------------------------------------------------------------------


def test_formats() -> None:
    assert [fmt.count(v) for v in (950, 12_400, 3_100_000)] == ["950", "12.4k", "3.1M"]
    assert [fmt.duration(v) for v in (0.012, 3.44, 300, 7800, 3 * 86400)] == [
        "12 ms",
        "3.4 s",
        "5 min",
        "2 h 10 min",
        "3 d",
    ]
    assert [fmt.ago(1000 - d, now=1000) for d in (3, 42, 600, 7200, 200_000)] == [
        "just now",
        "42 s ago",
        "10 min ago",
        "2 h ago",
        "2 d ago",
    ]
    assert fmt.offset(10.5, 10.0) == "+0.500 s"
    assert [fmt.offset(72, 10), fmt.offset(25, 10), fmt.offset(None, 10)] == [
        "+1 min",
        "+15.0 s",
        "",
    ]
    assert [fmt.latency(0.034), fmt.latency(250), fmt.latency(None)] == [
        "0.03 ms",
        "250 ms",
        "0.00 ms",
    ]
    assert fmt.ago(None) == fmt.iso(None) == fmt.clock(None) == ""
    assert fmt.iso(0.5) == "1970-01-01T00:00:00.500+00:00"
    assert fmt.clock(86400) == "1970-01-02 00:00:00 UTC"
    assert fmt.fields('{"path": "a.md", "content": "x\\ny", "n": 2, "d": {"k": 1}}') == [
        fmt.Field("path", "a.md", False),
        fmt.Field("content", "x\ny", True),
        fmt.Field("n", "2", False),
        fmt.Field("d", json.dumps({"k": 1}, indent=2), True),
    ]
    assert fmt.fields("[1, 2]") is None
    assert fmt.pretty(fmt.parse_json("not json")) == "not json"


def test_event_kinds_map_to_templates_safely() -> None:
    from nexus.server.dashboard.sessions import event_templates

    assert event_templates("tool.result") == ["events/tool.result.html", "events/default.html"]
    assert event_templates("../../etc/passwd") == ["events/default.html"]
