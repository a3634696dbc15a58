"""The sessions list (`/`) and one session's page (`/sessions/{id}`).

Each page renders in full on the server. Live updates re-render parts of it
on the server too: the page's script listens to the SSE stream and, on news,
fetches `/fragments/...`, which answers `{"replace": {name: html}, "append":
{name: html}, "state": {...}}` with the same templates. One renderer, so a row,
a timeline entry or a panel looks the same whether it came with the page or live.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from nexus.runtime.runtime import dump_export
from nexus.server.broadcast import event_json
from nexus.server.dashboard.filters import SORT_NAMES, STATUSES, Filters
from nexus.server.dashboard.panels import elapsed
from nexus.server.dashboard.registry import ACTIONS, PANELS, PageName, Panel, View, for_page
from nexus.server.dashboard.web import page_router, render, render_text, require_login, state_of
from nexus.storage.base import EventRow
from nexus.types import SessionStatus

router = page_router()
PAGE_SIZE = 50


# -- the sessions list ------------------------------------------------------------------


def list_context(request: Request) -> dict[str, Any]:
    """What the sessions page and its live fragment render."""
    state = state_of(request)
    f = Filters.of(request.query_params)
    rows = state.runtime.sessions(f.query(limit=PAGE_SIZE + 1))
    store = state.runtime.store
    counts = {s: store.count_sessions([s]) for s in STATUSES}
    view = View(request, state)
    return {
        "filters": f,
        "totals": store.session_totals(f.parsed),
        "sorts": SORT_NAMES,
        "sessions": rows[:PAGE_SIZE],
        "has_more": len(rows) > PAGE_SIZE,
        "page_size": PAGE_SIZE,
        "total": sum(counts.values()),
        "counts": counts,
        "statuses": STATUSES,
        "agents": [a.name for a in state.runtime.agents.all()],
        "panels": _panels(view, "sessions"),
        "actions": _actions(view, "sessions"),
    }


@router.get("/")
async def sessions_page(request: Request) -> Response:
    """Every session, newest first or as sorted, filtered, with totals, live."""
    require_login(request)
    return render(request, "sessions.html", list_context(request))


@router.get("/fragments/sessions")
async def sessions_fragment(request: Request) -> Response:
    """The live parts of the sessions page for the same query string."""
    require_login(request)
    ctx = list_context(request)
    replace = {
        "rows": render_text(request, "sessions/rows.html", ctx),
        "chips": render_text(request, "sessions/chips.html", ctx),
        "totals": render_text(request, "sessions/totals.html", ctx),
        "pager": render_text(request, "sessions/pager.html", ctx),
    }
    replace.update({f"panel:{p.name}": html for p, html in ctx["panels"]})
    return JSONResponse({"replace": replace, "append": {}, "state": {"total": ctx["total"]}})


# -- one session ------------------------------------------------------------------------


_KIND = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")


def event_templates(kind: str) -> list[str]:
    """Templates for an event kind, most specific first (`events/<kind>.html`)."""
    specific = [f"events/{kind}.html"] if _KIND.match(kind) else []
    return [*specific, "events/default.html"]


def event_view(row: EventRow) -> dict[str, Any]:
    """A journal row as the timeline templates see it (the API's event shape)."""
    view: dict[str, Any] = json.loads(event_json(row))
    view["templates"] = event_templates(row.kind)
    return view


def session_context(request: Request, session_id: str, after_seq: int = 0) -> dict[str, Any]:
    """What the session page and its live fragment render."""
    state = state_of(request)
    session = state.runtime.session(session_id)
    rows = state.runtime.store.events(session_id, after_seq)
    view = View(request, state, session)
    status = SessionStatus(session.status)
    return {
        "session": session,
        "status": status,
        "finished": status.finished,
        "events": [event_view(r) for r in rows],
        "last_seq": rows[-1].seq if rows else after_seq,
        "elapsed": elapsed(session),
        "panels": _panels(view, "session"),
        "actions": _actions(view, "session"),
    }


@router.get("/sessions/{session_id}")
async def session_page(request: Request, session_id: str) -> Response:
    """A session's header, actions, panels and live timeline."""
    require_login(request)
    return render(request, "session.html", session_context(request, session_id))


@router.get("/fragments/sessions/{session_id}")
async def session_fragment(request: Request, session_id: str) -> Response:
    """The session's header, actions and panels, and its timeline after `after_seq`."""
    require_login(request)
    try:
        after = max(0, int(request.query_params.get("after_seq", "0")))
    except ValueError:
        after = 0
    ctx = session_context(request, session_id, after)
    replace = {
        "header": render_text(request, "session/header.html", ctx),
        "actions": render_text(request, "session/actions.html", ctx),
        "tail": render_text(request, "session/tail.html", ctx),
    }
    replace.update({f"panel:{p.name}": html for p, html in ctx["panels"]})
    append = {"events": render_text(request, "session/events.html", ctx)} if ctx["events"] else {}
    s = ctx["session"]
    return JSONResponse(
        {
            "replace": replace,
            "append": append,
            "state": {
                "last_seq": ctx["last_seq"],
                "status": s.status,
                "finished": ctx["finished"],
                "title": f"{s.id} · {s.status} · NEXUS",
            },
        }
    )


@router.get("/sessions/{session_id}/export.json")
async def session_export(request: Request, session_id: str) -> Response:
    """The session and its journal as a download (replayable with `--replay`)."""
    require_login(request)
    data = state_of(request).runtime.export(session_id)
    return Response(
        dump_export(data),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{session_id}.json"'},
    )


# -- registry rendering -------------------------------------------------------------------


def _panels(view: View, page: PageName) -> list[tuple[Panel, str]]:
    out = []
    for panel in for_page(PANELS, page, view):
        extra = dict(panel.context(view)) if panel.context else {}
        base = {"session": view.session, "panel": panel}
        out.append((panel, render_text(view.request, panel.template, {**base, **extra})))
    return out


def _actions(view: View, page: PageName) -> list[str]:
    out = []
    for action in for_page(ACTIONS, page, view):
        extra = dict(action.context(view)) if action.context else {}
        base = {"session": view.session, "action": action}
        out.append(render_text(view.request, action.template, {**base, **extra}))
    return out
