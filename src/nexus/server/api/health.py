"""Health, readiness and version."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from nexus import __version__
from nexus.errors import NoProviderConfigured
from nexus.server.api.models import AUTH, Health, Ready, Version, problems
from nexus.server.problems import Problem
from nexus.server.state import ServerState, get_state, require_auth

open_router = APIRouter(tags=["health"])
router = APIRouter(prefix="/api/v1", tags=["health"], dependencies=[Depends(require_auth)])


@open_router.get("/healthz", response_model=Health)
async def healthz() -> dict[str, str]:
    """Liveness: the process answers. Needs no token."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Ready, responses=problems(*AUTH, 503))
async def readyz(state: Annotated[ServerState, Depends(get_state)]) -> dict[str, Any]:
    """Readiness: the database answers, the session workers run, and an LLM
    provider is configured (or Ollama answers): sessions without a replay need one."""
    checks: dict[str, str] = {}
    try:
        state.runtime.store.ping()
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    checks["workers"] = "ok" if state.dispatcher is not None else "not running"
    try:
        await state.runtime.provider()
        checks["provider"] = "ok"
    except NoProviderConfigured as exc:
        checks["provider"] = f"not configured: {exc}"
    if any(v != "ok" for v in checks.values()):
        raise Problem(503, "not ready", checks=checks)
    return {"status": "ready", "checks": checks}


@router.get("/version", response_model=Version, responses=problems(*AUTH))
async def version() -> dict[str, str]:
    """The NEXUS version and API version."""
    return {"version": __version__, "api": "v1"}
