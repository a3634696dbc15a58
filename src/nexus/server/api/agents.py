"""Agents: list and get."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path

from nexus.errors import ConfigError
from nexus.server.api.models import AUTH, Agent, Agents, problems
from nexus.server.problems import Problem
from nexus.server.state import ServerState, get_state, require_auth

router = APIRouter(prefix="/api/v1/agents", tags=["agents"], dependencies=[Depends(require_auth)])
State = Annotated[ServerState, Depends(get_state)]


@router.get("", response_model=Agents, responses=problems(*AUTH))
async def list_agents(state: State) -> dict[str, Any]:
    """Every agent, by name."""
    return {"items": [a.to_dict() for a in state.runtime.agents.all()]}


@router.get("/{name}", response_model=Agent, responses=problems(*AUTH, 404, 422))
async def get_agent(name: Annotated[str, Path(max_length=64)], state: State) -> dict[str, Any]:
    """One agent (404 if unknown)."""
    try:
        agent = state.runtime.agents.get(name)
    except ConfigError as exc:
        raise Problem(404, str(exc), slug="agent-not-found") from None
    return agent.to_dict()
