"""The dashboard in a real browser: Chromium (Playwright) against a real uvicorn
with the session workers, signing in, starting sessions and watching them live.

Screenshots of the sessions page and a session page, at desktop and phone sizes,
land in test-artifacts/screenshots/.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn

from nexus.config import load_settings
from nexus.examples import demo_recording
from nexus.runtime.runtime import Runtime
from nexus.server.app import create_app
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-artifacts" / "screenshots"
DEMO = "demo.json"  # under NEXUS_HOME/recordings/ (conftest.py)
DEMO_FILE = str(demo_recording())  # the runtime itself takes any local file
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
T = TypeVar("T")


class Server:
    """uvicorn serving the full app (workers included) on its own loop and thread."""

    def __init__(self, *, workers: bool = True) -> None:
        self.rt = Runtime(load_settings())
        self.app = create_app(self.rt, heartbeat_s=5, workers=workers)
        self.state = self.app.state.nexus
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning"))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, name="uvicorn")
        self.token: str = self.state.auth.tokens.read()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve(sockets=[self.sock]))
        # The whole runtime, not only its store: its control watcher polls while a
        # session the stopped workers cancelled is still registered with it.
        self.loop.run_until_complete(self.rt.aclose())
        self.loop.close()

    def __enter__(self) -> Server:
        self.thread.start()
        wait_for(lambda: self.server.started, "server start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.state.broadcaster.close_all()
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()

    def call(self, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run a coroutine on the server's loop (where the runtime and workers live)."""
        return asyncio.run_coroutine_threadsafe(fn(), self.loop).result(30)

    def post_session(self, **body: Any) -> str:
        resp = httpx.post(
            f"{self.url}/api/v1/sessions",
            json=body,
            headers={"Authorization": f"Bearer {self.token}"},
        )
        assert resp.status_code == 201, resp.text
        session_id: str = resp.json()["id"]
        return session_id


@pytest.fixture
def server() -> Iterator[Server]:
    with Server() as s:
        yield s


@pytest.fixture
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (scripts/test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Tab:
    """A page that records console errors (a CSP violation is one)."""

    def __init__(self, context: Any, base: str) -> None:
        self.page = context.new_page()
        self.page.set_default_timeout(20_000)
        self.base = base
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def goto(self, path: str) -> None:
        self.page.goto(self.base + path)

    def mark(self) -> None:
        """Tag the document; `still_marked` proves no reload happened since."""
        self.page.evaluate("window.__nexusMark = 'same-document'")

    def still_marked(self) -> bool:
        return bool(self.page.evaluate("window.__nexusMark === 'same-document'"))


def sign_in(tab: Tab, token: str) -> None:
    tab.goto("/")
    tab.page.wait_for_url(re.compile(r"/login\?next=/$"))
    tab.page.fill("input[name=token]", token)
    tab.page.click("button[type=submit]")
    tab.page.wait_for_url(tab.base + "/")


def shoot(tab: Tab, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    tab.page.screenshot(path=str(path), full_page=True)
    return path


def test_sign_in_refuses_a_wrong_token_then_lets_the_right_one_in(
    server: Server, browser: Any
) -> None:
    context = browser.new_context(viewport=DESKTOP)
    tab = Tab(context, server.url)
    tab.goto("/sessions/s_whatever")
    tab.page.wait_for_url(re.compile(r"/login\?next="))
    tab.page.fill("input[name=token]", "certainly-not-the-token")
    tab.page.click("button[type=submit]")
    alert = tab.page.locator("[role=alert]")
    alert.wait_for()
    assert alert.inner_text() == "That token is not valid."
    assert "/login" in tab.page.url
    cookies = context.cookies()
    assert [c["name"] for c in cookies] == []
    tab.page.fill("input[name=token]", server.token)
    tab.page.click("button[type=submit]")
    tab.page.wait_for_url(server.url + "/sessions/s_whatever")
    assert tab.page.locator("h1").inner_text() == "Session not found"
    (cookie,) = context.cookies()
    assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == (
        "nexus_session",
        True,
        "Strict",
    )
    # The only console errors are the browser noting the 401 and 404 documents.
    assert len(tab.errors) == 2
    assert "status of 401" in tab.errors[0] and "status of 404" in tab.errors[1]
    context.close()


def test_sessions_watched_live_from_list_and_page(server: Server, browser: Any) -> None:
    """The list shows a new session and its completion without a reload; a session
    page opened before its session starts fills its timeline and header live."""
    context = browser.new_context(viewport=DESKTOP)
    tab = Tab(context, server.url)
    sign_in(tab, server.token)
    page = tab.page
    page.locator(".live[data-state=live]").wait_for()
    tab.mark()

    # 1. The list: a session created elsewhere appears, then turns completed.
    first = server.post_session(goal="Report from the API", replay=DEMO)
    page.locator(f'tr[data-id="{first}"] .badge.st-completed').wait_for()
    assert tab.still_marked()
    assert page.locator(f'tr[data-id="{first}"] .rowlink').inner_text() == "Report from the API"
    assert page.locator(".chip.st-completed b").inner_text() == "1"

    # 2. A session page opened while the session is still queued.
    second = server.call(
        lambda: _create(server.rt, goal="Paced demo report", replay=DEMO_FILE, replay_pace_s=0.25)
    )
    tab.goto(f"/sessions/{second}")
    page.locator(".live[data-state=live]").wait_for()
    assert page.locator(".timeline > li").count() == 1
    assert page.locator(".session-head .badge").get_attribute("data-status") == "queued"
    # Record every status the header shows and every timeline length, as they happen.
    page.evaluate(
        """() => {
            window.__seen = {status: [], entries: []};
            const note = () => {
                const b = document.querySelector('.session-head .badge');
                const s = b && b.dataset.status;
                if (s && window.__seen.status.at(-1) !== s) window.__seen.status.push(s);
                const n = document.querySelectorAll('.timeline > li').length;
                if (window.__seen.entries.at(-1) !== n) window.__seen.entries.push(n);
            };
            note();
            new MutationObserver(note).observe(document.body, {subtree: true, childList: true});
        }"""
    )
    tab.mark()
    server.call(lambda: server.state.submit(second, 0))
    done = page.locator('.timeline > li[data-kind="session.completed"]')
    done.wait_for()
    assert tab.still_marked()
    page.locator('.live[data-state="ended"]').wait_for()
    seen = page.evaluate("window.__seen")
    assert seen["status"] == ["queued", "running", "completed"]
    assert len(seen["entries"]) >= 4 and seen["entries"] == sorted(seen["entries"])
    journal = [e.kind for e in server.rt.journal.events(second)]
    shown = page.eval_on_selector_all(".timeline > li", "els => els.map(e => e.dataset.kind)")
    assert shown == journal
    row = server.rt.session(second)
    assert page.locator('[data-stat="steps"]').inner_text() == str(row.steps)
    # The answer is stored once, in its llm.response: the last LLM card shows it.
    answer = page.locator('.timeline > li[data-kind="llm.response"]').last
    assert "report.md is written" in answer.inner_text()
    assert "9 steps" in done.inner_text()
    assert page.locator(".tail.done").inner_text().startswith("Session completed")
    assert page.title() == f"{second} · completed · NEXUS"

    # 3. Back on the list, both are completed.
    tab.goto("/")
    for sid in (first, second):
        page.locator(f'tr[data-id="{sid}"] .badge.st-completed').wait_for()
    assert tab.errors == []
    context.close()


def test_new_session_form_and_replay_button_then_screenshots(server: Server, browser: Any) -> None:
    """A session started from the form runs; its Replay button (a JS POST with the
    CSRF header) starts another; then screenshots at desktop and phone sizes."""
    for goal in ("Triage the flaky CI job", "Draft the release notes"):
        server.post_session(goal=goal, replay=DEMO, labels={"team": "ops"})
    server.post_session(goal="Stay within three steps", replay=DEMO, budget={"max_steps": 3})
    context = browser.new_context(viewport=DESKTOP)
    tab = Tab(context, server.url)
    sign_in(tab, server.token)
    page = tab.page

    tab.goto("/new")
    page.fill("textarea[name=goal]", "Write the sprint report")
    page.click("details.advanced > summary")
    page.fill("input[name=replay]", DEMO)
    page.fill("input[name=labels]", "sprint=42")
    page.click("button:has-text('Start session')")
    page.wait_for_url(re.compile(r"/sessions/s_[0-9a-f]+$"))
    formed = page.url.rsplit("/", 1)[1]
    page.locator('.timeline > li[data-kind="session.completed"]').wait_for()
    assert server.rt.session(formed).labels == {"sprint": "42"}

    page.click("button[data-post]:has-text('Replay')")
    page.wait_for_url(lambda url: "/sessions/s_" in url and not url.endswith(formed))
    replayed = page.url.rsplit("/", 1)[1]
    page.locator('.timeline > li[data-kind="session.completed"]').wait_for()
    again = server.rt.session(replayed)
    assert (again.goal, again.labels, again.status) == (
        "Write the sprint report",
        {"replay-of": formed},
        "completed",
    )

    failed = next(s.id for s in server.rt.sessions() if s.status == "failed")
    shots = []
    tab.goto("/")
    page.locator(f'tr[data-id="{replayed}"] .badge.st-completed').wait_for()
    shots.append(shoot(tab, "sessions-desktop"))
    tab.goto(f"/sessions/{formed}")
    shots.append(shoot(tab, "session-desktop"))
    tab.goto(f"/sessions/{failed}")
    shots.append(shoot(tab, "session-failed-desktop"))
    assert tab.errors == []

    phone = browser.new_context(
        viewport=PHONE,
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        storage_state=context.storage_state(),
    )
    ptab = Tab(phone, server.url)
    ptab.goto("/")
    ptab.page.locator(f'tr[data-id="{replayed}"]').wait_for()
    # Cards, not a table: the header row is hidden and no card is wider than the screen.
    assert not ptab.page.locator("table.sessions thead").is_visible()
    widths = ptab.page.eval_on_selector_all(
        "tr.row", "els => els.map(e => e.getBoundingClientRect().right)"
    )
    assert widths and max(widths) <= PHONE["width"]
    assert ptab.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    shots.append(shoot(ptab, "sessions-phone"))
    ptab.goto(f"/sessions/{formed}")
    assert ptab.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    shots.append(shoot(ptab, "session-phone"))
    assert ptab.errors == []
    assert all(p.stat().st_size > 10_000 for p in shots)
    phone.close()
    context.close()


async def _create(rt: Runtime, **kw: Any) -> str:
    """Journal a session without submitting it (the test submits it later)."""
    goal = kw.pop("goal")
    return rt.create_session(goal, **kw)


def test_kill_confirmed_and_pause_resume_with_a_note_from_a_live_session_page(
    server: Server, browser: Any
) -> None:
    """Kill… opens its confirmation; confirming kills the running session and the
    page says killed, by whom and why. Pause turns the live page to paused, whose
    bar then offers Resume with a note; the session completes. No CSP violation."""
    context = browser.new_context(viewport=DESKTOP)
    tab = Tab(context, server.url)
    sign_in(tab, server.token)
    page = tab.page

    slow = server.post_session(goal="Kill me", replay=DEMO, replay_pace_s=30)
    tab.goto(f"/sessions/{slow}")
    page.locator('.session-head .badge[data-status="running"]').wait_for()
    page.click("text=Kill…")
    page.wait_for_url(f"{server.url}/sessions/{slow}/kill")
    assert page.locator("h1").inner_text() == "Kill this session?"
    shoot(tab, "kill-confirm")
    page.fill("input[name=reason]", "looping on one tool")
    page.click("button:has-text('Kill session')")
    page.wait_for_url(f"{server.url}/sessions/{slow}")
    assert page.locator(".session-head .badge").get_attribute("data-status") == "killed"
    killed = page.locator('.timeline > li[data-kind="session.killed"]')
    text = killed.inner_text()
    assert "by dashboard:login-" in text and "looping on one tool" in text, text
    assert "the LLM request in flight was aborted" in text
    assert (
        page.locator(
            "[data-fragment=actions] form, [data-fragment=actions] a[href$='/kill']"
        ).count()
        == 0
    )

    paced = server.post_session(goal="Pause me", replay=DEMO, replay_pace_s=1)
    tab.goto(f"/sessions/{paced}")
    page.locator('.session-head .badge[data-status="running"]').wait_for()
    page.click("button:has-text('Pause')")
    page.locator('.session-head .badge[data-status="paused"]').wait_for()
    page.locator("input[name=note]").wait_for()  # the bar, refreshed live, offers Resume
    shoot(tab, "session-paused")
    page.fill("input[name=note]", "Keep the report short.")
    page.click("button:has-text('Resume')")
    page.locator('.timeline > li[data-kind="session.completed"]').wait_for()
    note = page.locator('.timeline > li[data-kind="session.control"]').inner_text()
    assert "Keep the report short." in note, note
    assert tab.errors == []
    context.close()
