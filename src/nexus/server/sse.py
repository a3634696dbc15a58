"""Server-Sent Events: a subscription's chunks written to one client.

`EventStream` is a Starlette `Response` on plain asyncio: one task per stream
watches for the client leaving. (Starlette's `StreamingResponse` opens an anyio
task group per response under ASGI 2.3 servers such as uvicorn, which costs more
than the rest of setting up a stream.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from nexus.server.broadcast import Broadcaster, Subscription, frame, single

PING = single(b": ping\n\n")  # its deflate block is made once, for every stream
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Vary": "Accept-Encoding"}


async def chunks(
    broadcaster: Broadcaster,
    sub: Subscription,
    final_frames: Callable[[], bytes | None],
) -> AsyncGenerator[bytes, None]:
    """What one client is sent: its start (`sub.begin`), then each batch the
    broadcaster hands `sub`, heartbeats while idle; `resync` if it fell behind, `end` after its
    session's terminal event. Deflated if `sub` says so.

    `final_frames()` is asked when a one-session stream has been quiet for a
    heartbeat: what is left of the session's journal if it has ended (in another
    process, say), or None while it runs."""

    def last(data: bytes) -> bytes:
        return sub.encode(single(data)) + sub.finish()

    try:
        while True:
            if sub.chunks:
                yield sub.take()
            if sub.overflowed:
                yield last(frame(sub.last_id, f'{{"after": {sub.last_id}}}', "resync").encode())
                return
            if sub.closed:
                if end := sub.finish():
                    yield end
                return
            if sub.ended:
                yield last(frame(sub.last_id, "{}", "end").encode())
                return
            sub.ready.clear()
            await sub.ready.wait()
            if sub.beat:
                sub.beat = False
                if sub.session_id is not None and (rest := final_frames()) is not None:
                    yield last(rest + frame(sub.last_id, "{}", "end").encode())
                    return
                if not sub.chunks:
                    yield sub.encode(PING)
    finally:
        broadcaster.unsubscribe(sub)


class EventStream(Response):
    """A `text/event-stream` response of one subscription's chunks."""

    media_type = "text/event-stream"

    def __init__(self, sub: Subscription, body: AsyncGenerator[bytes, None]) -> None:
        self.sub = sub
        self.body_iterator = body
        self.status_code = 200
        self.background = None
        headers = dict(HEADERS)
        if sub.stream is not None:
            headers["Content-Encoding"] = "deflate"
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        watcher = asyncio.create_task(self._watch(receive))
        try:
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client left (ASGI 2.4 servers raise on send)
            pass
        finally:
            watcher.cancel()
            await self.body_iterator.aclose()  # its `finally` unsubscribes

    async def _watch(self, receive: Receive) -> None:
        # The client leaving ends the subscription, which ends the body.
        while (await receive())["type"] != "http.disconnect":
            pass
        self.sub.close()
