"""Mounting the dashboard on the app."""

from __future__ import annotations

from fastapi import FastAPI

from nexus.server.dashboard import login, new, sessions
from nexus.server.dashboard.registry import PAGES
from nexus.server.dashboard.web import static_files


def install(app: FastAPI) -> None:
    """Mount the dashboard's pages (built-in, then `PAGES`) and its static files."""
    for router in (login.router, sessions.router, new.router, *PAGES):
        app.include_router(router)
    app.mount("/static", static_files(), name="static")
