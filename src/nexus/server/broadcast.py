"""Fan-out of journal events to live clients (SSE), without slowing the workers.

One task per process reads new journal rows and offers them to every matching
subscriber's bounded buffer, however many clients there are. It is woken by the
store's `Wakeup`: this process's appends, and on PostgreSQL every process's (one
LISTEN connection per process); unwoken it reads every `poll_s` (SQLite: how
other processes' appends are seen), or at the slow safety interval while NOTIFY
wakes it. What keeps the workers fast with many clients (measured in
`bench/api.py`):

* coalescing: after a wake the reader waits so that a burst of appends becomes
  one read, one chunk and one socket write per client, not one per event; the
  wait grows with the number of clients (`coalesce_s` up to `max_coalesce_s`),
  keeping the socket writes near `writes_per_s`: a write costs the workers time
  whatever its size (with 100 clients, `python -m bench.api` measured the
  workers 9-26% slower at a fixed 0.05 s, and within 5% with this wait);
* each batch is encoded once per stream (all sessions, or one session) and the
  same string is handed to every client of that stream;
* a live session's frames are kept in memory (`Tail`, bounded): a client that
  connects mid-session catches up from there, not with its own database read;
* a subscriber whose buffer is full is dropped and told to resync (reconnect with
  `Last-Event-ID`); the workers never wait on a client.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from nexus.server import deflate
from nexus.storage.base import EventRow, SessionRow, Store
from nexus.storage.wake import EVENTS, AsyncWaiter
from nexus.types import SessionStatus

TERMINAL_KINDS = frozenset({"session.completed", "session.failed", "session.killed"})


def event_json(row: EventRow) -> str:
    """An event as JSON text, splicing the stored payload text in (no re-parse).

    Formatted directly (this runs for every event of every watched session):
    the ids, kind and hash are plain ASCII; ints and finite floats print as JSON."""
    return (
        f'{{"id":{row.id},"session_id":{_string(row.session_id)},"seq":{row.seq},'
        f'"ts":{row.ts!r},"kind":{_string(row.kind)},"tokens_in":{row.tokens_in},'
        f'"tokens_out":{row.tokens_out},"cost_usd":{row.cost_usd!r},'
        f'"latency_ms":{row.latency_ms!r},"hash":"{row.hash}","payload":{row.payload}}}'
    )


def _string(text: str) -> str:
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return json.dumps(text)


def frame(event_id: int, data: str, event: str = "journal") -> str:
    """One SSE frame."""
    return f"id: {event_id}\nevent: {event}\ndata: {data}\n\n"


@dataclass(eq=False)
class Piece:
    """Consecutive frames as sent: their bytes, where each frame starts, and their
    deflate block, made on first need and then shared by every deflating client."""

    raw: bytes
    starts: list[int]  # the offset of each frame in `raw`
    _block: deflate.Block | None = None

    @classmethod
    def of(cls, frames: list[bytes]) -> Piece:
        """One piece of these frames."""
        starts, at = [], 0
        for data in frames:
            starts.append(at)
            at += len(data)
        return cls(b"".join(frames), starts)

    @property
    def count(self) -> int:
        """How many frames."""
        return len(self.starts)

    def block(self) -> deflate.Block:
        """The frames as a self-contained deflate block."""
        if self._block is None:
            self._block = deflate.compress(self.raw)
        return self._block

    def after(self, index: int) -> Piece:
        """The frames from number `index` on."""
        if index <= 0:
            return self
        at = self.starts[index]
        return Piece(self.raw[at:], [s - at for s in self.starts[index:]])


def single(data: bytes) -> Piece:
    """A piece of one frame (or comment) made on the spot."""
    return Piece(data, [0])


RETRY = single(b"retry: 1000\n\n")  # every stream's start: browsers reconnect after 1 s


@dataclass(eq=False)
class Batch:
    """New rows of one stream (one session, or all) and their SSE frames, encoded
    once for every client of the stream."""

    rows: list[EventRow]
    frames: list[bytes]
    _whole: Piece | None = None

    def piece(self, start: int) -> Piece:
        """The frames from `rows[start]` on."""
        if start:
            return Piece.of(self.frames[start:])
        if self._whole is None:
            self._whole = Piece.of(self.frames)
        return self._whole


@dataclass(eq=False)
class Subscription:
    """One client's view: a bounded buffer of encoded chunks.

    `last_id` is the last event id put in the buffer: the journal seq for a
    one-session stream, the global row id for the all-sessions stream.
    """

    session_id: str | None
    limit: int
    stream: deflate.Stream | None = None  # set if the client takes deflate
    chunks: deque[bytes] = field(default_factory=deque)
    buffered: int = 0  # events in `chunks`
    overflowed: bool = False
    closed: bool = False
    ended: bool = False  # the session's terminal event is at or before `last_id`
    last_id: int = 0
    active: bool = False  # given something since the last heartbeat
    beat: bool = False  # due a heartbeat (set by the broadcaster's reader)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def key(self, row: EventRow) -> int:
        """The id this stream uses for `row`."""
        return row.seq if self.session_id is not None else row.id

    def offer(self, batch: Batch) -> None:
        """Queue the batch's rows newer than `last_id`. On overflow stop and mark
        for resync."""
        rows = batch.rows
        if self.overflowed or self.closed or not rows:
            return
        start = (
            0
            if self.key(rows[0]) > self.last_id
            else bisect.bisect_right(rows, self.last_id, key=self.key)
        )
        if start == len(rows):
            return
        # A client that has not taken what it was given and would go past the limit
        # is too slow. (A single batch is always accepted: memory stays bounded by
        # `limit` plus one read of the reader.)
        if self.buffered and self.buffered + len(rows) - start > self.limit:
            self.overflowed = True
            self.ready.set()
            return
        self.chunks.append(self.encode(batch.piece(start)))
        self.active = True
        self.buffered += len(rows) - start
        self.last_id = self.key(rows[-1])
        if self.session_id is not None and rows[-1].kind in TERMINAL_KINDS:
            self.ended = True
        self.ready.set()

    def encode(self, piece: Piece) -> bytes:
        """The piece as this client is sent it: deflated, or as it is. In order."""
        return piece.raw if self.stream is None else self.stream.add(piece.block())

    def begin(self, backlog: list[Piece]) -> None:
        """Queue the stream's start: the reconnect delay and the client's catch-up.
        Called as soon as it subscribes, before any batch: deflating, the order
        of encoding is the order of the bytes."""
        start = b"" if self.stream is None else self.stream.start()
        self.chunks.appendleft(start + b"".join(self.encode(p) for p in [RETRY, *backlog]))

    def finish(self) -> bytes:
        """What completes the stream (the deflate end and checksum, if deflating)."""
        return b"" if self.stream is None else self.stream.finish()

    def take(self) -> bytes:
        """Everything buffered, as one byte string (ready for the socket)."""
        text = b"".join(self.chunks)
        self.chunks.clear()
        self.buffered = 0
        return text

    def close(self) -> None:
        """End the stream."""
        self.closed = True
        self.ready.set()


@dataclass(eq=False)
class Tail:
    """One session's SSE frames from `first_seq` up to what the broadcaster has
    read, in pieces as they were read: the catch-up of every client that connects
    later."""

    first_seq: int
    pieces: list[tuple[int, Piece]] = field(default_factory=list)  # (first seq, piece)
    size: int = 0  # bytes of frames held
    ended: bool = False  # the terminal event is the last frame

    def __post_init__(self) -> None:
        self.last_seq = self.first_seq - 1  # the newest frame's seq

    def add(self, batch: Batch) -> bool:
        """Append the frames of the batch's rows newer than `last_seq`. False
        (nothing added) if they would leave a gap: the tail no longer continues
        the journal."""
        rows = batch.rows
        start = next((i for i, r in enumerate(rows) if r.seq > self.last_seq), len(rows))
        if start == len(rows):
            return True
        if rows[start].seq != self.last_seq + 1:
            return False
        piece = batch.piece(start)
        self.pieces.append((rows[start].seq, piece))
        self.size += len(piece.raw)
        self.last_seq = rows[-1].seq
        self.ended = rows[-1].kind in TERMINAL_KINDS
        return True

    def since(self, seq: int) -> list[Piece]:
        """The frames after `seq` (at least `first_seq - 1`): whole pieces where
        they can be (their deflate blocks are shared), a cut of the first one."""
        out = []
        for first, piece in self.pieces:
            if first + piece.count - 1 > seq:
                out.append(piece.after(seq + 1 - first))
        return out

    def drop_head(self, size: int) -> int:
        """Forget the oldest pieces until at most `size` bytes remain; returns the
        bytes freed."""
        freed = 0
        while self.pieces and self.size - freed > size:
            freed += len(self.pieces.pop(0)[1].raw)
        self.first_seq = self.pieces[0][0] if self.pieces else self.last_seq + 1
        self.size -= freed
        return freed


@dataclass(frozen=True)
class CatchUp:
    """What a client connecting to one session's stream is sent first."""

    pieces: list[Piece]
    last_seq: int  # the seq of the last frame, or the client's own start
    ended: bool  # the session's terminal event is at or before `last_seq`

    @property
    def raw(self) -> bytes:
        """The frames, as they are."""
        return b"".join(p.raw for p in self.pieces)


class Broadcaster:
    """Reads the journal once and fans events out to subscriptions."""

    def __init__(
        self,
        store: Store,
        *,
        poll_s: float = 0.5,
        buffer: int = 1000,
        coalesce_s: float = 0.05,
        max_coalesce_s: float = 0.25,
        writes_per_s: int = 500,
        heartbeat_s: float = 15.0,
    ) -> None:
        self.store = store
        self.poll_s = poll_s
        self.buffer = buffer
        self.coalesce_s = coalesce_s
        self.max_coalesce_s = max_coalesce_s
        self.writes_per_s = writes_per_s
        self.heartbeat_s = heartbeat_s
        self._subs: set[Subscription] = set()
        self._wakeup = store.wakeup()
        self._waiter: AsyncWaiter | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_id = 0
        self._closing = False
        # Encoded events by row id: many clients catching up on one busy session
        # read the same backlog; each event is encoded once. Bounded: cleared when
        # full (a miss only costs an encode).
        self._encoded: dict[int, str] = {}
        self.cache_size = 50_000
        # Live sessions' frames (a tail per session that has had a client), least
        # recently used first; bounded by `tail_bytes` of frames in all (their
        # deflate blocks, made on first need, add at most a third of that).
        self._tails: OrderedDict[str, Tail] = OrderedDict()
        self._tail_size = 0
        self.tail_bytes = 32 * 1024 * 1024

    def encode(self, row: EventRow) -> str:
        """`event_json(row)`, cached by row id."""
        text = self._encoded.get(row.id)
        if text is None:
            if len(self._encoded) >= self.cache_size:
                self._encoded.clear()
            text = self._encoded[row.id] = event_json(row)
        return text

    def frames(self, rows: list[EventRow], *, by_seq: bool) -> list[bytes]:
        """Each row's SSE frame; its id is the seq (one session's stream) or the
        row id (all sessions)."""
        return [frame(r.seq if by_seq else r.id, self.encode(r)).encode() for r in rows]

    def backlog(self, rows: list[EventRow], *, by_seq: bool) -> bytes:
        """The frames of rows read from the journal, as one byte string."""
        return b"".join(self.frames(rows, by_seq=by_seq))

    async def start(self) -> None:
        """Begin after the newest existing event."""
        self._waiter = self._wakeup.async_waiter(EVENTS)
        self._last_id = self.store.latest_event_id()
        self._task = asyncio.create_task(self._run(self._waiter), name="nexus-broadcaster")

    def catch_up(self, session_id: str, after: int) -> CatchUp | None:
        """A session's frames after seq `after`, from memory; None if they are not
        all there (then read the journal and `remember` it)."""
        tail = self._tails.get(session_id)
        if tail is None or after < tail.first_seq - 1:
            return None
        self._tails.move_to_end(session_id)
        if after >= tail.last_seq:
            return CatchUp([], after, tail.ended)
        return CatchUp(tail.since(after), tail.last_seq, tail.ended)

    def remember(self, session: SessionRow, after: int, rows: list[EventRow]) -> CatchUp:
        """Frames for `rows`, the session's journal after seq `after` read just after
        `session`, kept as its tail so the next client needs no read. The read covers
        every row of the session the reader has fanned out: later batches continue it."""
        batch = Batch(rows, self.frames(rows, by_seq=True))
        # Finished before the read: its terminal event is in `rows` or before `after`.
        ended = SessionStatus(session.status).finished or (
            bool(rows) and rows[-1].kind in TERMINAL_KINDS
        )
        pieces = [batch.piece(0)] if rows else []
        caught = CatchUp(pieces, rows[-1].seq if rows else after, ended)
        if after > session.last_seq:  # a position past the journal: keep nothing
            return caught
        old = self._tails.pop(session.id, None)
        if old is not None:
            self._tail_size -= old.size
        tail = Tail(first_seq=after + 1)
        if tail.add(batch):
            tail.ended = ended
            self._tails[session.id] = tail
            self._tail_size += tail.size
            self._trim_tails([tail])
        return caught

    def _trim_tails(self, grown: list[Tail]) -> None:
        # One session alone may use half the budget; beyond that its oldest frames
        # go (clients asking for them read the journal). Then whole tails, least
        # recently used first.
        for tail in grown:
            if tail.size > self.tail_bytes // 2:
                self._tail_size -= tail.drop_head(self.tail_bytes // 2)
        while self._tail_size > self.tail_bytes and self._tails:
            _sid, tail = self._tails.popitem(last=False)
            self._tail_size -= tail.size

    @property
    def tails(self) -> int:
        """How many sessions' frames are held in memory."""
        return len(self._tails)

    @property
    def held_bytes(self) -> int:
        """The bytes of those frames (at most `tail_bytes`)."""
        return self._tail_size

    def subscribe(
        self, session_id: str | None, last_id: int, *, deflated: bool = False
    ) -> Subscription:
        """A new subscription; events up to `last_id` are the caller's backlog.
        `deflated`: the client is sent a deflate stream."""
        sub = Subscription(
            session_id=session_id,
            limit=self.buffer,
            last_id=last_id,
            stream=deflate.Stream() if deflated else None,
        )
        if self._closing:
            sub.close()
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget a subscription."""
        self._subs.discard(sub)

    @property
    def coalesce_wait(self) -> float:
        """How long a wake waits for more events: `coalesce_s`, longer with more
        clients (one write each per batch), at most `max_coalesce_s`."""
        if self.coalesce_s <= 0:
            return 0.0
        wait = max(self.coalesce_s, len(self._subs) / self.writes_per_s)
        return min(self.max_coalesce_s, wait)

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
        if self._waiter is not None:
            self._waiter.close()
            self._waiter = None

    def _heartbeat(self) -> None:
        # One pass for every stream (not a timer per client per wake): a stream
        # given nothing since the last pass is due a heartbeat.
        for sub in self._subs:
            if not sub.active:
                sub.beat = True
                sub.ready.set()
            sub.active = False

    async def _run(self, waiter: AsyncWaiter) -> None:
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + self.heartbeat_s
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(
                    min(self._wakeup.timeout(self.poll_s), self.heartbeat_s)
                ):
                    await waiter.wait()
            if loop.time() >= next_beat:
                self._heartbeat()
                next_beat = loop.time() + self.heartbeat_s
            if waiter.is_set() and (wait := self.coalesce_wait) > 0:
                await asyncio.sleep(wait)  # let the burst land: one batch
            waiter.clear()  # before the read: a commit after it wakes the next turn
            while True:
                if not self._subs and not self._tails:
                    # Nobody to tell: skip ahead without reading the rows.
                    self._last_id = self.store.latest_event_id()
                    break
                rows = self.store.events_after(self._last_id, 5000)
                if not rows:
                    break
                self._last_id = rows[-1].id
                self._fan_out(rows)
                if len(rows) < 5000:
                    break
                await asyncio.sleep(0)  # let workers run between big batches

    def _fan_out(self, rows: list[EventRow]) -> None:
        by_session: dict[str, list[EventRow]] = {}
        for row in rows:
            by_session.setdefault(row.session_id, []).append(row)
        # Encoded once per stream (all sessions, or one session): its clients get
        # the same bytes (encoding per client was most of the cost of a delivery).
        batches: dict[str | None, Batch] = {}
        grown = []
        for session_id, ours in by_session.items():
            tail = self._tails.get(session_id)
            if tail is None:
                continue
            batch = batches[session_id] = Batch(ours, self.frames(ours, by_seq=True))
            before = tail.size
            if tail.add(batch):
                self._tail_size += tail.size - before
                self._tails.move_to_end(session_id)  # a live session stays
                grown.append(tail)
            else:  # cannot happen with one reader in id order; never serve a gap
                self._tail_size -= before
                del self._tails[session_id]
        if grown:
            self._trim_tails(grown)
        for sub in list(self._subs):
            key = sub.session_id
            found = batches.get(key)
            if found is None:
                mine = rows if key is None else by_session.get(key)
                if not mine:
                    continue
                found = batches[key] = Batch(mine, self.frames(mine, by_seq=key is not None))
            sub.offer(found)
