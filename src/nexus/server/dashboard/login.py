"""Signing in with the API token, and out."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from nexus.server.auth import COOKIE, COOKIE_TTL_S
from nexus.server.dashboard.web import (
    page_router,
    render,
    require_csrf,
    require_login,
    safe_next,
    state_of,
)

router = page_router()


def _client(request: Request) -> str:
    # The same key the API's failure counter uses (`nexus.server.auth`).
    return request.client.host if request.client else "unknown"


@router.get("/login")
async def login_form(request: Request) -> Response:
    """The sign-in form; straight on to `next` when already signed in."""
    auth = state_of(request).auth
    target = safe_next(request.query_params.get("next", "/"))
    if not auth.enabled or auth.cookie_sid(request.cookies.get(COOKIE)) is not None:
        return RedirectResponse(target, 303)
    return render(request, "login.html", {"next": target, "error": None})


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the token; set the session cookie and go on to `next`."""
    require_csrf(request, None)  # cross-site check only: there is no session yet
    auth = state_of(request).auth
    form = await request.form()
    target = safe_next(form.get("next", "/"))
    client = _client(request)
    token = form.get("token")
    valid = isinstance(token, str) and bool(token.strip()) and auth.check_token(token.strip())
    wait = auth.limiter.blocked_for(client)
    if not valid and wait > 0:  # the right token always passes, as on the API
        seconds = int(wait) + 1
        return render(
            request,
            "login.html",
            {"next": target, "error": f"Too many failed attempts. Try again in {seconds} s."},
            status=429,
            headers={"Retry-After": str(seconds)},
        )
    if not valid:
        auth.limiter.fail(client)
        return render(
            request,
            "login.html",
            {"next": target, "error": "That token is not valid."},
            status=401,
        )
    value, _csrf = auth.issue_cookie()
    response = RedirectResponse(target, 303)
    response.set_cookie(
        COOKIE,
        value,
        max_age=COOKIE_TTL_S,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """Forget the session cookie."""
    require_login(request)
    form = await request.form()
    token = form.get("csrf_token")
    require_csrf(request, token if isinstance(token, str) else None)
    response = RedirectResponse("/login", 303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response
