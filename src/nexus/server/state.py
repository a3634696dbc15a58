"""What the request handlers share: the runtime, the workers, the broadcaster."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from nexus.runtime.runtime import Runtime
from nexus.server.auth import Auth, Principal
from nexus.server.broadcast import Broadcaster


@dataclass
class ServerState:
    """One per app; built in `create_app`, started by its lifespan."""

    runtime: Runtime
    auth: Auth
    broadcaster: Broadcaster
    dispatcher: Any = None  # nexus.runtime.dispatch.Dispatcher once workers run
    integrity: str | None = None  # the database's damage at the last full check
    integrity_checked_at: float | None = None
    rollup: Any = None  # nexus.observe.rollup.Rollup: costs, tool statistics, series
    metrics: Any = None  # the prometheus_client registry of /metrics

    async def submit(self, session_id: str, priority: int) -> None:
        """Hand a new session to the workers (if this server runs them)."""
        if self.dispatcher is not None:
            await self.dispatcher.submit(session_id, priority=priority)


def server_state(request: Request) -> ServerState:
    """The server state of the app serving `request`."""
    state: ServerState = request.app.state.nexus
    return state


async def get_state(request: Request) -> ServerState:
    """FastAPI dependency: the server state (async: no thread-pool hop)."""
    return server_state(request)


async def require_auth(request: Request) -> Principal:
    """FastAPI dependency: an authenticated principal (401/403/429 otherwise).

    `async def` on purpose: FastAPI runs plain `def` dependencies in a thread pool,
    which costs more than the check itself."""
    return server_state(request).auth.require(request)
