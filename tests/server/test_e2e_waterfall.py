"""The span waterfall in Chromium (Playwright) against a real uvicorn with the workers:
it grows live while a paced replay runs (open bars, no reload), then holds one row
per span of the trace API's tree, each bar drawn inside its parent's; no CSP
violation; screenshots at desktop and phone sizes in test-artifacts/screenshots/."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.server.test_e2e import (
    DEMO,
    DESKTOP,
    PHONE,
    Server,
    Tab,
    browser,
    server,
    shoot,
    sign_in,
)

pytestmark = pytest.mark.slow


# The Chromium and server fixtures of the dashboard's end-to-end tests.
chromium = browser
live = server


def spans_of(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(s for c in node["children"] for s in spans_of(c))]


def test_the_waterfall_grows_live_then_shows_every_span(live: Server, chromium: Any) -> None:
    # Paced to run for about 10 s: long enough to be seen open on a loaded machine.
    sid = live.post_session(goal="Summarise the notes", replay=DEMO, replay_pace_s=1.0)
    context = chromium.new_context(viewport=DESKTOP)
    tab = Tab(context, live.url)
    sign_in(tab, live.token)
    page = tab.page
    tab.goto(f"/sessions/{sid}")
    tab.mark()
    panel = page.locator("#panel-waterfall")
    panel.locator(".wf-row.wf-open").first.wait_for()  # running: an open bar
    page.locator('.timeline > li[data-kind="session.completed"]').wait_for()
    page.wait_for_function(
        "() => !document.querySelector('#panel-waterfall .wf-open')"
        " && document.querySelector('#panel-waterfall .wf-invoke_agent.wf-s-ok')"
    )
    assert tab.still_marked()  # the panel was re-rendered live, not by a reload

    trace = httpx.get(
        f"{live.url}/api/v1/sessions/{sid}/trace",
        headers={"Authorization": f"Bearer {live.token}"},
    ).json()
    spans = spans_of(trace["root"])
    shown = panel.locator(".wf-row[data-span]")
    assert shown.evaluate_all("rows => rows.map(r => r.dataset.span)") == [
        s["span_id"] for s in spans
    ]
    boxes = page.eval_on_selector_all(
        "#panel-waterfall .wf-row[data-span]",
        """rows => rows.map(r => {
            const bar = r.querySelector('.wf-bar').getBoundingClientRect();
            const track = r.querySelector('.wf-track').getBoundingClientRect();
            return [r.dataset.span, bar.left, bar.right, bar.width, track.left, track.right];
        })""",
    )
    at = {b[0]: b for b in boxes}
    for span in spans:
        _, left, right, width, track_left, track_right = at[span["span_id"]]
        assert width > 0 and track_left - 0.5 <= left and right <= track_right + 0.5
        if span["parent_id"] is not None:
            parent = at[span["parent_id"]]
            assert parent[1] - 0.5 <= left and right <= parent[2] + 0.5, span["name"]
    assert at[spans[0]["span_id"]][3] == pytest.approx(
        at[spans[0]["span_id"]][5] - at[spans[0]["span_id"]][4], abs=1
    )
    shots = [shoot(tab, "session-waterfall-desktop")]
    assert tab.errors == []

    phone = chromium.new_context(
        viewport=PHONE,
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        storage_state=context.storage_state(),
    )
    ptab = Tab(phone, live.url)
    ptab.goto(f"/sessions/{sid}")
    ptab.page.locator("#panel-waterfall .wf-row[data-span]").first.wait_for()
    assert ptab.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    ptab.page.locator("#panel-waterfall").screenshot(
        path=str(shots[0].with_name("session-waterfall-phone.png"))
    )
    assert ptab.errors == []
    assert shots[0].stat().st_size > 10_000
    phone.close()
    context.close()
