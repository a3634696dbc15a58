"""Kill, pause and resume from a session's page: plain HTML forms, each checked
for its CSRF token (`web.require_csrf`, as the new-session form), that post the
control channel's command as the signed-in user and go back to the session page.

A kill needs a second, explicit step: the Kill button opens a confirmation page
whose form carries `confirm=yes`; a kill POST without it only leads there. No
script is involved (the CSP forbids inline script, and this works without any).
"""

from __future__ import annotations

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from nexus.errors import ConfigError, SessionFinished
from nexus.runtime.control import KILL, PAUSE
from nexus.runtime.dispatch import resume_session
from nexus.server.api.control import settle
from nexus.server.auth import Principal
from nexus.server.dashboard.web import page_router, render, require_csrf, require_login, state_of
from nexus.server.problems import Problem
from nexus.types import SessionStatus

router = page_router()

# A kill is applied within milliseconds (the step in flight is cancelled): waiting
# this long lets the page we go back to show `killed`, even without script.
KILL_WAIT_S = 5.0


def _field(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


async def _checked_form(request: Request) -> tuple[Principal, FormData]:
    """The signed-in user and the form, once its CSRF token has passed."""
    principal = require_login(request)
    form = await request.form()
    token = form.get("csrf_token")
    require_csrf(request, token if isinstance(token, str) else None)
    return principal, form


def _back(session_id: str) -> RedirectResponse:
    return RedirectResponse(f"/sessions/{session_id}", 303)


def _refused(exc: SessionFinished | ConfigError) -> Problem:
    if isinstance(exc, SessionFinished):
        return Problem(409, str(exc), slug="session-ended")
    return Problem(422, str(exc), slug="invalid-request")


@router.get("/sessions/{session_id}/kill")
async def confirm_kill(request: Request, session_id: str) -> Response:
    """The kill's confirmation step (an ended session has nothing to kill: back)."""
    require_login(request)
    session = state_of(request).runtime.session(session_id)
    if SessionStatus(session.status).finished:
        return _back(session_id)
    return render(request, "kill.html", {"session": session})


@router.post("/sessions/{session_id}/kill")
async def kill(request: Request, session_id: str) -> Response:
    """Kill the session once confirmed; then its page, showing `killed`."""
    principal, form = await _checked_form(request)
    if form.get("confirm") != "yes":
        return RedirectResponse(f"/sessions/{session_id}/kill", 303)
    runtime = state_of(request).runtime
    try:
        await runtime.control.post(
            session_id, KILL, by=principal.sender("dashboard"), reason=_field(form, "reason")
        )
    except (SessionFinished, ConfigError) as exc:
        raise _refused(exc) from None
    await settle(runtime, session_id, SessionStatus.KILLED.value, KILL_WAIT_S)
    return _back(session_id)


@router.post("/sessions/{session_id}/pause")
async def pause(request: Request, session_id: str) -> Response:
    """Pause at the next step boundary; the page shows `paused` once it is."""
    principal, _ = await _checked_form(request)
    try:
        await state_of(request).runtime.control.post(
            session_id, PAUSE, by=principal.sender("dashboard")
        )
    except (SessionFinished, ConfigError) as exc:
        raise _refused(exc) from None
    return _back(session_id)


@router.post("/sessions/{session_id}/resume")
async def resume(request: Request, session_id: str) -> Response:
    """Resume a paused session, with the form's note for the agent if any."""
    principal, form = await _checked_form(request)
    state = state_of(request)
    try:
        await resume_session(
            state.runtime,
            session_id,
            by=principal.sender("dashboard"),
            note=_field(form, "note") or None,
            dispatcher=state.dispatcher,
        )
    except (SessionFinished, ConfigError) as exc:
        raise _refused(exc) from None
    return _back(session_id)
