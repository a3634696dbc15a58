"""Workers: the registry of worker processes on this database, with their heartbeats
and the sessions they run."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from nexus.runtime.workers import workers_view
from nexus.server.api.models import AUTH, Workers, problems
from nexus.server.state import ServerState, get_state, require_auth

router = APIRouter(prefix="/api/v1/workers", tags=["workers"], dependencies=[Depends(require_auth)])
State = Annotated[ServerState, Depends(get_state)]


@router.get("", response_model=Workers, responses=problems(*AUTH))
async def list_workers(state: State) -> dict[str, Any]:
    """Every worker that has run on this database, by id."""
    return {"items": await asyncio.to_thread(workers_view, state.runtime.store)}
