"""Mounting the dashboard on the app."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from nexus.server.dashboard import control, login, new, overview, sessions, workers
from nexus.server.dashboard.registry import PAGES
from nexus.server.dashboard.web import http_error_page, static_files, wants_page
from nexus.server.problems import http_problem


def install(app: FastAPI) -> None:
    """Mount the dashboard's pages (built-in, then `PAGES`) and its static files, and
    show browsers that ask for a page that is not there the dashboard's error page
    (the API's problem+json stays for everything else)."""
    for router in (
        login.router,
        sessions.router,
        new.router,
        control.router,
        workers.router,
        overview.router,
        *PAGES,
    ):
        app.include_router(router)
    app.mount("/static", static_files(), name="static")

    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if wants_page(request):
            return http_error_page(request, exc)
        return await http_problem(request, exc)

    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
