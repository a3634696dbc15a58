"""What every dashboard page shares: templates, login checks, error pages and
security headers.

Pages are plain FastAPI routes on a `page_router()`. Its route class turns
`LoginRequired` into a redirect to `/login`, any `Problem` into an HTML error
page (problem+json under `/fragments/`), and stamps the security headers on
every response, so a page handler only says what it renders.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from nexus import __version__
from nexus.errors import SessionNotFound
from nexus.server.auth import COOKIE, Principal
from nexus.server.dashboard.format import FILTERS
from nexus.server.dashboard.registry import NAV, TEMPLATE_DIRS
from nexus.server.problems import Problem, problem_response
from nexus.server.state import ServerState, server_state

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
FRAGMENTS = "/fragments/"

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}


def _asset_version() -> str:
    # Part of every static URL, so browsers fetch changed CSS/JS after an upgrade.
    digest = hashlib.sha256()
    for path in sorted(STATIC.rglob("*")):
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


ASSET_VERSION = _asset_version()


class _Templates(FileSystemLoader):
    """The dashboard's templates, then the folders in `TEMPLATE_DIRS` (features
    that ship their panel, action or event templates in their own package)."""

    def __init__(self) -> None:
        super().__init__(TEMPLATES)

    def get_source(
        self, environment: Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        self.searchpath = [os.fspath(TEMPLATES), *(os.fspath(p) for p in TEMPLATE_DIRS)]
        return super().get_source(environment, template)


env = Environment(
    loader=_Templates(),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
env.filters.update(FILTERS)
env.globals.update(
    version=__version__,
    static=lambda name: f"/static/{name}?v={ASSET_VERSION}",
)


class LoginRequired(Exception):
    """Raised by `require_login` on a page: the answer is a redirect to /login."""

    def __init__(self, next_path: str, *, clear_cookie: bool) -> None:
        super().__init__(next_path)
        self.next_path = next_path
        self.clear_cookie = clear_cookie


def state_of(request: Request) -> ServerState:
    """The server state."""
    return server_state(request)


def require_login(request: Request) -> Principal:
    """The principal of a page request (cookie, bearer, or open when auth is off).

    Pages raise `LoginRequired` (a redirect); fragment requests get a 401.
    """
    auth = state_of(request).auth
    principal = auth.identify(request)
    if principal is None:
        if request.url.path.startswith(FRAGMENTS):
            raise Problem(401, "authentication required")
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(target, clear_cookie=COOKIE in request.cookies)
    request.state.principal = principal
    return principal


def require_csrf(request: Request, presented: str | None) -> None:
    """403 unless a state-changing form comes from this origin with its CSRF token.

    The token binds a cookie login; the fetch-metadata / Origin check also covers
    bearer and open (auth off, loopback) use, where there is no cookie to bind.
    """
    site = request.headers.get("sec-fetch-site")
    origin = request.headers.get("origin")
    if site is not None and site not in ("same-origin", "none"):
        raise Problem(403, "cross-site form submission refused", slug="csrf")
    if site is None and origin is not None and urlsplit(origin).netloc != request.url.netloc:
        raise Problem(403, "cross-site form submission refused", slug="csrf")
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is not None and principal.via == "cookie" and principal.sid is not None:
        expected = state_of(request).auth.csrf_for(principal.sid)
        if not presented or not hmac.compare_digest(presented, expected):
            raise Problem(403, "missing or invalid CSRF token", slug="csrf")


def csrf_token(request: Request) -> str:
    """The CSRF token for forms and `X-CSRF-Token` on this page ('' without a cookie)."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None or principal.sid is None:
        return ""
    return state_of(request).auth.csrf_for(principal.sid)


def safe_next(value: object) -> str:
    """A post-login target: a local path only (never `//host` or `http://...`)."""
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//"):
        return "/"
    if "\\" in value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


def page_context(request: Request, context: Mapping[str, Any]) -> dict[str, Any]:
    """The variables every template sees, plus the page's own."""
    principal: Principal | None = getattr(request.state, "principal", None)
    state = state_of(request)
    path = request.url.path
    nav = [
        (link, path == link.path or bool(link.match and path.startswith(link.match)))
        for link in NAV
    ]
    return {
        "request": request,
        "path": path,
        "nav": nav,
        "principal": principal,
        "auth_enabled": state.auth.enabled,
        "csrf_token": csrf_token(request),
        **context,
    }


def render_text(request: Request, template: str, context: Mapping[str, Any]) -> str:
    """A template rendered with the page context (for fragments)."""
    return env.get_template(template).render(page_context(request, context))


def render(
    request: Request,
    template: str,
    context: Mapping[str, Any] | None = None,
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """A full page."""
    html = render_text(request, template, context or {})
    return HTMLResponse(html, status_code=status, headers=dict(headers or {}))


def error_page(
    request: Request,
    status: int,
    title: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """An error as a page, or as problem+json for fragment requests."""
    if request.url.path.startswith(FRAGMENTS):
        return problem_response(
            status, detail, instance=request.url.path, headers=dict(headers or {})
        )
    return render(
        request,
        "error.html",
        {"status": status, "title": title, "detail": detail},
        status=status,
        headers=headers,
    )


_TITLES = {
    401: "Sign-in required",
    403: "Not allowed",
    404: "Not found",
    409: "Already ended",
    422: "Invalid request",
    429: "Too many attempts",
}


class PageRoute(APIRoute):
    """A dashboard route: login redirects, HTML error pages, security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        inner = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                response = await inner(request)
            except LoginRequired as exc:
                response = RedirectResponse(f"/login?next={quote(exc.next_path)}", 303)
                if exc.clear_cookie:  # a stale cookie would count as a failure on every page
                    response.delete_cookie(COOKIE, path="/")
            except Problem as exc:
                title = _TITLES.get(exc.status, "Error")
                response = error_page(request, exc.status, title, exc.detail, exc.headers)
            except SessionNotFound as exc:
                response = error_page(request, 404, "Session not found", str(exc))
            except RequestValidationError:
                response = error_page(request, 422, _TITLES[422], "the request is not valid")
            except StarletteHTTPException as exc:
                detail = exc.detail if isinstance(exc.detail, str) else "error"
                title = _TITLES.get(exc.status_code, "Error")
                response = error_page(request, exc.status_code, title, detail, exc.headers)
            return secure(response)

        return handler


# Paths whose errors are for programs, never a page: the API, the OpenAI gateway,
# the page fragments and the static files.
NOT_PAGES = ("/api/", "/v1/", FRAGMENTS, "/static/", "/healthz", "/metrics")


def wants_page(request: Request) -> bool:
    """A browser asking for a page (`Accept: text/html`), outside the API's paths."""
    path = request.url.path
    return "text/html" in request.headers.get("accept", "") and not path.startswith(NOT_PAGES)


def http_error_page(request: Request, exc: StarletteHTTPException) -> Response:
    """A routing error (no such page: 404; 405) as the dashboard's error page."""
    state = state_of(request)
    request.state.principal = state.auth.identify(request)  # the bar as on every page
    title = _TITLES.get(exc.status_code, "Error")
    detail = "there is no such page" if exc.status_code == 404 else str(exc.detail)
    return secure(error_page(request, exc.status_code, title, detail, exc.headers))


def secure(response: Response) -> Response:
    """Stamp the dashboard's security headers; pages are never cached."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def page_router() -> APIRouter:
    """A router for dashboard pages (kept out of the OpenAPI schema)."""
    return APIRouter(route_class=PageRoute, include_in_schema=False)


class Static(StaticFiles):
    """The dashboard's static files, with the same security headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if response.status_code == 200 and b"v=" in scope.get("query_string", b""):
            # URLs carry the assets' hash (`static()` in templates): safe to keep.
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return response


def static_files() -> Static:
    """The app mounted at `/static`."""
    return Static(directory=STATIC)
