"""Agents: list and get."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from nexus.server.state import ServerState, get_state, require_auth

router = APIRouter(prefix="/api/v1/agents", tags=["agents"], dependencies=[Depends(require_auth)])


@router.get("")
async def list_agents(state: Annotated[ServerState, Depends(get_state)]) -> dict[str, Any]:
    """Every agent, by name."""
    return {"items": [a.to_dict() for a in state.runtime.agents.all()]}


@router.get("/{name}")
async def get_agent(name: str, state: Annotated[ServerState, Depends(get_state)]) -> dict[str, Any]:
    """One agent (404 if unknown)."""
    from nexus.errors import ConfigError
    from nexus.server.problems import Problem

    try:
        agent = state.runtime.agents.get(name)
    except ConfigError as exc:
        raise Problem(404, str(exc), slug="agent-not-found") from None
    return agent.to_dict()
