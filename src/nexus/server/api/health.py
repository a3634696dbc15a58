"""Health, readiness and version."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from nexus import __version__
from nexus.errors import NoProviderConfigured, StorageCorrupt
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
        damage = await _integrity(state)
        checks["database"] = "ok" if damage is None else f"damaged: {damage}"
    except StorageCorrupt as exc:
        checks["database"] = f"damaged: {exc.detail}"
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


INTEGRITY_EVERY_S = 300.0  # a full check reads the whole file: not on every probe


async def _integrity(state: ServerState) -> str | None:
    """The database file's damage, or None: checked at the first probe and then at
    most every `INTEGRITY_EVERY_S` (a database error found meanwhile is known at once)."""
    now = time.monotonic()
    if state.integrity_checked_at is None or now - state.integrity_checked_at > INTEGRITY_EVERY_S:
        state.integrity = await asyncio.to_thread(state.runtime.store.check_integrity)
        state.integrity_checked_at = now
    return state.integrity


@router.get("/version", response_model=Version, responses=problems(*AUTH))
async def version() -> dict[str, str]:
    """The NEXUS version and API version."""
    return {"version": __version__, "api": "v1"}
