"""Refuse oversized request bodies (413) before they are read into memory."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """ASGI middleware: at most `max_bytes` per request body, declared or streamed."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", ())
        if scope.get("method") in ("GET", "HEAD") and not any(
            name in (b"content-length", b"transfer-encoding") for name, _ in headers
        ):
            # No body to count: stay out of the send path (SSE streams write a lot).
            await self.app(scope, receive, send)
            return
        for name, value in headers:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _refuse(send, 400, "bad-request", "invalid Content-Length")
                    return
                if declared > self.max_bytes:
                    await _refuse(send, 413, "payload-too-large", self._detail())
                    return
        seen = 0
        started = refused = False

        async def counted() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # Answer now and tell the app the client left; whatever it
                    # sends afterwards is dropped.
                    refused = True
                    if not started:
                        await _refuse(send, 413, "payload-too-large", self._detail())
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counted, guarded_send)

    def _detail(self) -> str:
        return f"request body exceeds {self.max_bytes} bytes"


async def _refuse(send: Send, status: int, slug: str, detail: str) -> None:
    body = json.dumps(
        {
            "type": f"urn:nexus:problem:{slug}",
            "title": "Payload too large" if status == 413 else "Bad request",
            "status": status,
            "detail": detail,
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
