"""The sessions list as an SRE uses it, in Chromium against a real uvicorn: 50
sessions of mixed status and cost, sorted, searched and filtered through the URL,
with the totals strip matching the API, one line per session on a 1440x900 screen
and clipped goals on a phone. Screenshots land in test-artifacts/screenshots/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nexus.format import money
from nexus.server.dashboard.format import count
from tests.server.mixed import EXPENSIVE, LONG_GOAL, seed_mixed
from tests.server.test_e2e import PHONE, SHOTS, Server, Tab, browser, sign_in  # noqa: F401

pytestmark = pytest.mark.slow

WIDE = {"width": 1440, "height": 900}


@pytest.fixture
def seeded() -> Iterator[tuple[Server, list[str]]]:
    """A server without workers (the seeded statuses stay as journaled)."""
    server = Server(workers=False)
    ids = seed_mixed(server.rt, 50)
    with server:
        yield server, ids


def api(server: Server, path: str, **params: Any) -> Any:
    resp = httpx.get(
        f"{server.url}{path}", params=params, headers={"Authorization": f"Bearer {server.token}"}
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


def api_ids(server: Server, **params: Any) -> list[str]:
    return [r["id"] for r in api(server, "/api/v1/sessions", limit=500, **params)["items"]]


def strip_text(server: Server, **params: Any) -> str:
    """What the totals strip must say for these filters, from the API's totals."""
    t = api(server, "/api/v1/sessions/totals", **params)
    text = (
        f"{count(t['count'])} sessions {money(t['cost_usd'])} total "
        f"{count(t['tokens_in'] + t['tokens_out'])} tokens {t['failed']} failed of "
        f"{t['finished']} finished"
    )
    return text + (f" ({100 * t['failure_rate']:.1f}%)" if t["finished"] else "")


def shown(tab: Tab) -> tuple[list[str], str]:
    """The rows' ids in order and the totals strip's text."""
    ids = tab.page.eval_on_selector_all("tr.row", "els => els.map(e => e.dataset.id)")
    return ids, " ".join(tab.page.locator(".totals").inner_text().split())


def shot(tab: Tab, name: str, *, full: bool = False) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    tab.page.screenshot(path=str(path), full_page=full)
    return path


def test_an_sre_sorts_searches_and_filters_the_list_and_the_totals_follow(
    seeded: tuple[Server, list[str]],
    browser: Any,  # noqa: F811
) -> None:
    server, ids = seeded
    context = browser.new_context(viewport=WIDE)
    tab = Tab(context, server.url)
    sign_in(tab, server.token)
    page = tab.page
    assert shown(tab) == (api_ids(server), strip_text(server))
    # One line per session: the long goal's row is as tall as any (the last has no border).
    heights = page.eval_on_selector_all("tr.row", "els => els.map(e => e.offsetHeight)")
    assert len(heights) == 50 and max(heights) - min(heights) <= 1, heights
    on_screen = page.eval_on_selector_all(
        "tr.row", "els => els.filter(e => e.getBoundingClientRect().bottom <= 900).length"
    )
    shot(tab, "sessions-list-1440x900")
    assert on_screen >= 20, on_screen

    # Sorted by cost, the most expensive is first; the header says so.
    page.click("th.c-cost a")
    page.wait_for_url(f"{server.url}/?sort=-cost")
    assert shown(tab) == (api_ids(server, sort="-cost"), strip_text(server))
    assert shown(tab)[0][0] == ids[EXPENSIVE]
    assert page.locator("th[aria-sort]").inner_text() == "COST ↓"
    assert page.locator("tr.row .c-cost").first.inner_text() == "$0.0223"
    shot(tab, "sessions-by-cost-1440x900")
    page.click("th.c-cost a")  # again: cheapest first
    page.wait_for_url(f"{server.url}/?sort=cost")
    assert shown(tab)[0] == api_ids(server, sort="cost")

    # A search, then a label clicked in a row, then a time range: all in the URL.
    page.fill("input[name=q]", "report 2")
    page.press("input[name=q]", "Enter")
    page.wait_for_url(f"{server.url}/?q=report+2&sort=cost")
    assert shown(tab) == (
        api_ids(server, q="report 2", sort="cost"),
        strip_text(server, q="report 2"),
    )
    page.click("tr.row .label:text-is('team=ops')")
    page.wait_for_url(f"{server.url}/?q=report+2&label=team%3Dops&sort=cost")
    expect = api_ids(server, q="report 2", label="team=ops", sort="cost")
    assert shown(tab) == (expect, strip_text(server, q="report 2", label="team=ops"))
    assert [server.rt.session(i).labels["n"] for i in expect] == ["24", "21", "27"]
    shot(tab, "sessions-filtered-1440x900")

    # The same view from its URL alone (shared), with a time range from the form.
    first = server.rt.session(ids[10]).created_at
    from_utc = _utc_minute(first)
    page.goto(f"{server.url}/?created_after={from_utc}&sort=-steps")
    after = _minute_floor(first)
    assert shown(tab) == (
        api_ids(server, created_after=after, sort="-steps"),
        strip_text(server, created_after=after),
    )
    assert page.locator("input[name=created_after]").input_value() == from_utc
    page.goto(f"{server.url}/?created_after=yesterday")
    assert (
        "created after: 'yesterday' is not a date and time (UTC)"
        in page.locator(".filter-problems").inner_text()
    )
    assert shown(tab) == (api_ids(server), strip_text(server))
    assert tab.errors == []
    context.close()


def test_on_a_phone_the_list_is_cards_with_clipped_goals_and_the_same_totals(
    seeded: tuple[Server, list[str]],
    browser: Any,  # noqa: F811
) -> None:
    server, ids = seeded
    context = browser.new_context(
        viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    tab = Tab(context, server.url)
    sign_in(tab, server.token)
    page = tab.page
    page.goto(f"{server.url}/?sort=-cost")
    assert shown(tab) == (api_ids(server, sort="-cost"), strip_text(server))
    assert shown(tab)[0][0] == ids[EXPENSIVE]
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    shot(tab, "sessions-phone-by-cost")
    shot(tab, "sessions-phone-by-cost-full", full=True)
    long_goal = page.locator(f'tr[data-id="{ids[3]}"] .c-goal')
    assert long_goal.get_attribute("title").startswith(LONG_GOAL[:200])
    # Two lines of it shown (as tall as a two-line goal), the rest clipped.
    client, scroll = long_goal.evaluate("e => [e.clientHeight, e.scrollHeight]")
    two = page.evaluate(
        "() => { const g = document.querySelector('tr.row .c-goal');"
        " const h1 = g.clientHeight;"
        " g.querySelector('a').textContent += ' and more words'.repeat(8);"
        " return [h1, g.clientHeight]; }"
    )
    assert client == two[1] < scroll and two[1] < 3 * two[0], (client, scroll, two)
    assert tab.errors == []
    context.close()


def _utc_minute(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M")


def _minute_floor(ts: float) -> float:
    return float(int(ts) // 60 * 60)
