"""The dashboard's extension points: panels, actions, navigation and pages.

A feature adds itself by appending one entry to a list here (and shipping its
template); the pages that render these lists never change. Every registered
template gets the page's context (`session`, `csrf_token`, `request`, ...) plus
what its `context` function returns, and is re-rendered on every live update of
the page, so it may show live state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from nexus.server.dashboard import panels, views, waterfall

if TYPE_CHECKING:
    from fastapi import APIRouter
    from starlette.requests import Request

    from nexus.server.state import ServerState
    from nexus.storage.base import SessionRow

PageName = Literal["session", "sessions"]


@dataclass(frozen=True, slots=True)
class View:
    """What a panel or action is rendered for."""

    request: Request
    state: ServerState
    session: SessionRow | None = None  # None on the sessions list


@dataclass(frozen=True, slots=True)
class Panel:
    """A box on a page: beside the timeline (`page="session"`) or above the
    sessions list (`page="sessions"`).

    Args:
        name: stable id; the element is `panel-<name>` and live updates replace it.
        title: the box's heading.
        template: Jinja template of the box's body.
        context: extra template variables computed for the view.
        when: show the panel only when this returns True.
        page: which page shows it.
        order: lower comes first.
        place: on the session page, `side` (the column beside the timeline) or
            `main` (full width, above the timeline: a waterfall, a chart).
    """

    name: str
    title: str
    template: str
    context: Callable[[View], Mapping[str, Any]] | None = None
    when: Callable[[View], bool] | None = None
    page: PageName = "session"
    order: int = 100
    place: Literal["side", "main"] = "side"


@dataclass(frozen=True, slots=True)
class Action:
    """A control in a page's actions bar (a button or a link), rendered from
    `template`. A button with `data-post="/api/v1/..."` is wired by `nexus.js`:
    it POSTs (with the CSRF header; `data-body` JSON; `data-confirm` asks
    first) and then refreshes the page, or goes to `data-redirect` with `{id}`
    replaced by the response's `id`."""

    name: str
    template: str
    context: Callable[[View], Mapping[str, Any]] | None = None
    when: Callable[[View], bool] | None = None
    page: PageName = "session"
    order: int = 100


@dataclass(frozen=True, slots=True)
class NavLink:
    """A link in the top navigation; `match` is the path prefix that marks it current."""

    label: str
    path: str
    match: str = ""


PANELS: list[Panel] = [
    Panel("budget", "Budget", "panels/budget.html", context=panels.budget, order=10),
    Panel("details", "Details", "panels/details.html", context=panels.details, order=20),
    Panel(
        "waterfall",
        "Trace",
        "panels/waterfall.html",
        context=waterfall.waterfall,
        order=10,
        place="main",
    ),
    # Views for other readers than the timeline's (issue 11): product, domain experts.
    Panel("outcome", "Outcome", "panels/outcome.html", context=views.outcome, order=30),
    Panel(
        "conversation",
        "Conversation",
        "panels/conversation.html",
        context=views.conversation,
        order=40,
    ),
]
"""Boxes beside the session timeline or above the sessions list."""

ACTIONS: list[Action] = [
    Action("pause", "actions/pause.html", when=panels.pausable, order=10),
    Action("resume", "actions/resume.html", when=panels.resumable, order=10),
    Action("kill", "actions/kill.html", when=panels.killable, order=40),
    Action("replay", "actions/replay.html", when=panels.replayable, order=50),
    Action("export", "actions/export.html", order=90),
]
"""Controls in a page's actions bar (kill, pause, resume, rollback, approve...)."""

NAV: list[NavLink] = [
    NavLink("Sessions", "/", match="/sessions"),
    NavLink("Overview", "/overview", match="/overview"),
    NavLink("New session", "/new", match="/new"),
    NavLink("Workers", "/workers", match="/workers"),
]
"""Top navigation."""

PAGES: list[APIRouter] = []
"""Extra page routers (build them with `nexus.server.dashboard.web.page_router()`)."""

TEMPLATE_DIRS: list[Path] = []
"""Extra template folders, searched after the dashboard's own."""


def for_page(items: list[Any], page: PageName, view: View) -> list[Any]:
    """The entries of PANELS or ACTIONS that show on `page` for `view`, in order."""
    chosen = [i for i in items if i.page == page and (i.when is None or i.when(view))]
    return sorted(chosen, key=lambda i: i.order)
