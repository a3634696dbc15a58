"""Kill, pause and resume on a session's page (httpx.ASGITransport, signed in with
a cookie): the buttons show only when they apply, a kill is confirmed first, every
form needs its CSRF token, and the timeline says who did what and why."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from nexus.server.auth import COOKIE
from tests.server.test_dashboard import DEMO, Browser, open_browser, text_of, wait_status
from tests.waiting import until

SLOW = 30.0  # seconds per replayed answer: a step is surely in flight when we act


@pytest.fixture
async def web() -> AsyncIterator[Browser]:
    """Signed in, without workers: sessions stay queued."""
    async for b in open_browser(workers=False):
        await b.login()
        yield b


@pytest.fixture
async def live_web() -> AsyncIterator[Browser]:
    """Signed in, with the session workers running."""
    async for b in open_browser(workers=True):
        await b.login()
        yield b


async def start(b: Browser, pace_s: float = 0.0) -> str:
    """A session of the demo recording, created through the new-session form."""
    form = {"csrf_token": await b.csrf(), "goal": "Demo report", "replay": DEMO}
    if pace_s:
        form["replay_pace_s"] = str(pace_s)
    resp = await b.client.post("/new", data=form)
    assert resp.status_code == 303, resp.text
    return resp.headers["location"].removeprefix("/sessions/")


def me(b: Browser) -> str:
    """The `by` of this browser's commands: its login, named by a digest of the sid."""
    sid = str(b.client.cookies[COOKIE]).split(".")[0]
    return f"dashboard:login-{hashlib.sha256(sid.encode()).hexdigest()[:8]}"


async def controls(b: Browser, session_id: str) -> list[str]:
    """The control actions the session's page offers, in the bar's order."""
    page = (await b.client.get(f"/sessions/{session_id}")).text
    bar = re.search(r'data-fragment="actions">(.*?)</div>', page, re.S)
    assert bar, page
    pattern = rf'(?:action|href)="/sessions/{session_id}/(kill|pause|resume)"'
    return re.findall(pattern, bar.group(1))


async def post(b: Browser, session_id: str, kind: str, **form: str) -> httpx.Response:
    return await b.client.post(
        f"/sessions/{session_id}/{kind}", data={"csrf_token": await b.csrf(), **form}
    )


def kinds(b: Browser, session_id: str) -> list[str]:
    return [e.kind for e in b.rt.journal.events(session_id)]


async def test_kill_asks_for_confirmation_first(web: Browser) -> None:
    """A kill POST without `confirm=yes` only leads to the confirmation page; its
    form (CSRF token, confirm, reason) kills, and the page then says killed, by
    whom and why."""
    sid = await start(web)
    resp = await post(web, sid, "kill")
    assert (resp.status_code, resp.headers["location"]) == (303, f"/sessions/{sid}/kill")
    assert web.rt.store.commands(sid) == []
    assert web.rt.session(sid).status == "queued"

    page = await web.client.get(f"/sessions/{sid}/kill")
    assert page.status_code == 200
    form = re.search(
        r'<form method="post" action="/sessions/[^"]+/kill".*?</form>', page.text, re.S
    )
    assert form, page.text
    fields = dict(
        re.findall(
            r'<input type="(?:hidden|text)" name="([a-z_]+)"(?: value="([^"]*)")?', form.group(0)
        )
    )
    assert fields == {"csrf_token": await web.csrf(), "confirm": "yes", "reason": ""}
    assert "Kill this session?" in text_of(page.text)

    resp = await post(web, sid, "kill", confirm="yes", reason="wrong goal")
    assert (resp.status_code, resp.headers["location"]) == (303, f"/sessions/{sid}")
    row = web.rt.session(sid)
    assert (row.status, row.reason) == ("killed", "wrong goal")
    [cmd] = web.rt.store.commands(sid)
    assert (cmd.kind, cmd.by, cmd.reason) == ("kill", me(web), "wrong goal")
    shown = text_of((await web.client.get(f"/sessions/{sid}")).text)
    for needle in (
        "Killed by " + me(web),
        f"command {cmd.id}",
        "wrong goal",
        "the session was not running: no step was cut short",
        "Session killed",
    ):
        assert needle in shown, needle
    assert await controls(web, sid) == []  # ended: nothing left to control
    # The confirmation page of an ended session goes back to it.
    again = await web.client.get(f"/sessions/{sid}/kill")
    assert (again.status_code, again.headers["location"]) == (303, f"/sessions/{sid}")


@pytest.mark.parametrize("kind", ["kill", "pause", "resume"])
@pytest.mark.parametrize("token", [None, "forged"])
async def test_control_forms_without_their_csrf_token_are_refused(
    web: Browser, kind: str, token: str | None
) -> None:
    sid = await start(web)
    form = {"confirm": "yes", "note": "n"}
    if token is not None:
        form["csrf_token"] = token
    resp = await web.client.post(f"/sessions/{sid}/{kind}", data=form)
    assert resp.status_code == 403
    assert "missing or invalid CSRF token" in text_of(resp.text)
    assert web.rt.store.commands(sid) == []
    assert kinds(web, sid) == ["session.created"]


async def test_a_cross_site_control_form_is_refused(web: Browser) -> None:
    sid = await start(web)
    resp = await web.client.post(
        f"/sessions/{sid}/kill",
        data={"csrf_token": await web.csrf(), "confirm": "yes"},
        headers={"Sec-Fetch-Site": "cross-site"},
    )
    assert resp.status_code == 403
    assert web.rt.store.commands(sid) == []


async def test_a_queued_session_offers_pause_and_kill(web: Browser) -> None:
    sid = await start(web)
    assert await controls(web, sid) == ["pause", "kill"]


async def test_commands_to_an_ended_session_are_a_409_page(web: Browser) -> None:
    sid = await start(web)
    await post(web, sid, "kill", confirm="yes")
    for kind in ("pause", "resume"):
        resp = await post(web, sid, kind)
        assert resp.status_code == 409
        assert f"Already ended session {sid} has already ended killed" in text_of(resp.text)
    assert [c.kind for c in web.rt.store.commands(sid)] == ["kill"]


async def test_unknown_sessions_are_a_404_page(web: Browser) -> None:
    for kind in ("kill", "pause", "resume"):
        resp = await post(web, "s_nope", kind, confirm="yes")
        assert resp.status_code == 404
        assert "no session 's_nope'" in text_of(resp.text)
    assert (await web.client.get("/sessions/s_nope/kill")).status_code == 404


async def test_pause_then_resume_with_a_note_from_the_page(live_web: Browser) -> None:
    """Running: Pause and Kill; paused: Resume (with its note field) and Kill; the
    resumed session completes and its timeline shows the note and who sent it."""
    b = live_web
    sid = await start(b, 1.0)
    await until(lambda: "llm.request" in kinds(b, sid), "the first LLM call")
    assert await controls(b, sid) == ["pause", "kill"]

    resp = await post(b, sid, "pause")
    assert (resp.status_code, resp.headers["location"]) == (303, f"/sessions/{sid}")
    await wait_status(b.rt, sid, "paused")
    assert await controls(b, sid) == ["resume", "kill"]
    page = (await b.client.get(f"/sessions/{sid}")).text
    assert re.search(r'<input type="text" name="note" maxlength="20000"', page)
    assert "Paused by " + me(b) in text_of(page)
    assert "Paused — no step runs until it is resumed." in text_of(page)

    note = "Write the report in report.md & keep it short."
    resp = await post(b, sid, "resume", note=note)
    assert (resp.status_code, resp.headers["location"]) == (303, f"/sessions/{sid}")
    await wait_status(b.rt, sid, "completed")
    resume = [c for c in b.rt.store.commands(sid) if c.kind == "resume"]
    assert [(c.by, c.reason, c.data) for c in resume] == [(me(b), "resumed", {"note": note})]
    controls_seen = [e.payload for e in b.rt.journal.events(sid) if e.kind == "session.control"]
    assert controls_seen == [
        {"command": resume[0].id, "kind": "resume", "by": me(b), "reason": "resumed", "note": note}
    ]
    shown = text_of((await b.client.get(f"/sessions/{sid}")).text)
    assert f"Resume by {me(b)} command {resume[0].id}" in shown
    assert f"Note for the agent {note}" in shown
    assert await controls(b, sid) == []


async def test_killing_a_running_session_shows_killed_who_why_and_what_was_cut(
    live_web: Browser,
) -> None:
    b = live_web
    sid = await start(b, SLOW)
    await until(lambda: "llm.request" in kinds(b, sid), "the first LLM call")
    resp = await post(b, sid, "kill", confirm="yes", reason="it is looping")
    assert (resp.status_code, resp.headers["location"]) == (303, f"/sessions/{sid}")
    assert b.rt.session(sid).status == "killed"  # the form waited for it
    page = (await b.client.get(f"/sessions/{sid}")).text
    assert 'data-status="killed"' in page
    shown = text_of(page)
    [cmd] = b.rt.store.commands(sid)
    for needle in (
        f"Killed by {me(b)} command {cmd.id}",
        "it is looping",
        "the LLM request in flight was aborted",
        "Reason: it is looping",
    ):
        assert needle in shown, needle


CHIP = re.compile(r'class="chip st-([a-z_]+)[^"]*"><span class="dot"></span>[^<]*<b>(\d+)</b>')


async def test_the_status_chips_count_paused_and_killed_sessions(live_web: Browser) -> None:
    """One session paused (over the API with the page's CSRF header, as nexus.js
    would), one killed from its page: the list's chips count each."""
    b = live_web
    paused, killed = await start(b, 1.0), await start(b, SLOW)
    for sid in (paused, killed):
        await until(lambda sid=sid: "llm.request" in kinds(b, sid), "an LLM call")
    resp = await b.client.post(
        f"/api/v1/sessions/{paused}/pause?wait=true&wait_s=30",
        headers={"X-CSRF-Token": await b.csrf()},
    )
    assert resp.json()["session"]["status"] == "paused", resp.text
    await post(b, killed, "kill", confirm="yes")
    chips = dict(CHIP.findall((await b.client.get("/")).text))
    assert chips == {
        "queued": "0",
        "running": "0",
        "paused": "1",
        "awaiting_approval": "0",
        "completed": "0",
        "failed": "0",
        "killed": "1",
    }
    [pause] = b.rt.store.commands(paused)
    assert pause.by == me(b).replace("dashboard:", "api:")  # the same login, over the API
