"""SSE clients for the benchmarks: many cheap listeners in one process.

A listener counts `journal` frames without parsing their JSON (the client's CPU
competes with the server's on a small machine), checks that event ids only go
up, and after a `resync` reconnects with `Last-Event-ID`, as a browser would.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp

JOURNAL = b"\nevent: journal\n"
RESYNC = b"\nevent: resync\n"
END = b"\nevent: end\n"


@dataclass(eq=False)
class Listener:
    """One SSE client's tally."""

    events: int = 0
    last_id: int = 0
    last_at: float = 0.0  # wall clock of the last journal frame
    done_at: float = 0.0  # wall clock when it had every event it waits for
    connected_at: float = 0.0  # wall clock of its first response
    resyncs: int = 0
    reconnects: int = 0
    out_of_order: int = 0
    ended: bool = False
    error: str = ""


class Crowd:
    """Listeners of one stream, and a signal once each has `target` events."""

    def __init__(self, n: int, *, after_id: int = 0) -> None:
        # Listeners start after `after_id` (sent as Last-Event-ID): /api/v1/events/stream
        # without one starts at the broadcaster's read position, which may trail the
        # journal, and would then deliver the end of an earlier session too.
        self.listeners = [Listener(last_id=after_id) for _ in range(n)]
        self.target: int | None = None
        self.connected = 0
        self.all_connected = asyncio.Event()
        self.all_done = asyncio.Event()
        self._done: set[Listener] = set()

    def on_connect(self) -> None:
        self.connected += 1
        if self.connected >= len(self.listeners):
            self.all_connected.set()

    def on_progress(self, lis: Listener) -> None:
        if self.target is not None and lis not in self._done and lis.events >= self.target:
            lis.done_at = lis.last_at
            self._done.add(lis)
            if len(self._done) == len(self.listeners):
                self.all_done.set()

    def expect(self, target: int) -> None:
        """Wait for `target` events per listener (cumulative over the stream)."""
        self.target = target
        self._done.clear()
        self.all_done.clear()
        for lis in self.listeners:
            self.on_progress(lis)


def _id_before(part: bytes, marker_at: int) -> int:
    start = part.rfind(b"id: ", 0, marker_at)
    return int(part[start + 4 : marker_at])


async def listen(
    http: aiohttp.ClientSession,
    url: str,
    token: str,
    lis: Listener,
    crowd: Crowd,
    *,
    accept_encoding: str = "gzip, deflate",
) -> None:
    """Read an SSE stream until `end` (or cancellation), counting journal frames without
    parsing their JSON; after a `resync`, reconnect with `Last-Event-ID`.
    `accept_encoding` as a browser's (the server then deflates) or `identity`."""
    first = True
    while True:
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "text/event-stream",
            "Accept-Encoding": accept_encoding,
        }
        if lis.last_id:
            headers["Last-Event-ID"] = str(lis.last_id)
        try:
            async with http.get(url, headers=headers) as resp:
                if resp.status != 200:
                    lis.error = f"HTTP {resp.status}"
                    return
                if first:
                    lis.connected_at = time.time()
                    crowd.on_connect()
                    first = False
                buf = b"\n"
                resync = False
                async for chunk in resp.content.iter_any():
                    buf += chunk
                    cut = buf.rfind(b"\n\n")
                    if cut < 0:
                        continue
                    part, buf = buf[: cut + 2], buf[cut + 1 :]  # keep a "\n" in front
                    n = part.count(JOURNAL)
                    if n:
                        if _id_before(part, part.find(JOURNAL)) <= lis.last_id:
                            lis.out_of_order += 1
                        lis.events += n
                        lis.last_id = _id_before(part, part.rfind(JOURNAL))
                        lis.last_at = time.time()
                        crowd.on_progress(lis)
                    if RESYNC in part:
                        lis.resyncs += 1
                        resync = True
                        break
                    if END in part:
                        lis.ended = True
                        lis.done_at = time.time()
                        return
                if not resync:
                    lis.error = lis.error or "stream closed without end"
                    return
        except (aiohttp.ClientError, OSError) as exc:
            lis.error = f"{type(exc).__name__}: {exc}"
            return
        lis.reconnects += 1
