"""The workers page (`/workers`): every worker process on this database, its
heartbeat by the database's clock, its status and the sessions its runs own.

Heartbeats are not journal events, so the page's script re-fetches
`/fragments/workers` every heartbeat interval as well as on journal news (a
session that starts or ends moves between workers).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from nexus.runtime.workers import workers_view
from nexus.server.dashboard.web import page_router, render, render_text, require_login, state_of

router = page_router()

STATUS_ORDER = ("alive", "stopped", "dead", "left")
"""How the table sorts: the living first, then those whose sessions await hand-over."""


async def workers_context(request: Request) -> dict[str, Any]:
    """What the page and its fragment render: the workers (living first, then by
    id), the count per status, and the settings that time them."""
    state = state_of(request)
    rows = await asyncio.to_thread(workers_view, state.runtime.store)
    rows.sort(key=lambda w: (_rank(str(w["status"])), str(w["id"])))
    counts = {s: sum(1 for w in rows if w["status"] == s) for s in STATUS_ORDER}
    settings = state.runtime.settings
    return {
        "workers": rows,
        "counts": counts,
        "running": sum(len(cast("list[str]", w["sessions"])) for w in rows),
        "heartbeat_s": settings.heartbeat_s,
        "worker_timeout_s": settings.worker_timeout_s,
        "this_worker": state.runtime.worker_id if state.dispatcher is not None else None,
    }


def _rank(status: str) -> int:
    return STATUS_ORDER.index(status) if status in STATUS_ORDER else len(STATUS_ORDER)


@router.get("/workers")
async def workers_page(request: Request) -> Response:
    """The worker registry, live."""
    require_login(request)
    return render(request, "workers.html", await workers_context(request))


@router.get("/fragments/workers")
async def workers_fragment(request: Request) -> Response:
    """The live parts of the workers page."""
    require_login(request)
    ctx = await workers_context(request)
    replace = {
        "worker-rows": render_text(request, "workers/rows.html", ctx),
        "worker-counts": render_text(request, "workers/counts.html", ctx),
    }
    return JSONResponse({"replace": replace, "append": {}, "state": {"total": len(ctx["workers"])}})
