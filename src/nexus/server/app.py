"""The FastAPI application: API routers, problem+json errors, body limit, the
dashboard, and (in `nexus start`) the session workers in the same process.

Each API area and each dashboard page is its own module; a later feature adds its
router in `ROUTERS` (or `nexus.server.dashboard.PAGES`) and touches nothing else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI

from nexus import __version__
from nexus.runtime.runtime import Runtime
from nexus.server import problems
from nexus.server.api import (
    admin,
    agents,
    control,
    health,
    observe,
    sessions,
    traces,
    workers,
)
from nexus.server.api.models import Problem
from nexus.server.auth import Auth
from nexus.server.bodylimit import BodyLimit
from nexus.server.broadcast import Broadcaster
from nexus.server.state import ServerState, require_auth
from nexus.server.tokens import token_source

ROUTERS = [
    health.open_router,
    health.router,
    sessions.router,
    control.router,
    agents.router,
    workers.router,
    admin.router,
    observe.router,
    traces.router,
    observe.open_router,
]
MAX_BODY = 1024 * 1024


def create_app(
    runtime: Runtime,
    *,
    auth: bool = True,
    workers: bool = True,
    heartbeat_s: float = 15.0,
    sse_buffer: int = 1000,
) -> FastAPI:
    """Build the app around a runtime.

    Args:
        runtime: the kernel.
        auth: require the token (switch off only on loopback; `nexus start` checks).
        workers: run the session workers (DBOS dispatcher) inside this app.
        heartbeat_s: SSE heartbeat interval.
        sse_buffer: events buffered per SSE client before it is told to resync.
    """
    tokens = token_source(runtime.settings, lambda: runtime.store)
    tokens.ensure()
    state = ServerState(
        runtime=runtime,
        auth=Auth(tokens, enabled=auth, redactor=runtime.redactor),
        broadcaster=Broadcaster(runtime.store, buffer=sse_buffer, heartbeat_s=heartbeat_s),
    )
    state.auth.token()  # masked in the journal and the logs from the start
    tokens.close()  # until the lifespan runs (and after: it closes what requests open)
    from nexus.observe.metrics import serving

    state.rollup, state.metrics, follower = serving(runtime)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.broadcaster.start()
        follower.start()
        dispatcher = None
        if workers:
            from nexus.runtime.dispatch import Dispatcher

            dispatcher = Dispatcher(runtime)
            await dispatcher.start()
            state.dispatcher = dispatcher
        try:
            yield
        finally:
            await state.broadcaster.stop()
            follower.stop()
            if dispatcher is not None:
                state.dispatcher = None
                await dispatcher.stop()
            tokens.close()
            await runtime.aclose_providers()

    app = FastAPI(
        title="NEXUS",
        version=__version__,
        description="Production runtime for AI agents: sessions, journal, live events.",
        lifespan=lifespan,
        # The generated document is served behind auth below; FastAPI's own routes
        # (and the docs UI, which loads JavaScript from a CDN) would be public.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.nexus = state
    problems.install(app)

    document = app.openapi

    def openapi() -> dict[str, Any]:
        # Routes name the problem schema by reference (`models.problems`), only
        # under its own media type; FastAPI would list it as application/json too.
        doc = document()
        doc.setdefault("components", {}).setdefault("schemas", {})["Problem"] = (
            Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        )
        return doc

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/api/v1/openapi.json", include_in_schema=False, dependencies=[Depends(require_auth)])
    async def openapi_json() -> dict[str, Any]:
        return app.openapi()

    for router in ROUTERS:
        app.include_router(router)
    from nexus.server.dashboard import install as install_dashboard

    install_dashboard(app)
    app.add_middleware(problems.Crashes)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY)
    return app
