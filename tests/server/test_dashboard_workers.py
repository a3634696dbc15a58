"""The dashboard's workers page: the worker registry with heartbeats (by the
database's clock), statuses and the sessions each runs, kept live; and the session
page naming the worker and run epoch of a session's latest run."""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.server.test_dashboard import DEMO_FILE, Browser, open_browser, text_of, wait_status
from tests.server.test_e2e import DESKTOP, Server, Tab, browser, shoot, sign_in  # noqa: F401
from tests.waiting import until_async

FAR = "far-host-1a2b"  # a worker of another machine, registered straight in the store


@pytest.fixture
async def quick(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Browser]:
    """The dashboard with workers, beating every 0.2 s and declaring a worker dead
    after 1 s of silence, signed in."""
    monkeypatch.setenv("NEXUS_HEARTBEAT_S", "0.2")
    monkeypatch.setenv("NEXUS_WORKER_TIMEOUT_S", "1")
    async for b in open_browser(workers=True):
        await b.login()
        yield b


async def fragment(web: Browser) -> dict[str, Any]:
    resp = await web.client.get("/fragments/workers")
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    return data


def rows(html: str) -> list[tuple[str, str]]:
    """(worker id, status) of each table row, in order."""
    return re.findall(r'<tr data-id="([^"]+)" data-key="([a-z]+):', html)


async def test_the_page_lists_this_server_alive_and_a_silent_worker_goes_dead(
    quick: Browser,
) -> None:
    """The server's own worker is listed alive (marked as this server); a worker of
    another host that beat once and fell silent is declared dead by the supervisor
    after the timeout, and the live fragment shows it dead, after the living, with
    the counts by status."""
    rt = quick.rt
    assert rt.store.beat(FAR, host="far-host", pid=4242, role="worker", starting=True) is None
    page = await quick.client.get("/workers")
    assert page.status_code == 200
    assert rows(page.text) == sorted([(rt.worker_id, "alive"), (FAR, "alive")])
    visible = text_of(page.text)
    assert f"{rt.worker_id} (this server)" in visible
    assert "2 workers 2 alive 0 sessions running" in visible
    assert "far-host 4242 worker" in visible
    assert 'aria-current="page">Workers' in page.text

    async def far_dead() -> bool:
        return (FAR, "dead") in rows((await fragment(quick))["replace"]["worker-rows"])

    await until_async(far_dead, "the silent worker declared dead")
    data = await fragment(quick)
    assert rows(data["replace"]["worker-rows"]) == [(rt.worker_id, "alive"), (FAR, "dead")]
    assert text_of(data["replace"]["worker-counts"]) == (
        "2 workers 1 alive 1 dead 0 sessions running"
    )
    assert data["state"] == {"total": 2}
    assert [w.status for w in rt.store.workers() if w.id == FAR] == ["dead"]


async def test_a_running_session_is_listed_under_its_worker_and_named_on_its_page(
    quick: Browser,
) -> None:
    """While a session runs it is linked from its worker's row; once it has ended its
    page still names the worker of its run and the run's epoch."""
    rt = quick.rt
    sid = rt.create_session("watched", replay=DEMO_FILE, replay_pace_s=0.5)
    await quick.app.state.nexus.submit(sid, 0)
    await wait_status(rt, sid, "running")

    async def listed() -> bool:
        html = (await fragment(quick))["replace"]["worker-rows"]
        return f'href="/sessions/{sid}"' in html

    await until_async(listed, "the running session under its worker")
    counts = text_of((await fragment(quick))["replace"]["worker-counts"])
    assert counts == "1 worker 1 alive 1 session running"
    await wait_status(rt, sid, "completed", timeout=60)
    page = text_of((await quick.client.get(f"/sessions/{sid}")).text)
    assert f"worker {rt.worker_id} run 1 " in page
    assert rt.store.session_owner(sid) == (1, rt.worker_id)


async def test_a_session_never_run_says_so(quick: Browser) -> None:
    sid = quick.rt.create_session("never run")
    page = text_of((await quick.client.get(f"/sessions/{sid}")).text)
    assert "worker not run yet" in page


async def test_the_workers_page_needs_a_login() -> None:
    """Signed out, the page sends you to the login and the fragment answers 401."""
    async for web in open_browser(workers=False):
        page = await web.client.get("/workers")
        assert (page.status_code, page.headers["location"]) == (303, "/login?next=/workers")
        frag = await web.client.get("/fragments/workers")
        assert frag.status_code == 401
        assert json.loads(frag.text)["status"] == 401


@pytest.mark.slow
def test_the_workers_page_updates_live_in_a_browser(
    monkeypatch: pytest.MonkeyPatch,
    browser: Any,  # noqa: F811
) -> None:
    """In Chromium, without a reload: a worker that registers appears, and when it
    falls silent it turns dead; no console errors (CSP holds). Screenshot:
    test-artifacts/screenshots/workers-desktop.png."""
    monkeypatch.setenv("NEXUS_HEARTBEAT_S", "0.3")
    monkeypatch.setenv("NEXUS_WORKER_TIMEOUT_S", "1.5")
    with Server() as server:
        context = browser.new_context(viewport=DESKTOP)
        tab = Tab(context, server.url)
        sign_in(tab, server.token)
        tab.goto("/workers")
        page = tab.page
        page.locator(f'tr[data-id="{server.rt.worker_id}"] .badge.wk-alive').wait_for()
        tab.mark()
        server.rt.store.beat(FAR, host="far-host", pid=os.getpid(), role="worker", starting=True)
        page.locator(f'tr[data-id="{FAR}"] .badge.wk-alive').wait_for()
        page.locator(f'tr[data-id="{FAR}"] .badge.wk-dead').wait_for()
        assert tab.still_marked()
        counts = page.locator('[data-fragment="worker-counts"] span').all_inner_texts()
        assert counts == ["2 workers", "1 alive", "1 dead", "0 sessions running"]
        shoot(tab, "workers-desktop")
        assert tab.errors == []
        context.close()
