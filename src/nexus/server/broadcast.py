"""Fan-out of journal events to live clients (SSE), without slowing the workers.

One task reads new journal rows (woken by in-process appends, polling for other
processes' writes), encodes each event once, and offers it to every matching
subscriber's bounded buffer. A subscriber whose buffer is full is dropped and
told to resync (reconnect with `Last-Event-ID`); the workers never wait on a
client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from dataclasses import dataclass, field

from nexus.storage.base import EventRow, Store
from nexus.types import Event


def event_json(row: EventRow) -> str:
    """An event as JSON text, splicing the stored payload text in (no re-parse)."""
    head = json.dumps(
        {
            "id": row.id,
            "session_id": row.session_id,
            "seq": row.seq,
            "ts": row.ts,
            "kind": row.kind,
            "tokens_in": row.tokens_in,
            "tokens_out": row.tokens_out,
            "cost_usd": row.cost_usd,
            "latency_ms": row.latency_ms,
            "hash": row.hash,
        }
    )
    return f'{head[:-1]},"payload":{row.payload}}}'


def frame(event_id: int, data: str, event: str = "journal") -> str:
    """One SSE frame."""
    return f"id: {event_id}\nevent: {event}\ndata: {data}\n\n"


@dataclass(eq=False)
class Subscription:
    """One client's view: a bounded buffer of encoded frames."""

    session_id: str | None
    limit: int
    frames: deque[str] = field(default_factory=deque)
    overflowed: bool = False
    closed: bool = False
    last_id: int = 0  # last row id (all-sessions) or seq (one session) put in the buffer
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, row: EventRow, data: str) -> None:
        """Queue one event; on overflow stop and mark for resync."""
        if self.overflowed or self.closed:
            return
        key = row.seq if self.session_id is not None else row.id
        if key <= self.last_id:
            return  # already sent from the backlog
        if len(self.frames) >= self.limit:
            self.overflowed = True
        else:
            self.frames.append(frame(key, data))
            self.last_id = key
        self.ready.set()

    def close(self) -> None:
        """End the stream."""
        self.closed = True
        self.ready.set()


class Broadcaster:
    """Reads the journal once and fans events out to subscriptions."""

    def __init__(self, store: Store, *, poll_s: float = 0.5, buffer: int = 1000) -> None:
        self.store = store
        self.poll_s = poll_s
        self.buffer = buffer
        self._subs: set[Subscription] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_id = 0
        self._closing = False

    async def start(self) -> None:
        """Begin after the newest existing event."""
        latest = self.store.latest_event_id()
        self._last_id = latest
        self._task = asyncio.create_task(self._run(), name="nexus-broadcaster")

    def notify(self, _event: Event) -> None:
        """Journal listener: new events are there (cheap: sets a flag)."""
        self._wake.set()

    def subscribe(self, session_id: str | None, last_id: int) -> Subscription:
        """A new subscription; events up to `last_id` are the caller's backlog."""
        sub = Subscription(session_id=session_id, limit=self.buffer, last_id=last_id)
        if self._closing:
            sub.close()
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget a subscription."""
        self._subs.discard(sub)

    @property
    def position(self) -> int:
        """The row id of the last event read from the journal."""
        return self._last_id

    @property
    def subscribers(self) -> int:
        """How many clients are connected."""
        return len(self._subs)

    def close_all(self) -> None:
        """End every stream (server shutdown)."""
        self._closing = True
        for sub in list(self._subs):
            sub.close()

    async def stop(self) -> None:
        """Stop the reader task and end the streams."""
        self.close_all()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            self._wake.clear()
            while True:
                rows = self.store.events_after(self._last_id, 2000)
                if not rows:
                    break
                self._last_id = rows[-1].id
                if self._subs:
                    self._fan_out(rows)
                if len(rows) < 2000:
                    break
                await asyncio.sleep(0)  # let workers run between big batches

    def _fan_out(self, rows: list[EventRow]) -> None:
        subs = list(self._subs)
        for row in rows:
            data: str | None = None
            for sub in subs:
                if sub.session_id is None or sub.session_id == row.session_id:
                    if data is None:
                        data = event_json(row)
                    sub.offer(row, data)
