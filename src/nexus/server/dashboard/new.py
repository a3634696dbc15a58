"""The new-session form (`/new`): the same checks as `POST /api/v1/sessions`."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from nexus.errors import ConfigError
from nexus.server.api.sessions import NewSession, start_session
from nexus.server.dashboard.web import page_router, render, require_csrf, require_login, state_of
from nexus.server.recordings import ReplayRefused

router = page_router()

TEXT_FIELDS = ("goal", "agent", "priority", "model", "replay", "replay_pace_s", "labels")
BUDGET_FIELDS = ("max_steps", "max_tokens", "max_wall_s", "max_cost_usd")


def form_context(
    request: Request, values: dict[str, str], errors: dict[str, str]
) -> dict[str, Any]:
    """What the form renders: its values, its errors, the agents to choose from."""
    state = state_of(request)
    agents = [a.to_dict() for a in state.runtime.agents.all()]
    chosen = values.get("agent") or state.runtime.settings.default_agent
    limits: dict[str, Any] = next((a["limits"] for a in agents if a["name"] == chosen), {})
    return {
        "values": values,
        "errors": errors,
        "agents": agents,
        "default_agent": state.runtime.settings.default_agent,
        "default_limits": {k: limits.get(k) for k in BUDGET_FIELDS},
    }


@router.get("/new")
async def new_form(request: Request) -> Response:
    """The form, prefilled from the query string (e.g. "replay this session")."""
    require_login(request)
    q = request.query_params
    values = {k: q[k] for k in (*TEXT_FIELDS, *BUDGET_FIELDS) if k in q}
    return render(request, "new.html", form_context(request, values, {}))


def parse_labels(text: str) -> dict[str, str]:
    """`key=value` pairs, one per line or comma-separated; `ValueError` names a bad one."""
    labels = {}
    for part in text.replace(",", "\n").splitlines():
        item = part.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{item!r} is not key=value")
        labels[key.strip()] = value.strip()
    return labels


def read_form(form: FormData) -> tuple[dict[str, str], dict[str, Any], dict[str, str]]:
    """The form's raw values, the API body built from them, and errors so far."""
    values = {k: str(form.get(k) or "").strip() for k in (*TEXT_FIELDS, *BUDGET_FIELDS)}
    values["goal"] = str(form.get("goal") or "")  # keep the goal's own line breaks
    errors: dict[str, str] = {}
    body: dict[str, Any] = {"goal": values["goal"].strip()}
    for key in ("agent", "model", "replay", "priority", "replay_pace_s"):
        if values[key]:
            body[key] = values[key]
    try:
        body["labels"] = parse_labels(values["labels"])
    except ValueError as exc:
        errors["labels"] = str(exc)
    budget = {k: values[k] for k in BUDGET_FIELDS if values[k]}
    if budget:
        body["budget"] = budget
    return values, body, errors


def _field(loc: tuple[Any, ...]) -> str:
    names = [str(p) for p in loc]
    if names and names[0] == "budget" and len(names) > 1:
        return names[1]
    return names[0] if names else "form"


def _config_field(exc: ConfigError) -> str:
    if isinstance(exc, ReplayRefused):
        return "replay"
    # ConfigError messages of `Runtime.create_session`, mapped to the field at fault.
    message = str(exc)
    for prefix, name in (("unknown agent", "agent"), ("replay", "replay")):
        if prefix in message:
            return name
    return "budget" if "budget" in message else "form"


@router.post("/new")
async def create(request: Request) -> Response:
    """Create the session, hand it to the workers, and open its page."""
    require_login(request)
    form = await request.form()
    token = form.get("csrf_token")
    require_csrf(request, token if isinstance(token, str) else None)
    values, body, errors = read_form(form)
    parsed: NewSession | None = None
    try:
        parsed = NewSession.model_validate(body)
    except ValidationError as exc:
        for e in exc.errors():
            errors.setdefault(_field(tuple(e["loc"])), str(e["msg"]))
        if not body["goal"]:
            errors["goal"] = "Say what the session should do."
    if parsed is not None and not errors:
        try:
            session_id = await start_session(state_of(request), parsed)
        except ConfigError as exc:
            errors[_config_field(exc)] = str(exc)
        else:
            return RedirectResponse(f"/sessions/{session_id}", 303)
    return render(request, "new.html", form_context(request, values, errors), status=422)
