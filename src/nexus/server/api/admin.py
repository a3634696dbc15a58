"""Audit and settings, for operators watching a node remotely."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from nexus.config import public_view
from nexus.server.api.models import AUTH, AuditReport, Config, problems
from nexus.server.state import ServerState, get_state, require_auth

router = APIRouter(prefix="/api/v1", tags=["admin"], dependencies=[Depends(require_auth)])
State = Annotated[ServerState, Depends(get_state)]


@router.get("/audit/verify", response_model=AuditReport, responses=problems(*AUTH, 404, 422, 503))
async def audit_verify(
    state: State, session_id: Annotated[str | None, Query(max_length=64)] = None
) -> dict[str, Any]:
    """Verify the journal's hash chains (one session or all).

    The walk reads every row (millions on a busy node): it runs in a thread, on a
    read connection of its own, so that the workers and the live streams on the
    event loop go on meanwhile."""
    if session_id is not None:
        state.runtime.session(session_id)
    report = await asyncio.to_thread(state.runtime.journal.verify, session_id)
    return report.to_dict()


@router.get("/config", response_model=Config, responses=problems(*AUTH))
async def config(state: State) -> dict[str, Any]:
    """The effective settings, secrets masked."""
    return public_view(state.runtime.settings)
