"""Audit and settings, for operators watching a node remotely."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from nexus.config import public_view
from nexus.server.state import ServerState, get_state, require_auth

router = APIRouter(prefix="/api/v1", tags=["admin"], dependencies=[Depends(require_auth)])
State = Annotated[ServerState, Depends(get_state)]


@router.get("/audit/verify")
async def audit_verify(state: State, session_id: str | None = None) -> dict[str, Any]:
    """Verify the journal's hash chains (one session or all)."""
    if session_id is not None:
        state.runtime.session(session_id)
    return state.runtime.journal.verify(session_id).to_dict()


@router.get("/config")
async def config(state: State) -> dict[str, Any]:
    """The effective settings, secrets masked."""
    return public_view(state.runtime.settings)
