"""RFC 9457 problem details: every API error is `application/problem+json` with a
stable `type` URI (`urn:nexus:problem:<slug>`) that clients may switch on."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nexus.errors import ConfigError, SessionFinished, SessionNotFound, StorageCorrupt

MEDIA_TYPE = "application/problem+json"
log = logging.getLogger("nexus.server")

TITLES = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Authentication required"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    409: ("conflict", "Conflict"),
    413: ("payload-too-large", "Payload too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("validation", "Invalid request"),
    429: ("rate-limited", "Too many requests"),
    500: ("internal", "Internal error"),
    503: ("unavailable", "Service unavailable"),
}


class Problem(Exception):
    """Raise to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug or TITLES.get(status, ("error", ""))[0]
        self.headers = headers
        self.extra = extra


def problem_response(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A problem+json response."""
    default_slug, title = TITLES.get(status, ("error", "Error"))
    body: dict[str, Any] = {
        "type": f"urn:nexus:problem:{slug or default_slug}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def install(app: FastAPI) -> None:
    """Route every error through problem+json."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(
            exc.status,
            exc.detail,
            slug=exc.slug,
            instance=request.url.path,
            headers=exc.headers,
            **exc.extra,
        )

    @app.exception_handler(SessionNotFound)
    async def _missing(request: Request, exc: SessionNotFound) -> JSONResponse:
        return problem_response(404, str(exc), slug="session-not-found", instance=request.url.path)

    @app.exception_handler(SessionFinished)
    async def _ended(request: Request, exc: SessionFinished) -> JSONResponse:
        # A command for a session that has already ended: the request was valid, the
        # session's state refuses it.
        return problem_response(409, str(exc), slug="session-ended", instance=request.url.path)

    @app.exception_handler(StorageCorrupt)
    async def _corrupt(request: Request, exc: StorageCorrupt) -> JSONResponse:
        return problem_response(503, str(exc), slug="storage-corrupt", instance=request.url.path)

    @app.exception_handler(ConfigError)
    async def _config(request: Request, exc: ConfigError) -> JSONResponse:
        return problem_response(422, str(exc), slug="invalid-request", instance=request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return problem_response(
                400,
                "request body is not valid JSON",
                slug="malformed-json",
                instance=request.url.path,
            )
        fields = [
            {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"]}
            for e in errors
        ]
        detail = "; ".join(f"{f['field'] or '(body)'}: {f['message']}" for f in fields)
        return problem_response(
            422, detail, slug="validation", instance=request.url.path, errors=fields
        )

    app.add_exception_handler(StarletteHTTPException, http_problem)  # type: ignore[arg-type]


async def http_problem(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """An HTTP error (no such route, method not allowed, ...) as problem+json."""
    detail = (
        exc.detail if isinstance(exc.detail, str) else TITLES.get(exc.status_code, ("", "Error"))[1]
    )
    return problem_response(
        exc.status_code,
        detail,
        instance=request.url.path,
        headers=getattr(exc, "headers", None),
    )


class Crashes:
    """ASGI middleware: an error no handler took (a bug, a store that failed) is a
    500 `urn:nexus:problem:internal` problem, logged with its traceback but never
    showing it, instead of Starlette's text/plain "Internal Server Error".

    A response already under way (a live stream) cannot become a problem: the
    error goes on to the server, which closes the connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception:
            if started:
                raise
            log.exception("unhandled error answering %s %s", scope["method"], scope["path"])
            response = problem_response(500, "internal error", instance=scope["path"])
            await response(scope, receive, send)
